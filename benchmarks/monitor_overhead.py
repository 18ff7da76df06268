"""What the resource sampler costs: CPU time of its thread at a given interval.

Prints one table per run: interval, samples taken, CPU seconds the sampler
thread used, that as % of one core, the CPU cost of one sample, and the whole
process's CPU over the same window as a cross-check (the main thread sleeps
meanwhile). Target: under 1% of one core at 1 Hz.

The thread's own CPU time is read with ``time.thread_time()`` inside a
subscriber callback, which runs on the sampler thread: the difference between
the first and the last callback covers whole rounds (wait, sample, deliver) and
nothing else in the process. Start-up (psutil import, NVML init, priming) is
shown apart.

Usage: ``python benchmarks/monitor_overhead.py [--seconds 20] [--interval 1.0 [0.2 ...]]``
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table  # noqa: E402

from llm_magic.resources.sampler import Sample, Sampler  # noqa: E402


def measure(interval: float, seconds: float) -> tuple[str, ...]:
    sampler = Sampler(interval=interval)
    marks: list[tuple[float, float]] = []  # (wall, sampler thread CPU) at each delivery
    last: list[Sample] = []

    started = threading.Event()

    def on_sample(sample: Sample) -> None:
        marks.append((time.perf_counter(), time.thread_time()))
        last[:] = [sample]
        started.set()

    unsubscribe = sampler.subscribe(on_sample)
    try:
        started.wait(10)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        time.sleep(seconds)
        process_cpu = time.process_time() - cpu0
        process_wall = time.perf_counter() - wall0
    finally:
        unsubscribe()
    if len(marks) < 2:
        raise SystemExit(f"only {len(marks)} samples in {seconds} s")
    (w_first, c_first), (w_last, c_last) = marks[0], marks[-1]
    rounds = len(marks) - 1
    used = c_last - c_first
    gpus = last[0].gpus if last else ()
    where = f"{len(gpus)} GPU(s)" if gpus else f"none ({last[0].gpu_error})" if last else "?"
    return (
        f"{sampler.interval:g}",
        str(len(marks)),
        f"{used:.4f}",
        f"{100 * used / (w_last - w_first):.3f}",
        f"{1000 * used / rounds:.3f}",
        f"{1000 * c_first:.1f}",
        f"{100 * process_cpu / process_wall:.3f}",
        where,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each run samples")
    parser.add_argument("--interval", type=float, nargs="+", default=[1.0],
                        help="sampling interval(s) in seconds, one run each")
    args = parser.parse_args()
    rows = [measure(interval, args.seconds) for interval in args.interval]
    print(table(rows, ("interval s", "samples", "thread CPU s", "% of one core",
                       "CPU ms/sample", "start-up CPU ms", "process CPU %", "GPUs")))


if __name__ == "__main__":
    main()
