"""Start and stop a real ``transformers serve`` (OpenAI-compatible) on 127.0.0.1.

Used by the tests' session fixture and by ``benchmarks/served.py``. The server
runs offline (``HF_HUB_OFFLINE=1``) on the CPU with one local model directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_command() -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    if exe.exists():
        return [str(exe), "serve"]
    found = shutil.which("transformers")
    if found is None:
        raise RuntimeError("`transformers serve` needs transformers[serving] installed.")
    return [found, "serve"]


@dataclass
class Served:
    """A running server: its ``url`` (ending in /v1), the served ``model`` id, the process."""

    url: str
    model: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start(model_dir: Path, log: Path, *, timeout: float = 180.0, threads: int | None = None
          ) -> Served:
    """Start ``transformers serve MODEL_DIR`` and wait until ``/v1/models`` lists it."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = open(log, "wb")  # noqa: SIM115 - the process writes it until stopped
    process = subprocess.Popen(
        [*_serve_command(), str(model_dir), "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
    )
    out.close()
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited ({process.returncode}):\n"
                               + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as answer:
                ids = [m["id"] for m in json.load(answer)["data"]]
            if str(model_dir) in ids:
                return Served(url, str(model_dir), process, log)
        except OSError:
            pass
        time.sleep(0.2)
    Served(url, str(model_dir), process, log).stop()
    raise RuntimeError(f"transformers serve did not answer within {timeout:.0f} s:\n"
                       + log.read_text()[-3000:])
