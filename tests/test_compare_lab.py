"""The side-by-side view in a real browser, JupyterLab and Notebook 7, on the shared helper.

``%%llm demo demo16 --compare`` streams both columns into one view (text shows
in each column while the cell is still generating), then shades the pieces on
a fixed scale its legend states, each column saying in words what it is shaded
against; ``lm.compare`` with two settings marks where the sampled column leaves
the greedy one, and hovering a piece shows its numbers in a label beside it.
Text on a shade keeps WCAG AA contrast; the views fit 1280 and 900 px. A
comparison with a real ``transformers serve`` (no log-probabilities) shows both
columns and says which could not be scored. Markup in the prompt shows as
text, and the page asks nothing of any host but loopback.
"""

from __future__ import annotations

import re

import pytest

VIEW = ".llm-cmp"
# Notebook 7 raises these on its own page, with or without any view of llm_magic.
NOTEBOOK7_OWN = ("Cannot read properties of undefined (reading 'schema')",
                 "Command 'filebrowser:open-path' not registered.")
PROMPT = "The <b>import</b> statement"

# Records, for each column of each view, the view's state when its text first showed.
WATCH = """() => {
  window.__cmpSeen = {};
  const look = () => {
    document.querySelectorAll('.llm-cmp').forEach((root, v) => {
      root.querySelectorAll('.llm-cmp-col').forEach((col) => {
        const key = v + ':' + col.dataset.column;
        const text = col.querySelector('.llm-cmp-text').textContent;
        if (text && !(key in window.__cmpSeen)) window.__cmpSeen[key] = root.dataset.state;
      });
    });
  };
  new MutationObserver(look).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true});
}"""


# Per shaded piece and legend swatch of the views: its text colour and its background.
INKS = """root => [...root.querySelectorAll('.llm-cmp-piece, .llm-cmp-swatch')].map(
  e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor])"""


def _contrast(fore: str, back: str) -> float:
    """WCAG contrast of two computed CSS colours (``rgb(r, g, b)``)."""
    def lum(css: str) -> float:
        c = [int(v) / 255 for v in re.findall(r"\d+", css)[:3]]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(fore), lum(back)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _beside(piece: dict, label: dict) -> bool:
    """The label is just below or just above the piece, overlaps it sideways, covers none of it."""
    below = label["y"] - (piece["y"] + piece["height"])
    above = piece["y"] - (label["y"] + label["height"])
    sideways = (label["x"] <= piece["x"] + piece["width"]
                and label["x"] + label["width"] >= piece["x"])
    return sideways and (0 <= below <= 8 or 0 <= above <= 8)


def _fits(nb, width: int) -> None:
    """At ``width`` px, no view is wider than its output area or makes the page scroll sideways."""
    nb.page.set_viewport_size({"width": width, "height": 900})
    nb.page.wait_for_timeout(300)
    assert nb.page.evaluate("document.documentElement.scrollWidth") <= width
    for box in nb.page.evaluate("""() => [...document.querySelectorAll('.llm-cmp')].map(r => {
        const out = r.closest('.jp-OutputArea-output').getBoundingClientRect();
        const me = r.getBoundingClientRect();
        return [me.left >= out.left - 1, me.right <= out.right + 1,
                r.scrollWidth <= r.clientWidth + 1];
      })"""):
        assert all(box), (width, box)


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_compare_streams_columns_and_marks_divergence(open_notebook, app):
    nb = open_notebook([
        "import llm_magic as lm\nlm.load('demo')\n"
        "lm.load('demo', name='demo16', dtype='bfloat16');",
        "%load_ext llm_magic",
        f"%%llm demo demo16 --compare -n 40\n{PROMPT}",
        f"c = lm.compare({PROMPT!r}, settings=[{{'temperature': 0}}, "
        "{'temperature': 1.0, 'seed': 1}], model='demo', max_new_tokens=30)",
    ], app=app)
    nb.run_and_wait(0)
    nb.run_and_wait(1)
    nb.page.evaluate(WATCH)
    nb.run_and_wait(2, timeout=300)
    view = nb.cell(2).locator(VIEW)
    view.wait_for()
    nb.page.wait_for_function(
        "s => { const r = document.querySelector(s); return !!r && r.dataset.state === 'done'; }",
        arg=VIEW)
    # Both columns showed text while the cell was still generating: they streamed.
    seen = nb.page.evaluate("() => window.__cmpSeen")
    assert seen.get("0:0") == "generating" and seen.get("0:1") == "generating", seen
    labels = view.locator(".llm-cmp-label").all_text_contents()
    assert labels == ["demo", "demo16"]
    assert view.locator(".llm-cmp-col").nth(0).locator(".llm-cmp-piece").count() > 0
    # Each column says what it is shaded against, in words; the legend states the fixed scale.
    captions = view.locator(".llm-cmp-ref").all_text_contents()
    assert captions[0].startswith("Shaded by Δ log p = log p under demo16 − log p under demo")
    assert captions[1].startswith("Shaded by Δ log p = log p under demo − log p under demo16")
    legend = view.locator(".llm-cmp-legend")
    assert legend.is_visible() and "Δ log p (nats)" in legend.inner_text()
    assert "saturate at ±2 nats" in legend.inner_text()
    assert legend.bounding_box()["y"] < view.locator(".llm-cmp-cols").bounding_box()["y"]
    assert all("new tokens" in s for s in view.locator(".llm-cmp-stats").all_text_contents())

    # The markup of the prompt is text, never an element.
    assert PROMPT in view.locator(".llm-cmp-prompt").inner_text()
    assert nb.page.evaluate(f"document.querySelectorAll('{VIEW} b, {VIEW} script').length") == 0

    # Settings: the sampled column is marked where it leaves the greedy choice.
    nb.run_and_wait(3, timeout=300)
    second = nb.cell(3).locator(VIEW)
    second.wait_for()
    nb.page.wait_for_function(
        "s => { const r = document.querySelectorAll(s)[1];"
        " return !!r && r.dataset.state === 'done'; }", arg=VIEW)
    columns = second.locator(".llm-cmp-col")
    assert columns.nth(0).locator(".llm-cmp-diverge").count() == 0
    mark = columns.nth(1).locator(".llm-cmp-diverge")
    assert mark.count() == 1 and mark.inner_text() == "▶"
    # The greedy column is not scored against itself, and says so.
    assert columns.nth(0).locator(".llm-cmp-ref").inner_text() == (
        "Every token is demo's likeliest choice (greedy): nothing to shade.")
    assert columns.nth(1).locator(".llm-cmp-first").inner_text().startswith(
        "First leaves the greedy choice at token ")
    # Hovering a piece shows its numbers in a label right beside it, and leaving hides it.
    label = second.locator(".llm-cmp-hover")
    for k in (0, 7):
        piece = columns.nth(1).locator(".llm-cmp-piece").nth(k)
        piece.hover()
        label.wait_for(state="visible")
        assert "likeliest" in label.inner_text() and "nats" in label.inner_text()
        assert _beside(piece.bounding_box(), label.bounding_box()), (
            piece.bounding_box(), label.bounding_box())
    nb.page.mouse.move(1, 1)
    label.wait_for(state="hidden")
    # Text on every shade keeps WCAG AA contrast (4.5:1).
    inks = nb.page.evaluate(f"() => [...document.querySelectorAll('{VIEW}')].flatMap({INKS})")
    assert len(inks) > 14 and min(_contrast(f, b) for f, b in inks) >= 4.5
    nb.screenshot(f"compare-{app}")
    for width in (1280, 900):
        _fits(nb, width)
    assert nb.outside_requests() == [], "the page fetched from outside loopback"
    assert [e for e in nb.errors if not (app == "notebook" and e in NOTEBOOK7_OWN)] == [], \
        nb.errors


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_compare_with_a_served_model_shows_both_columns(open_notebook, served_demo, app):
    nb = open_notebook([
        "import llm_magic as lm\nlm.load('demo')\n"
        f"lm.load({served_demo.url!r}, name='served', model={served_demo.model!r});",
        "c = lm.compare('The with statement', models=['demo', 'served'], max_new_tokens=20)",
    ], app=app)
    nb.run_and_wait(0)
    nb.run_and_wait(1, timeout=300)
    view = nb.cell(1).locator(VIEW)
    view.wait_for()
    nb.page.wait_for_function(
        "s => { const r = document.querySelector(s); return !!r && r.dataset.state === 'done'; }",
        arg=VIEW)
    assert nb.outputs(1) and "Error" not in "".join(nb.outputs(1))
    columns = view.locator(".llm-cmp-col")
    assert view.locator(".llm-cmp-label").all_text_contents() == ["demo", "served"]
    # Both columns show their text; the local one says why it is not shaded.
    assert columns.nth(0).locator(".llm-cmp-text").inner_text().strip()
    assert columns.nth(0).locator(".llm-cmp-piece").count() == 0
    assert columns.nth(0).locator(".llm-cmp-colnote").inner_text().startswith(
        "Not shaded: its only reference, 'served' runs on a server")
    # The served one is read by the demo, and says so.
    assert columns.nth(1).locator(".llm-cmp-piece").count() > 0
    assert columns.nth(1).locator(".llm-cmp-ref").inner_text().startswith(
        "Shaded by how demo reads this text")
    assert columns.nth(1).locator(".llm-cmp-colnote").inner_text().startswith(
        "Scored by 'demo' alone")
    nb.screenshot(f"compare-served-{app}")
    _fits(nb, 900)
    assert nb.outside_requests() == [], "the page fetched from outside loopback"
    assert [e for e in nb.errors if not (app == "notebook" and e in NOTEBOOK7_OWN)] == [], \
        nb.errors
