"""The logit lens: llm_magic against a full-vocabulary lens and against the unavoidable work.

For the demo model and a 12-layer tiny GPT-2, at 64 and 256 tokens, with one
torch thread on every side, it measures:

- ``unavoidable``: one forward pass with hidden states, then one final norm and
  one output-embedding product per layer, results dropped at once: the work no
  exact lens can skip;
- ``full``: a straightforward full-vocabulary lens (the tuned-lens approach),
  written here: every layer's logits stacked into one ``[layers, tokens, vocab]``
  float32 array, then log-softmax, softmax, top-k, the final prediction's
  probability and rank, entropy and KL over the whole array;
- ``lm.logit_lens``: the call itself, model resident (the self-check included).

Time is the median of the runs; peak extra memory is the largest total of
torch's CPU allocations during one run (the torch profiler's memory events),
over what was allocated before it. Payload is what the view receives: the
widget's binary buffers plus its JSON state.

Targets: at 256 tokens the lens's peak extra memory is at most 1/20 of the full
approach's, its time no more than the full approach's, and at most 1.25x the
unavoidable work.

Usage: ``python benchmarks/lens.py [--lengths 64,256] [--repeat 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import table  # noqa: E402

PARAGRAPH = (
    "The import statement binds a name in the local namespace to a module object. "
    "A function definition is an executable statement; its execution binds the function "
    "name to a function object. When a name is used in a code block, it is resolved "
    "using the nearest enclosing scope. "
)
TOP = 5


def ids_of(tokenizer: Any, tokens: int) -> list[int]:
    ids = tokenizer(PARAGRAPH * (tokens // 20 + 4), verbose=False)["input_ids"]
    return [int(i) for i in ids[:tokens]]


def peak_extra(fn: Any) -> tuple[int, Any]:
    """The largest total of torch CPU allocations while ``fn`` runs, and its result."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    cpu = torch._C._autograd.DeviceType.CPU
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == cpu)
    now = top = 0
    for _, n in events:
        now += n
        top = max(top, now)
    return top, result


def median_time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def unavoidable(model: Any, ids: Any) -> None:
    """One forward pass with hidden states, one norm and one head product per layer."""
    import torch

    with torch.inference_mode():
        base = model.base_model
        hidden = base(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        head, norm = model.get_output_embeddings(), base.ln_f
        for h in hidden[:-1]:
            head(norm(h[0]))
        head(hidden[-1][0])  # already normed: the model's own logits


def full_lens(model: Any, ids: Any, k: int = TOP) -> list[Any]:
    """The straightforward lens: one [layers, tokens, vocab] float32 array, reduced at once."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        head, norm = model.get_output_embeddings(), model.base_model.ln_f
        logits = torch.stack([head(norm(h[0])) for h in out.hidden_states[:-1]]
                             + [out.logits[0]]).float()
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        top = p.topk(k, dim=-1)
        final = logits[-1].argmax(-1).expand(logits.shape[0], -1).unsqueeze(-1)
        final_prob = p.gather(-1, final)[..., 0]
        rank = (logits > logits.gather(-1, final)).sum(-1) + 1
        entropy = -(p * logp).sum(-1)
        kl = (p[-1] * (logp[-1] - logp)).sum(-1)
        return [x.numpy() for x in (top.indices, top.values, final_prob, rank, entropy, kl)]


def payload(lens: Any) -> int:
    from ipywidgets.widgets.widget import _remove_buffers

    view = lens.widget()
    state, _paths, buffers = _remove_buffers(view.get_state())
    size = len(json.dumps(state).encode()) + sum(memoryview(b).nbytes for b in buffers)
    view.close()
    return size


def measure(name: str, length: int, repeat: int) -> tuple[str, ...]:
    import torch

    import llm_magic as lm

    backend = lm.get_manager().backend(name)
    model, tokenizer = backend.model, backend.tokenizer
    ids = ids_of(tokenizer, length)
    text = tokenizer.decode(ids)
    while len(tokenizer(text)["input_ids"]) > length:
        text = text.rsplit(" ", 1)[0]
    ids = tokenizer(text)["input_ids"]
    batch = torch.tensor([ids])

    def ours() -> Any:
        return lm.logit_lens(text, model=name, top=TOP, max_tokens=4096)

    for fn in (lambda: unavoidable(model, batch), lambda: full_lens(model, batch), ours):
        fn()  # warm up
    t_base = median_time(lambda: unavoidable(model, batch), repeat)
    t_full = median_time(lambda: full_lens(model, batch), repeat)
    t_ours = median_time(ours, repeat)
    m_full, _ = peak_extra(lambda: full_lens(model, batch))
    m_ours, lens = peak_extra(ours)
    rows = lens.shape[0]
    return (
        name, str(len(ids)), str(rows), f"{t_base * 1000:.1f} ms", f"{t_full * 1000:.1f} ms",
        f"{t_ours * 1000:.1f} ms", f"{t_ours / t_base:.2f}x", f"{t_ours / t_full:.2f}x",
        mb(m_full), mb(m_ours), f"1/{m_full / max(m_ours, 1):.0f}", kb(payload(lens)),
        kb(lens.nbytes),
    )


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def kb(n: float) -> str:
    return f"{n / 1e3:.1f} kB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,256", help="token counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, every side")
    args = parser.parse_args()
    import torch
    from _models import build_tiny_model

    import llm_magic as lm

    torch.set_num_threads(args.threads)
    lm.set_threads(args.threads)
    deep = build_tiny_model(Path(tempfile.mkdtemp(prefix="llm_magic_lens_")), arch="gpt2",
                            n_layer=12, n_embd=64, context=512)
    lm.load("demo")
    lm.load(str(deep), name="gpt2-12")
    torch.set_num_threads(args.threads)
    out = []
    for name in ("demo", "gpt2-12"):
        for length in (int(x) for x in args.lengths.split(",")):
            out.append(measure(name, length, max(1, args.repeat)))
            print(f"{name} at {length} tokens measured", file=sys.stderr, flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch threads: {args.threads}, {os.cpu_count()} CPUs, load average {load}; top "
          f"{TOP}; demo = GPT-2 4 x 176, vocab 4,096; gpt2-12 = tiny GPT-2 12 x 64, vocab 512; "
          f"median of {args.repeat} runs")
    print(table(out, ("model", "tokens", "rows", "unavoidable", "full", "lm.logit_lens",
                      "lens/unavoidable", "lens/full", "peak full", "peak lens",
                      "lens/full peak", "payload", "LensMap")))
    print("targets at 256 tokens: lens/full peak <= 1/20, lens/full <= 1.00x, "
          "lens/unavoidable <= 1.25x")


if __name__ == "__main__":
    main()
