"""lm.generate against raw transformers, side by side in one run.

Prints one table:
- tokens/s of ``lm.generate`` over raw ``model.generate`` (greedy, same model,
  prompt and thread setting), with and without streaming; target >= 0.97;
- time to first token of a warm ``lm.generate`` vs. building a
  ``transformers.pipeline`` per call, as many tutorials do;
- ``%load_ext llm_magic`` time and whether it imported torch.

Usage: ``python benchmarks/generate.py [--tokens 200] [--repeat 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import median_time, model_dir, table  # noqa: E402

PROMPT = "The import statement"


def load_ext_cost() -> tuple[float, bool]:
    code = (
        "import sys, time\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "t = time.perf_counter(); ip.run_line_magic('load_ext', 'llm_magic')\n"
        "print(time.perf_counter() - t, 'torch' in sys.modules)\n"
    )
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
        runs.append((float(out[0]), out[1] == "True"))
    return min(r[0] for r in runs), any(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    args = parser.parse_args()

    ext_seconds, ext_torch = load_ext_cost()

    import torch
    import transformers

    import llm_magic as lm

    kind, path = model_dir()
    handle = lm.load("demo" if kind == "demo" else path, name="bench")
    torch.set_num_threads(args.threads)
    model, tok = handle.model, handle.tokenizer
    inputs = tok(PROMPT, return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]

    def raw() -> int:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False,
                                 pad_token_id=handle.tokenizer.eos_token_id)
        return int(out.shape[1] - n_prompt)

    def ours(stream: bool) -> int:
        sink = (lambda s: None) if stream else None
        return lm.generate(PROMPT, model="bench", max_new_tokens=args.tokens,
                           stream=sink).stats.new_tokens

    n_raw, n_ours = raw(), ours(False)
    assert n_raw == n_ours, (n_raw, n_ours)
    # interleave the three so drift in machine load hits them alike
    t_raw, t_plain, t_stream = [], [], []
    for _ in range(args.repeat):
        t_raw.append(median_time(raw, 1))
        t_plain.append(median_time(lambda: ours(False), 1))
        t_stream.append(median_time(lambda: ours(True), 1))
    med = sorted(t_raw)[len(t_raw) // 2], sorted(t_plain)[len(t_plain) // 2], \
        sorted(t_stream)[len(t_stream) // 2]
    tps = [n_raw / t for t in med]

    # warm call vs. a pipeline built per call
    def warm_first_token() -> float:
        return lm.generate(PROMPT, model="bench", max_new_tokens=1).stats.duration

    def pipeline_per_call() -> None:
        pipe = transformers.pipeline("text-generation", model=path, tokenizer=path,
                                     device="cpu")
        pipe(PROMPT, max_new_tokens=1, do_sample=False)

    transformers.logging.set_verbosity_error()
    warm = median_time(warm_first_token, args.repeat)
    per_call = median_time(pipeline_per_call, max(2, args.repeat // 2))

    rows = [
        ("model", f"{kind} ({handle.info.parameters / 1e6:.1f}M params, {args.threads} thread)",
         "", ""),
        ("raw model.generate tokens/s", f"{tps[0]:.1f}", "1.00", ""),
        ("lm.generate tokens/s, no stream", f"{tps[1]:.1f}", f"{tps[1] / tps[0]:.3f}", ">= 0.97"),
        ("lm.generate tokens/s, streamed", f"{tps[2]:.1f}", f"{tps[2] / tps[0]:.3f}", ">= 0.97"),
        ("first token, warm lm.generate", f"{warm * 1000:.1f} ms", "1", ""),
        ("first token, pipeline() per call", f"{per_call * 1000:.1f} ms",
         f"{per_call / warm:.0f}x slower", "report"),
        ("%load_ext llm_magic", f"{ext_seconds * 1000:.0f} ms", "", "< 150 ms"),
        ("torch imported by %load_ext", str(ext_torch), "", "False"),
    ]
    print(table(rows, ("measure", "value", "ratio", "target")))


if __name__ == "__main__":
    main()
