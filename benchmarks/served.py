"""A served model through lm.generate against the bare openai client, side by side in one run.

Starts one ``transformers serve`` of the demo model on 127.0.0.1 (CPU, one
thread), then prints one table:
- tokens/s of ``lm.generate`` (streamed into a sink, as a cell does) over the
  bare ``openai`` client streaming the same completion from the same server,
  the runs interleaved; target >= 0.97;
- the client's CPU time per token on each side (what llm_magic adds, whatever
  the server's speed on a shared machine);
- time from an interrupt (a kernel interrupt, and a Stop button's event) to
  the return of control, target <= 0.5 s.

Usage: ``python benchmarks/served.py [--tokens 120] [--repeat 10]``
"""

from __future__ import annotations

import _thread
import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import table  # noqa: E402

PROMPT = "The import statement"


def bare_client(client: Any, model: str, tokens: int) -> tuple[float, int]:
    """Seconds and new tokens of one streamed completion through the openai client alone."""
    t0 = time.perf_counter()
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=tokens,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    new, text = 0, []
    for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.text)
        if chunk.usage is not None:
            new = chunk.usage.completion_tokens
    return time.perf_counter() - t0, new


def through_llm_magic(tokens: int) -> tuple[float, int]:
    import llm_magic as lm

    pieces: list[str] = []
    t0 = time.perf_counter()
    g = lm.generate(PROMPT, model="served", max_new_tokens=tokens, stream=pieces.append)
    return time.perf_counter() - t0, g.stats.new_tokens


def interrupt_to_return(kind: str, tokens: int) -> float:
    """Seconds from an interrupt, 0.3 s into a generation, until lm.generate hands back."""
    import llm_magic as lm

    fired: list[float] = []
    stop = threading.Event()

    def fire() -> None:
        fired.append(time.perf_counter())
        if kind == "kernel interrupt":
            _thread.interrupt_main()
        else:
            stop.set()

    timer = threading.Timer(0.3, fire)
    timer.start()
    try:
        lm.generate(PROMPT, model="served", max_new_tokens=tokens, stop_event=stop,
                    stream=lambda s: None)
    except KeyboardInterrupt:
        pass
    returned = time.perf_counter()
    timer.join()
    if not fired:
        raise RuntimeError("the generation ended before the interrupt; ask for more tokens")
    return returned - fired[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=120, help="new tokens per generation")
    parser.add_argument("--repeat", type=int, default=10, help="runs per side (median)")
    args = parser.parse_args()

    import _serve
    import openai

    import llm_magic as lm
    from llm_magic.demo import MODEL_DIR

    log = Path(tempfile.mkdtemp(prefix="llm_magic_served_")) / "serve.log"
    t0 = time.perf_counter()
    served = _serve.start(MODEL_DIR, log, threads=1)
    startup = time.perf_counter() - t0
    try:
        lm.load(served.url, name="served", model=served.model)
        # One client per side, each kept for every run (as llm_magic keeps its own).
        client = openai.OpenAI(base_url=served.url, api_key="none", max_retries=0)
        bare_client(client, served.model, 8)  # warm both paths and the server
        through_llm_magic(8)
        ours, theirs, counts = [], [], set()
        cpu: dict[str, list[float]] = {"ours": [], "bare": []}
        for i in range(args.repeat):  # interleaved ABBA, so both sides see the same machine
            for side in (("bare", "ours") if i % 2 == 0 else ("ours", "bare")):
                c0 = resource.getrusage(resource.RUSAGE_SELF)
                if side == "bare":
                    s, n = bare_client(client, served.model, args.tokens)
                    theirs.append(n / s)
                else:
                    s, n = through_llm_magic(args.tokens)
                    ours.append(n / s)
                c1 = resource.getrusage(resource.RUSAGE_SELF)
                used = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
                cpu[side].append(1000 * used / max(n, 1))
                counts.add(n)
        stops = {kind: [interrupt_to_return(kind, 250) for _ in range(5)]
                 for kind in ("kernel interrupt", "stop event")}
    finally:
        lm.unload(all=True)
        served.stop()

    a, b = statistics.median(ours), statistics.median(theirs)
    pairs = statistics.median(x / y for x, y in zip(ours, theirs, strict=True))
    ca, cb = statistics.median(cpu["ours"]), statistics.median(cpu["bare"])
    rows = [("tokens/s, streamed (median)", f"{a:.1f}", f"{b:.1f}", f"{a / b:.3f}", ">= 0.97"),
            ("tokens/s, median of paired ratios", "-", "-", f"{pairs:.3f}", ">= 0.97"),
            ("client CPU ms per token (median)", f"{ca:.2f}", f"{cb:.2f}", f"{cb / ca:.3f}",
             "-")]
    for kind, times in stops.items():
        rows.append((f"{kind} -> return, s (median / max)",
                     f"{statistics.median(times):.3f} / {max(times):.3f}", "-", "-", "<= 0.5"))
    print(f"transformers serve of the demo model on 127.0.0.1 (started in {startup:.1f} s), "
          f"{args.repeat} runs per side of {sorted(counts)} new tokens")
    print(table(rows, ("measure", "lm.generate", "bare openai", "ratio", "target")))


if __name__ == "__main__":
    main()
