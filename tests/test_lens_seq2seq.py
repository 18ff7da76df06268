"""The logit lens of an encoder–decoder's decoder (T5 tied and untied, BART, Marian, mBART):
every row against the decoder's hidden states taken through its norm, scale, head and bias
by hand; refusals in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import build_seq2seq as _build
from _models import build_tokenizer

import llm_magic as lm
from llm_magic.backends import _lens_seq2seq
from llm_magic.errors import InvalidOptionError, NotAvailableError, PromptTooLongError

SOURCE = "def add(a, b): return a + b"
TARGET = "return a + b"
ARCHS = ("t5", "t5-untied", "bart", "marian", "mbart")


def _build_other(out: Path, arch: str) -> Path:
    """The two the shared builder has not: T5 with untied (unscaled) output, mBART (pre-LN)."""
    from transformers import (
        MBartConfig,
        MBartForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = build_tokenizer(out, 512)
    eos = tok.eos_token_id
    torch.manual_seed(1)
    ids = dict(vocab_size=len(tok), pad_token_id=eos, eos_token_id=eos,
               decoder_start_token_id=eos)
    if arch == "t5-untied":
        model = T5ForConditionalGeneration(T5Config(
            d_model=32, d_ff=64, num_layers=3, num_decoder_layers=3, num_heads=4, d_kv=8,
            tie_word_embeddings=False, **ids))  # (transformers' generate fails on 2 and 3)
    else:
        model = MBartForConditionalGeneration(MBartConfig(
            d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_position_embeddings=64, bos_token_id=eos, forced_eos_token_id=None, **ids))
    for key, value in dict(pad_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=None,
                           forced_bos_token_id=None, bad_words_ids=None,
                           suppress_tokens=[eos]).items():
        setattr(model.generation_config, key, value)  # as the shared builder does
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lens-seq2seq")
    found = {arch: _build(root / arch, arch) for arch in ("t5", "bart", "marian")}
    found.update({arch: _build_other(root / arch, arch) for arch in ("t5-untied", "mbart")})
    return found


def _load(manager, built, arch: str) -> str:
    manager.load(str(built[arch]), name=arch, dtype="float32")
    model = manager.backend(arch).model
    bias = getattr(model, "final_logits_bias", None)
    if bias is not None:  # zero when built: a real one, so that leaving it out would show
        generator = torch.Generator().manual_seed(3)
        bias.copy_(torch.randn(bias.shape, generator=generator) * 2)
    return arch


@pytest.fixture(params=ARCHS)
def arch(request, built, manager) -> str:
    return _load(manager, built, request.param)


# -- the decoder's path to its logits, written out by hand ---------------------------------


def _norm_by_hand(model, arch: str, h: torch.Tensor) -> torch.Tensor:
    decoder = model.get_decoder()
    if arch.startswith("t5"):  # T5's RMS norm: no mean, no bias
        norm = decoder.final_layer_norm
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) \
            * norm.weight
    if arch == "mbart":
        norm = decoder.layer_norm
        return torch.nn.functional.layer_norm(h, (h.shape[-1],), norm.weight, norm.bias,
                                              norm.eps)
    return h  # BART and Marian: post-LN, no final decoder norm


def _head_by_hand(model, arch: str, h: torch.Tensor) -> torch.Tensor:
    if arch == "t5":  # tied embeddings: the head's input scaled by d_model ** -0.5
        h = h * model.config.d_model ** -0.5
    logits = h @ model.get_output_embeddings().weight.T
    if arch in ("bart", "marian", "mbart"):
        logits = logits + model.final_logits_bias[0]
    return logits


def _decoder_ids(backend, target: str) -> list[int]:
    return [backend.model.config.decoder_start_token_id,
            *backend.tokenizer(text_target=target)["input_ids"]]


def _by_hand(backend, arch: str, source_ids: list[int], decoder: list[int]):
    """Every row's log-probabilities from output_hidden_states, and the model's own logits."""
    model = backend.model
    with torch.no_grad():
        out = model(input_ids=torch.tensor([source_ids]),
                    decoder_input_ids=torch.tensor([decoder]), output_hidden_states=True)
        hs = [h[0] for h in out.decoder_hidden_states]  # entering each block, then the output
        rows = [_head_by_hand(model, arch, _norm_by_hand(model, arch, h)) for h in hs[:-1]]
        rows.append(_head_by_hand(model, arch, hs[-1]))  # already normed (T5) or post-LN
    return torch.log_softmax(torch.stack(rows), -1), out.logits[0]


def test_each_row_equals_the_decoder_by_hand(arch, manager):
    backend = manager.backend(arch)
    decoder = _decoder_ids(backend, TARGET)
    lens = lm.logit_lens(SOURCE, target=TARGET, model=arch, top=4, manager=manager)
    logp, logits = _by_hand(backend, arch, backend.tokenizer(SOURCE)["input_ids"], decoder)
    blocks = backend.model.config.decoder_layers if arch != "t5" and arch != "t5-untied" \
        else backend.model.config.num_decoder_layers
    assert lens.shape == (blocks + 1, len(decoder), 4)
    # the hand-computed last row is the model's own logits: norm, scale and bias all right
    assert torch.allclose(logp[-1], torch.log_softmax(logits, -1), atol=1e-5)
    assert lens.check <= 1e-4
    probs = logp.exp()
    top = probs.topk(4, dim=-1)
    assert np.array_equal(lens.ids, top.indices.numpy())
    np.testing.assert_allclose(lens.probs, top.values.numpy(), atol=1e-5)
    final = probs[-1].argmax(-1)
    np.testing.assert_allclose(lens.final_prob, probs[:, torch.arange(len(decoder)), final],
                               atol=1e-5)
    entropy = -(probs * logp).sum(-1)
    np.testing.assert_allclose(lens.entropy, entropy.numpy(), atol=1e-4)
    kl = (probs[-1] * (logp[-1] - logp)).sum(-1)
    np.testing.assert_allclose(lens.kl, kl.numpy(), atol=1e-4)
    assert lens.input_ids == tuple(decoder) and lens.source == SOURCE
    assert lens.layers[0] == "decoder embeddings" and lens.layers[-1] == f"decoder block {blocks}"
    assert lens.prompt_tokens is None and "'s decoder" in lens.summary()


def test_the_scale_and_bias_are_the_models_own(built, manager):
    """Without T5's scaling, or BART's bias, the lens would differ: the test above can fail."""
    for arch in ("t5", "bart"):
        backend = manager.backend(_load(manager, built, arch))
        decoder = _decoder_ids(backend, TARGET)
        logp, _ = _by_hand(backend, "t5-untied" if arch == "t5" else "bart-no-bias",
                           backend.tokenizer(SOURCE)["input_ids"], decoder)
        lens = lm.logit_lens(SOURCE, target=TARGET, model=arch, top=4, manager=manager)
        assert not np.allclose(lens.probs, logp.exp().topk(4, -1).values.numpy(), atol=1e-3)


def test_a_generation_is_read_as_the_model_wrote_it(arch, manager):
    gen = lm.generate(SOURCE, model=arch, max_new_tokens=6, logprobs=2, manager=manager)
    lens = lm.logit_lens(gen, manager=manager)
    ids = [r.id for r in gen.tokens]
    start = manager.backend(arch).model.config.decoder_start_token_id
    assert lens.input_ids == (start, *ids) and lens.prompt_tokens == 1
    assert lens.source == gen.prompt
    # the last row is the distribution the model generated from: its likeliest token at
    # each step is the record's (raw: before the generation config suppresses any token)
    assert list(lens.predicted[:-1]) == [r.top[0][0] for r in gen.tokens]
    np.testing.assert_allclose(lens.probs[-1, :-1, 0], [np.exp(r.top[0][2]) for r in gen.tokens],
                               atol=1e-5)
    # a generation without token ids: its source and text, tokenized again
    plain = dataclasses.replace(gen, tokens=None, text=TARGET)
    again = lm.logit_lens(plain, manager=manager)
    assert again.input_ids == tuple(_decoder_ids(manager.backend(arch), TARGET))
    assert again.prompt_tokens == 1


def test_refusals_each_in_one_line(built, manager, tiny_gpt2):
    _load(manager, built, "bart")
    with pytest.raises(InvalidOptionError, match=r"encoder–decoder model: its logit lens reads "
                                                 r"the decoder.*target=\.\.\."):
        lm.logit_lens(SOURCE, model="bart", manager=manager)
    gen = lm.generate(SOURCE, model="bart", max_new_tokens=3, logprobs=1, manager=manager)
    with pytest.raises(InvalidOptionError, match="holds its own output"):
        lm.logit_lens(gen, target=TARGET, manager=manager)
    for bad in (True, 3.5, [], [True], ["a"], {"a": 1}):
        with pytest.raises(InvalidOptionError, match="target"):
            lm.logit_lens(SOURCE, target=bad, model="bart", manager=manager)
    with pytest.raises(InvalidOptionError, match="The target is empty|The target"):
        lm.logit_lens(SOURCE, target="   ", model="bart", manager=manager)
    with pytest.raises(InvalidOptionError, match="not in the vocabulary"):
        lm.logit_lens(SOURCE, target=[10**9], model="bart", manager=manager)
    with pytest.raises(PromptTooLongError, match="decoder of 'bart' writes at most 63"):
        lm.logit_lens(SOURCE, target="word " * 100, model="bart", manager=manager)
    with pytest.raises(PromptTooLongError, match="encoder of 'bart' reads at most 64"):
        lm.logit_lens("word " * 100, target=TARGET, model="bart", manager=manager)
    with pytest.raises(InvalidOptionError, match="past the logit lens cap of 3"):
        lm.logit_lens(SOURCE, target=TARGET, model="bart", max_tokens=3, manager=manager)
    forced = dataclasses.replace(gen, params={**gen.params, "target_lang": "fr_XX"})
    with pytest.raises(InvalidOptionError, match="'fr_XX' is not a language code of 'bart'"):
        lm.logit_lens(forced, manager=manager)
    manager.load(str(tiny_gpt2), name="causal", dtype="float32")
    with pytest.raises(InvalidOptionError, match="'causal' is a causal LM"):
        lm.logit_lens("def f(x):", target=" return x", model="causal", manager=manager)
    assert lm.logit_lens("def f(x):", model="causal", manager=manager).source is None
    # nothing was lost: the model still gives its lens
    assert lm.logit_lens(SOURCE, target=TARGET, model="bart", manager=manager).check <= 1e-4


def test_a_lens_that_does_not_reproduce_the_logits_is_refused(built, manager, monkeypatch):
    _load(manager, built, "bart")
    _load(manager, built, "t5")
    init = _lens_seq2seq.Head.__init__

    def no_bias(self, model):
        init(self, model)
        self.bias = None

    monkeypatch.setattr(_lens_seq2seq.Head, "__init__", no_bias)
    with pytest.raises(NotAvailableError, match="does not reproduce the model's own logits"):
        lm.logit_lens(SOURCE, target=TARGET, model="bart", manager=manager)
    monkeypatch.undo()

    def no_scale(self, model):
        init(self, model)
        self.input_scale = None

    monkeypatch.setattr(_lens_seq2seq.Head, "__init__", no_scale)
    with pytest.raises(NotAvailableError, match="does not reproduce the model's own logits"):
        lm.logit_lens(SOURCE, target=TARGET, model="t5", manager=manager)
    monkeypatch.undo()
    monkeypatch.setattr(_lens_seq2seq, "_NORMS", ())  # T5's final norm not found: refused
    with pytest.raises(NotAvailableError, match="does not reproduce the model's own logits"):
        lm.logit_lens(SOURCE, target=TARGET, model="t5", manager=manager)
    monkeypatch.undo()
    decoder = manager.backend("t5").model.get_decoder()
    blocks = decoder.block
    decoder.block = torch.nn.ModuleList(list(blocks)[:1])
    try:
        with pytest.raises(NotAvailableError, match="Cannot find the 2 decoder blocks"):
            lm.logit_lens(SOURCE, target=TARGET, model="t5", manager=manager)
    finally:
        decoder.block = blocks


def test_the_snapshot_and_view_name_the_source_and_the_decoder(built, manager):
    _load(manager, built, "marian")
    source = "<b>x</b> = 1"
    lens = lm.logit_lens(source, target=TARGET, model="marian", manager=manager)
    html = lens.to_html()
    assert "source: &lt;b&gt;x&lt;/b&gt; = 1" in html and "<b>x" not in html
    assert "decoder block 2 (output)" in html and "decoder embeddings" in html
    view = lens.widget()
    assert view.layers == lens.row_names and view.prompt_tokens == -1
    assert lens.to_png()[:4] == b"\x89PNG"
