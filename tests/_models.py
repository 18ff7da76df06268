"""Build tiny random causal LMs and their tokenizers, offline."""

from __future__ import annotations

from pathlib import Path


def _corpus() -> list[str]:
    import pydoc_data.topics

    return [t for _, t in sorted(pydoc_data.topics.topics.items())][:60]


def build_tokenizer(out: Path, vocab_size: int = 512, chat_template: str | None = None,
                    codes: list[str] | None = None, texts: list[str] | None = None):
    """A byte-level BPE trained on ``texts`` (default: Python's topic docs), saved to ``out``.

    ``codes``: language codes trained in as special tokens after a ``<pad>`` token, at low
    ids as real mBART/NLLB/M2M100 checkpoints have them (M2M100 offsets its positions by
    the pad id).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] + ([] if codes is None else ["<pad>", *codes])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus() if texts is None else texts, trainer=trainer)
    extra = {} if codes is None else {"pad_token": "<pad>", "additional_special_tokens": codes}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", **extra,
    )
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(out)
    return fast


def build_tiny_model(out: Path, arch: str = "gpt2", chat_template: str | None = None,
                     n_embd: int = 32, n_layer: int = 2, vocab_size: int = 512,
                     context: int = 128, seed: int = 0) -> Path:
    """Write a random model of ``arch`` ("gpt2" or "llama") with a tokenizer into ``out``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out, vocab_size, chat_template)
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_embd=n_embd, n_layer=n_layer, n_head=4,
                            n_positions=context, bos_token_id=eos, eos_token_id=eos)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=n_embd, intermediate_size=2 * n_embd,
                             num_hidden_layers=n_layer, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=context,
                             bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out)
    return out


def build_seq2seq(out: Path, arch: str, **overrides) -> Path:
    """Write a tiny random T5, BART or Marian model (d_model 32, 2 + 2 layers, 4 heads) with
    a tokenizer into ``out``; its outputs never end early (end of text is suppressed).
    ``overrides`` replace config values (``scale_embedding=True``, as real Marian checkpoints;
    ``max_position_embeddings`` / T5's ``n_positions`` for a longer context)."""
    import torch
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        MarianConfig,
        MarianMTModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = build_tokenizer(out, 512)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    ids = dict(vocab_size=len(tok), pad_token_id=eos, eos_token_id=eos,
               decoder_start_token_id=eos)
    if arch == "t5":
        model = T5ForConditionalGeneration(T5Config(**{
            **dict(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   d_kv=8, n_positions=64), **ids, **overrides}))
    elif arch == "bart":
        model = BartForConditionalGeneration(BartConfig(**{
            **dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                   max_position_embeddings=64, bos_token_id=eos, forced_eos_token_id=None),
            **ids, **overrides}))
    else:
        model = MarianMTModel(MarianConfig(**{
            **dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                   max_position_embeddings=64), **ids, **overrides}))
    model.generation_config.pad_token_id = eos
    model.generation_config.decoder_start_token_id = eos
    model.generation_config.forced_eos_token_id = None
    model.generation_config.forced_bos_token_id = None
    model.generation_config.bad_words_ids = None
    # Random weights would often end at once: these outputs run their full length, on
    # llm_magic's side and transformers' alike (both read the model's generation config).
    model.generation_config.suppress_tokens = [eos]
    model.save_pretrained(out)
    return out
