"""Quantized loading measured side by side in one run, on one CPU thread.

For the bundled demo (a trained GPT-2) and a 12-layer Llama-shaped random model
(about 115 MB in float32), each loaded as float32, bfloat16, int8 and int4
(``lm.load(..., quantize=...)``), it prints:

- weight bytes of the whole model, and of the layers quantization replaces (the
  linear layers) with their ratio to bfloat16's bytes for the same layers
  (targets: int8 <= 0.55x, int4 <= 0.30x);
- RSS growth at load, measured in a fresh process per row after one forward
  pass has touched every weight (a float32 checkpoint is mapped from its file,
  read on first use) and the C heap was trimmed; and the peak growth during the
  load (a quantized load reads the stored weights first);
- tokens per second of greedy ``lm.generate``, the four rows of a model taking
  turns round after round so that a busy machine slows them alike (the median of
  the rounds), and tokens per second of CPU time, which other processes on a busy
  machine disturb far less: its ratio to float32's in the same round, median and
  range over the rounds (target: int8 >= 1.0x on CPU);
- top-1 agreement and mean and max KL per token (nats) against float32 over a
  fixed text (``lm.quality``): Python's documentation for the demo (targets:
  int8 >= 99% and <= 0.01 nats, int4 >= 95% and <= 0.1 nats). Random weights
  make the Llama's agreement meaningless: it is shown, not judged.

Usage: ``python benchmarks/quantize.py [--tokens 48] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LLM_MAGIC_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The benchmark's generations stay out of the user's history.
os.environ.setdefault("LLM_MAGIC_HISTORY", os.path.join(tempfile.mkdtemp(), "history.sqlite"))

from _common import table  # noqa: E402

ROWS = (("float32", None), ("bfloat16", None), ("float32", "int8"), ("float32", "int4"))
PROMPT = "The import statement"
#: The fixed text of the quality columns: language-reference topics the demo can read.
TOPICS = ("import", "for", "with", "class", "try", "lambda")
HEADER = ("model", "weights", "memory", "linear layers", "x bf16", "RSS at load",
          "peak at load", "tokens/s", "tok/CPU-s", "x f32 (CPU)", "top-1 agree", "mean KL",
          "max KL")


def build_llama(root: Path) -> str:
    from _models import build_tiny_model

    return str(build_tiny_model(root / "llama-12L", arch="llama", n_embd=512, n_layer=12,
                                context=512, vocab_size=512))


def label(dtype: str, quantize: str | None) -> str:
    return quantize or dtype


# -- one row's memory, in a process of its own ----------------------------------------------


def child(path: str, dtype: str, quantize: str | None) -> None:
    """Load once in this fresh process; print the RSS the load added, after a forward pass."""
    import threading

    import torch
    from transformers import AutoModelForCausalLM  # noqa: F401 - imported before measuring

    import llm_magic as lm
    from llm_magic.resources.sysmem import process_rss

    if quantize:
        import torchao.quantization  # noqa: F401 - its import is not the model's memory
    lm.estimate(path)
    before = process_rss()
    peak = [before]
    done = threading.Event()

    def watch() -> None:  # the load's highest RSS, sampled every 2 ms
        while not done.wait(0.002):
            peak[0] = max(peak[0], process_rss())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    handle = lm.load(path, name="m", dtype=dtype, quantize=quantize)
    with torch.inference_mode():
        handle.model(torch.tensor([[1, 2, 3]]))
    done.set()
    watcher.join()
    lm.get_manager().backend("m").release_memory()  # what the forward pass left in the heap
    grown = process_rss() - before
    print(json.dumps({"rss": grown, "peak": max(peak[0] - before, grown)}))


def memory_in_a_fresh_process(path: str, dtype: str, quantize: str | None) -> dict[str, int]:
    args = [sys.executable, __file__, "--child", path, dtype, quantize or "none"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the rows of one model, side by side ------------------------------------------------------


def layer_bytes(manager: object, name: str) -> int:
    """Bytes of the weights of the layers quantization replaces (as they are now)."""
    from llm_magic.backends import _quantize
    from llm_magic.resources.estimate import quantizable_layers

    backend = manager.backend(name)  # type: ignore[attr-defined]
    if backend.quantized is not None:
        return int(backend.quantized.after)
    return sum(_quantize.tensor_bytes(m.weight) for _, m in quantizable_layers(backend.model))


def texts(path: str) -> list[str]:
    """Windows of the fixed text that fit the model's context (fewer tokens than it reads)."""
    import pydoc_data.topics

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for topic in TOPICS:
        ids = tok(pydoc_data.topics.topics[topic], verbose=False)["input_ids"][:250]
        out.append(tok.decode(ids))
    return out


def measure(model: str, path: str, tokens: int, rounds: int) -> list[tuple[str, ...]]:
    import llm_magic as lm
    from llm_magic.common.sizes import format_size

    manager = lm.get_manager()
    names = []
    for dtype, quantize in ROWS:
        name = f"{model}-{label(dtype, quantize)}"
        lm.load(path, name=name, dtype=dtype, quantize=quantize)
        names.append(name)
    speeds: dict[str, list[float]] = {n: [] for n in names}
    on_cpu: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # once each, untimed: first-call costs out of the way
        lm.generate(PROMPT, model=name, max_new_tokens=4, chat=False)
    for _ in range(rounds):
        for name in names:
            cpu = time.process_time()
            g = lm.generate(PROMPT, model=name, max_new_tokens=tokens, chat=False)
            cpu = time.process_time() - cpu
            speeds[name].append(g.stats.new_tokens / g.stats.duration)
            on_cpu[name].append(g.stats.new_tokens / cpu)
    windows = texts(path)
    reference = names[0]
    bf16 = layer_bytes(manager, names[1])
    rows = []
    for (dtype, quantize), name in zip(ROWS, names, strict=True):
        info = manager.info(name)
        mem = memory_in_a_fresh_process(path, dtype, quantize)
        speed = statistics.median(speeds[name])
        ratios = [a / b for a, b in zip(on_cpu[name], on_cpu[reference], strict=True)]
        agree, kl = "-", "-"
        worst = "-"
        if name != reference:
            reports = [lm.quality(name, against=reference, text=t) for t in windows]
            n = sum(r.predicted for r in reports)
            agree = f"{sum(sum(r.agree) for r in reports) / n:.2%}"
            kl = f"{sum(sum(r.kl) for r in reports) / n:.5f}"
            worst = f"{max(r.max_kl for r in reports):.4f}"
        linear = layer_bytes(manager, name)
        rows.append((model, label(dtype, quantize), format_size(info.memory),
                     format_size(linear), f"{linear / bf16:.3f}", format_size(mem["rss"]),
                     format_size(mem["peak"]), f"{speed:.1f}",
                     f"{statistics.median(on_cpu[name]):.1f}",
                     f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                     agree, kl, worst))
    for name in names:
        lm.unload(name)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per generation")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per row")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "DTYPE", "QUANTIZE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, dtype, quantize = args.child
        child(path, dtype, None if quantize == "none" else quantize)
        return
    import torch

    import llm_magic as lm
    from llm_magic.demo import MODEL_DIR

    lm.set_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llm_magic_quant_") as root:
        models = {"demo": str(MODEL_DIR), "llama-12L": build_llama(Path(root))}
        rows = []
        for model, path in models.items():
            rows += measure(model, path, args.tokens, args.rounds)
    print(f"torch {torch.__version__}, one thread, load average {os.getloadavg()[0]:.1f}, "
          f"{args.rounds} rounds of {args.tokens} tokens, {time.perf_counter() - started:.0f} s")
    print(table(rows, HEADER))
    print("x bf16: the linear layers' bytes over bfloat16's; x f32 (CPU): tokens per CPU-second "
          "over float32's in the same round, median (lowest-highest); KL(float32 || row) per "
          "token in nats.")


if __name__ == "__main__":
    main()
