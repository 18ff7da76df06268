"""Streamed generation with history on and off, side by side in one run.

Prints one table: tokens/s of a streamed ``lm.generate`` (greedy, the demo
model, same prompt and thread setting) with history recording into a
temporary SQLite file, over the same with history off; target: no measurable
change (ratio >= 0.97), as the ratio of the medians and as the median of the
ratios of back-to-back pairs (which ran under the same load). Also the wall
time per call, which includes the row written at the start; the CPU time per
call of the whole process, the writer thread included; the time the store
takes in the caller's thread per generation (its only cost that the token
loop can wait for, measured alone so that machine load does not hide it);
and a check that every recorded generation is there.

Usage: ``python benchmarks/history.py [--tokens 240] [--repeat 9] [--threads 1]
[--flush 1.0]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import model_dir, table  # noqa: E402

PROMPT = "The import statement"


def listener_cost(tokens: int) -> float:
    """Seconds the history store takes in the caller's thread for one generation's two events.

    Exactly what ``lm.generate`` does around its token loop: the start (the row is
    inserted) and the end (the completion is queued for the writer thread).
    """
    import llm_magic as lm
    from llm_magic.events import EventBus
    from llm_magic.generation import Generation, GenerationStats, PendingGeneration, make_request

    info = lm.get_manager().info("bench")
    request = make_request(PROMPT, max_new_tokens=tokens)
    stats = GenerationStats(3, tokens, 0.01, 100.0, 1.0, "length")
    bus = EventBus()
    t0 = time.perf_counter()
    pending = PendingGeneration(PROMPT, "bench", request, info, time.time())
    bus.emit("generation_start", "bench", generation=pending)
    gen = Generation("text " * tokens, PROMPT, "bench", stats, id=pending.id)
    bus.emit("generation_end", "bench", generation=gen, error=None)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=240,
                        help="new tokens per generation (the demo reads 256)")
    parser.add_argument("--repeat", type=int, default=9, help="runs per setting (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--flush", type=float, default=1.0,
                        help="seconds between writes of the partial output (the default)")
    args = parser.parse_args()

    import torch

    import llm_magic as lm
    from llm_magic.history import configure

    database = Path(tempfile.mkdtemp(prefix="llm_magic_bench_")) / "history.sqlite"
    configure(path=database, flush_interval=args.flush)
    kind, path = model_dir()
    lm.load("demo" if kind == "demo" else path, name="bench")
    torch.set_num_threads(args.threads)
    pieces = []
    recorder = sys.modules["llm_magic.history"]._recorder  # to wait for its writer thread

    def run(history_on: bool) -> tuple[float, float, float, int | None]:
        configure(enabled=history_on)
        pieces.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        g = lm.generate(PROMPT, model="bench", max_new_tokens=args.tokens, stream=pieces.append)
        wall = time.perf_counter() - t0
        recorder.flush()  # the writer thread's work on this generation counts too
        cpu = time.process_time() - c0
        assert g.stats.tokens_per_second is not None
        return g.stats.tokens_per_second, wall, cpu, g.id

    run(False), run(True)  # warm both paths (and create the file)
    tps: dict[bool, list[float]] = {False: [], True: []}
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    ids = []
    for i in range(args.repeat):
        # interleave, alternating the order, so drift in machine load hits both alike
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            rate, seconds, used, row = run(on)
            tps[on].append(rate)
            wall[on].append(seconds)
            cpu[on].append(used)
            if on:
                ids.append(row)
    recorded = {r.id for r in lm.history(None)}
    listener = statistics.median(listener_cost(args.tokens) for _ in range(50))
    med = {on: statistics.median(tps[on]) for on in (False, True)}
    walls = {on: statistics.median(wall[on]) for on in (False, True)}
    # the median of each pair's ratio: a pair ran back to back, under the same load
    tps_ratio = statistics.median(a / b for a, b in zip(tps[True], tps[False], strict=True))
    wall_ratio = statistics.median(a / b for a, b in zip(wall[True], wall[False], strict=True))
    cpus = {on: statistics.median(cpu[on]) for on in (False, True)}
    cpu_ratio = statistics.median(a / b for a, b in zip(cpu[True], cpu[False], strict=True))
    n = lm.history(1)[0].new_tokens
    rows = [
        ("model", f"{kind}, {n} new tokens, {args.threads} thread, flush every {args.flush} s",
         "", "", ""),
        ("streamed tokens/s, history off", f"{med[False]:.1f}", "1.000", "1.000", ""),
        ("streamed tokens/s, history on", f"{med[True]:.1f}", f"{med[True] / med[False]:.3f}",
         f"{tps_ratio:.3f}", ">= 0.97"),
        ("wall time per call, history off", f"{walls[False] * 1000:.1f} ms", "1.000", "1.000",
         ""),
        ("wall time per call, history on", f"{walls[True] * 1000:.1f} ms",
         f"{walls[True] / walls[False]:.3f}", f"{wall_ratio:.3f}", "<= 1.03"),
        ("CPU time per call (every thread), history off", f"{cpus[False] * 1000:.1f} ms",
         "1.000", "1.000", ""),
        ("CPU time per call (every thread), history on", f"{cpus[True] * 1000:.1f} ms",
         f"{cpus[True] / cpus[False]:.3f}", f"{cpu_ratio:.3f}", "<= 1.03"),
        ("history's time in the caller's thread per generation", f"{listener * 1000:.2f} ms",
         f"{listener / walls[True]:.4f}", "", "report"),
        ("generations recorded / run with history on", f"{len(recorded & set(ids))}/{len(ids)}",
         "", "", "all"),
    ]
    print(table(rows, ("measure", "value", "ratio of medians", "median of pair ratios",
                       "target")))


if __name__ == "__main__":
    main()
