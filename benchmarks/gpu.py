"""GPU resource management measured in one run, on any machine with an NVIDIA GPU.

Builds a random Llama locally (no hub; ~0.5B parameters by default) and prints one table:
- estimate vs. measured in bf16: the estimate, the growth of
  ``torch.cuda.memory_allocated`` over the load, and ``get_memory_footprint``;
- unload: ``memory_allocated`` back to its baseline, and the cache emptied;
- a GPU budget for 1.5 models: the second load evicts the first; a float32
  load is refused before reading weights;
- ``device="auto"`` with a budget of half the model: the placement accelerate
  made and the generation speed of the offloaded model;
- the sampler's NVML readings beside ``nvidia-smi``'s;
- ``lm.generate`` tokens/s against raw ``model.generate`` (greedy, same model,
  prompt and token count).

Usage: ``python benchmarks/gpu.py [--hidden 1536] [--layers 24] [--tokens 128]``
(runs from a checkout without installing: the repository root goes on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import table  # noqa: E402
from _cuda import allocated, warm_cublas  # noqa: E402

PROMPT = "The import statement and the class definition"
MiB = 2**20


def _unload_row(manager, name: str, base: int, reserved0: int) -> tuple[str, bool]:
    import torch

    report = manager.unload(name)[0]
    left = allocated() - base
    text = (f"freed={report.freed}; allocated - baseline = {left} bytes; reserved "
            f"{_mb(torch.cuda.memory_reserved(0))} (before load {_mb(reserved0)})")
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if left and clear is not None:  # tell a leak from cuBLAS workspaces made meanwhile
        clear()
        text += f"; after clearing cuBLAS workspaces {allocated() - base} bytes"
    return text, report.freed and left <= 0


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:,.1f} MiB"


def _smi(index: int) -> dict[str, str]:
    fields = ["memory.used", "memory.total", "utilization.gpu", "temperature.gpu", "power.draw"]
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
             "-i", str(index)], capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return {f: f"nvidia-smi failed: {exc}" for f in fields}
    return dict(zip(fields, (v.strip() for v in out.split(",")), strict=False))


def _tokens_per_second(fn, repeat: int) -> tuple[float, int]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        runs.append(n / (time.perf_counter() - t0))
    return statistics.median(runs), n


def _speeds(manager, name: str, tokens: int, repeat: int
            ) -> tuple[tuple[float, int], tuple[float, int]]:
    """Greedy tokens/s of raw ``model.generate`` and of ``lm.generate`` on the same model.

    A function of its own so that its references to the model die when it returns.
    """
    import torch

    import llm_magic as lm

    backend = manager.backend(name)
    model, tok = backend.model, backend.tokenizer
    ids = tok(PROMPT, return_tensors="pt").to(model.device)
    eos = list(backend.eos_ids) or None

    def raw() -> int:
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=tokens, do_sample=False,
                                 pad_token_id=eos[0] if eos else None, eos_token_id=eos)
        torch.cuda.synchronize()
        return int(out.shape[-1] - ids["input_ids"].shape[-1])

    def ours() -> int:
        g = lm.generate(PROMPT, model=name, max_new_tokens=tokens, manager=manager)
        return g.stats.new_tokens

    raw(), ours()  # warm up both paths
    return _tokens_per_second(raw, repeat), _tokens_per_second(ours, repeat)


def main() -> None:  # noqa: C901 - one linear script, one table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1536, help="hidden size of the built Llama")
    parser.add_argument("--layers", type=int, default=24, help="decoder layers")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--repeat", type=int, default=3, help="runs per speed measurement")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device; torch sees none.")
    from _models import build_tiny_model

    import llm_magic as lm
    from llm_magic.errors import BudgetExceededError
    from llm_magic.manager import ModelManager
    from llm_magic.manager.info import count as _count
    from llm_magic.resources.sampler import get_sampler

    rows: list[tuple[str, ...]] = []

    def row(check: str, value: str, target: str, ok: bool | None) -> None:
        rows.append((check, value, target, "-" if ok is None else ("ok" if ok else "FAIL")))

    t0 = time.perf_counter()
    path = build_tiny_model(Path(tempfile.mkdtemp(prefix="llm_magic_gpu_")), arch="llama",
                            n_embd=args.hidden, n_layer=args.layers, vocab_size=4096,
                            context=2048)
    built = time.perf_counter() - t0
    manager = ModelManager()
    warm_cublas()  # cuBLAS workspaces live for the process: in the baseline, not the model
    torch.cuda.empty_cache()
    base = allocated()
    reserved0 = torch.cuda.memory_reserved(0)

    # 1. estimate vs measured, bf16
    est = lm.estimate(str(path), dtype="bfloat16", device="cuda:0")
    t0 = time.perf_counter()
    handle = manager.load(str(path), name="a", dtype="bfloat16", device="cuda:0")
    load_s = time.perf_counter() - t0
    grown = allocated() - base
    info = handle.info
    row("model", f"Llama {_count(info.parameters)} params, built in {built:.0f} s, "
        f"loaded in {load_s:.1f} s", "", None)
    row("estimate (bf16)", f"{_mb(est.memory)} ({est.method})", "", None)
    row("memory_allocated growth", f"{_mb(grown)}; ratio estimate/measured "
        f"{est.memory / grown:.3f}", "within 15%", abs(est.memory - grown) <= 0.15 * grown)
    row("get_memory_footprint", f"{_mb(info.memory)}; ModelInfo.estimate {_mb(info.estimate)}",
        "within 15%", abs((info.estimate or 0) - info.memory) <= 0.15 * info.memory)

    # 2. generation speed against raw transformers
    (raw_tps, raw_n), (our_tps, our_n) = _speeds(manager, "a", args.tokens, args.repeat)
    row("tokens/s raw model.generate", f"{raw_tps:.1f} ({raw_n} tokens)", "", None)
    row("tokens/s lm.generate", f"{our_tps:.1f} ({our_n} tokens); ratio {our_tps / raw_tps:.3f}",
        ">= 0.97", our_tps >= 0.97 * raw_tps)

    # 3. the sampler's NVML readings beside nvidia-smi
    sample = get_sampler().sample_now()
    if sample.gpus:
        g = sample.gpus[0]
        smi = _smi(g.nvml_index)
        row("NVML memory used", f"sampler {_mb(g.memory_used)} (+{_mb(g.memory_reserved)} "
            f"reserved); nvidia-smi {smi['memory.used']} MiB", "about equal", None)
        row("NVML memory total", f"sampler {_mb(g.memory_total)}; nvidia-smi "
            f"{smi['memory.total']} MiB", "equal", None)
        row("NVML this process", f"sampler {_mb(g.process_memory)}; torch reserved "
            f"{_mb(torch.cuda.memory_reserved(0))}", "process >= torch", None)
        row("NVML utilization/temp/power", f"sampler {g.utilization}% {g.temperature} C "
            f"{g.power} W; nvidia-smi {smi['utilization.gpu']}% {smi['temperature.gpu']} C "
            f"{smi['power.draw']} W", "about equal", None)
        row("sampler models", str(dict(sample.models)) or "{}", "empty: a private manager",
            None)
    else:
        row("NVML", f"no GPU sample: {sample.gpu_error}", "", False)

    # 4. unload returns the allocator to its baseline and empties the cache
    del handle
    text, ok = _unload_row(manager, "a", base, reserved0)
    row("unload", text, "0 bytes", ok)

    # 5. a GPU budget: eviction, then a refusal before any weight is read
    lm.budget(manager=manager, cuda0=int(1.5 * est.memory))
    manager.load(str(path), name="a", dtype="bfloat16", device="cuda:0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager.load(str(path), name="b", dtype="float16", device="cuda:0")
    evicted = [str(w.message).split(",")[0] for w in caught]
    row("budget 1.5 models: 2nd load", f"resident {manager.names()}; {evicted}; allocated "
        f"{_mb(allocated() - base)}", "'a' evicted", manager.names() == ["b"])
    try:
        manager.load(str(path), name="c", dtype="float32", device="cuda:0")
        refused = "loaded (not refused)"
    except BudgetExceededError as exc:
        refused = str(exc).splitlines()[0][:110]
    row("float32 over budget", refused, "refused", manager.names() == ["b"])
    manager.unload(all=True)

    # 6. device="auto" with half the model's size as budget: offload to CPU
    lm.budget(manager=manager, cuda0=est.memory // 2)
    try:
        handle = manager.load(str(path), name="o", dtype="bfloat16", device="auto")
        info = handle.info
        gen = lm.generate(PROMPT, model="o", max_new_tokens=16, manager=manager)
        row("device='auto', budget half", f"{info.device}: "
            + ", ".join(f"{d} {_mb(n)}" for d, n in info.placement)
            + f"; {gen.stats.tokens_per_second or 0:.1f} tokens/s offloaded",
            "cuda:0+cpu", info.device == "cuda:0+cpu")
        del handle
        text, ok = _unload_row(manager, "o", base, reserved0)
        row("offloaded unload", text, "0 bytes", ok)
    except Exception as exc:  # report, do not hide the rest of the table
        row("device='auto', budget half", f"{type(exc).__name__}: {str(exc)[:100]}", "", False)

    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
          f"{lm.threads()} CPU threads")
    print(table(rows, ("check", "value", "target", "result")))


if __name__ == "__main__":
    main()
