"""An encoder–decoder's attention view in JupyterLab and Notebook 7, in a real browser.

A tiny random Marian model (the shared builder of test_seq2seq) is looked at with
``lm.attention(source, target=...)`` and through a ``%%llm --attention`` cell: the
view opens on the best-aligned cross-attention head, its axes are the output (rows)
and the source (columns), a selector switches to the encoder's and the decoder's
self-attention and back, clicking an output token shades the source tokens it read,
markup in a token is text, and the view fits the output area at 1280 and 900 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _browser import CANVAS_PIXELS_JS
from _models import build_seq2seq as _build
from test_attention_lab import FITS_JS
from test_lens_lab import NOTEBOOK7_OWN

SOURCE = "def add(a, b): return a + b"
TARGET = "x = a <b>b</b>"
VIEW = ".llm-attn"
SHOTS = Path("/tmp/shots")


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("s2s-lab") / "marian", "marian")


def _drawn(view, key: str, kind: str = "") -> None:
    """Wait until the view shows head ``key`` of the kind whose title holds ``kind``."""
    canvas = view.locator("canvas.llm-attn-heatmap")
    title = view.locator(".llm-attn-title")
    view.page.wait_for_function(
        "([c, t, key, kind]) => c.dataset.drawn === key && t.textContent.includes(kind)",
        arg=[canvas.element_handle(), title.element_handle(), key, kind])


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_three_kinds_axes_selector_and_width(open_notebook, marian, app):
    nb = open_notebook([
        f"import json\nimport llm_magic as lm\nlm.load({str(marian)!r}, name='mt', "
        "dtype='float32');",
        f"att = lm.attention({SOURCE!r}, model='mt', target={TARGET!r})\n"
        "print(json.dumps([*att.best_head()[:2], att.encoder.labels, att.cross.labels]))\natt",
        "%load_ext llm_magic",
        f"%%llm mt -n 5 --attention\n{SOURCE}",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    out = nb.run_and_wait(1)
    layer, head, source, output = json.loads(out[0].splitlines()[0])
    view = nb.cell(1).locator(VIEW)
    view.wait_for()
    _drawn(view, f"{layer}:{head}", "cross-attention")
    canvas = view.locator("canvas.llm-attn-heatmap")
    assert nb.page.evaluate(CANVAS_PIXELS_JS, f"{VIEW} canvas.llm-attn-heatmap")["coloured"] > 0

    # Cross-attention first: rows = output, columns = source, labelled as such.
    kind = view.locator("select.llm-attn-kind")
    assert kind.is_visible() and kind.input_value() == "cross"
    assert kind.locator("option").all_text_contents() == [
        "encoder self-attention (source × source)", "decoder self-attention (output × output)",
        "cross-attention (output × source)"]
    title = view.locator(".llm-attn-title").text_content() or ""
    assert "cross-attention: output × source" in title
    assert f"{len(output)} output × {len(source)} source tokens" in title
    assert view.locator(".llm-attn-rows .llm-attn-label").all_text_contents() == output
    assert view.locator(".llm-attn-cols .llm-attn-label").all_text_contents() == source
    assert view.locator(".llm-attn-axes").text_content() == (
        "rows: output token (query), columns: source token (key)")
    box = canvas.bounding_box()
    assert box is not None
    assert abs(box["width"] / box["height"] - len(source) / len(output)) < 0.1
    assert "<b>" in "".join(view.locator(".llm-attn-token").all_text_contents())
    assert nb.page.evaluate(f"document.querySelectorAll('{VIEW} b').length") == 0

    # Hover names an output and a source token.
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    nb.page.mouse.move(box["x"] + box["width"] * (2.5 / len(source)),
                       box["y"] + box["height"] * (1.5 / len(output)))
    hover = view.locator(".llm-attn-hover")
    nb.page.wait_for_function("h => !!h.dataset.value", arg=hover.element_handle())
    assert hover.inner_text().startswith(f'output 1 "{output[1]}" → source 2 "{source[2]}"')

    # Clicking an output token shades the source tokens it read, ink chosen on the shade.
    view.locator(".llm-attn-tokens:not(.llm-attn-keytokens) .llm-attn-token").nth(2).click()
    shaded = view.locator(".llm-attn-keytokens .llm-attn-token[data-weight]")
    shaded.first.wait_for()
    assert shaded.count() == len(source)
    inks = {s.evaluate("s => getComputedStyle(s).color") for s in shaded.all()}
    assert inks <= {"rgb(17, 17, 17)", "rgb(255, 255, 255)", "rgb(0, 0, 0)"}, inks
    for width in (1280, 900):
        nb.page.set_viewport_size({"width": width, "height": 900})
        nb.page.wait_for_timeout(400)
        fit = view.evaluate(FITS_JS)
        assert fit["inside"] and fit["scroll"] and fit["outside"] == [], (width, fit)
        SHOTS.mkdir(parents=True, exist_ok=True)
        view.screenshot(path=str(SHOTS / f"seq2seq-attention-{app}-cross-{width}.png"))

    # The selector switches kinds: the encoder's map is source × source, the strip one.
    kind.select_option("encoder")
    _drawn(view, "0:0", "encoder self-attention")
    assert view.locator(".llm-attn-rows .llm-attn-label").all_text_contents() == source
    assert view.locator(".llm-attn-cols .llm-attn-label").all_text_contents() == source
    assert not view.locator(".llm-attn-keytokens").is_visible()
    assert "encoder self-attention: source × source" in (
        view.locator(".llm-attn-title").text_content() or "")
    view.screenshot(path=str(SHOTS / f"seq2seq-attention-{app}-encoder-900.png"))
    kind.select_option("decoder")
    _drawn(view, "0:0", "decoder self-attention")
    view.locator("select.llm-attn-head").select_option("1")
    _drawn(view, "0:1", "decoder self-attention")
    assert view.locator(".llm-attn-rows .llm-attn-label").all_text_contents() == output
    kind.select_option("cross")
    _drawn(view, f"{layer}:{head}", "cross-attention")
    assert view.locator(".llm-attn-cols .llm-attn-label").all_text_contents() == source

    # A generation's cell shows the same view, on its own output.
    nb.page.set_viewport_size({"width": 1280, "height": 900})
    nb.run_and_wait(2)
    nb.run_and_wait(3)
    cell = nb.cell(3).locator(VIEW)
    cell.wait_for()
    assert cell.locator("select.llm-attn-kind").input_value() == "cross"
    assert cell.locator(".llm-attn-keytokens .llm-attn-token").count() == len(source)
    nb.cell(3).screenshot(path=str(SHOTS / f"seq2seq-attention-{app}-cell-1280.png"))
    assert nb.outside_requests() == [], "the page fetched from outside loopback"
    # Notebook 7's own page errors (its file browser) are not the view's.
    assert [e for e in nb.errors if not (app == "notebook" and e in NOTEBOOK7_OWN)] == [], \
        nb.errors
