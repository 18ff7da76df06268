"""%%llm in JupyterLab, driven in a real browser as a user drives it.

A ``jupyter lab`` server on 127.0.0.1 and Debian's Chromium (through Playwright,
on the shared helper in ``_browser.py``) run a notebook by keyboard: the streamed
text grows in one output area, the final render replaces it, the toolbar's Stop
button interrupts generation with the partial text kept, and the page asks
nothing of any host but loopback.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

CELLS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell"  # the notebook in view

# Records every distinct state of one cell's outputs: how many output areas, their text.
WATCH = """([cells, index]) => {
  window._states = [];
  const cell = document.querySelectorAll(cells)[index];
  const record = () => {
    const outs = cell.querySelectorAll('.jp-OutputArea-output');
    const text = Array.from(outs).map(o => o.innerText).join('\\u0000');
    const last = window._states[window._states.length - 1];
    if (!last || last.text !== text) window._states.push({n: outs.length, text});
  };
  new MutationObserver(record).observe(cell, {subtree: true, childList: true,
                                              characterData: true});
}"""


@pytest.fixture(scope="module")
def lab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 with a long context whose greedy output from "Hello" never ends early."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("lab-model"), arch="gpt2", context=8192,
                            seed=0, n_embd=64)


@pytest.fixture
def notebook(open_notebook, lab_model: Path):
    """A notebook whose first cell loads the long-context model as 'long'."""

    def open_with_model(*cells: str):
        return open_notebook([f"%load_ext llm_magic\n%llm load {lab_model} --as long", *cells])

    return open_with_model


def test_streamed_text_grows_in_one_output_area_then_renders(notebook):
    nb = notebook("%%llm long -n 1500 --no-chat\nHello")
    nb.run_and_wait(0)
    nb.page.evaluate(WATCH, [CELLS, 1])
    nb.run_and_wait(1)
    states = nb.page.evaluate("window._states")
    shown = [s for s in states if s["n"]]
    assert shown and all(s["n"] == 1 for s in shown), "one output area, updated in place"
    *streamed, final = [s["text"] for s in shown]
    assert len(streamed) >= 3, f"the text did not stream: {len(streamed)} states"
    assert all(b.startswith(a) for a, b in zip(streamed, streamed[1:], strict=False))
    body, _, footer = final.rpartition("\n")
    assert body.startswith(streamed[-1]) and "1500 new tokens" in footer and "tokens/s" in footer
    assert nb.cell(1).locator("pre.llm-magic-output").count() == 1
    assert nb.outside_requests() == [], "the page fetched from outside loopback"


@pytest.mark.serial
def test_stop_button_keeps_the_partial_text_and_the_next_cell_runs(notebook):
    nb = notebook("%%llm long -n 6000 --no-chat\nHello",
                  "print(_llm.stats.stop_reason, _llm.stats.new_tokens)")
    nb.run_and_wait(0)
    nb.run(1)
    nb.page.wait_for_function(f"document.querySelectorAll({CELLS!r})[1].innerText.length > 200")
    clicked = time.monotonic()
    nb.page.locator("jp-button[data-command='notebook:interrupt-kernel']").click()
    nb.cell(1).locator(".jp-OutputArea-output").filter(has_text="KeyboardInterrupt").wait_for()
    stopped = time.monotonic() - clicked
    assert stopped < 3.0, f"the Stop button took {stopped:.1f} s"
    nb.wait_done(1)
    partial, error = nb.outputs(1)
    assert len(partial) > 100 and "KeyboardInterrupt" in error
    reason, count = nb.run_and_wait(2)[0].split()
    assert reason == "interrupted" and 0 < int(count) < 6000


def test_llm_cell_runs_in_notebook_7(open_notebook, lab_model: Path):
    nb = open_notebook([f"%load_ext llm_magic\n%llm load {lab_model} --as long",
                        "%%llm long -n 50 --no-chat\nHello"], app="notebook")
    nb.run_and_wait(0)
    (out,) = nb.run_and_wait(1)
    assert "/notebooks/" in nb.page.url and "50 new tokens" in out and "tokens/s" in out
    assert nb.outside_requests() == [], "the page fetched from outside loopback"
