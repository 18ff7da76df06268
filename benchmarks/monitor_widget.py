"""What a live monitor costs a long generation, in a real kernel, side by side in one run.

Prints one table:
- tokens/s of a long ``lm.generate`` with a live ``lm.monitor()`` displayed (sampler at
  1 Hz, its thread changing the widget's traits) over tokens/s with the monitor stopped
  (no sampler thread at all); rounds alternate the two in ABBA order and the ratio is the
  median of the ratios within each round; target >= 0.98;
- the same as tokens per CPU-second of the kernel process (sampler thread, trait
  updates and iopub thread included), which other processes on the machine's cores
  do not blur the way they blur the wall clock;
- the sampler thread's CPU while the monitor is open (its own CPU clock, read with
  ``time.pthread_getcpuclockid``: sampling *and* turning samples into traits), as % of
  one core and ms per sample;
- what the monitor sends to the page: comm messages and their bytes (JSON content plus
  binary buffers) per second, counted in the kernel by wrapping the widget's
  ``comm.publish_msg``.

The model is a small GPT-2 with a 1024-token context built into a temp dir (the demo
model's 256 tokens are too short for a long generation); torch uses one thread.

Usage: ``python benchmarks/monitor_widget.py [--tokens 300] [--rounds 12] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import model_dir, table  # noqa: E402
from magic_throughput import Kernel  # noqa: E402

PROMPT = "The import statement"

SETUP = """
import json, threading, time
import llm_magic as lm
from IPython.display import display
m = lm.monitor()
display(m)
_sent = {"messages": 0, "bytes": 0}
_publish = m.comm.publish_msg

def _counting(msg_type, data=None, metadata=None, buffers=None, **keys):
    _sent["messages"] += 1
    _sent["bytes"] += len(json.dumps(data, separators=(",", ":"), default=str))
    _sent["bytes"] += sum(memoryview(b).nbytes for b in (buffers or []))
    return _publish(msg_type, data=data, metadata=metadata, buffers=buffers, **keys)

m.comm.publish_msg = _counting

def _sampler_cpu():
    for t in threading.enumerate():
        if t.name == "llm_magic-monitor":
            return time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    return None

def measured(live, tokens):
    (m.start if live else m.stop)()
    time.sleep(1.5 if live else 0.2)  # the first sample lands before timing starts
    sent0, cpu0, t0 = dict(_sent), _sampler_cpu(), time.perf_counter()
    p0 = time.process_time()
    g = lm.generate(PROMPT, model="bench", max_new_tokens=tokens)
    wall, cpu1, process = time.perf_counter() - t0, _sampler_cpu(), time.process_time() - p0
    sent1 = dict(_sent)
    m.stop()
    return json.dumps({
        "tps": g.stats.tokens_per_second, "tokens": g.stats.new_tokens, "wall": wall,
        "per_cpu": g.stats.new_tokens / process,
        "cpu": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        "messages": sent1["messages"] - sent0["messages"],
        "bytes": sent1["bytes"] - sent0["bytes"]})
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300, help="new tokens per generation")
    parser.add_argument("--rounds", type=int, default=12, help="rounds of with/without pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    _, path = model_dir(prefer_demo=False)
    kernel = Kernel()
    try:
        kernel.run(f"import torch; torch.set_num_threads({args.threads})\n"
                   f"PROMPT = {PROMPT!r}\n%load_ext llm_magic\n%llm load {path} --as bench")
        kernel.run(SETUP)
        for live in (False, True):  # warm up both
            kernel.value(f"measured({live}, {args.tokens // 4})")
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for round_ in range(args.rounds):
            order = (False, True, True, False) if round_ % 2 == 0 else (True, False, False, True)
            for live in order:
                runs[live].append(json.loads(kernel.value(f"measured({live}, {args.tokens})")))
        tokens = int(runs[True][0]["tokens"])
        params = int(kernel.value("lm.get_manager().info('bench').parameters"))
        gpus = kernel.value("len(m.gpus) or m.gpu_note")
    finally:
        kernel.close()

    off = [r["tps"] for r in runs[False]]
    on = [r["tps"] for r in runs[True]]
    # within a round (A, B, B, A): the two B over the two A; the second A over the first
    # is the same comparison with nothing changed, the noise floor of this machine
    ratios, noise = [], []
    for i in range(0, len(on), 2):
        ratios.append(statistics.mean(on[i:i + 2]) / statistics.mean(off[i:i + 2]))
        noise.append(off[i + 1] / off[i])
    # tokens per CPU-second of the whole kernel process (the sampler thread, the trait
    # updates and the iopub thread included): what the monitor costs, without the wall
    # clock's noise when other processes share the cores
    cpu_ratios = []
    for i in range(0, len(on), 2):
        cpu_ratios.append(statistics.mean(r["per_cpu"] for r in runs[True][i:i + 2])
                          / statistics.mean(r["per_cpu"] for r in runs[False][i:i + 2]))
    live = runs[True]
    seconds = sum(r["wall"] for r in live)
    cpu = sum(r["cpu"] for r in live if r["cpu"] is not None)
    messages = sum(r["messages"] for r in live)
    nbytes = sum(r["bytes"] for r in live)
    rows = [
        ("model", f"GPT-2 {params / 1e6:.1f}M params, {args.threads} thread, "
                  f"{tokens} new tokens", "", ""),
        ("GPUs seen by the monitor", str(gpus), "", ""),
        ("tokens/s, monitor stopped (median)", f"{statistics.median(off):.1f}", "1.000", ""),
        ("tokens/s, live monitor at 1 Hz (median)", f"{statistics.median(on):.1f}",
         f"{statistics.median(ratios):.3f}", ">= 0.98"),
        ("  ratio of the two medians", "", f"{statistics.median(on) / statistics.median(off):.3f}",
         ""),
        ("  ratio per round", " ".join(f"{r:.3f}" for r in ratios), "", ""),
        ("  noise floor: stopped over stopped, per round", " ".join(f"{r:.3f}" for r in noise),
         f"{statistics.median(noise):.3f}", ""),
        ("tokens per kernel CPU-second, live over stopped (median)",
         f"{statistics.median(r['per_cpu'] for r in live):.1f}",
         f"{statistics.median(cpu_ratios):.3f}", ">= 0.98"),
        ("  ratio per round", " ".join(f"{r:.3f}" for r in cpu_ratios), "", ""),
        ("sampler thread CPU with the monitor open, % of one core",
         f"{100 * cpu / seconds:.2f}", "", "report"),
        ("  CPU per update (ms)", f"{1000 * cpu / max(1, messages):.2f}", "", ""),
        ("comm messages to the page per second", f"{messages / seconds:.2f}", "", ""),
        ("bytes to the page per second (JSON content + buffers)", f"{nbytes / seconds:.0f}",
         "", "report"),
        ("  bytes per message", f"{nbytes / max(1, messages):.0f}", "", ""),
    ]
    print(table(rows, ("measure", "value", "ratio", "target")))


if __name__ == "__main__":
    main()
