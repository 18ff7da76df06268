"""Resource management measured on this machine, in one run.

Prints one table with three parts:
- estimate vs. measured memory (``get_memory_footprint`` after the load, and the
  RSS the load added once every weight is read) for the tiny test models, a
  larger built model and the demo model when it ships; target ratio within 15%;
- RSS returned by ``unload`` within a second, as % of the model's measured size
  (target >= 90%);
- generation tokens/s through ``lm.generate`` with 1 vs. 2 torch threads for a
  small and a larger model, on the machine as it is (its load average is
  printed) and beside one more busy process (what a notebook meets: a browser
  tab, another kernel, a test run).

Usage: ``python benchmarks/resources.py [--tokens 32] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import model_dir, table  # noqa: E402

PROMPT = "The import statement and the class definition"
HEADER = ("part", "model", "dtype", "params", "estimate", "measured", "ratio", "note")
# ratio: estimate/measured; for unload, the worst RSS drop; for threads, 1-thread/2-thread speed


def build_models(root: Path) -> dict[str, str]:
    from _models import build_tiny_model

    specs = {
        "tiny-gpt2": dict(arch="gpt2"),
        "tiny-llama": dict(arch="llama"),
        "gpt2-14M": dict(arch="gpt2", n_embd=384, n_layer=8, context=256),
        "llama-19M": dict(arch="llama", n_embd=512, n_layer=8, context=256),
        "gpt2-43M": dict(arch="gpt2", n_embd=768, n_layer=6, context=512),
    }
    out = {}
    for name, kw in specs.items():
        out[name] = str(build_tiny_model(root / name, **kw))  # type: ignore[arg-type]
    kind, path = model_dir()
    out["demo" if kind == "demo" else "small-built (no demo)"] = path
    return out


def _touch(model: object) -> None:
    import torch

    with torch.no_grad():
        for tensor in model.parameters():  # type: ignore[attr-defined]
            tensor.sum()


def estimates(manager: object, models: dict[str, str]) -> list[tuple[str, ...]]:
    import llm_magic as lm
    from llm_magic.manager.info import count as _count
    from llm_magic.manager.info import size as _size
    from llm_magic.resources.sysmem import process_rss

    rows = []
    for name, path in models.items():
        for dtype in ("float32", "bfloat16"):
            est = lm.estimate(path, dtype=dtype, device="cpu")
            gc.collect()
            before = process_rss()
            handle = manager.load(path, name="m", dtype=dtype)  # type: ignore[attr-defined]
            _touch(manager.backend("m").memory_owner())  # type: ignore[attr-defined]
            added = process_rss() - before
            info = handle.info
            rows.append(("estimate", name, dtype, _count(info.parameters), _size(est.memory),
                         _size(info.memory), f"{est.memory / info.memory:.3f}",
                         f"{est.method}; load added {_size(added)} RSS"))
            manager.unload("m")  # type: ignore[attr-defined]
    return rows


def unload_drops(manager: object, models: dict[str, str]) -> list[tuple[str, ...]]:
    from llm_magic.manager.info import count as _count
    from llm_magic.manager.info import size as _size
    from llm_magic.resources.sysmem import process_rss

    rows = []
    for name in ("gpt2-14M", "llama-19M", "gpt2-43M"):
        for dtype in ("float32", "bfloat16"):
            drops = []
            for _ in range(3):
                gc.collect()
                handle = manager.load(models[name], name="m", dtype=dtype)  # type: ignore[attr-defined]
                _touch(manager.backend("m").memory_owner())  # type: ignore[attr-defined]
                memory, params = handle.info.memory, handle.info.parameters
                before = process_rss()
                t0 = time.perf_counter()
                report = manager.unload("m")[0]  # type: ignore[attr-defined]
                while time.perf_counter() - t0 < 1.0 and before - process_rss() < 0.9 * memory:
                    time.sleep(0.05)
                drops.append((before - process_rss()) / memory)
                assert report.freed
            rows.append(("unload", name, dtype, _count(params), "", _size(memory),
                         f"{min(drops):.0%}",
                         "RSS drop within 1 s, worst of 3: " + " ".join(f"{d:.0%}" for d in drops)))
    return rows


def _busy() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def threads(manager: object, models: dict[str, str], tokens: int, repeat: int
            ) -> list[tuple[str, ...]]:
    import statistics

    import torch

    import llm_magic as lm
    from llm_magic.manager.info import count as _count

    small = next(k for k in models if k.startswith(("demo", "small-built")))
    rows = []
    for name in (small, "tiny-gpt2", "gpt2-43M"):
        handle = manager.load(models[name], name="m")  # type: ignore[attr-defined]
        lm.generate(PROMPT, model="m", max_new_tokens=4, manager=manager)
        for load in ("machine as is", "+1 busy process"):
            hog = _busy() if load != "machine as is" else None
            try:
                rates = {}
                for n in (1, 2):
                    torch.set_num_threads(n)
                    runs = [lm.generate(PROMPT, model="m", max_new_tokens=tokens,
                                        manager=manager).stats.tokens_per_second or 0.0
                            for _ in range(repeat)]
                    rates[n] = statistics.median(runs)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            busy = os.getloadavg()[0]
            rows.append(("threads", name, "float32", _count(handle.info.parameters), "", "",
                         f"{rates[1] / rates[2]:.2f}x",
                         f"{load} (load avg {busy:.1f}): 1 thread {rates[1]:.1f} tok/s, "
                         f"2 threads {rates[2]:.1f} tok/s"))
        manager.unload("m")  # type: ignore[attr-defined]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    parser.add_argument("--repeat", type=int, default=3, help="runs per thread setting (median)")
    args = parser.parse_args()

    import torch

    from llm_magic import resources  # threads live there
    from llm_magic.manager import ModelManager

    root = Path(tempfile.mkdtemp(prefix="llm_magic_bench_resources_"))
    models = build_models(root)
    manager = ModelManager()
    before = torch.get_num_threads()
    rows = estimates(manager, models)
    rows += unload_drops(manager, models)
    rows += threads(manager, models, args.tokens, args.repeat)
    torch.set_num_threads(before)
    print(f"machine: {os.cpu_count()} CPUs; torch {torch.__version__}; "
          f"llm_magic default threads here: {resources.default_threads()}")
    print(table(rows, HEADER))


if __name__ == "__main__":
    main()
