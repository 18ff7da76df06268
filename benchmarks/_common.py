"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path


def model_dir(prefer_demo: bool = True) -> tuple[str, str]:
    """The demo model when it ships, else a small GPT-2 built into a temp dir."""
    from llm_magic.demo import MODEL_DIR

    if prefer_demo and (MODEL_DIR / "model.safetensors").exists():
        return "demo", str(MODEL_DIR)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _models import build_tiny_model

    out = Path(tempfile.mkdtemp(prefix="llm_magic_bench_"))
    build_tiny_model(out, arch="gpt2", n_embd=256, n_layer=4, context=1024, vocab_size=2048)
    return "built", str(out)


def median_time(fn: Callable[[], object], repeat: int) -> float:
    import time

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)
