"""Encoder–decoder attention (T5, BART, Marian): the encoder's, the decoder's and the
cross-attention, exact against transformers' own output_attentions of a teacher-forced
eager forward, from lm.attention, from a generation, from a cell; bad input refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _models import build_seq2seq as _build

import llm_magic as lm
from llm_magic.common.attention_seq2seq import Seq2SeqAttention
from llm_magic.errors import InvalidOptionError, NotAvailableError, PromptTooLongError

SOURCE = "def add(a, b): return a + b"
HALF = 2.0 ** -11  # half a float16 step at most, for weights in [0, 1]


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2s-attention")
    return {arch: _build(root / arch, arch) for arch in ("t5", "bart", "marian")}


@pytest.fixture(params=["t5", "bart", "marian"])
def model(request, seq2seq, manager):
    manager.load(str(seq2seq[request.param]), name=request.param, dtype="float32")
    return request.param


def _reference(backend, source: list[int], decoder: list[int]):
    """transformers' own weights: a teacher-forced forward with eager attention, float32."""
    m = backend.model
    before = m.config._attn_implementation
    m.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = m(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([decoder]),
                    output_attentions=True, use_cache=False)
    finally:
        m.set_attn_implementation(before)
    return {"encoder": [a[0].numpy() for a in out.encoder_attentions],
            "decoder": [a[0].numpy() for a in out.decoder_attentions],
            "cross": [a[0].numpy() for a in out.cross_attentions]}


def _float32_capture(backend, source, decoder):
    """The module's capture with its float16 step skipped: the float32 weights as captured."""
    from llm_magic.backends import _attention_seq2seq as cap

    real = torch.Tensor.to
    kept: list[np.ndarray] = []

    def spy(self, *args, **kwargs):
        if args and args[0] is torch.float16:
            kept.append(self.detach().float().cpu().numpy().copy())
        return real(self, *args, **kwargs)

    torch.Tensor.to = spy
    try:
        got = cap.capture(backend.model, backend.tokenizer, source, decoder, name="x",
                          max_tokens=1024)
    finally:
        torch.Tensor.to = real
    return got, kept


def test_three_kinds_exact_against_output_attentions(model, manager):
    backend = manager.backend(model)
    source = backend.tokenizer(SOURCE)["input_ids"]
    output = [5, 9, 17, 4, 30]
    att = lm.attention(SOURCE, model=model, target=output, manager=manager)
    assert isinstance(att, Seq2SeqAttention)
    start = backend.model.config.decoder_start_token_id
    ref = _reference(backend, source, [start, *output])
    n_src, n_out = len(source), len(output) + 1
    assert att.encoder.shape[2:] == (n_src, n_src) and att.decoder.shape[2:] == (n_out, n_out)
    assert att.cross.shape[2:] == (n_out, n_src)
    assert att.cross.labels[1:] == tuple(att.cross.labels[1:])
    assert att.cross.columns == att.encoder.labels
    for kind in ("encoder", "decoder", "cross"):
        amap = att[kind]
        assert amap.kind == kind and len(amap.layers) == len(ref[kind])
        for layer, want in enumerate(ref[kind]):
            assert amap.layers[layer].dtype == np.float16
            assert np.abs(amap.layers[layer].astype(np.float32) - want).max() <= HALF
            np.testing.assert_allclose(amap.head(layer, 0).sum(axis=1), 1, atol=5e-3)
    # The decoder's self-attention is causal: nothing above the diagonal.
    assert np.triu(att.decoder.head(0, 0), 1).max() == 0
    # float32, as captured, before the float16 step: within 1e-5.
    _, kept = _float32_capture(backend, source, [start, *output])
    flat = ref["encoder"] + [w for pair in zip(ref["decoder"], ref["cross"], strict=True)
                             for w in pair]
    assert len(kept) == len(flat)
    for got, want in zip(kept, flat, strict=True):
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5


def test_generation_capture_equals_lm_attention_of_its_output(model, manager):
    gen = lm.generate(SOURCE, model=model, max_new_tokens=6, logprobs=1, attention=True,
                      manager=manager)
    att = gen.attention
    assert isinstance(att, Seq2SeqAttention)
    ids = [r.id for r in gen.tokens]
    again = lm.attention(SOURCE, model=model, target=ids, manager=manager)
    from_gen = lm.attention(dataclasses.replace(gen, attention=None), manager=manager)
    for other in (again, from_gen):
        for kind in att.kinds:
            for a, b in zip(att[kind].layers, other[kind].layers, strict=True):
                assert np.array_equal(a, b)
    assert att.cross.shape[2] == len(ids) + 1
    assert lm.attention(gen, manager=manager) is att
    assert manager.last_attention is att
    layer, head, score = att.best_head()
    assert score == pytest.approx(float(att.cross.head(layer, head).max(axis=1).mean()), abs=1e-6)


def test_bad_input_is_refused(seq2seq, manager, tiny_gpt2):
    manager.load(str(seq2seq["bart"]), name="bart", dtype="float32")
    manager.load(str(tiny_gpt2), name="causal")
    with pytest.raises(InvalidOptionError, match="not an encoder–decoder"):
        lm.attention("hello there", model="causal", target="x", manager=manager)
    with pytest.raises(InvalidOptionError, match="needs the output"):
        lm.attention(SOURCE, model="bart", manager=manager)
    for empty in ("", "  ", []):
        with pytest.raises(InvalidOptionError, match="empty"):
            lm.attention(SOURCE, model="bart", target=empty, manager=manager)
    with pytest.raises(InvalidOptionError, match=r"past the cap of 4 tokens") as err:
        lm.attention(SOURCE, model="bart", target=[5, 6], max_tokens=4, manager=manager)
    assert "float16" in str(err.value) and "max_tokens=" in str(err.value)
    with pytest.raises(PromptTooLongError, match="decoder of 'bart' writes at most 63"):
        lm.attention(SOURCE, model="bart", target=[5] * 70, manager=manager)
    for hostile in (True, 3.5, [1, True], [float("nan")], {"a": 1}):
        with pytest.raises(InvalidOptionError, match="target must be a text or a list"):
            lm.attention(SOURCE, model="bart", target=hostile, manager=manager)
    with pytest.raises(InvalidOptionError, match="not in the vocabulary"):
        lm.attention(SOURCE, model="bart", target=[10 ** 9], manager=manager)
    gen = lm.generate(SOURCE, model="bart", max_new_tokens=3, manager=manager)
    with pytest.raises(NotAvailableError, match="logprobs=1"):
        lm.attention(gen, manager=manager)
    # generate refuses before it runs
    lm.attention_max_tokens(8)
    try:
        with pytest.raises(InvalidOptionError, match="attention cap of 8"):
            lm.generate(SOURCE, model="bart", max_new_tokens=3, attention=True, manager=manager)
    finally:
        lm.attention_max_tokens(1024)


def test_a_causal_generation_is_looked_at_whole(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="causal", dtype="float32")
    gen = lm.generate("hello there", model="causal", max_new_tokens=4, logprobs=1,
                      attention=True, manager=manager)
    again = lm.attention(dataclasses.replace(gen, attention=None), manager=manager)
    assert again.prompt_tokens == len(gen.prompt_ids) and again.kind == "causal"
    for a, b in zip(gen.attention.layers, again.layers, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(InvalidOptionError, match="drop target="):
        lm.attention(gen, target="x", manager=manager)


def test_snapshot_shows_the_best_aligned_cross_head(seq2seq, manager):
    manager.load(str(seq2seq["marian"]), name="marian", dtype="float32")
    att = lm.attention(SOURCE, model="marian", target="x = 1 <b>", manager=manager)
    layer, head, score = att.best_head()
    html = att.to_html()
    assert f"layer {layer}, head {head}" in html
    assert "cross-attention: output × source" in html and f"{score:.2f}" in html
    assert "rows: output token (query), columns: source token (key)" in html
    assert "<b>" not in html
    view = att.widget()
    assert (view.kind, view.layer, view.head) == ("cross", layer, head)
    data = view._repr_mimebundle_()[0]
    assert f"layer {layer}, head {head}" in data["text/html"]
    assert "best-aligned" in data["text/html"]
    assert len(view.data) == 2 * att.cross.shape[2] * att.cross.shape[3]
    view.kind = "encoder"
    assert view.size == view.key_size or view.key_size == 0
    assert len(view.data) == 2 * att.encoder.shape[2] ** 2 and view.key_tokens == []
    assert view.row_axis == "source"
    with pytest.raises(Exception, match="kind must be one of"):
        view.kind = "bogus"
    view.kind = "decoder"
    view.head = 1
    assert np.frombuffer(view.data, "<f2").tolist() == att.decoder.layers[0][1].ravel().tolist()
    view.kind = "cross"
    assert view.key_tokens == list(att.encoder.labels)
    assert att.to_png()[:4] == b"\x89PNG"
    # Too many tokens to label the axes: the ranges are named, and both token lists shown.
    long = lm.attention("a b c d " * 12, model="marian", target=[7] * 50, manager=manager)
    _, _, rows, cols = long.cross.shape
    html = long.to_html()
    assert (f"rows: output tokens (query) 0 to {rows - 1}, columns: source tokens (key) 0 to "
            f"{cols - 1}") in html
    assert f"output tokens 0 to {rows - 1}:" in html and f"source tokens 0 to {cols - 1}:" in html


def test_attention_cell_on_a_seq2seq_model(seq2seq, manager):
    from IPython.core.interactiveshell import InteractiveShell

    from llm_magic.analysis.attention import last_attention

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    lm.load(str(seq2seq["t5"]), name="t5s", dtype="float32")
    try:
        result = shell.run_cell("%%llm t5s --attention --max-new-tokens 4\n" + SOURCE)
        assert result.error_in_exec is None
        att = last_attention()
        assert isinstance(att, Seq2SeqAttention) and att.model == "t5s"
        assert shell.run_cell("%llm attention").error_in_exec is None
    finally:
        lm.unload("t5s")
