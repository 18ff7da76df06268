"""The README's first command, run the way a user runs it.

``make lab`` must serve the quickstart notebook as root (containers, CI) and as
a normal user, on the port the user chose. The test starts it with no browser
on a free loopback port, waits until the server answers, reads the quickstart
through the server's contents API, and stops the whole process group.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from _browser import REPO, free_port

QUICKSTART = "notebooks/01_quickstart.ipynb"


def _get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End make, JupyterLab and its kernels: the process group the test started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # JupyterLab may outlive make for a moment; the group goes when its last member does.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["JUPYTER_PORT", "make variable"])
def test_make_lab_serves_the_quickstart(tmp_path: Path, how: str) -> None:
    port, token = free_port(), secrets.token_hex(16)
    config = tmp_path / "config"
    config.mkdir()
    # What a user on a headless machine sets: no browser to open.
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"open_browser": False, "port_retries": 0}}))
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update(JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=str(config),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    argv = ["make", "--no-print-directory", "lab"]
    if how == "JUPYTER_PORT":
        env["JUPYTER_PORT"] = str(port)
    else:
        argv.append(f"PORT={port}")
    log_path = tmp_path / "make-lab.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a first `make lab` may still be installing
        while True:
            if process.poll() is not None:
                pytest.fail(f"`make lab` exited with {process.returncode}:\n"
                            f"{log_path.read_text()[-3000:]}")
            try:
                _get(f"{base}/api/status", token)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"`make lab` did not serve on port {port}:\n"
                                f"{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        # JupyterLab serves the folder of the notebook it was started on.
        served = _get(f"{base}/api/contents/{Path(QUICKSTART).name}?content=1", token)
        assert served["type"] == "notebook"
        on_disk = json.loads((REPO / QUICKSTART).read_text())
        assert [c["source"] for c in served["content"]["cells"]] == [
            "".join(c["source"]) for c in on_disk["cells"]]
        printed = log_path.read_text()
        # A token the user set is shown masked; the address to open is printed in full.
        assert f"http://127.0.0.1:{port}/lab?token=" in printed, "the URL to open is printed"
        assert "Running as root is not recommended" not in printed
    finally:
        _stop(process)
