"""The side-by-side view in a real browser, JupyterLab and Notebook 7, on the shared helper.

``%%llm demo demo16 --compare`` streams both columns into one view (text shows
in each column while the cell is still generating), then shades the pieces;
``lm.compare`` with two settings marks where the sampled column leaves the
greedy one. Markup in the prompt shows as text, and the page asks nothing of
any host but loopback.
"""

from __future__ import annotations

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
    assert "demo16" in view.locator(".llm-cmp-ref").nth(0).inner_text()
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
    piece = columns.nth(1).locator(".llm-cmp-piece").first
    piece.hover()
    assert "greedy" in second.locator(".llm-cmp-hover").inner_text()
    nb.screenshot(f"compare-{app}")
    assert nb.outside_requests() == [], "the page fetched from outside loopback"
    assert [e for e in nb.errors if not (app == "notebook" and e in NOTEBOOK7_OWN)] == [], \
        nb.errors
