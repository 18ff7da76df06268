"""The one browser helper: a Jupyter server on loopback, Chromium, notebooks run by keyboard.

Every browser test goes through :func:`start_server` and :class:`Notebook`
(the fixtures ``lab_server``, ``browser`` and ``open_notebook`` in
``conftest.py``). The rules that keep the tests honest on a slow or busy
machine live here, once:

- A notebook counts as open only when its kernel is connected and idle in the
  page (JupyterLab's own session context, exposed to the page for tests) *and*
  in the server's sessions API. The execution indicator alone turns "idle"
  before the kernel can take a run, and keys typed then are lost.
- :meth:`Notebook.run` checks that a run really started (the prompt turns to
  ``[*]`` or a new number) and presses the keys once more if the page dropped
  them. No sleep stands in for readiness.
- On a failure the test's folder under ``build/test-artifacts`` (or
  ``$LLM_MAGIC_ARTIFACTS``) gets a screenshot, the page's notebook text and the
  server's log, and the folder is printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("LLM_MAGIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = Path(os.environ.get("LLM_MAGIC_ARTIFACTS", REPO / "build" / "test-artifacts"))
TIMEOUT_MS = 120_000
STARTED_WITHIN = 10.0  # seconds for a run's prompt to change before the keys are sent again
LOOPBACK = ("http://127.0.0.1", "ws://127.0.0.1", "http://localhost", "ws://localhost",
            "data:", "blob:", "about:")

# The notebook panel showing `path`, found through the application object itself.
_PANEL_JS = """path => {
  const app = window.jupyterapp;
  if (!app) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.sessionContext) return w;
  }
  return null;
}"""

# True once the page's kernel for `path` is connected, idle and ready for a run.
_KERNEL_READY_JS = f"""path => {{
  const panel = ({_PANEL_JS})(path);
  if (!panel || !panel.context.isReady || !panel.sessionContext.isReady) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}}"""

_PROMPT_JS = """([cells, index]) => {
  const cell = document.querySelectorAll(cells)[index];
  if (!cell) return null;
  const prompt = cell.querySelector('.jp-InputPrompt');
  return prompt ? prompt.innerText.trim() : null;
}"""

_DONE_JS = """([cells, index, before]) => {
  const cell = document.querySelectorAll(cells)[index];
  const prompt = cell && cell.querySelector('.jp-InputPrompt');
  const text = prompt ? prompt.innerText.trim() : '';
  return /^\\[\\d+\\]:?$/.test(text) && text !== before;
}"""


# A digest of a canvas's pixels, how many are coloured (not white), and its width.
CANVAS_PIXELS_JS = """selector => {
  const canvas = document.querySelector(selector);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 0, coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    hash = (hash * 31 + data[i] * 7 + data[i + 1] * 3 + data[i + 2]) >>> 0;
    if (data[i] < 250 || data[i + 1] < 250) coloured++;
  }
  return {hash, coloured, width: canvas.width};
}"""


def streamed_lengths(page: Any, text: Any, timeout: float = 60, every_ms: int = 250
                     ) -> list[int]:
    """The length of ``text`` (a locator) read every ``every_ms`` until it took 3 values."""
    lengths: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(set(lengths)) < 3:
        page.wait_for_timeout(every_ms)
        lengths.append(len(text.inner_text()))
    return lengths


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class JupyterServer:
    """A running ``jupyter lab`` on 127.0.0.1 that serves ``root``."""

    url: str
    token: str
    root: Path
    home: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def api(self, path: str, method: str = "GET") -> Any:
        """Call the server's REST API (``/api/...``) and return the decoded JSON (None if empty)."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def session(self, path: str) -> dict[str, Any] | None:
        """The server's session of the notebook at ``path``, if it has one."""
        for s in self.api("/api/sessions"):
            if s.get("path") == path:
                return s  # type: ignore[no-any-return]
        return None


@contextlib.contextmanager
def start_server(home: Path) -> Iterator[JupyterServer]:
    """Run ``jupyter lab`` on a free loopback port with everything it writes under ``home``."""
    root, config = home / "notebooks", home / "config"
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    for folder in (root, config, settings):
        folder.mkdir(parents=True, exist_ok=True)
    # No "get news?" prompt over the page: the answer is given, and it is no.
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    # The page exposes the application object, so tests can ask it whether the kernel is ready.
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "LabApp": {"expose_app_in_browser": True, "news_url": ""},
        "JupyterNotebookApp": {"expose_app_in_browser": True},
        "ServerApp": {"open_browser": False},
    }))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_TOKEN": token,
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = (home / "server.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = JupyterServer(f"http://127.0.0.1:{port}", token, root, home, process)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {server.log.read_text()[-3000:]}")
            try:
                server.api("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("jupyter lab did not answer within 120 s") from None
                time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def launch_browser(playwright: Any) -> Any:
    """Debian's Chromium, headless, with nothing of its own reaching for the network."""
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's "
                           "chromium package; elsewhere set LLM_MAGIC_CHROMIUM to a Chromium.")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def artifact_dir(test_id: str) -> Path:
    """The folder for one test's screenshots and failure records."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_id).strip("_")[:150]
    return ARTIFACTS / safe  # made when something is saved there


class Notebook:
    """One notebook open in a browser page, run as a user runs it.

    The constructor writes the notebook and opens a page; :meth:`open` loads it.

    Parameters
    ----------
    browser : playwright Browser
    server : JupyterServer
    cells : list of str
        The notebook's code cells, written to ``server.root / name``.
    name : str
        The notebook's file name.
    app : {"lab", "notebook"}
        JupyterLab, or Notebook 7's single-document page.
    artifacts : Path
        Where screenshots go.
    """

    def __init__(self, browser: Any, server: JupyterServer, cells: list[str], name: str,
                 app: str = "lab", artifacts: Path | None = None) -> None:
        if app not in ("lab", "notebook"):
            raise ValueError(f"app must be 'lab' or 'notebook', not {app!r}")
        self.server, self.name, self.app = server, name, app
        self.artifacts = artifacts or artifact_dir(Path(name).stem)
        self.cells_selector = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell"
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, server.root / name)
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self._before: dict[int, str | None] = {}
        self._count = len(cells)

    def open(self) -> Notebook:
        """Go to the notebook's page and wait until its kernel can take a run."""
        server, name = self.server, self.name
        quoted = urllib.parse.quote(name)
        if self.app == "lab":
            # A workspace of its own, so no notebook of an earlier test opens beside it.
            url = f"{server.url}/lab/workspaces/{urllib.parse.quote(Path(name).stem)}/tree/{quoted}"
        else:
            url = f"{server.url}/notebooks/{quoted}"
        self.page.goto(f"{url}?token={server.token}")
        self.page.wait_for_function(
            f"n => document.querySelectorAll({self.cells_selector!r}).length === n",
            arg=self._count)
        self.wait_kernel_ready()
        return self

    # -- readiness -----------------------------------------------------------

    def kernel_ready(self) -> bool:
        """Whether the page and the server agree that the kernel is connected and idle."""
        if not self.page.evaluate(_KERNEL_READY_JS, self.name):
            return False
        session = self.server.session(self.name)
        kernel = (session or {}).get("kernel") or {}
        return kernel.get("execution_state") == "idle" and kernel.get("connections", 0) >= 1

    def wait_kernel_ready(self, timeout: float = TIMEOUT_MS / 1000) -> None:
        """Wait until :meth:`kernel_ready`; the page's own check is awaited without polling."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(deadline - time.monotonic(), 0.1)
            self.page.wait_for_function(_KERNEL_READY_JS, arg=self.name,
                                        timeout=remaining * 1000)
            if self.kernel_ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the kernel of {self.name} was not ready within {timeout} s")
            self.page.wait_for_timeout(200)

    # -- cells -----------------------------------------------------------------

    def cell(self, index: int) -> Any:
        return self.page.locator(self.cells_selector).nth(index)

    def prompt(self, index: int) -> str | None:
        """The cell's input prompt as shown: ``[ ]:``, ``[*]:`` or ``[3]:``."""
        return self.page.evaluate(_PROMPT_JS, [self.cells_selector, index])  # type: ignore[no-any-return]

    def _press_run(self, index: int) -> None:
        self.cell(index).locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Escape")  # command mode, this cell selected
        self.page.keyboard.press("Control+Enter")  # run it and stay on it

    def run(self, index: int) -> None:
        """Run cell ``index`` from the keyboard and make sure the run really started."""
        before = self.prompt(index)
        self._before[index] = before
        for attempt in range(2):
            self._press_run(index)
            deadline = time.monotonic() + STARTED_WITHIN
            while time.monotonic() < deadline:
                now = self.prompt(index)
                if now != before and now not in (None, "[ ]:"):
                    return
                self.page.wait_for_timeout(100)
            if attempt == 0:
                print(f"cell {index} of {self.name} did not start; pressing the keys again")
        raise AssertionError(f"cell {index} of {self.name} never started (prompt {before!r})")

    def wait_done(self, index: int, timeout: float = 120) -> None:
        """Wait until cell ``index`` shows a new execution count (its run has finished)."""
        self.page.wait_for_function(
            _DONE_JS, arg=[self.cells_selector, index, self._before.get(index)],
            timeout=timeout * 1000)

    def run_and_wait(self, index: int, timeout: float = 120) -> list[str]:
        """Run cell ``index``, wait for it to finish, and return its outputs."""
        self.run(index)
        self.wait_done(index, timeout)
        return self.outputs(index)

    def outputs(self, index: int) -> list[str]:
        return [o.inner_text() for o in self.cell(index).locator(".jp-OutputArea-output").all()]

    def outside_requests(self) -> list[str]:
        """Every request the page made to anything but loopback."""
        return [url for url in self.requests if not url.startswith(LOOPBACK)]

    # -- records -----------------------------------------------------------------

    def screenshot(self, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def text(self) -> str:
        """The notebook as the page shows it: each cell's prompt, source and outputs."""
        parts = []
        for i in range(self.page.locator(self.cells_selector).count()):
            cell = self.cell(i)
            source = cell.locator(".jp-InputArea-editor").inner_text()
            outs = "\n".join(f"  | {line}" for o in self.outputs(i) for line in o.splitlines())
            parts.append(f"{self.prompt(i)}\n{source}\n{outs}")
        return "\n\n".join(parts)

    def record_failure(self) -> Path:
        """Save a screenshot, the notebook's text, page errors and the server log in one folder."""
        folder = self.artifacts
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            self.screenshot("failure")
        with contextlib.suppress(Exception):
            (folder / "notebook.txt").write_text(self.text())
        (folder / "page-errors.txt").write_text("\n".join(self.errors))
        (folder / "requests.txt").write_text("\n".join(self.requests))
        with contextlib.suppress(Exception):
            (folder / "server.log").write_bytes(self.server.log.read_bytes()[-200_000:])
        return folder

    def close(self) -> None:
        """Close the page and shut the notebook's kernel down, so kernels do not pile up."""
        with contextlib.suppress(Exception):
            self.page.close()
        with contextlib.suppress(Exception):
            session = self.server.session(self.name)
            if session is not None:
                self.server.api(f"/api/sessions/{session['id']}", method="DELETE")
