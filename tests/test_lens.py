"""The logit lens, LensMap and its widget, checked against an independent computation.

The reference here never calls llm_magic's lens: it takes transformers' own
``output_hidden_states``, applies the final norm by hand from its weights
(GPT-2's LayerNorm, Llama's RMSNorm) in float64, multiplies by the output
embedding, and uses the model's real logits for the last row. Every number a
LensMap holds is compared with that: the top-k, the final prediction's
probability and rank, the entropy and the KL divergence. Tiny random GPT-2 and
Llama models and the demo.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import llm_magic as lm
from llm_magic.analysis.lens import METRICS, LensMap, default_stride, logit_lens
from llm_magic.backends import _lens
from llm_magic.backends.base import Backend
from llm_magic.common.visible import visible
from llm_magic.errors import InvalidOptionError, NotAvailableError
from llm_magic.generation import generate
from llm_magic.manager import ModelManager

TEXT = "The import statement <script>alert(1)</script> binds\n a name to a module."
PROB_TOL = 1e-5
NATS_TOL = 1e-4
MODELS = ("gpt2", "llama", "demo")


@pytest.fixture(scope="module")
def models(tiny_gpt2, tiny_llama):
    """One manager for the module with the two tiny models and the demo."""
    m = ModelManager()
    m.load(str(tiny_gpt2), name="gpt2")
    m.load(str(tiny_llama), name="llama")
    m.load("demo", name="demo")
    yield m
    for name in m.names():
        m.unload(name)


@pytest.fixture(scope="module")
def demo_lens(models) -> LensMap:
    return logit_lens(TEXT, model="demo", manager=models)


# -- the independent reference -------------------------------------------------------


def _norm_by_hand(model) -> callable:
    """The final norm written out from its weights, in float64."""
    config = model.config
    if config.model_type == "gpt2":
        ln = model.transformer.ln_f
        weight, bias, eps = ln.weight.double(), ln.bias.double(), config.layer_norm_epsilon

        def norm(h):
            h = h.double()
            mean = h.mean(-1, keepdim=True)
            var = ((h - mean) ** 2).mean(-1, keepdim=True)
            return (h - mean) / torch.sqrt(var + eps) * weight + bias
    else:
        weight, eps = model.model.norm.weight.double(), config.rms_norm_eps

        def norm(h):
            h = h.double()
            return h * torch.rsqrt((h * h).mean(-1, keepdim=True) + eps) * weight
    return norm


@torch.no_grad()
def reference(models: ModelManager, name: str, ids: list[int]) -> dict[str, torch.Tensor]:
    """float64 [rows, T, vocab] lens logits and every metric, computed the plain way."""
    model = models.backend(name).model
    norm = _norm_by_hand(model)
    head = model.get_output_embeddings().weight.double()
    blocks = model.transformer.h if model.config.model_type == "gpt2" else model.model.layers
    raw = {}
    hook = blocks[-1].register_forward_hook(lambda _m, _a, out: raw.setdefault("last", out))
    try:
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    finally:
        hook.remove()
    real = out.logits[0].double()
    # The hand computation is right: lens of the last block's raw output = the real logits,
    # and normalising the (already normed) last hidden state again would not be.
    assert torch.allclose(norm(raw["last"][0]) @ head.T, real, atol=1e-4)
    if model.config.model_type == "gpt2":
        assert not torch.allclose(norm(out.hidden_states[-1][0]) @ head.T, real, atol=1e-3)
    logits = torch.stack([norm(h[0]) @ head.T for h in out.hidden_states[:-1]] + [real])
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    final = logits[-1].argmax(-1)
    index = final.expand(logits.shape[0], -1).unsqueeze(-1)
    return {
        "logits": logits, "p": p, "final": final,
        "final_prob": p.gather(-1, index)[..., 0],
        "final_logit": logits.gather(-1, index)[..., 0],
        "entropy": -(p * logp).sum(-1),
        "kl": (p[-1] * (logp[-1] - logp)).sum(-1),
    }


def check_against(lens: LensMap, ref: dict[str, torch.Tensor]) -> None:
    rows, t, k = lens.shape
    assert ref["logits"].shape[:2] == (rows, t)
    assert lens.predicted == tuple(ref["final"].tolist())
    np.testing.assert_allclose(lens.final_prob, ref["final_prob"].numpy(), atol=PROB_TOL)
    np.testing.assert_allclose(lens.entropy, ref["entropy"].numpy(), atol=NATS_TOL)
    np.testing.assert_allclose(lens.kl, ref["kl"].numpy(), atol=NATS_TOL)
    assert np.all(lens.kl[-1] == 0)
    top = torch.topk(ref["p"], k, dim=-1).values.numpy()
    np.testing.assert_allclose(lens.probs, top, atol=PROB_TOL)
    for r in range(rows):
        for pos in range(t):
            # Each id's own reference probability (ties may order the ids either way).
            p = ref["p"][r, pos, lens.ids[r, pos].astype(np.int64)].numpy()
            np.testing.assert_allclose(lens.probs[r, pos], p, atol=PROB_TOL)
            row = ref["logits"][r, pos]
            at = float(ref["final_logit"][r, pos])
            low, high = int((row > at + 1e-5).sum()) + 1, int((row > at - 1e-5).sum())
            assert low <= lens.final_rank[r, pos] <= max(low, high), (r, pos)


# -- exactness -------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_lens_matches_a_hand_computation(models, name):
    lens = logit_lens(TEXT, model=name, top=5, manager=models)
    ids = models.backend(name).tokenizer(TEXT)["input_ids"]
    assert lens.input_ids == tuple(ids)
    check_against(lens, reference(models, name, ids))
    blocks = models.backend(name).model.config.num_hidden_layers
    assert lens.layers == ("embeddings", *(f"block {i}" for i in range(1, blocks + 1)))
    assert lens.check <= 1e-4
    assert lens.ids.dtype == np.int32 and lens.probs.dtype == np.float32
    assert lens.final_rank[-1].tolist() == [1] * len(ids)


def test_position_t_predicts_token_t_plus_one(models, demo_lens):
    """No off-by-one: the cell at position t is the prediction after tokens 0..t."""
    model = models.backend("demo").model
    ids = list(demo_lens.input_ids)
    for t in (0, 3, len(ids) // 2, len(ids) - 1):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids[: t + 1]]), use_cache=False).logits
        assert int(logits[0, -1].argmax()) == demo_lens.predicted[t], t
    assert demo_lens.next_ids == (*ids[1:], None)
    assert demo_lens.correct == tuple(
        p == n for p, n in zip(demo_lens.predicted, demo_lens.next_ids, strict=True))
    # The demo knows this text: its final prediction is right somewhere, never past the end.
    known = logit_lens("The import statement is used to import modules.", model="demo",
                       manager=models)
    assert any(known.correct) and not known.correct[-1]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_generation_is_read_with_its_own_ids(models, name):
    g = generate("Hello there", model=name, max_new_tokens=6, logprobs=2, manager=models)
    lens = logit_lens(g, manager=models)
    assert lens.input_ids == (*g.prompt_ids, *(r.id for r in g.tokens))
    assert lens.prompt_tokens == len(g.prompt_ids) and lens.model == name
    check_against(lens, reference(models, name, list(lens.input_ids)))
    # Without token ids, the prompt and text are read again; another model reads the text.
    plain = generate("Hello there", model=name, max_new_tokens=6, manager=models)
    again = logit_lens(plain, manager=models)
    tokenizer = models.backend(name).tokenizer
    assert again.input_ids == tuple(tokenizer(plain.prompt + plain.text)["input_ids"])
    assert again.prompt_tokens is None
    other = logit_lens(g, model="demo", manager=models)
    assert other.model == "demo" and other.prompt_tokens is None


def test_never_a_layers_by_vocabulary_array(models):
    """Every logits array is one chunk of positions; the model's own head sees two positions."""
    backend = models.backend("demo")
    head = backend.model.get_output_embeddings()
    vocab = head.weight.shape[0]
    seen: list[tuple[int, ...]] = []
    hook = head.register_forward_hook(lambda _m, _a, out: seen.append(tuple(out.shape)))
    try:
        lens = logit_lens("word " * 200, model="demo", manager=models)
    finally:
        hook.remove()
    rows, t, _ = lens.shape
    assert t > 100
    chunk = _lens._chunk_size(head.weight.nbytes, vocab)
    assert chunk == 64 and t > 2 * chunk  # several chunks
    assert seen[0] == (1, 2, vocab)  # the forward pass: the checked positions only
    assert all(len(s) == 2 and s[0] <= chunk and s[1] == vocab for s in seen[1:])
    # The self-check (the lens and the last row at two positions), then each row once.
    assert sum(s[0] for s in seen[1:]) == 4 + rows * t


def test_the_cap_refuses_with_what_it_would_take(models):
    with pytest.raises(InvalidOptionError, match=r"past the logit lens cap of 4: .* KB in "
                                                 r"the kernel .*max_tokens="):
        logit_lens(TEXT, model="gpt2", max_tokens=4, manager=models)
    n = len(models.backend("gpt2").tokenizer(TEXT)["input_ids"])
    assert logit_lens(TEXT, model="gpt2", max_tokens=n, manager=models).shape[1] == n


def test_an_architecture_without_a_final_norm_it_knows_is_refused(models, monkeypatch):
    monkeypatch.setattr(_lens, "_NORMS", ())
    with pytest.raises(NotAvailableError, match="^Cannot find the final norm of "
                                                "GPT2LMHeadModel") as info:
        logit_lens(TEXT, model="gpt2", manager=models)
    assert "\n" not in str(info.value)


def test_a_lens_that_does_not_reproduce_the_logits_is_refused(models, monkeypatch):
    # A scale the model's forward does not apply, and a wrong norm: both caught.
    config = models.backend("llama").model.config
    monkeypatch.setattr(config, "logit_scale", 2.0, raising=False)
    with pytest.raises(NotAvailableError, match="logit lens of LlamaForCausalLM does not "
                                                "reproduce the model's own logits"):
        logit_lens(TEXT, model="llama", manager=models)
    monkeypatch.undo()
    monkeypatch.setattr(_lens, "final_norm", lambda model: torch.nn.Identity())
    with pytest.raises(NotAvailableError, match="refused rather than drawn wrong"):
        logit_lens(TEXT, model="gpt2", manager=models)


def test_a_half_precision_model_checks_itself_in_its_own_rounding(tiny_llama):
    m = ModelManager()
    m.load(str(tiny_llama), name="half", dtype="bfloat16")
    try:
        lens = logit_lens(TEXT, model="half", manager=m)
        model = m.backend("half").model
        assert model.dtype == torch.bfloat16
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([list(lens.input_ids)])).logits[0].float()
        p = torch.softmax(logits, -1)
        best = p.max(-1).values.numpy()
        np.testing.assert_allclose(lens.probs[-1, :, 0], best, atol=PROB_TOL)
        assert np.isfinite(lens.entropy).all() and (lens.kl >= 0).all()
    finally:
        m.unload("half")


@pytest.mark.parametrize("bad", [0, 21, True, 2.5])
def test_bad_arguments_are_refused(models, bad):
    with pytest.raises(InvalidOptionError, match="top is how many tokens"):
        logit_lens(TEXT, model="gpt2", top=bad, manager=models)
    with pytest.raises(InvalidOptionError, match="max_tokens"):
        logit_lens(TEXT, model="gpt2", max_tokens=0, manager=models)
    with pytest.raises(InvalidOptionError, match="empty"):
        logit_lens("  ", model="gpt2", manager=models)
    with pytest.raises(InvalidOptionError, match="a text or a Generation"):
        logit_lens(object(), model="gpt2", manager=models)


def test_a_backend_without_hidden_states_has_no_lens():
    served = SimpleNamespace(kind="openai")
    with pytest.raises(NotAvailableError, match="'openai' backend has no logit lens"):
        Backend.logit_lens(served, "text", top=5, max_tokens=10)  # type: ignore[arg-type]


# -- LensMap ------------------------------------------------------------------------------


def test_top_shade_and_rows(demo_lens):
    rows, t, k = demo_lens.shape
    top = demo_lens.top(-1, 2)
    assert len(top) == k and top[0][0] == demo_lens.predicted[2]
    assert [p for _, _, p in top] == sorted((p for _, _, p in top), reverse=True)
    assert top[0][1] == demo_lens.vocab[top[0][0]]
    for metric in ("probability", "rank", "entropy", "kl"):
        shade = demo_lens.shade(metric)
        assert shade.shape == (rows, t) and 0 <= shade.min() and shade.max() <= 1
    assert np.all(demo_lens.shade("rank")[-1] == 1) and np.all(demo_lens.shade("kl")[-1] == 0)
    np.testing.assert_allclose(demo_lens.shade("probability"), demo_lens.final_prob)
    with pytest.raises(InvalidOptionError, match="metric must be one of"):
        demo_lens.shade("logit")
    with pytest.raises(InvalidOptionError, match="row must be"):
        demo_lens.top(rows, 0)
    assert demo_lens.rows_shown(1) == list(range(rows))
    assert demo_lens.rows_shown(3) == [0, 3, 4]
    assert default_stride(5) == 1 and default_stride(13) == 1 and default_stride(33) == 2
    assert "LensMap of 'demo'" in repr(demo_lens)
    assert demo_lens.nbytes == rows * t * (k * 8 + 16)


def test_png_of_the_grid(demo_lens, tmp_path):
    png = demo_lens.to_png(tmp_path / "lens.png", metric="kl", stride=2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "lens.png").read_bytes() == png
    rows, t, _ = demo_lens.shape
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert height == 12 * len(demo_lens.rows_shown(2)) and width == t * min(24, 1536 // t)


# -- the widget ---------------------------------------------------------------------------


def _state(widget) -> tuple[dict, dict[str, int]]:
    from ipywidgets.widgets.widget import _remove_buffers

    state, paths, buffers = _remove_buffers(widget.get_state())
    return state, {".".join(map(str, p)): memoryview(b).nbytes for p, b in
                   zip(paths, buffers, strict=True)}


def test_widget_sends_the_lens_as_binary_buffers(demo_lens):
    view = demo_lens.widget()
    rows, t, k = demo_lens.shape
    state, buffers = _state(view)
    assert buffers["top_ids"] == rows * t * k * 4 and buffers["top_probs"] == rows * t * k * 2
    assert buffers["final_rank"] == rows * t * 4 and buffers["kl"] == rows * t * 2
    assert state["tokens"] == list(demo_lens.tokens) and state["layers"] == demo_lens.row_names
    assert demo_lens.row_names == [*demo_lens.layers[:-1], f"{demo_lens.layers[-1]} (output)"]
    assert set(state["scales"]) == set(METRICS)
    ids = np.frombuffer(view.top_ids, "<i4").reshape(rows, t, k)
    assert np.array_equal(ids, demo_lens.ids)
    probs = np.frombuffer(view.top_probs, "<f2").reshape(rows, t, k)
    np.testing.assert_allclose(probs, demo_lens.probs, atol=1e-3)
    known = np.frombuffer(view.vocab_ids, "<i4").tolist()
    assert set(ids.reshape(-1).tolist()) <= set(known)
    assert dict(zip(known, view.vocab_texts, strict=True)) == demo_lens.vocab
    assert np.frombuffer(view.correct, "u1").tolist() == list(map(int, demo_lens.correct))
    assert view.payload_bytes == sum(buffers.values())


def test_widget_metric_and_stride(demo_lens):
    from traitlets import TraitError

    view = demo_lens.widget(metric="entropy", stride=2)
    assert (view.metric, view.stride) == ("entropy", 2)
    with pytest.raises(TraitError, match="metric must be one of"):
        view.metric = "logit"
    view.stride = 99
    assert view.stride == demo_lens.shape[0] - 1
    with pytest.raises(InvalidOptionError, match="metric must be one of"):
        demo_lens.widget(metric="logit")


def test_the_payload_of_a_long_lens_stays_small(models):
    lens = logit_lens("word " * 250, model="demo", manager=models)
    rows, t, k = lens.shape
    view = lens.widget()
    assert view.payload_bytes < 80_000
    data, metadata = lens._repr_mimebundle_()
    assert len(json.dumps([data, metadata])) < 200_000


def test_mimebundle_has_the_view_a_png_and_escaped_html(demo_lens):
    data, _ = demo_lens._repr_mimebundle_()
    assert "model_id" in data["application/vnd.jupyter.widget-view+json"]
    assert base64.b64decode(data["image/png"])[:4] == b"\x89PNG"
    assert data["text/plain"] == repr(demo_lens)
    html = data["text/html"]
    assert "<script" not in html and "&lt;" in html and "scri" in html
    assert "data:image/png;base64," in html and "block 4" in html and "↵" in html


def test_view_sets_text_never_markup():
    js = (Path(lm.__file__).parent / "widgets" / "static" / "lens.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "outerHTML" not in js
    assert "textContent" in js
    assert "http://" not in js and "https://" not in js and "import " not in js


def test_the_public_call_on_the_demo():
    from llm_magic.manager import get_manager

    manager = get_manager()
    loaded = manager.is_loaded("demo")
    lm.load("demo")
    try:
        lens = lm.logit_lens("The import statement binds a name.", model="demo", top=3)
        assert isinstance(lens, lm.LensMap) and lens.shape[2] == 3
        g = lm.generate("The import statement", model="demo", max_new_tokens=4, logprobs=1)
        assert lm.logit_lens(g).prompt_tokens == len(g.prompt_ids)
    finally:
        if not loaded:
            lm.unload("demo")


@pytest.mark.parametrize("vocab", [512, 1536, 1617, 4096, 50257])
def test_two_stage_top_k_is_torch_topk(vocab):
    """The lens's top-k (two stages from 1,536 columns) gives torch.topk's values and ids;
    the largest logit in the columns past the last whole group of 64 is found too."""
    torch.manual_seed(0)
    for k in (1, 5, 20):
        x = torch.randn(9, vocab) * 4
        x[0, -1] = 100.0
        x[1, :3] = 50.0  # three tied in one group: any order of their ids
        values, ids = _lens._topk(x, k)
        expected_values, expected_ids = torch.topk(x, k)
        assert torch.equal(values, expected_values)
        assert torch.equal(x.gather(1, ids), values)
        assert all(len(set(row)) == k for row in ids.tolist())
        assert torch.equal(ids[2:], expected_ids[2:]) and ids[0, 0] == vocab - 1


# -- a generation whose model was unloaded ------------------------------------------------


def test_an_unloaded_alias_is_not_taken_for_a_hub_id(tiny_gpt2, manager):
    """A generation of a model loaded from a folder under an alias, unloaded since: the lens
    (and score, attention, given that name) says the model is not loaded, where it came from
    and how to load it again, instead of looking the alias up on the hub."""
    from llm_magic.analysis.attention import attention
    from llm_magic.analysis.tokens import score
    from llm_magic.errors import ModelNotLoadedError

    manager.load(str(tiny_gpt2), name="mine")
    g = generate("Hello there", model="mine", max_new_tokens=4, logprobs=1, manager=manager)
    manager.unload("mine")
    load = f"lm.load({str(tiny_gpt2)!r}, name='mine')"
    with pytest.raises(ModelNotLoadedError) as info:
        logit_lens(g, manager=manager)
    message = str(info.value)
    ran = f"Generation {g.id} ran on" if g.id is not None else "The generation ran on"
    assert message.startswith(f"{ran} 'mine', which is not loaded: it was loaded from "
                              f"{str(tiny_gpt2)!r} and has been unloaded since.")
    assert load in message and "--as mine" in message
    assert "download" not in message and "\n" not in message
    for call in (lambda: score("Hello there", model="mine", manager=manager),
                 lambda: attention("Hello there", model="mine", manager=manager)):
        with pytest.raises(ModelNotLoadedError, match=r"^Model 'mine' is not loaded: it was "
                                                      r"loaded from .* Load it again with "
                                                      r"lm\.load\("):
            call()
    assert manager.names() == []
    # Loaded again as the message says, the generation is read with its own ids.
    manager.load(str(tiny_gpt2), name="mine")
    lens = logit_lens(g, manager=manager)
    assert lens.model == "mine" and lens.input_ids == (*g.prompt_ids, *(r.id for r in g.tokens))


def test_a_name_that_is_its_own_source_is_loaded_again(manager):
    """"demo" loaded as "demo": loading the name loads the same model, so it still does."""
    manager.load("demo")
    g = generate("The import statement", model="demo", max_new_tokens=3, manager=manager)
    manager.unload("demo")
    assert logit_lens(g, manager=manager).model == "demo"
    assert manager.is_loaded("demo")


# -- scales and the static snapshot (issue 27) ------------------------------------------------


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_scales_show_the_blocks_and_say_their_units(demo_lens):
    rows, t, _ = demo_lens.shape
    kl = demo_lens.scale("kl")
    # KL is clipped at the blocks' 95th percentile: the embeddings row no longer takes the
    # whole scale, so the blocks are not all white; the caption says so, in nats.
    assert kl.dark == pytest.approx(float(np.percentile(demo_lens.kl[1:-1], 95)))
    assert demo_lens.kl[0].max() > kl.dark
    assert float(np.median(demo_lens.shade("kl")[1:-1])) > 0.15
    assert "nats" in kl.caption and "95th percentile of blocks 1 to 3" in kl.caption
    assert f"the grid's largest is {demo_lens.kl.max():.1f}" in kl.caption
    # Rank: log scale from rank 1 (darkest) to the blocks' 99th percentile: spread, not navy.
    rank = demo_lens.scale("rank")
    assert rank.log and rank.dark == 1 and rank.light >= 10 and "log scale" in rank.caption
    assert float(np.mean(demo_lens.shade("rank")[1:-1] > 0.9)) < 0.8
    entropy = demo_lens.scale("entropy")
    assert "nats" in entropy.caption and entropy.dark == pytest.approx(
        float(np.percentile(demo_lens.entropy, 95)))
    assert demo_lens.scale("probability").caption.endswith("0 to 1")
    for metric in METRICS:
        scale = demo_lens.scale(metric)
        marks = [at for at, _ in scale.ticks]
        assert marks == sorted(marks) and 0 <= marks[0] and marks[-1] <= 1 and len(marks) >= 2
    # The view shades and captions with the same scales.
    assert demo_lens.widget().scales == {m: demo_lens.scale(m).as_dict() for m in METRICS}


def test_ink_on_every_shade_is_the_one_of_higher_contrast():
    from llm_magic.common import heatmap

    def contrast(a, b):
        la, lb = sorted((heatmap.luminance(a), heatmap.luminance(b)), reverse=True)
        return (la + 0.05) / (lb + 0.05)

    inks = {"#fff": (255, 255, 255), "#000": (0, 0, 0)}
    for level in range(255):
        bg = heatmap.colour(level)
        chosen = heatmap.ink(bg)
        other = "#000" if chosen == "#fff" else "#fff"
        assert contrast(bg, inks[chosen]) >= contrast(bg, inks[other]), level
        assert contrast(bg, inks[chosen]) >= 4.5, level  # WCAG AA on every shade
    assert heatmap.ink(heatmap.colour(0)) == "#000" and heatmap.ink(heatmap.colour(254)) == "#fff"


def test_snapshot_is_labelled_left_aligned_with_its_colour_bar(demo_lens):
    from html import escape

    from llm_magic.common import heatmap

    html = demo_lens.to_html(metric="kl")
    # Rows by name, the output on top and the embeddings at the bottom.
    at = [html.index(f">{name}</th>") for name in reversed(demo_lens.row_names)]
    assert at == sorted(at) and demo_lens.row_names[-1] == "block 4 (output)"
    # The legend: what darker means, and the colour bar with the scale's caption and ticks.
    assert "llm-magic-colourbar" in html and escape(demo_lens.scale("kl").caption) in html
    assert "rows: layers, the output on top" in html
    # Left-aligned, whatever the notebook's own table style says.
    assert html.count("text-align:left") > 10
    assert "<table style='border-collapse:collapse;margin:0" in html
    # Text on every shaded cell in the ink of higher contrast (the view's inkOn).
    cells = re.findall(r"background:(#[0-9a-f]{6});color:(#[0-9a-f]{3,6})", html)
    assert len(cells) == demo_lens.shape[0] * demo_lens.shape[1]
    assert {fg for _, fg in cells} == {"#fff", "#000"}
    assert all(fg == heatmap.ink(_rgb(bg)) for bg, fg in cells)
    # Every token whole; no unlabelled picture above a table that shows every position.
    for token in demo_lens.tokens:
        assert escape(visible(token)) in html
    assert "…" not in html and "every position" not in html


def test_a_long_lens_snapshot_labels_its_overview(models):
    lens = logit_lens("word " * 60, model="demo", manager=models)
    html = lens.to_html()
    rows, t, _ = lens.shape
    assert "logit lens grid, every position" in html
    assert f"positions 0 to {t - 1}" in html and "the table below shows the first 48" in html
    overview = html[:html.index("logit lens grid, every position")]
    assert all(f">{name}</div>" in overview for name in lens.row_names)
