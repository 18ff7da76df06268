"""The first minute of a fresh kernel: ``%load_ext llm_magic``, then the first ``%%llm`` cell.

Each measurement starts a fresh kernel (jupyter_client), with the warm-up of
``%load_ext`` on (``LLM_MAGIC_WARM_UP=1``) and off (``0``), the two in turn within
each round so that a busy machine weighs on both alike. Times are taken by the
client, from sending a request to the message that answers it. Prints one table
of medians:

- ``%load_ext`` itself: request to reply; target <= 0.15 s;
- typed: a ``%%llm demo -n 5`` cell sent 3 s after ``%load_ext`` returned, as a
  person types it; first-token latency (request to the first streamed text);
  target <= 0.5 s with the warm-up;
- Run All: the same cell sent together with ``%load_ext``; first-token latency
  from the ``%load_ext`` request; target: no slower with the warm-up (the ratio of
  medians <= 1.03; beside it the median of the ratios within each round).

Usage: ``python benchmarks/cold_start.py [--repeat 5] [--pause 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import table  # noqa: E402

CELL = "%%llm demo -n 5\nThe import statement"
TIMEOUT = 300


class Kernel:
    """A fresh kernel of this interpreter; messages are timed as they arrive."""

    def __init__(self, warm_up: bool) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, "LLM_MAGIC_WARM_UP": "1" if warm_up else "0"})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def first(self, msg_id: str, kinds: tuple[str, ...]) -> float:
        """When the first iopub message of ``kinds`` for ``msg_id`` arrived (perf_counter)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                raise RuntimeError(f"the cell failed: {msg['content']['evalue']}")
            if msg["msg_type"] in kinds:
                return time.perf_counter()

    def reply(self, msg_id: str) -> float:
        """When the shell reply to ``msg_id`` arrived; raises if the cell failed."""
        while True:
            reply = self.kc.get_shell_msg(timeout=TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(f"the cell failed: {reply['content'].get('evalue')}")
                return time.perf_counter()

    def idle(self, msg_id: str) -> None:
        """Wait until the kernel went idle after ``msg_id``."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"):
                return

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def typed(warm_up: bool, pause: float) -> tuple[float, float]:
    """(%load_ext seconds, first-token seconds of a cell sent ``pause`` s after it)."""
    kernel = Kernel(warm_up)
    try:
        t0 = time.perf_counter()
        load = kernel.kc.execute("%load_ext llm_magic")
        load_ext = kernel.reply(load) - t0
        kernel.idle(load)
        time.sleep(pause)
        t1 = time.perf_counter()
        cell = kernel.kc.execute(CELL)
        first = kernel.first(cell, ("display_data",)) - t1
        kernel.reply(cell)
        return load_ext, first
    finally:
        kernel.close()


def run_all(warm_up: bool) -> float:
    """First-token seconds of the cell sent with %load_ext, from the %load_ext request."""
    kernel = Kernel(warm_up)
    try:
        t0 = time.perf_counter()
        load = kernel.kc.execute("%load_ext llm_magic")
        cell = kernel.kc.execute(CELL)
        first = kernel.first(cell, ("display_data",)) - t0
        kernel.reply(load)
        kernel.reply(cell)
        return first
    finally:
        kernel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh kernels per measurement")
    parser.add_argument("--pause", type=float, default=3.0,
                        help="seconds between %%load_ext and the typed cell")
    args = parser.parse_args()
    got: dict[str, list[float]] = {k: [] for k in (
        "load_off", "load_on", "typed_off", "typed_on", "all_off", "all_on")}
    for i in range(args.repeat):
        for on in (i % 2 == 0, i % 2 != 0):  # alternate which mode goes first
            mode = "on" if on else "off"
            load_ext, first = typed(on, args.pause)
            got[f"load_{mode}"].append(load_ext)
            got[f"typed_{mode}"].append(first)
            got[f"all_{mode}"].append(run_all(on))
        print(f"round {i + 1}/{args.repeat}: " + ", ".join(
            f"{k} {v[-1]:.2f}" for k, v in got.items()), file=sys.stderr, flush=True)
    med: dict[str, Any] = {k: statistics.median(v) for k, v in got.items()}
    ratio = med["all_on"] / med["all_off"]
    # Within a round the two kernels ran back to back, under the same load.
    pairs = statistics.median(on / off for on, off in zip(got["all_on"], got["all_off"],
                                                           strict=True))
    rows = [
        ("%load_ext", f"{med['load_off']:.3f} s", f"{med['load_on']:.3f} s", "<= 0.15 s",
         "yes" if med["load_on"] <= 0.15 else "no"),
        (f"typed: first token, {args.pause:g} s after", f"{med['typed_off']:.2f} s",
         f"{med['typed_on']:.2f} s", "<= 0.5 s", "yes" if med["typed_on"] <= 0.5 else "no"),
        ("Run All: first token from %load_ext", f"{med['all_off']:.2f} s",
         f"{med['all_on']:.2f} s", "ratio <= 1.03",
         f"{'yes' if ratio <= 1.03 else 'no'} ({ratio:.3f}; pairs {pairs:.3f})"),
    ]
    print(f"Medians of {args.repeat} fresh kernels each; {os.cpu_count()} CPUs.")
    print(table(rows, ("measurement", "no warm-up", "warm-up", "target", "met")))


if __name__ == "__main__":
    main()
