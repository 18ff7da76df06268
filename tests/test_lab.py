"""%%llm in JupyterLab, driven in a real browser as a user drives it.

A ``jupyter lab`` server on 127.0.0.1 and Debian's Chromium (through Playwright)
run a notebook by keyboard: the streamed text grows in one output area, the
final render replaces it, the toolbar's Stop button interrupts generation with
the partial text kept, and the page asks nothing of any host but loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

CHROMIUM = os.environ.get("LLM_MAGIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TIMEOUT_MS = 120_000
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 with a long context whose greedy output from "Hello" never ends early."""
    from _models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("lab-model"), arch="gpt2", context=8192,
                            seed=0, n_embd=64)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A JupyterLab server on loopback: (base URL, token, notebook folder)."""
    home = tmp_path_factory.mktemp("lab")
    root = home / "notebooks"
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    root.mkdir()
    # No "get news?" prompt over the page: the answer is given, and it is no.
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data")}
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={home / 'settings'}",
            f"--LabApp.workspaces_dir={home / 'workspaces'}", "--LabApp.news_url="]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = (home / "server.log").open("w")
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited: {(home / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}",
                                       timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("jupyter lab did not answer within 120 s")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", token, root
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium "
                    "package; elsewhere set LLM_MAGIC_CHROMIUM to a Chromium binary.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Notebook:
    """One notebook open in a JupyterLab page, with every request the page made."""

    def __init__(self, browser: Any, lab: Any, name: str, cells: list[str]) -> None:
        base, token, root = lab
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, root / name)
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        # A workspace of its own, so no notebook of an earlier test opens beside it.
        self.page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}")
        self.page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
        self.page.wait_for_function(
            f"n => document.querySelectorAll({CELLS!r}).length === n", arg=len(cells))

    def cell(self, index: int) -> Any:
        return self.page.locator(CELLS).nth(index)

    def run(self, index: int, count: int = 1) -> None:
        """Select cell ``index`` and press Shift+Enter ``count`` times, as a user would."""
        self.cell(index).locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Escape")
        for _ in range(count):
            self.page.keyboard.press("Shift+Enter")

    def wait_done(self, index: int) -> None:
        """Wait until cell ``index`` shows an execution count (it has finished)."""
        self.cell(index).locator(".jp-InputPrompt").filter(has_text="[").filter(
            has_not_text="*").filter(has_not_text="[ ]").wait_for()

    def outputs(self, index: int) -> list[str]:
        return [o.inner_text() for o in self.cell(index).locator(".jp-OutputArea-output").all()]

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def notebook(browser: Any, lab: Any, lab_model: Path, request: pytest.FixtureRequest):
    opened: list[Notebook] = []

    def open_notebook(*cells: str) -> Notebook:
        load = f"%load_ext llm_magic\n%llm load {lab_model} --as long"
        nb = Notebook(browser, lab, f"{request.node.name}.ipynb", [load, *cells])
        opened.append(nb)
        return nb

    yield open_notebook
    for nb in opened:
        nb.close()


def test_streamed_text_grows_in_one_output_area_then_renders(notebook):
    nb = notebook("%%llm long -n 400 --no-chat\nHello")
    nb.page.evaluate(WATCH, [CELLS, 1])
    nb.run(0, count=2)
    nb.wait_done(1)
    states = nb.page.evaluate("window._states")
    shown = [s for s in states if s["n"]]
    assert shown and all(s["n"] == 1 for s in shown), "one output area, updated in place"
    *streamed, final = [s["text"] for s in shown]
    assert len(streamed) >= 3, f"the text did not stream: {len(streamed)} states"
    assert all(b.startswith(a) for a, b in zip(streamed, streamed[1:], strict=False))
    body, _, footer = final.rpartition("\n")
    assert body.startswith(streamed[-1]) and "400 new tokens" in footer and "tokens/s" in footer
    assert nb.cell(1).locator("pre.llm-magic-output").count() == 1
    outside = [url for url in nb.requests if not url.startswith(("http://127.0.0.1", "ws://127"))]
    assert outside == [], f"the page fetched from outside loopback: {outside}"


def test_stop_button_keeps_the_partial_text_and_the_next_cell_runs(notebook):
    nb = notebook("%%llm long -n 6000 --no-chat\nHello",
                  "print(_llm.stats.stop_reason, _llm.stats.new_tokens)")
    nb.run(0, count=2)
    nb.page.wait_for_function(f"document.querySelectorAll({CELLS!r})[1].innerText.length > 200")
    clicked = time.monotonic()
    nb.page.locator("jp-button[data-command='notebook:interrupt-kernel']").click()
    nb.cell(1).locator(".jp-OutputArea-output").filter(has_text="KeyboardInterrupt").wait_for()
    stopped = time.monotonic() - clicked
    assert stopped < 3.0, f"the Stop button took {stopped:.1f} s"
    nb.wait_done(1)
    partial, error = nb.outputs(1)
    assert len(partial) > 100 and "KeyboardInterrupt" in error
    nb.run(2)
    nb.wait_done(2)
    reason, count = nb.outputs(2)[0].split()
    assert reason == "interrupted" and 0 < int(count) < 6000
