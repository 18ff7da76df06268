"""The first minute of a fresh kernel: ``%load_ext llm_magic``, then the first ``%%llm`` cell.

Each measurement starts a fresh kernel (jupyter_client), with the warm-up of
``%load_ext`` on (``LLM_MAGIC_WARM_UP=1``) and off (``0``), the two in turn within
each round so that a busy machine weighs on both alike. Between the two modes of
each round a third fresh kernel of the same interpreter runs the baseline: plain
transformers with no llm_magic at all, one cell that imports ``AutoTokenizer`` and
``AutoModelForCausalLM``, loads the demo model (``llm_magic/demo/model``, its path
taken from this repository, not from an import of llm_magic) and generates 5
tokens greedily from "The import statement" with a streamer that prints each
token as it comes. Both sides use the same torch thread count: llm_magic applies
``default_threads()`` (all physical cores but one, or ``LLM_MAGIC_THREADS``) when
its first model loads, and the raw cell calls ``torch.set_num_threads`` with that
same number, asked of llm_magic here in the benchmark's process (``lm.threads()``,
which before torch is imported is ``default_threads()``); the count each side
ended with is read back from its kernel and printed.

Times are taken by the client, from sending a request to the message that
answers it (the first streamed token is llm_magic's first ``display_data``, the
raw cell's first ``stdout`` stream message). Prints one table of medians:

- ``%load_ext`` itself: request to reply; target <= 0.15 s;
- typed: a ``%%llm demo -n 5`` cell sent 3 s after ``%load_ext`` returned, as a
  person types it; first-token latency (request to the first streamed text).
  Kept as a measurement only: its old target (<= 0.5 s with the warm-up) is
  withdrawn;
- Run All: the same cell sent together with ``%load_ext``; first-token latency
  from the ``%load_ext`` request; target: no slower with the warm-up (the ratio of
  medians <= 1.03; beside it the median of the ratios within each round);
- raw transformers: the baseline's first-token latency, request of its cell to
  its first token (no warm-up applies; the same value stands in both columns);
- llm_magic's share: Run All minus raw transformers, the difference of the
  medians, beside it the median of the differences within each round; target
  <= 0.3 s (judged on the difference of medians, warm-up and no warm-up alike).

Then, once, what the imports transformers forces cost in a fresh kernel:
``import torch``, then ``import transformers``, then
``import transformers.modeling_utils``, each timed inside the kernel.

llm_magic's modules are compiled to bytecode first, as pip does when it installs the
wheel: an editable install on a machine that sets ``PYTHONDONTWRITEBYTECODE`` (this
one does) would otherwise compile them again in every fresh kernel, which no installed
copy does.

Usage: ``python benchmarks/cold_start.py [--repeat 5] [--pause 3]``
"""

from __future__ import annotations

import argparse
import json
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
DEMO = Path(__file__).resolve().parent.parent / "llm_magic" / "demo" / "model"
TIMEOUT = 300
SHARE_TARGET = 0.3

# Plain transformers, no llm_magic: its own first token, streamed to stdout.
RAW_CELL = """\
import torch
torch.set_num_threads({threads})
from transformers import AutoTokenizer, AutoModelForCausalLM
tok = AutoTokenizer.from_pretrained({demo!r})
model = AutoModelForCausalLM.from_pretrained({demo!r})

class Streamer:
    def __init__(self):
        self.prompt = True
    def put(self, value):
        if self.prompt:  # generate() hands over the prompt first
            self.prompt = False
            return
        print(tok.decode(value.reshape(-1)), end="", flush=True)
    def end(self):
        print(flush=True)

model.generate(**tok("The import statement", return_tensors="pt"), max_new_tokens=5,
               do_sample=False, streamer=Streamer())
"""

IMPORTS_CELL = """\
import json, time
_t = [time.perf_counter()]
import torch
_t.append(time.perf_counter())
import transformers
_t.append(time.perf_counter())
import transformers.modeling_utils
_t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(_t, _t[1:])]), flush=True)
"""

THREADS = "__import__('torch').get_num_threads()"
HAS_LLM_MAGIC = "'llm_magic' in __import__('sys').modules"


class Kernel:
    """A fresh kernel of this interpreter; messages are timed as they arrive."""

    def __init__(self, warm_up: bool | None = None) -> None:
        from jupyter_client import KernelManager

        env = dict(os.environ)
        if warm_up is not None:
            env["LLM_MAGIC_WARM_UP"] = "1" if warm_up else "0"
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def first(self, msg_id: str, kinds: tuple[str, ...], stream: str | None = None) -> float:
        """When the first iopub message of ``kinds`` for ``msg_id`` arrived (perf_counter).

        ``stream``: of ``stream`` messages, only those of this name (``stdout``) count.
        """
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                raise RuntimeError(f"the cell failed: {msg['content']['evalue']}")
            if msg["msg_type"] in kinds and (
                    stream is None or msg["msg_type"] != "stream"
                    or msg["content"]["name"] == stream):
                return time.perf_counter()

    def reply(self, msg_id: str) -> float:
        """When the shell reply to ``msg_id`` arrived; raises if the cell failed."""
        return self.reply_content(msg_id)[0]

    def reply_content(self, msg_id: str) -> tuple[float, dict[str, Any]]:
        """(When the shell reply to ``msg_id`` arrived, its content); raises if the cell failed."""
        while True:
            reply = self.kc.get_shell_msg(timeout=TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(f"the cell failed: {reply['content'].get('evalue')}")
                return time.perf_counter(), reply["content"]

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


def expression(content: dict[str, Any], name: str) -> str:
    """The value of the user expression ``name`` in a reply's content."""
    got = content["user_expressions"][name]
    if got.get("status") != "ok":
        raise RuntimeError(f"{name}: {got.get('evalue')}")
    return got["data"]["text/plain"]


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


def run_all(warm_up: bool) -> tuple[float, int]:
    """(First-token seconds of the cell sent with %load_ext, from the %load_ext request;
    torch's thread count after the cell)."""
    kernel = Kernel(warm_up)
    try:
        t0 = time.perf_counter()
        load = kernel.kc.execute("%load_ext llm_magic")
        cell = kernel.kc.execute(CELL, user_expressions={"threads": THREADS})
        first = kernel.first(cell, ("display_data",)) - t0
        kernel.reply(load)
        _, content = kernel.reply_content(cell)
        return first, int(expression(content, "threads"))
    finally:
        kernel.close()


def raw(threads: int) -> tuple[float, int]:
    """(First-token seconds of plain transformers, request of its cell to its first
    token; torch's thread count after the cell)."""
    kernel = Kernel()
    try:
        t0 = time.perf_counter()
        cell = kernel.kc.execute(RAW_CELL.format(threads=threads, demo=str(DEMO)),
                                 user_expressions={"threads": THREADS, "lm": HAS_LLM_MAGIC})
        first = kernel.first(cell, ("stream",), stream="stdout") - t0
        _, content = kernel.reply_content(cell)
        if expression(content, "lm") != "False":
            raise RuntimeError("llm_magic was imported in the raw transformers kernel")
        return first, int(expression(content, "threads"))
    finally:
        kernel.close()


def import_costs() -> list[float]:
    """Seconds of ``import torch``, ``transformers``, ``transformers.modeling_utils``, in turn."""
    kernel = Kernel()
    try:
        cell = kernel.kc.execute(IMPORTS_CELL)
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = kernel.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != cell:
                continue
            if msg["msg_type"] == "error":
                raise RuntimeError(f"the cell failed: {msg['content']['evalue']}")
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                costs = json.loads(msg["content"]["text"])
                kernel.reply(cell)
                return costs
    finally:
        kernel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh kernels per measurement")
    parser.add_argument("--pause", type=float, default=3.0,
                        help="seconds between %%load_ext and the typed cell")
    args = parser.parse_args()
    import compileall

    import llm_magic as lm

    # What pip does at install; kept in __pycache__ whatever PYTHONDONTWRITEBYTECODE says.
    compileall.compile_dir(Path(lm.__file__).parent, quiet=1)

    n_threads = lm.threads()  # torch not imported here: the count llm_magic will apply
    got: dict[str, list[float]] = {k: [] for k in (
        "load_off", "load_on", "typed_off", "typed_on", "all_off", "all_on", "raw")}
    seen: dict[str, set[int]] = {"llm_magic": set(), "raw": set()}
    for i in range(args.repeat):
        for j, on in enumerate((i % 2 == 0, i % 2 != 0)):  # alternate which mode goes first
            if j == 1:  # the baseline between the two modes of the round
                first, used = raw(n_threads)
                got["raw"].append(first)
                seen["raw"].add(used)
            mode = "on" if on else "off"
            load_ext, first = typed(on, args.pause)
            got[f"load_{mode}"].append(load_ext)
            got[f"typed_{mode}"].append(first)
            first, used = run_all(on)
            got[f"all_{mode}"].append(first)
            seen["llm_magic"].add(used)
        print(f"round {i + 1}/{args.repeat}: " + ", ".join(
            f"{k} {v[-1]:.2f}" for k, v in got.items()), file=sys.stderr, flush=True)
    imports = import_costs()
    med: dict[str, Any] = {k: statistics.median(v) for k, v in got.items()}
    ratio = med["all_on"] / med["all_off"]
    # Within a round the kernels ran back to back, under the same load.
    pairs = statistics.median(on / off for on, off in zip(got["all_on"], got["all_off"],
                                                           strict=True))
    share = {m: med[f"all_{m}"] - med["raw"] for m in ("off", "on")}
    share_pairs = {m: statistics.median(a - r for a, r in zip(got[f"all_{m}"], got["raw"],
                                                               strict=True))
                   for m in ("off", "on")}
    share_met = "; ".join(f"{'yes' if share[m] <= SHARE_TARGET else 'no'} ({label})"
                          for m, label in (("on", "warm-up"), ("off", "no warm-up")))
    rows = [
        ("%load_ext", f"{med['load_off']:.3f} s", f"{med['load_on']:.3f} s", "<= 0.15 s",
         "yes" if med["load_on"] <= 0.15 else "no"),
        (f"typed: first token, {args.pause:g} s after", f"{med['typed_off']:.2f} s",
         f"{med['typed_on']:.2f} s", "-", "-"),
        ("Run All: first token from %load_ext", f"{med['all_off']:.2f} s",
         f"{med['all_on']:.2f} s", "ratio <= 1.03",
         f"{'yes' if ratio <= 1.03 else 'no'} ({ratio:.3f}; pairs {pairs:.3f})"),
        ("raw transformers: first token", f"{med['raw']:.2f} s", f"{med['raw']:.2f} s",
         "-", "(baseline)"),
        ("llm_magic's share: Run All - raw",
         f"{share['off']:.2f} s (pairs {share_pairs['off']:.2f})",
         f"{share['on']:.2f} s (pairs {share_pairs['on']:.2f})", f"<= {SHARE_TARGET:g} s",
         share_met),
    ]
    print(f"Medians of {args.repeat} fresh kernels each; {os.cpu_count()} CPUs; torch threads: "
          f"llm_magic {sorted(seen['llm_magic'])}, raw transformers {sorted(seen['raw'])}.")
    print(table(rows, ("measurement", "no warm-up", "warm-up", "target", "met")))
    print(f"Imports transformers forces, in a fresh kernel: import torch {imports[0]:.2f} s, "
          f"import transformers {imports[1]:.2f} s, import transformers.modeling_utils "
          f"{imports[2]:.2f} s (total {sum(imports):.2f} s).")


if __name__ == "__main__":
    main()
