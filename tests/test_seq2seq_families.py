"""The encoder–decoder families llm_magic promises beyond T5, BART and Marian: mBART with
language codes, Pegasus (scaled embeddings) and M2M100 (NLLB's architecture), each a tiny
random model built here; and target_lang, alone and in a batch.

Every number is checked against transformers itself, written in the test: greedy
generate (with ``forced_bos_token_id``, as mBART-50 and NLLB force their output
language), a teacher-forced forward's log-softmax, ``output_attentions`` of an eager
forward, ``output_hidden_states``, autograd on the model's own input embeddings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import build_tokenizer
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from test_attention_seq2seq import HALF, _float32_capture
from test_attention_seq2seq import _reference as _eager

import llm_magic as lm
from llm_magic.errors import InvalidOptionError, NotAvailableError

SOURCE = "def add(a, b): return a + b"
SOURCES = [SOURCE, "import os", "class Foo(object): pass"]
TARGET = "return a + b"
ARCHS = ("mbart", "pegasus", "m2m100")
#: The code each family's target_lang is given as, and the token it stands for.
CODES = {"mbart": ("fr_XX", "fr_XX"), "m2m100": ("fr", "__fr__")}


def _tokenizer(out: Path, codes: list[str]):
    """_models.build_tokenizer's BPE with the language codes as special tokens."""
    return build_tokenizer(out, 512, codes=codes)


def _build(out: Path, arch: str) -> Path:
    """A tiny random ``arch`` (d_model 32, 2 + 2 layers, 4 heads, scaled embeddings as the real
    checkpoints have) with a tokenizer whose language codes are added special tokens.

    The ids are laid out as the real ones are: mBART and M2M100 start the decoder with the
    end-of-text token and pad with another, Pegasus starts it with its pad token. Outputs run
    their full length (end of text and padding suppressed) and never repeat a token
    (``no_repeat_ngram_size=1``, on llm_magic's side and transformers' alike: both read the
    generation config), so every comparison below covers many different tokens; weights
    drawn wider than the default make the output depend on the source.
    """
    from transformers import (
        M2M100Config,
        M2M100ForConditionalGeneration,
        MBartConfig,
        MBartForConditionalGeneration,
        PegasusConfig,
        PegasusForConditionalGeneration,
    )

    codes = {"mbart": ["en_XX", "fr_XX", "de_DE"], "m2m100": ["__en__", "__fr__", "fra_Latn"]}
    tok = _tokenizer(out, codes.get(arch, []))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    start = pad if arch == "pegasus" else eos
    config, cls = {"mbart": (MBartConfig, MBartForConditionalGeneration),
                   "pegasus": (PegasusConfig, PegasusForConditionalGeneration),
                   "m2m100": (M2M100Config, M2M100ForConditionalGeneration)}[arch]
    torch.manual_seed(0)
    model = cls(config(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, scale_embedding=True, init_std=0.3,
        pad_token_id=pad, eos_token_id=eos, bos_token_id=eos, decoder_start_token_id=start,
        forced_eos_token_id=None))
    for key, value in dict(pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=start,
                           forced_eos_token_id=None, forced_bos_token_id=None,
                           bad_words_ids=None, suppress_tokens=[eos, pad],
                           no_repeat_ngram_size=1).items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("s2s-families")
    return {arch: _build(root / arch, arch) for arch in ARCHS}


@pytest.fixture(params=ARCHS)
def arch(request, built, manager) -> str:
    manager.load(str(built[request.param]), name=request.param, dtype="float32")
    return request.param


@pytest.fixture(params=sorted(CODES))
def coded(request, built, manager) -> str:
    """A family with language codes, loaded."""
    manager.load(str(built[request.param]), name=request.param, dtype="float32")
    return request.param


# -- transformers' own numbers -------------------------------------------------------------


def _src(backend, text: str = SOURCE) -> list[int]:
    return backend.tokenizer(text)["input_ids"]


def _code_id(backend, arch: str) -> int:
    token = CODES[arch][1]
    found = backend.tokenizer.convert_tokens_to_ids(token)
    assert token in backend.tokenizer.get_added_vocab()
    return found


def _raw(backend, source: str, n: int, code: int | None = None) -> list[int]:
    """transformers' greedy generate; the decoder's start token (and a forced code) dropped."""
    ids = backend.tokenizer(source, return_tensors="pt")
    extra = 0 if code is None else 1
    with torch.inference_mode():
        out = backend.model.generate(**ids, do_sample=False, max_new_tokens=n + extra,
                                     min_new_tokens=n + extra, forced_bos_token_id=code)
    if code is not None:
        assert out[0, 1] == code
    return out[0, 1 + extra:].tolist()


def _log_softmax(backend, source: list[int], decoder: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([source]),
                               decoder_input_ids=torch.tensor([decoder])).logits[0]
    return torch.log_softmax(logits.float(), -1)


# -- load, generate, records ------------------------------------------------------------------


def test_each_family_loads_as_an_encoder_decoder(arch, manager):
    info = manager.info(arch)
    assert info.kind == "seq2seq" and not info.chat
    assert "hf (seq2seq)" in str(manager.models())


def test_greedy_generation_equals_transformers(arch, manager):
    backend = manager.backend(arch)
    gen = lm.generate(SOURCE, model=arch, max_new_tokens=10, logprobs=3, manager=manager)
    ids = [r.id for r in gen.tokens]
    assert len(set(ids)) == 10 and ids == _raw(backend, SOURCE, 10)
    assert gen.text == backend.tokenizer.decode(ids, skip_special_tokens=True)
    assert list(gen.prompt_ids) == _src(backend)
    start = backend.model.config.decoder_start_token_id
    lp = _log_softmax(backend, _src(backend), [start, *ids])
    expected = lp[torch.arange(len(ids)), ids]
    assert torch.allclose(torch.tensor([r.logprob for r in gen.tokens]), expected, atol=1e-5)
    # the output depends on the source: a batch that mixed up its rows would show
    assert _raw(backend, SOURCES[1], 10) != ids


def test_target_lang_forces_the_code_as_transformers_does(coded, manager):
    backend = manager.backend(coded)
    lang, token = CODES[coded]
    code = _code_id(backend, coded)
    pieces: list[str] = []
    gen = lm.generate(SOURCE, model=coded, max_new_tokens=8, logprobs=3, target_lang=lang,
                      stream=pieces.append, manager=manager)
    ids = [r.id for r in gen.tokens]
    assert ids == _raw(backend, SOURCE, 8, code) and len(set(ids)) == 8
    assert ids != _raw(backend, SOURCE, 8)  # the code changes the output
    assert code not in ids and token not in gen.text and "".join(pieces) == gen.text
    assert gen.params["target_lang"] == lang and gen.stats.new_tokens == 8
    start = backend.model.config.decoder_start_token_id
    lp = _log_softmax(backend, _src(backend), [start, code, *ids])
    expected = lp[torch.arange(1, len(ids) + 1), ids]
    assert torch.allclose(torch.tensor([r.logprob for r in gen.tokens]), expected, atol=1e-5)
    assert [r.top[0][0] for r in gen.tokens] == lp[1:-1].argmax(-1).tolist()
    # a branch keeps the code before the output it continues
    alt = gen.tokens[2].top[1][0]
    branch = gen.branch(2, alt, manager=manager)
    chosen = [r.id for r in branch.tokens]
    assert chosen[:3] == [*ids[:2], alt] and branch.params["target_lang"] == lang
    with torch.inference_mode():
        out = backend.model.generate(input_ids=torch.tensor([_src(backend)]),
                                     decoder_input_ids=torch.tensor([[start, code, *chosen[:3]]]),
                                     do_sample=False, max_new_tokens=5, min_new_tokens=5)
    assert out[0, 2:].tolist() == chosen


def test_codes_are_found_where_real_tokenizers_keep_them(built, manager):
    """NLLB's codes are added tokens, mBART-50's are in lang_code_to_id (both classes built
    here without vocabulary files), M2M100's are wrapped (``fr`` is ``__fr__``, above) or
    given whole; Pegasus has none."""
    from transformers import MBart50Tokenizer, NllbTokenizer

    from llm_magic.backends.seq2seq import _target_lang

    nllb, mbart50 = NllbTokenizer(), MBart50Tokenizer()
    assert nllb.convert_ids_to_tokens(_target_lang(nllb, "x", "fra_Latn")) == "fra_Latn"
    assert _target_lang(mbart50, "x", "fr_XX") == mbart50.lang_code_to_id["fr_XX"]
    for tok, lang in ((nllb, "fr_XX"), (nllb, "fr"), (mbart50, "fra_Latn"), (mbart50, "</s>")):
        with pytest.raises(InvalidOptionError, match="not a language code of 'x'"):
            _target_lang(tok, "x", lang)
    manager.load(str(built["m2m100"]), name="m2m100", dtype="float32")
    backend = manager.backend("m2m100")
    whole = lm.generate(SOURCE, model="m2m100", max_new_tokens=4, logprobs=1,
                        target_lang="fra_Latn", manager=manager)
    fra = backend.tokenizer.convert_tokens_to_ids("fra_Latn")
    assert [r.id for r in whole.tokens] == _raw(backend, SOURCE, 4, fra)
    manager.load(str(built["pegasus"]), name="pegasus", dtype="float32")
    with pytest.raises(InvalidOptionError, match="not a language code of 'pegasus'"):
        lm.generate(SOURCE, model="pegasus", target_lang="fr_XX", manager=manager)


def test_score_of_an_output_is_its_teacher_forced_sum(arch, manager):
    backend = manager.backend(arch)
    s = lm.score(SOURCE, target=TARGET, model=arch, manager=manager)
    target = backend.tokenizer(text_target=TARGET)["input_ids"]
    start = backend.model.config.decoder_start_token_id
    lp = _log_softmax(backend, _src(backend), [start, *target])
    expected = float(lp[torch.arange(len(target)), target].sum())
    assert abs(s.logprob - expected) < 1e-4 and [r.id for r in s.tokens] == target


# -- the attention, the lens, attribution --------------------------------------------------


def test_attention_of_a_generation_is_exact(arch, manager):
    backend = manager.backend(arch)
    lang = CODES.get(arch, (None,))[0]
    gen = lm.generate(SOURCE, model=arch, max_new_tokens=6, logprobs=1, attention=True,
                      target_lang=lang, manager=manager)
    ids = [r.id for r in gen.tokens]
    prefix = [backend.model.config.decoder_start_token_id]
    if lang is not None:
        prefix.append(_code_id(backend, arch))
    decoder, source = [*prefix, *ids], _src(backend)
    att = gen.attention
    assert att.cross.shape[2:] == (len(decoder), len(source))
    assert att.cross.tokens == tuple(backend.tokenizer.convert_ids_to_tokens(decoder))
    assert lang is None or att.cross.tokens[1] == CODES[arch][1]
    ref = _eager(backend, source, decoder)  # output_attentions of an eager forward
    for kind in ("encoder", "decoder", "cross"):
        for layer, want in enumerate(ref[kind]):
            assert np.abs(att[kind].layers[layer].astype(np.float32) - want).max() <= HALF
    _, kept = _float32_capture(backend, source, decoder)  # before llm_magic's float16 step
    flat = ref["encoder"] + [w for pair in zip(ref["decoder"], ref["cross"], strict=True)
                             for w in pair]
    assert len(kept) == len(flat)
    for got, want in zip(kept, flat, strict=True):
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5
    assert lm.attention(gen, manager=manager) is att
    again = lm.attention(SOURCE, model=arch, target=decoder[1:], manager=manager)
    for a, b in zip(att.cross.layers, again.cross.layers, strict=True):
        assert np.array_equal(a, b)


def test_a_forced_generation_without_its_ids_is_refused_in_one_line(coded, manager):
    gen = lm.generate(SOURCE, model=coded, max_new_tokens=3,
                      target_lang=CODES[coded][0], manager=manager)
    for call in (lambda: lm.attention(gen, manager=manager),
                 lambda: lm.logit_lens(gen, manager=manager)):
        with pytest.raises(NotAvailableError, match="logprobs=1") as info:
            call()
        assert "\n" not in str(info.value)


def test_the_lens_of_each_family_equals_the_decoder_by_hand(arch, manager):
    """Every row: the decoder's hidden state through its final norm, the head and the bias;
    a forced code is read as the output's first id."""
    backend = manager.backend(arch)
    model = backend.model
    lang = CODES.get(arch, (None,))[0]
    target = backend.tokenizer(text_target=TARGET)["input_ids"]
    if lang is not None:
        target = [_code_id(backend, arch), *target]
    decoder = [model.config.decoder_start_token_id, *target]
    lens = lm.logit_lens(SOURCE, target=target, model=arch, top=4, manager=manager)
    norm = model.get_decoder().layer_norm  # all three are pre-LN, with a final norm
    bias = getattr(model, "final_logits_bias", None)

    def head(h):
        logits = h @ model.get_output_embeddings().weight.T
        return logits if bias is None else logits + bias[0]

    with torch.no_grad():
        out = model(input_ids=torch.tensor([_src(backend)]),
                    decoder_input_ids=torch.tensor([decoder]), output_hidden_states=True)
        hs = [h[0] for h in out.decoder_hidden_states]
        rows = [head(norm(h)) for h in hs[:-1]] + [head(hs[-1])]
    logp = torch.log_softmax(torch.stack(rows), -1)
    assert torch.allclose(logp[-1], torch.log_softmax(out.logits[0], -1), atol=1e-5)
    assert lens.shape == (3, len(decoder), 4) and lens.check <= 1e-4
    top = logp.exp().topk(4, dim=-1)
    assert np.array_equal(lens.ids, top.indices.numpy())
    np.testing.assert_allclose(lens.probs, top.values.numpy(), atol=1e-5)
    assert lens.input_ids == tuple(decoder)


def _embeds(model, arch: str, source: list[int], decoder: list[int]):
    """What the model takes as inputs_embeds and decoder_inputs_embeds: Pegasus's encoder
    scales only ids it embeds itself; mBART's and M2M100's embedding modules scale."""
    scale = math.sqrt(model.config.d_model) if arch == "pegasus" else 1.0
    e = model.get_encoder().get_input_embeddings()(torch.tensor([source])) * scale
    d = model.get_decoder().get_input_embeddings()(torch.tensor([decoder]))
    return e.detach().requires_grad_(True), d.detach().requires_grad_(True)


def test_attribution_reads_the_code_as_a_decoder_input(arch, manager):
    backend = manager.backend(arch)
    model = backend.model
    lang = CODES.get(arch, (None,))[0]
    gen = lm.generate(SOURCE, model=arch, max_new_tokens=4, logprobs=2, target_lang=lang,
                      manager=manager)
    a = lm.attribute(gen, manager=manager)
    ids, source = [r.id for r in gen.tokens], _src(backend)
    prefix = [model.config.decoder_start_token_id]
    if lang is not None:
        prefix.append(_code_id(backend, arch))
        assert a.input_tokens[len(source) + 1] == CODES[arch][1]
    S, P = len(source), len(prefix)
    assert a.source_tokens == S and a.prompt_tokens == S + P
    assert list(a.input_ids) == [*source, *prefix, *ids[:-1]] and list(a.target_ids) == ids
    np.testing.assert_allclose(a.value, [r.logprob for r in gen.tokens], atol=1e-4)
    decoder = [*prefix, *ids]
    for k in range(len(ids)):  # row k: the output token at decoder position P + k
        e, d = _embeds(model, arch, source, decoder[: P + k])
        logits = model(inputs_embeds=e, decoder_inputs_embeds=d, use_cache=False).logits
        f = torch.log_softmax(logits[0, -1].float(), -1)[ids[k]]
        ge, gd = torch.autograd.grad(f, [e, d])
        want = torch.cat([(e[0] * ge[0]).sum(-1), (d[0] * gd[0]).sum(-1)]).detach().numpy()
        np.testing.assert_allclose(a.scores[k, : S + P + k], want, atol=2e-6, rtol=1e-4)
        assert np.isnan(a.scores[k, S + P + k:]).all()


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["xx_XX", "de", "<|endoftext|>", "<pad>", "<b>fr_XX</b>", "FR_XX"])
def test_a_code_the_tokenizer_lacks_is_refused_in_one_line_naming_the_model(arch, manager,
                                                                              lang):
    """"de" is an ordinary piece of text in this vocabulary, the others no code at all."""
    tok = manager.backend(arch).tokenizer
    assert lang != "de" or tok.convert_tokens_to_ids("de") != tok.unk_token_id
    with pytest.raises(InvalidOptionError, match=f"not a language code of '{arch}'") as info:
        lm.generate(SOURCE, model=arch, max_new_tokens=3, target_lang=lang, manager=manager)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidOptionError, match="not a language code"):
        lm.generate_batch(SOURCES, model=arch, max_new_tokens=3, target_lang=lang,
                          manager=manager)
    with pytest.raises(InvalidOptionError, match="not a language code"):
        lm.attribute(SOURCE, model=arch, target_lang=lang, manager=manager)
    # nothing was lost: the model still generates
    assert lm.generate(SOURCE, model=arch, max_new_tokens=2, manager=manager).stats.new_tokens == 2


@pytest.mark.parametrize("lang", [True, 3, "", "   ", float("nan")])
def test_a_target_lang_that_is_no_text_is_refused(built, manager, lang):
    manager.load(str(built["mbart"]), name="mbart", dtype="float32")
    with pytest.raises(InvalidOptionError, match="target_lang"):
        lm.generate(SOURCE, model="mbart", target_lang=lang, manager=manager)


# -- batches ------------------------------------------------------------------------------


def test_batch_rows_equal_their_single_generations(arch, manager):
    """The sources differ in length: padded on the left, mBART's and Pegasus's positions
    would shift and the short rows would change."""
    rows = lm.generate_batch(SOURCES, model=arch, max_new_tokens=6, logprobs=2,
                             manager=manager)
    backend = manager.backend(arch)
    outputs = []
    for source, row in zip(SOURCES, rows, strict=True):
        single = lm.generate(source, model=arch, max_new_tokens=6, logprobs=2, manager=manager)
        ids = [r.id for r in row.tokens]
        assert ids == [r.id for r in single.tokens] == _raw(backend, source, 6)
        assert row.text == single.text and list(row.prompt_ids) == _src(backend, source)
        np.testing.assert_allclose([r.logprob for r in row.tokens],
                                   [r.logprob for r in single.tokens], atol=1e-5)
        outputs.append(ids)
    assert len({tuple(o) for o in outputs}) == len(SOURCES)


def test_a_batch_of_the_demo_translator_equals_its_single_translations(manager):
    """A real model: with its sources padded on the left, "5/6/07" came out "2007-06-07"."""
    manager.load("demo-translator", name="tr")
    sources = ["the third of March, 2021", "12 August 1999", "5/6/07", "the 5th of june 2011"]
    rows = lm.generate_batch(sources, model="tr", manager=manager)
    singles = [lm.generate(s, model="tr", manager=manager).text for s in sources]
    assert [r.text for r in rows] == singles and singles[2] == "2007-06-05"


def test_a_batch_with_target_lang_starts_every_row_with_the_code(coded, manager):
    backend = manager.backend(coded)
    lang, _ = CODES[coded]
    code = _code_id(backend, coded)
    rows = lm.generate_batch(SOURCES, model=coded, max_new_tokens=6, logprobs=2,
                             target_lang=lang, manager=manager)
    start = backend.model.config.decoder_start_token_id
    for source, row in zip(SOURCES, rows, strict=True):
        single = lm.generate(source, model=coded, max_new_tokens=6, logprobs=2,
                             target_lang=lang, manager=manager)
        ids = [r.id for r in row.tokens]
        assert ids == [r.id for r in single.tokens] == _raw(backend, source, 6, code)
        assert row.text == single.text and row.params["target_lang"] == lang
        assert row.stats.new_tokens == 6 and code not in ids
        lp = _log_softmax(backend, _src(backend, source), [start, code, *ids])
        np.testing.assert_allclose([r.logprob for r in row.tokens],
                                   lp[torch.arange(1, 7), ids].numpy(), atol=1e-5)


def test_a_batch_refuses_what_it_cannot_share(coded, manager):
    import threading

    from llm_magic.generation import make_request

    backend = manager.backend(coded)
    lang = CODES[coded][0]
    requests = [make_request(SOURCE, max_new_tokens=2, target_lang=lang),
                make_request(SOURCE, max_new_tokens=2, target_lang="en_XX" if coded == "mbart"
                             else "en")]
    with pytest.raises(InvalidOptionError, match="share their options: give one target_lang"):
        backend.generate_batch(requests, threading.Event())


# -- a cell --------------------------------------------------------------------------------


def test_cells_with_target_lang_equal_the_python_calls(built):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    lm.load(str(built["mbart"]), name="mb", dtype="float32")
    try:
        assert {m.name: m.kind for m in lm.models()}["mb"] == "seq2seq"
        shell.run_cell_magic("llm", "mb --target-lang fr_XX -n 6 --logprobs 1", SOURCE)
        cell = shell.user_ns["_llm"]
        call = lm.generate(SOURCE, model="mb", max_new_tokens=6, logprobs=1, target_lang="fr_XX")
        assert cell.text == call.text and cell.params["target_lang"] == "fr_XX"
        assert [r.id for r in cell.tokens] == [r.id for r in call.tokens]
        shell.run_cell_magic("llm", "mb --batch --target-lang fr_XX -n 6 --logprobs 1",
                             "\n---\n".join(SOURCES))
        batch = shell.user_ns["_llm"]
        calls = lm.generate_batch(SOURCES, model="mb", max_new_tokens=6, logprobs=1,
                                  target_lang="fr_XX")
        assert [[r.id for r in g.tokens] for g in batch] == [[r.id for r in g.tokens]
                                                            for g in calls]
        assert [g.text for g in batch] == [g.text for g in calls]
        assert [r.id for r in batch[0].tokens] == [r.id for r in call.tokens]
        with pytest.raises(UsageError, match="not a language code of 'mb'") as info:
            shell.run_cell_magic("llm", "mb --target-lang xx_XX -n 2", SOURCE)
        assert "\n" not in str(info.value)
    finally:
        lm.unload("mb")
        lm.get_manager().last_generation = None
        shell.run_line_magic("unload_ext", "llm_magic")
        shell.user_ns.pop("_llm", None)


def test_a_conversation_forces_its_language_every_turn(coded, manager):
    """target_lang as a conversation's option: each turn's reply starts after the code, as
    transformers' forced_bos_token_id writes it from the whole transcript."""
    backend = manager.backend(coded)
    lang = CODES[coded][0]
    conv = lm.chat(model=coded, manager=manager, max_new_tokens=4, target_lang=lang,
                   logprobs=1)
    first = conv.say("import os")
    second = conv.say("class A:")
    source = f"User: import os\nAssistant:{first.text}\nUser: class A:\nAssistant:"
    assert list(second.prompt_ids) == _src(backend, source)
    assert [r.id for r in second.tokens] == _raw(backend, source, 4, _code_id(backend, coded))
    assert second.params["target_lang"] == lang
    with pytest.raises(InvalidOptionError, match="not a language code"):
        lm.chat(model=coded, manager=manager, target_lang="xx_YY").say("import os")

