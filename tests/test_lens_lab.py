"""The logit lens view in JupyterLab and Notebook 7, driven in Chromium.

On the shared helper (``_browser.py``): a notebook computes the demo's lens of a
text full of markup and prints the LensMap's numbers; the page must draw the
grid, show every token as text (the next tokens along the top, starred where
the final prediction is right; the inputs along the bottom), show on hover and
on keyboard focus exactly the top-k the LensMap holds, redraw when the metric
or the layer stride changes (and tell the kernel), and ask nothing of any host
but loopback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from _browser import CANVAS_PIXELS_JS

VIEW = ".llm-lens"
GRID = f"{VIEW} canvas.llm-lens-grid"
TEXT = ("The import statement <img src=x onerror=\"window.__xss='img'\"> binds "
        "<script>window.__xss='s'</script>\ta name.")
SHOWN = {"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}

DUMP = '''import json
rows, t, k = lens.shape
print(json.dumps({"layers": lens.row_names, "tokens": lens.tokens, "correct": lens.correct,
                  "top": [[lens.top(r, p) for p in range(t)] for r in range(rows)]}))'''

# The hover panel as the page shows it.
PANEL = """root => {
  const hover = root.querySelector('.llm-lens-hover');
  return {row: hover.dataset.row, pos: hover.dataset.pos,
          where: (hover.querySelector('.llm-lens-where') || {}).textContent,
          items: Array.from(hover.querySelectorAll('.llm-lens-top-item')).map(li => ({
            id: li.dataset.id, prob: li.dataset.prob,
            text: li.querySelector('.llm-lens-top-text').textContent}))};
}"""

# Notebook 7 raises these on its own page, with or without any view of llm_magic.
NOTEBOOK7_OWN = ("Cannot read properties of undefined (reading 'schema')",
                 "Command 'filebrowser:open-path' not registered.")


def visible(text: str) -> str:
    return "".join(SHOWN.get(ch, ch) for ch in text)


def drawn(nb: Any, key: str) -> None:
    nb.page.wait_for_function(
        "([s, key]) => { const c = document.querySelector(s);"
        " return !!c && c.dataset.drawn === key; }",
        arg=[GRID, key])


def check_panel(nb: Any, root: Any, lens: dict[str, Any], row: int, pos: int) -> None:
    """The panel shows cell (row, pos): the LensMap's top-k ids, texts and probabilities."""
    nb.page.wait_for_function(
        "([root, r, p]) => { const h = root.querySelector('.llm-lens-hover');"
        " return h.dataset.row === String(r) && h.dataset.pos === String(p); }",
        arg=[root.element_handle(), row, pos])
    panel = root.evaluate(PANEL)
    top = lens["top"][row][pos]
    assert [int(i["id"]) for i in panel["items"]] == [token_id for token_id, _, _ in top]
    assert [i["text"] for i in panel["items"]] == [visible(text) for _, text, _ in top]
    for item, (_, _, p) in zip(panel["items"], top, strict=True):
        assert abs(float(item["prob"]) - p) < 1e-3, (item, p)  # float16 on the wire
    assert panel["where"].startswith(f"{lens['layers'][row]}, position {pos}:")


def hover_cell(root: Any, row_on_screen: int, rows_on_screen: int, pos: int, size: int) -> None:
    """Scroll the grid to the cell, then move the pointer over its middle."""
    canvas = root.locator("canvas.llm-lens-grid")
    width = canvas.evaluate("c => c.getBoundingClientRect().width")
    height = canvas.evaluate("c => c.getBoundingClientRect().height")
    x, y = width * (pos + 0.5) / size, height * (row_on_screen + 0.5) / rows_on_screen
    root.locator(".llm-lens-scroll").evaluate("(s, x) => { s.scrollLeft = Math.max(0, x - 200); }",
                                              x)
    canvas.hover(position={"x": x, "y": y})


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_grid_hover_focus_metric_and_stride(open_notebook, app):
    nb = open_notebook([
        "import llm_magic as lm\nlm.load('demo');",
        f"lens = lm.logit_lens({TEXT!r}, model='demo')\nv = lens.widget()\nv",
        DUMP,
        "print(json.dumps([v.metric, v.stride]))",
    ], app=app)
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    (line,) = nb.run_and_wait(2)
    lens = json.loads(line)
    rows, size = len(lens["layers"]), len(lens["tokens"])
    root = nb.cell(1).locator(VIEW)
    root.wait_for()
    drawn(nb, "probability:1")
    first = nb.page.evaluate(CANVAS_PIXELS_JS, GRID)
    assert first["coloured"] > 0, "the grid is blank"

    # Rows from the last block (top) down to the embeddings; tokens as text on both axes.
    labels = root.locator(".llm-lens-rows .llm-lens-label").all_text_contents()
    assert labels == list(reversed(lens["layers"]))
    inputs = root.locator(".llm-lens-inputs .llm-lens-label").all_text_contents()
    assert inputs == [visible(t) for t in lens["tokens"]]
    nexts = root.locator(".llm-lens-next .llm-lens-label .llm-lens-token").all_text_contents()
    assert nexts == [visible(t) for t in lens["tokens"][1:]]
    starred = root.locator(".llm-lens-next .llm-lens-label").evaluate_all(
        "ls => ls.map(l => l.classList.contains('llm-lens-correct')"
        " && !!l.querySelector('.llm-lens-star'))")
    assert starred == lens["correct"] and any(starred)
    assert "".join(inputs) == visible(TEXT)  # the markup is there, as text
    assert nb.page.evaluate(
        f"document.querySelectorAll('{VIEW} img, {VIEW} script').length") == 0
    assert nb.page.evaluate("window.__xss === undefined")

    # Hover shows a cell's top-k: the LensMap's, row by row (the last block is on top).
    for on_screen, pos in ((0, 2), (rows - 1, 0), (1, size - 1)):
        hover_cell(root, on_screen, rows, pos, size)
        check_panel(nb, root, lens, rows - 1 - on_screen, pos)

    # Keyboard focus: the grid takes it and the arrow keys move the cell read out.
    nb.page.mouse.move(0, 0)
    root.locator("canvas.llm-lens-grid").focus()
    check_panel(nb, root, lens, rows - 1, 0)
    nb.page.keyboard.press("ArrowRight")
    check_panel(nb, root, lens, rows - 1, 1)
    nb.page.keyboard.press("ArrowDown")
    check_panel(nb, root, lens, rows - 2, 1)
    nb.screenshot(f"lens-view-{app}")

    # The metric switch redraws and the kernel's widget knows it; so does the stride.
    root.locator("select.llm-lens-metric").select_option("kl")
    drawn(nb, "kl:1")
    assert nb.page.evaluate(CANVAS_PIXELS_JS, GRID)["hash"] != first["hash"], "nothing redrew"
    assert "KL to the final layer, nats" in root.locator(".llm-lens-scale").inner_text()
    root.locator("select.llm-lens-metric").select_option("rank")
    drawn(nb, "rank:1")
    root.locator("select.llm-lens-stride").select_option("2")
    drawn(nb, "rank:2")
    assert root.locator("canvas.llm-lens-grid").get_attribute("data-rows") == "4,2,0"
    labels = root.locator(".llm-lens-rows .llm-lens-label").all_text_contents()
    assert labels == ["block 4 (output)", "block 2", "embeddings"]
    hover_cell(root, 1, 3, 3, size)
    check_panel(nb, root, lens, 2, 3)
    (state,) = nb.run_and_wait(3)
    assert json.loads(state) == ["rank", 2]
    nb.screenshot(f"lens-stride-{app}")
    assert nb.outside_requests() == [], "the page fetched from outside loopback"
    errors = [e for e in nb.errors if not (app == "notebook" and e in NOTEBOOK7_OWN)]
    assert errors == [], nb.errors


# -- the legend and colour bar, whole tokens, the width (issue 27) -------------------------

LONG = ("The import statement combines two operations: it searches for the named module, "
        "then it binds the results of that search to a name in the local scope.")
SCALES = """import json
print(json.dumps({m: lens.scale(m).caption for m in ("probability", "rank", "entropy", "kl")}))"""
# Labels whose text the page clips (wider or taller than their box).
CLIPPED = """(root, selector) => [...root.querySelectorAll(selector)]
  .filter(l => l.scrollWidth > l.clientWidth + 1 || l.scrollHeight > l.clientHeight + 1)
  .map(l => l.textContent)"""
FITS = """root => {
  const area = root.closest('.jp-OutputArea-output').getBoundingClientRect();
  const me = root.getBoundingClientRect();
  const scroll = root.querySelector('.llm-lens-scroll').getBoundingClientRect();
  return [me.left >= area.left - 1, me.right <= area.right + 1, scroll.right <= area.right + 1,
          root.scrollWidth <= root.clientWidth + 1];
}"""


def test_colour_bar_whole_tokens_named_rows_and_width(open_notebook):
    nb = open_notebook([
        "import llm_magic as lm\nlm.load('demo');",
        f"lens = lm.logit_lens({LONG!r}, model='demo')\nv = lens.widget()\nv",
        DUMP,
        SCALES,
    ])
    nb.run_and_wait(0, timeout=180)
    nb.run_and_wait(1)
    (line,) = nb.run_and_wait(2)
    lens = json.loads(line)
    (line,) = nb.run_and_wait(3)
    captions = json.loads(line)
    root = nb.cell(1).locator(VIEW)
    root.wait_for()
    drawn(nb, "probability:1")
    root.scroll_into_view_if_needed()

    # The legend has a colour bar whose caption is the kernel's scale: unit, range, clipping.
    for metric, words in (("probability", "0 to 1"), ("rank", "log scale"),
                          ("entropy", "nats"), ("kl", "nats")):
        if metric != "probability":
            root.locator("select.llm-lens-metric").select_option(metric)
            drawn(nb, f"{metric}:1")
        caption = root.locator(".llm-lens-scale .llm-colourbar-caption").text_content()
        assert caption == captions[metric] and words in caption, (metric, caption)
        assert root.locator(".llm-lens-scale canvas.llm-colourbar-ramp").is_visible()
        ticks = root.locator(".llm-lens-scale .llm-colourbar-tick").all_text_contents()
        assert len(ticks) >= 2 and all(ticks), ticks
    assert "95th percentile" in captions["kl"] and "the grid's largest is" in captions["kl"]
    nb.artifacts.mkdir(parents=True, exist_ok=True)
    root.screenshot(path=str(nb.artifacts / "lens_kl_1280.png"))

    # Rows by name, the output on top; every token whole in the cells and along both axes.
    labels = root.locator(".llm-lens-rows .llm-lens-label").all_text_contents()
    assert labels == list(reversed(lens["layers"]))
    assert labels[0] == "block 4 (output)" and labels[-1] == "embeddings"
    assert root.locator("canvas.llm-lens-grid").get_attribute("data-cut") == "0"
    inputs = root.locator(".llm-lens-inputs .llm-lens-label").all_text_contents()
    assert inputs == [visible(t) for t in lens["tokens"]]
    assert root.evaluate(CLIPPED, ".llm-lens-axis .llm-lens-label") == []

    # The view fits its output area at 1280 and 900 px; the grid scrolls inside it.
    for width in (1280, 900):
        nb.page.set_viewport_size({"width": width, "height": 900})
        nb.page.wait_for_timeout(300)
        assert nb.page.evaluate("document.documentElement.scrollWidth") <= width
        assert all(root.evaluate(FITS)), (width, root.evaluate(FITS))
        root.screenshot(path=str(nb.artifacts / f"lens_{width}.png"))
    assert nb.errors == [], nb.errors
