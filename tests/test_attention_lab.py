"""The attention view in JupyterLab, driven in a real browser (the shared helper).

A ``jupyter lab`` server on 127.0.0.1 and Debian's Chromium show the anywidget
view of a real capture: the heatmap is drawn, hovering reads a weight,
switching heads redraws with the new head's bytes from the kernel, a markup
token shows as text, clicking a token shades what it attends to, a thumbnail
opens its head, and the page asks nothing of any host but loopback.
"""

from __future__ import annotations

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
