"""Causes: activation patching against TransformerLens, integrated gradients against inseq.

Side by side in one run, one torch thread on every side, on a 12-layer GPT-2-shaped
model with random weights (n_embd 256, 8 heads, n_positions 1024, a 2,048-token BPE
vocabulary), built with its tokenizer into a temporary directory:

1. The full residual patching grid (12 layers x 16 positions) of
   ``lm.patch(clean, corrupt, answers=(a, b), over="resid")`` against TransformerLens 4's
   ``patching.get_act_patch_resid_pre`` on the same weights: a ``TransformerBridge`` booted
   on its own copy of the Hugging Face model (the boot switches that copy to eager
   attention), with ``enable_compatibility_mode(no_processing=True)``: the legacy
   ``blocks.L.hook_resid_pre`` names, no LayerNorm folding, no weight centering, so its
   logits are Hugging Face's. Its side is what a TransformerLens user runs: the clean
   run cached (``resid_pre`` only), the corrupt run, then the patching call with the
   normalised metric (patched - corrupt) / (clean - corrupt). The answers a and b are the
   tokens whose logit moves most up and most down from corrupt to clean at the last
   position (a well-conditioned denominator). Reported: the median time, the ratio, the
   largest |difference| between the two grids, whether llm_magic's unpatched corrupt logits
   equal a plain Hugging Face forward (``torch.equal``, and the call's own hooked check),
   and TransformerLens's largest |difference| to Hugging Face's logits.
2. Integrated gradients, 50 steps, for the same 20 output tokens (a 16-token prompt and
   the 20 tokens that follow it in a fixed text, forced on both sides) against inseq
   (``inseq.load_model(model, "integrated_gradients")`` on a Hugging Face model object
   and its tokenizer, ``generated_texts=``). Both attribute f = log p(token) (inseq:
   ``attributed_fn="probability", logprob=True``) from the same baseline, inseq's default:
   its unk token's embedding at every position (``baseline=`` that token id on our side).
   inseq reports captum's convergence delta per step (``return_convergence_delta=True``,
   in its time): its completeness error is |delta| / |f(x) - f(baseline)|, the same
   measure as ``Attribution.completeness``.

inseq 0.7.1 pins ``typeguard<=2.13.3`` and TransformerLens 4.3 needs ``typeguard>=4.2``,
so the two cannot share one environment: the inseq side always runs in a child process
of this script, with ``--inseq-path DIR`` (or ``LLM_MAGIC_INSEQ_PATH``) put first on its
``PYTHONPATH``: a folder made by ``pip install --no-deps --target DIR inseq==0.7.1
captum typeguard==2.13.3 ...`` beside a venv that has the rest. A peer that cannot be
imported or run prints ``peer not available: <reason>`` in its rows.

Usage: ``python benchmarks/causes.py [--rounds 3] [--threads 1] [--inseq-path DIR]``
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
import types
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's patching loop has a bar

from _common import table  # noqa: E402

PARAGRAPH = (
    "The import statement binds a name in the local namespace to a module object. "
    "A function definition is an executable statement; its execution binds the function "
    "name to a function object. When a name is used in a code block, it is resolved "
    "using the nearest enclosing scope. "
)
NAME = "causes-gpt2-12"
TOKENS, OUTPUTS, STEPS = 16, 20, 50
#: Positions of the clean text that the corrupt text changes, and from where it takes them.
CORRUPTED = {3: 20, 9: 27}
GRID_TOLERANCE = 1e-4


def build(out: Path) -> Path:
    """A 12 x 256 GPT-2 with 8 heads and a 2,048-token tokenizer, random weights, in ``out``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _models import build_tokenizer

    tok = build_tokenizer(out, vocab_size=2048)
    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), n_embd=256, n_layer=12, n_head=8,
                        n_positions=1024, bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = eos
    model.save_pretrained(out)
    return out


def timed(fn: Any) -> Any:
    """``fn`` as a run that returns its own seconds."""
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


def alternate(runs: list[Any], rounds: int) -> list[float | None]:
    """The median seconds of each run (None: no such side), the sides taking turns in each
    round, so that a load that comes and goes on the machine falls on both alike."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            if run is not None:
                times[i].append(float(run()))
    return [statistics.median(t) if t else None for t in times]


def inputs(tokenizer: Any) -> dict[str, Any]:
    """Clean and corrupt ids (16 tokens), the IG prompt and its 20 forced output tokens."""
    ids = tokenizer(PARAGRAPH, verbose=False)["input_ids"]
    clean = ids[:TOKENS]
    corrupt = [ids[CORRUPTED[i]] if i in CORRUPTED else t for i, t in enumerate(clean)]
    assert corrupt != clean
    full = ids[:TOKENS + OUTPUTS]
    prompt, output = tokenizer.decode(full[:TOKENS]), tokenizer.decode(full[TOKENS:])
    # Both sides tokenize these texts again: they must give the very same ids.
    for text, want in ((prompt, full[:TOKENS]), (output, full[TOKENS:]),
                       (prompt + output, full)):
        if tokenizer(text, verbose=False)["input_ids"] != want:
            raise SystemExit(f"{text!r} does not tokenize back to its own ids.")
    return {"clean": clean, "corrupt": corrupt, "full": full, "prompt": prompt,
            "output": output}


def answers(hf: Any, clean: list[int], corrupt: list[int]) -> tuple[int, int]:
    """The tokens whose last-position logit moves most up (a) and most down (b)."""
    import torch

    with torch.inference_mode():
        gap = hf(torch.tensor([clean])).logits[0, -1] - hf(torch.tensor([corrupt])).logits[0, -1]
    return int(gap.argmax()), int(gap.argmin())


# -- patching --------------------------------------------------------------------------------


def ours_patching(hf: Any, data: dict[str, Any], a: int, b: int) -> tuple[Any, dict[str, Any]]:
    """The timed call, and its grid and checks."""
    import torch

    import llm_magic as lm

    def run() -> Any:
        return lm.patch(data["clean"], data["corrupt"], model=NAME, answers=(a, b), over="resid")

    result = run()  # also the warm-up
    seen: list[Any] = []

    def logit_difference(logits: Any) -> float:  # the default metric, keeping what it reads
        seen.append(logits.clone())
        return float(logits[-1, a] - logits[-1, b])

    checked = lm.patch(data["clean"], data["corrupt"], model=NAME, metric=logit_difference,
                       over="resid")
    with torch.inference_mode():
        plain = hf(torch.tensor([data["corrupt"]])).logits[0].float()
    # metric order: clean run, corrupt run, then the patched rows
    equal = bool(torch.equal(seen[1], plain)) and "torch.equal: True" in result.sanity
    return timed(run), {"grid": result.grid, "equal": equal,
            "max_to_hf": float((seen[1] - plain).abs().max()), "sanity": result.sanity,
            "same_grid": bool((checked.grid == result.grid).all()),
            "forwards": result.forwards, "rows_per_forward": result.rows_per_forward}


def tl_patching(path: Path, data: dict[str, Any], a: int, b: int,
                hf_logits: Any) -> tuple[Any, dict[str, Any]] | str:
    """The timed TransformerLens side and its grid, or why it is not available."""
    from importlib import metadata

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformer_lens import patching
        from transformer_lens.model_bridge import TransformerBridge
    except Exception as exc:  # noqa: BLE001 - any import failure means the peer is absent
        return f"peer not available: transformer_lens does not import ({exc})"
    try:
        own = AutoModelForCausalLM.from_pretrained(path).eval()  # the boot makes it eager
        bridge = TransformerBridge.boot_transformers(
            str(path), hf_model=own, tokenizer=AutoTokenizer.from_pretrained(path), device="cpu")
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
        bridge.eval()
        clean_t, corrupt_t = torch.tensor([data["clean"]]), torch.tensor([data["corrupt"]])

        def diff(logits: Any) -> Any:
            return logits[0, -1, a] - logits[0, -1, b]

        def run() -> Any:
            with torch.inference_mode():
                clean_logits, cache = bridge.run_with_cache(
                    clean_t, names_filter=lambda n: n.endswith("hook_resid_pre"))
                corrupt_logits = bridge(corrupt_t)
                c, k = diff(clean_logits), diff(corrupt_logits)
                return patching.get_act_patch_resid_pre(
                    bridge, corrupt_t, cache, lambda logits: (diff(logits) - k) / (c - k))

        grid = run()  # also the warm-up
        with torch.inference_mode():
            logits = bridge(corrupt_t)[0].float()
    except Exception as exc:  # noqa: BLE001 - report, keep the other rows
        return f"peer not available: TransformerLens failed ({type(exc).__name__}: {exc})"
    return timed(run), {"grid": grid.float().numpy(),
            "max_to_hf": float((logits - hf_logits).abs().max()),
            "version": metadata.version("transformer-lens")}


# -- integrated gradients --------------------------------------------------------------------


def ours_ig(tokenizer: Any, data: dict[str, Any]) -> tuple[Any, Any]:
    """The timed call, and a function giving its scores and completeness afterwards."""
    import llm_magic as lm

    # The 20 forced tokens, as a generation-like object: attribute() tokenizes its prompt
    # and text again, which inputs() checked gives the same ids.
    forced = types.SimpleNamespace(prompt=data["prompt"], text=data["output"], model=NAME)

    def run() -> Any:
        with warnings.catch_warnings():  # a completeness warning is reported, not raised
            warnings.simplefilter("ignore")
            return lm.attribute(forced, model=NAME, method="integrated_gradients", steps=STEPS,
                                baseline=tokenizer.unk_token_id)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm.attribute(forced, model=NAME, method="integrated_gradients", steps=1,
                     baseline=tokenizer.unk_token_id, positions=[0])  # warm up
    kept: list[Any] = []
    return timed(lambda: kept.append(run())), lambda: _ig_result(kept[-1], forced, data)


def _ig_result(result: Any, forced: Any, data: dict[str, Any]) -> dict[str, Any]:
    import llm_magic as lm

    if list(result.input_ids) != data["full"][:-1] or len(result.output_tokens) != OUTPUTS:
        raise SystemExit("lm.attribute did not read the forced tokens.")
    with warnings.catch_warnings():  # once more from llm_magic's own default baseline
        warnings.simplefilter("ignore")
        zero = lm.attribute(forced, model=NAME, method="integrated_gradients", steps=STEPS)
    return {"scores": result.scores,
            "completeness": float(max(result.completeness)),
            "zero_completeness": float(max(zero.completeness))}


class InseqSide:
    """inseq in a child process of this script (its own typeguard), one run per request."""

    def __init__(self, path: Path, data: dict[str, Any], threads: int,
                 inseq_path: str | None) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if inseq_path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (inseq_path, env.get("PYTHONPATH"))
                                                if p)
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block it
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--inseq-child", str(path), "--threads", str(threads)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.unavailable = self._ask(json.dumps(data)).get("unavailable")

    def _ask(self, line: str) -> dict[str, Any]:
        assert self.child.stdin is not None and self.child.stdout is not None
        try:
            self.child.stdin.write(line + "\n")
            self.child.stdin.flush()
            while (answer := self.child.stdout.readline()) and not answer.startswith("{"):
                pass
        except OSError:
            answer = ""
        if not answer:
            self.child.wait(timeout=60)
            self.log.seek(0)
            tail = (self.log.read().strip().splitlines() or ["no output"])[-1]
            return {"unavailable": f"peer not available: inseq's side failed ({tail})"}
        result: dict[str, Any] = json.loads(answer)
        return result

    def run(self) -> float:
        answer = self._ask("run")
        self.unavailable = self.unavailable or answer.get("unavailable")
        return float(answer.get("seconds", "nan"))

    def end(self) -> dict[str, Any] | str:
        result = self._ask("end")
        self.child.wait(timeout=60)
        return result.get("unavailable") or result


def inseq_child(path: str, threads: int) -> None:
    """The inseq side, in its own interpreter: reads the inputs (one JSON line), then
    ``run`` (answers its seconds) until ``end`` (answers the last run's results)."""
    from importlib import metadata

    import torch

    torch.set_num_threads(threads)
    data = json.loads(sys.stdin.readline())
    try:
        import inseq
    except Exception as exc:  # noqa: BLE001
        print(json.dumps({"unavailable": f"peer not available: inseq does not import ({exc}); "
                          "pass --inseq-path DIR"}), flush=True)
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    attributor = inseq.load_model(model, "integrated_gradients", tokenizer=tokenizer)

    def run(steps: int) -> Any:
        return attributor.attribute(
            input_texts=data["prompt"], generated_texts=data["prompt"] + data["output"],
            n_steps=steps, return_convergence_delta=True, attributed_fn="probability",
            logprob=True, show_progress=False)

    run(1)  # warm up
    print(json.dumps({"ready": True}), flush=True)
    out = None
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        out = run(STEPS)
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    if out is None:
        return
    seq = out.sequence_attributions[0]
    ids = [int(t.id) for t in seq.target]
    # target_attributions: [input positions, output steps, hidden]; NaN where not an input
    attr = seq.target_attributions.float()
    per_token = attr.sum(-1).T.numpy()  # [steps, positions]
    sums = attr.nansum(dim=(0, 2)).double()
    deltas = seq.step_scores["deltas"].double()
    gap = sums - deltas  # captum: delta = sum(attributions) - (f(x) - f(baseline))
    completeness = (deltas.abs() / gap.abs()).numpy()
    print(json.dumps({"ids": ids, "scores": per_token.tolist(),
                      "completeness": float(completeness.max()),
                      "delta": float(deltas.abs().max()), "version": metadata.version("inseq")}),
          flush=True)


# -- the report ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(rows: list[tuple[str, ...]], targets: list[str], args: argparse.Namespace,
           peers: str) -> None:
    import torch
    import transformers

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; {peers}")
    print(f"torch threads: {args.threads} on every side, {os.cpu_count()} CPUs, load average "
          f"{load}; model: random GPT-2 12 layers x 256, 8 heads, vocab 2,048; median of "
          f"{args.rounds} runs after a warm-up, the two sides taking turns")
    print(table(rows, ("measure", "llm_magic", "peer", "llm_magic / peer")))
    print("targets:")
    for line in targets:
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per side (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, every side")
    parser.add_argument("--inseq-path", default=os.environ.get("LLM_MAGIC_INSEQ_PATH"),
                        help="a folder with inseq 0.7.1 and typeguard 2.13.3, put first on "
                        "the inseq side's PYTHONPATH")
    parser.add_argument("--inseq-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = max(1, args.rounds)
    if args.inseq_child:
        inseq_child(args.inseq_child, args.threads)
        return
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llm_magic as lm

    torch.set_num_threads(args.threads)
    lm.set_threads(args.threads)
    path = build(Path(tempfile.mkdtemp(prefix="llm_magic_causes_")))
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    lm.load(str(path), name=NAME)
    torch.set_num_threads(args.threads)
    data = inputs(tokenizer)
    a, b = answers(hf, data["clean"], data["corrupt"])
    with torch.inference_mode():
        hf_corrupt = hf(torch.tensor([data["corrupt"]])).logits[0].float()

    ours_run, ours = ours_patching(hf, data, a, b)
    tl_side = tl_patching(path, data, a, b, hf_corrupt)
    tl: dict[str, Any] | str = tl_side if isinstance(tl_side, str) else tl_side[1]
    ours["seconds"], seconds = alternate(
        [ours_run, None if isinstance(tl_side, str) else tl_side[0]], rounds)
    if not isinstance(tl, str):
        tl["seconds"] = seconds
    print("patching measured", file=sys.stderr, flush=True)
    ig_run, ig_result = ours_ig(tokenizer, data)
    inseq = InseqSide(path, data, args.threads, args.inseq_path)
    ig_seconds, peer_seconds = alternate([ig_run, None if inseq.unavailable else inseq.run],
                                         rounds)
    ig = ig_result()
    ig["seconds"] = ig_seconds
    peer: dict[str, Any] | str = inseq.unavailable or inseq.end()  # a failed run says so
    if not isinstance(peer, str):
        peer["seconds"] = peer_seconds
    print("integrated gradients measured", file=sys.stderr, flush=True)

    grid = f"patching grid, resid, 12 x {TOKENS}"
    rows = [(f"{grid}: time", f"{ours['seconds'] * 1000:.1f} ms", *(
        (tl, "") if isinstance(tl, str) else
        (f"{tl['seconds'] * 1000:.1f} ms", f"{ours['seconds'] / tl['seconds']:.2f}x"))),
            (f"{grid}: forwards", f"{ours['forwards']} x {ours['rows_per_forward']} rows",
             "" if isinstance(tl, str) else f"{12 * TOKENS} x 1 row", "")]
    targets = []
    if isinstance(tl, str):
        targets.append(f"patching <= TransformerLens's time: MISS ({tl})")
        targets.append(f"grid within {GRID_TOLERANCE:g} of TransformerLens's: MISS ({tl})")
    else:
        delta = float(np.abs(ours["grid"].astype(np.float64) - tl["grid"]).max())
        rows.append((f"{grid}: max |ours - TransformerLens|", f"{delta:.2e}", "", ""))
        rows.append(("corrupt logits vs Hugging Face's: max |diff|",
                     f"{ours['max_to_hf']:.2e}", f"{tl['max_to_hf']:.2e}", ""))
        ratio = ours["seconds"] / tl["seconds"]
        targets.append(f"patching <= TransformerLens's time: {verdict(ratio <= 1)} "
                       f"({ratio:.2f}x, {1000 * (ours['seconds'] - tl['seconds']):+.1f} ms)")
        targets.append(f"grid within {GRID_TOLERANCE:g} of TransformerLens's (float32): "
                       f"{verdict(delta <= GRID_TOLERANCE)} (max |diff| {delta:.2e}, "
                       f"{delta / GRID_TOLERANCE:.3f} of the tolerance)")
    rows.append(("unpatched logits == Hugging Face's (torch.equal)", str(ours["equal"]),
                 "", ""))
    targets.insert(1, f"our unpatched logits equal Hugging Face's exactly: "
                      f"{verdict(ours['equal'])} (max |diff| {ours['max_to_hf']:.2e})")
    what = f"integrated gradients, {STEPS} steps x {OUTPUTS} tokens"
    if isinstance(peer, str):
        rows.append((f"{what}: time", f"{ig['seconds']:.2f} s", peer, ""))
        rows.append((f"{what}: completeness error", f"{100 * ig['completeness']:.3f}%", peer,
                     ""))
    else:
        if peer["ids"] != data["full"]:
            peer_note = "(inseq read other ids)"
        else:
            width = ig["scores"].shape[1]  # inseq's last column is the last output token
            gap = np.abs(np.asarray(peer["scores"], dtype=np.float64)[:, :width]
                         - ig["scores"])
            peer_note = (f"{np.nanmax(gap):.2e} (scores up to "
                         f"{np.nanmax(np.abs(ig['scores'])):.2e})")
        rows.append((f"{what}: time", f"{ig['seconds']:.2f} s", f"{peer['seconds']:.2f} s",
                     f"{ig['seconds'] / peer['seconds']:.2f}x"))
        rows.append((f"{what}: completeness error (worst row)",
                     f"{100 * ig['completeness']:.3f}%", f"{100 * peer['completeness']:.3f}%",
                     ""))
        rows.append((f"{what}: max |ours - inseq| per-token score", peer_note, "", ""))
    rows.append((f"{what}: completeness error, llm_magic's default zero baseline",
                 f"{100 * ig['zero_completeness']:.3f}%", "", ""))
    peers = ", ".join(
        f"{name} {'not available' if isinstance(side, str) else side['version']}"
        for name, side in (("TransformerLens", tl), ("inseq", peer)))
    report(rows, targets, args, peers)


if __name__ == "__main__":
    main()
