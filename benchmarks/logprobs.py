"""Token probabilities: their cost in the generation loop, scoring, and what reaches the page.

Prints one table, everything measured side by side in this run:
- streamed tokens/s of ``lm.generate(..., logprobs=5)`` over the same call
  without records (ABBA-interleaved rounds, median of the per-round ratios;
  target >= 0.95, one thread on both sides);
- ``lm.score`` of a text over a raw forward pass of the same ids (the work it
  cannot avoid);
- payload bytes per token of the view at K=5 beside CircuitsVis's
  ``token_log_probs`` HTML for the same tokens (``pip install -e .[bench]``).

Usage: ``python benchmarks/logprobs.py [--tokens 200] [--rounds 8] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import table  # noqa: E402

PROMPT = "The import statement"
TEXT = ("The import statement binds a name in the local namespace. "
        "A module is executed the first time it is imported, and its names are then "
        "available as attributes of the module object. ") * 2


def tokens_per_second(lm: object, tokens: int, logprobs: int | None) -> float:
    gen = lm.generate(PROMPT, model="bench", max_new_tokens=tokens,  # type: ignore[attr-defined]
                      logprobs=logprobs, stream=lambda s: None)
    return gen.stats.new_tokens / gen.stats.duration  # type: ignore[no-any-return]


def circuitsvis_bytes(handle: object, ids: list[int], k: int) -> tuple[int, int] | None:
    """Bytes of CircuitsVis's token_log_probs HTML for ``ids``: (offline, with its CDN).

    Offline, its HTML inlines its whole JavaScript bundle; online, it loads the bundle
    from a CDN when shown. None without CircuitsVis.
    """
    try:
        from circuitsvis.logits import token_log_probs
    except ImportError:
        return None
    import torch

    model, tok = handle.model, handle.tokenizer  # type: ignore[attr-defined]
    with torch.inference_mode():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    html = token_log_probs(torch.tensor(ids), lp, lambda i: tok.decode([i]), top_k=k)
    return len(html.local_src.encode("utf-8")), len(html.cdn_src.encode("utf-8"))


def view_bytes(gen: object) -> tuple[int, int] | None:
    """(binary payload, string table) bytes of the token view, or None where it is missing."""
    try:
        from llm_magic.widgets.tokens import TokensWidget
    except ImportError:
        return None
    view = TokensWidget(gen)
    sizes = getattr(view, "payload_bytes", None)
    sizes = sizes() if callable(sizes) else sizes
    if isinstance(sizes, tuple):
        return int(sizes[0]), int(sizes[1])
    if isinstance(sizes, dict):
        return int(sizes.get("binary", 0)), int(sizes.get("strings", 0))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    parser.add_argument("--rounds", type=int, default=8, help="ABBA rounds (each runs 4 calls)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    import llm_magic as lm

    handle = lm.load("demo", name="bench")
    torch.set_num_threads(args.threads)
    for _ in range(2):  # warm both paths
        tokens_per_second(lm, 20, None)
        tokens_per_second(lm, 20, 5)

    ratios, plain, recorded = [], [], []
    for _ in range(args.rounds):
        a1 = tokens_per_second(lm, args.tokens, None)
        b1 = tokens_per_second(lm, args.tokens, 5)
        b2 = tokens_per_second(lm, args.tokens, 5)
        a2 = tokens_per_second(lm, args.tokens, None)
        plain += [a1, a2]
        recorded += [b1, b2]
        ratios.append((b1 + b2) / (a1 + a2))

    ids = handle.tokenizer(TEXT)["input_ids"]
    model = handle.model

    def forward() -> None:
        with torch.inference_mode():
            model(torch.tensor([ids]), use_cache=False)

    def scored() -> None:
        lm.score(TEXT, model="bench", logprobs=5)

    t_fwd, t_score = [], []
    for _ in range(max(5, args.rounds)):
        t0 = time.perf_counter()
        forward()
        t_fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scored()
        t_score.append(time.perf_counter() - t0)

    gen = lm.generate(PROMPT, model="bench", max_new_tokens=args.tokens, logprobs=5)
    n = len(gen.tokens or ())
    ours = view_bytes(gen)
    theirs = circuitsvis_bytes(handle, list(gen.prompt_ids or ()) + [r.id for r in gen.tokens],
                               5)

    med_plain, med_rec = statistics.median(plain), statistics.median(recorded)
    rows = [
        ("model", f"demo ({handle.info.parameters / 1e6:.2f}M params), {args.threads} thread, "
                  f"{args.tokens} tokens, {args.rounds} ABBA rounds", "", ""),
        ("streamed tokens/s, plain", f"{med_plain:.1f}", "1.000", ""),
        ("streamed tokens/s, logprobs=5", f"{med_rec:.1f}",
         f"{statistics.median(ratios):.3f}", ">= 0.95"),
        ("  ratio of the medians", "", f"{med_rec / med_plain:.3f}", ""),
        (f"raw forward pass, {len(ids)} tokens", f"{statistics.median(t_fwd) * 1000:.2f} ms",
         "1.00", ""),
        ("lm.score, K=5", f"{statistics.median(t_score) * 1000:.2f} ms",
         f"{statistics.median(t_score) / statistics.median(t_fwd):.2f}", "report"),
    ]
    if ours is not None:
        binary, strings = ours
        rows.append(("view payload per token, K=5", f"{binary / n:.1f} B + strings "
                     f"{strings / n:.1f} B", "", "<= 60 B + strings"))
    else:
        rows.append(("view payload per token, K=5", "view not installed", "", ""))
    if theirs is not None:
        mine = sum(ours) if ours else None
        for label, size in (("offline, bundle inlined", theirs[0]),
                            ("online, bundle from a CDN", theirs[1])):
            rows.append((f"CircuitsVis token_log_probs, {label}", f"{size / n:,.0f} B per token",
                         f"{size / mine:,.1f}x ours" if mine else "", "report"))
    else:
        rows.append(("CircuitsVis token_log_probs", "not installed (pip install circuitsvis)",
                     "", ""))
    print(table(rows, ("measure", "value", "ratio", "target")))


if __name__ == "__main__":
    main()
