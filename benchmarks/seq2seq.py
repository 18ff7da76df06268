"""Encoder–decoder models: streamed generation and attention capture, side by side in one run.

A Marian-shaped model (``MarianMTModel``, opus-mt's shape by default: d_model
512, 6 encoder and 6 decoder layers, 8 heads, FFN 2048, 512 positions), random
weights, with a byte-level BPE tokenizer of about 8k tokens trained offline as
``tests/_models.py`` does. The end-of-sequence token is suppressed in the
model's generation config, so both sides write the full length. One torch
thread on every side; sides interleaved round by round; medians over rounds.

1. Generation: ``lm.generate(source, model=..., stream=sink)`` with the sink a
   ``%%llm`` cell streams into in a notebook (``magics._output._LiveOutput`` at
   the cell's default throttle, its display swapped for a no-op) against raw
   ``model.generate(**inputs, do_sample=False, max_new_tokens=N)`` on the same
   model object and source. The ids are checked equal first. Target: tokens/s
   ratio >= 0.95 (wall clock). The ratio of the process's CPU time per token is
   printed beside it: other processes on a busy machine disturb it far less.
2. Attention: bertviz's approach (how its encoder–decoder views are fed): a second
   forward ``model(input_ids, decoder_input_ids, output_attentions=True)`` with
   eager attention, every layer kept as the float32 tensors it returns
   (encoder, decoder and cross), against llm_magic's capture of the same source
   and output, ``lm.attention(source, model=..., target=ids)`` (every head in
   float16, plus its small pooled overview), at 128 and 512 source tokens and
   the output the model generated (64 new tokens by default). Bytes held, time
   of the capture alone (wall clock, and the ratio of CPU time), the end-to-end
   time of a generation with its attention
   (``lm.generate(..., attention=True)`` against ``model.generate`` then the
   second forward), and the largest difference between the two sides' weights.
   Reported; no target.

Usage: ``python benchmarks/seq2seq.py [--tokens 128] [--rounds 5] [--sources 128,512]
[--output 64] [--d-model 512] [--layers 6] [--vocab 8000]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The benchmark's generations stay out of the user's history.
os.environ.setdefault("LLM_MAGIC_HISTORY", os.path.join(tempfile.mkdtemp(), "history.sqlite"))

from _common import table  # noqa: E402

NAME = "bench-marian"
TARGET = 0.95
PARAGRAPH = (
    "The committee met on Tuesday to discuss the new railway line between the two cities. "
    "Most members agreed that the project would bring jobs to the region, but several asked "
    "who would pay for the bridges and the stations, and how long the work would take. "
    "The chair promised a report before the summer, with the costs set out year by year. "
)


# -- the model ----------------------------------------------------------------------------------


def build_marian(out: Path, d_model: int, layers: int, heads: int, vocab: int,
                 positions: int) -> tuple[int, int]:
    """A random MarianMTModel with a BPE tokenizer in ``out``: (parameters, vocabulary)."""
    import torch
    from _models import build_tokenizer
    from transformers import MarianConfig, MarianMTModel

    tok = build_tokenizer(out, vocab)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    model = MarianMTModel(MarianConfig(
        vocab_size=len(tok), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        max_position_embeddings=positions, pad_token_id=eos, eos_token_id=eos,
        decoder_start_token_id=eos))
    config = model.generation_config
    config.pad_token_id = config.decoder_start_token_id = eos
    config.forced_eos_token_id = config.forced_bos_token_id = config.bad_words_ids = None
    config.num_beams = 1
    # Random weights would often end at once: both sides read this and write the full length.
    config.suppress_tokens = [eos]
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters()), len(tok)


def source_of(tokenizer: Any, tokens: int) -> str:
    """A text the tokenizer turns into exactly ``tokens`` tokens."""
    ids = tokenizer(PARAGRAPH * (tokens // 50 + 2), verbose=False)["input_ids"]
    text = tokenizer.decode(ids[:tokens])
    while len(tokenizer(text, verbose=False)["input_ids"]) > tokens:
        text = text[:-1]
    n = len(tokenizer(text, verbose=False)["input_ids"])
    if n != tokens:
        sys.exit(f"could not make a source of exactly {tokens} tokens (got {n})")
    return text


# -- measuring ----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def cell_sink() -> Any:
    """The output a ``%%llm`` cell streams into in a notebook, its display made a no-op.

    Everything the cell does per piece (join, escape, throttle) still runs.
    """
    from llm_magic.magics._magics import LLMMagics
    from llm_magic.magics._output import _LiveOutput

    class Quiet(_LiveOutput):
        def _show(self, bundle: dict[str, str], live: bool = False) -> None:
            self.updates += 1
            self.last = bundle

    throttle = LLMMagics.class_traits()["throttle"].default_value
    return Quiet("text", throttle, None)


def verdict(ratio: float) -> str:
    ok = ratio >= TARGET
    return f"{'PASS' if ok else 'MISS'} ({ratio - TARGET:+.3f} from {TARGET})"


def generation(args: argparse.Namespace, model: Any, tokenizer: Any) -> list[tuple[str, ...]]:
    """Part 1: the streamed cell path against raw model.generate."""
    import torch

    import llm_magic as lm

    source = source_of(tokenizer, args.source)
    inputs = tokenizer(source, return_tensors="pt")

    def raw() -> list[int]:
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=args.tokens)
        return [int(i) for i in out[0, 1:]]  # the decoder's start token dropped

    def ours(stream: bool = True, logprobs: int | None = None) -> Any:
        sink = cell_sink() if stream else None
        gen = lm.generate(source, model=NAME, max_new_tokens=args.tokens, stream=sink,
                          logprobs=logprobs)
        return gen, sink

    checked, sink = ours(logprobs=1)
    want = raw()
    got = [int(r.id) for r in checked.tokens]
    if got != want or len(want) != args.tokens:
        sys.exit(f"the two sides generated different ids ({len(got)} vs {len(want)} tokens)")
    streamed = "".join(sink.parts)
    if streamed != checked.text:
        sys.exit("the streamed text differs from the generation's text")
    ours()  # warm the plain path once too
    walls: dict[str, list[float]] = {"raw": [], "ours": []}
    cpus: dict[str, list[float]] = {"raw": [], "ours": []}
    for _ in range(args.rounds):
        for side, fn in (("raw", raw), ("ours", ours)):
            took, used, _out = timed(fn)
            walls[side].append(took)
            cpus[side].append(used)
        print(f"generation round {len(walls['raw'])}/{args.rounds}: raw {walls['raw'][-1]:.2f} s, "
              f"llm_magic {walls['ours'][-1]:.2f} s", file=sys.stderr, flush=True)
    wall = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    n = args.tokens
    ratio, cpu_ratio = wall["raw"] / wall["ours"], cpu["raw"] / cpu["ours"]
    return [
        ("raw model.generate", f"{n / wall['raw']:.1f}", f"{cpu['raw'] / n * 1000:.2f}",
         "1.000", "", ""),
        ("lm.generate, streamed as a cell", f"{n / wall['ours']:.1f}",
         f"{cpu['ours'] / n * 1000:.2f}", f"{ratio:.3f}", f"{cpu_ratio:.3f}", verdict(ratio)),
    ]


# -- attention ----------------------------------------------------------------------------------


def bertviz_forward(model: Any, inputs: Any, decoder: Any) -> dict[str, list[Any]]:
    """bertviz's encoder–decoder recipe: one forward with output_attentions, all layers kept."""
    import torch

    with torch.inference_mode():
        out = model(**inputs, decoder_input_ids=decoder, output_attentions=True)
    return {"encoder": list(out.encoder_attentions), "decoder": list(out.decoder_attentions),
            "cross": list(out.cross_attentions)}


def tensor_bytes(kept: dict[str, list[Any]]) -> dict[str, int]:
    return {k: sum(t.numel() * t.element_size() for t in v) for k, v in kept.items()}


def ours_bytes(att: Any) -> tuple[int, int]:
    """(float16 weights, pooled overviews) that a Seq2SeqAttention holds, in bytes."""
    weights = sum(int(att[k].nbytes) for k in att.kinds)
    pooled = sum(int(att[k].pooled.nbytes) for k in att.kinds if att[k].pooled is not None)
    return weights, pooled


def max_difference(att: Any, kept: dict[str, list[Any]]) -> float:
    import numpy as np

    worst = 0.0
    for kind, layers in kept.items():
        for layer, weights in enumerate(layers):
            ours = np.asarray(att[kind].layers[layer], dtype=np.float32)
            worst = max(worst, float(np.abs(ours - weights[0].float().numpy()).max()))
    return worst


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def attention_rows(args: argparse.Namespace, model: Any, eager: Any, tokenizer: Any,
                   length: int) -> tuple[tuple[str, ...], str]:
    """Part 2 at one source length: (the row, a note)."""
    import torch

    import llm_magic as lm

    source = source_of(tokenizer, length)
    inputs = tokenizer(source, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=args.output)
    decoder = out  # the start token, then the output: what the decoder read
    ids = [int(i) for i in out[0, 1:]]

    def theirs() -> dict[str, list[Any]]:
        return bertviz_forward(eager, inputs, decoder)

    def ours() -> Any:
        return lm.attention(source, model=NAME, target=ids)

    def theirs_e2e() -> Any:
        with torch.inference_mode():
            done = model.generate(**inputs, do_sample=False, max_new_tokens=args.output)
        return bertviz_forward(eager, inputs, done)

    def ours_e2e() -> Any:
        return lm.generate(source, model=NAME, max_new_tokens=args.output, attention=True)

    kept, att = theirs(), None
    try:
        att = ours()
    except Exception as exc:  # the capture may not have landed on this tree yet
        note = f"{length} source tokens: capture not available yet ({type(exc).__name__}: {exc})"
    their_bytes = tensor_bytes(kept)
    total = sum(their_bytes.values())
    if att is None:
        t_theirs = statistics.median(timed(theirs)[0] for _ in range(args.attention_rounds))
        row = (str(length), str(decoder.shape[1]), mb(total), "capture not available yet", "",
               f"{t_theirs * 1000:.0f} ms", "capture not available yet", "", "", "", "", "")
        return row, note
    weights, pooled = ours_bytes(att)
    worst = max_difference(att, kept)
    shape = att.cross.shape
    if shape[2:] != (decoder.shape[1], length):
        sys.exit(f"capture shape {shape} is not the forward's ({decoder.shape[1]}, {length})")
    del kept
    gen = ours_e2e()
    if type(gen.attention).__name__ != "Seq2SeqAttention" or gen.stats.new_tokens != args.output:
        sys.exit(f"lm.generate(..., attention=True) gave {type(gen.attention).__name__} after "
                 f"{gen.stats.new_tokens} tokens")
    times: dict[str, list[float]] = {"theirs": [], "ours": [], "theirs_e2e": [], "ours_e2e": []}
    cpus: dict[str, list[float]] = {"theirs": [], "ours": []}
    for _ in range(args.attention_rounds):
        for key, fn in (("theirs", theirs), ("ours", ours), ("theirs_e2e", theirs_e2e),
                        ("ours_e2e", ours_e2e)):
            wall, cpu, _out = timed(fn)
            times[key].append(wall)
            if key in cpus:
                cpus[key].append(cpu)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_ratio = statistics.median(cpus["theirs"]) / statistics.median(cpus["ours"])
    print(f"attention at {length} source tokens measured", file=sys.stderr, flush=True)
    row = (str(length), str(decoder.shape[1]), mb(total), mb(weights + pooled),
           f"{total / (weights + pooled):.2f}x",
           f"{med['theirs'] * 1000:.0f} ms", f"{med['ours'] * 1000:.0f} ms",
           f"{med['theirs'] / med['ours']:.2f}x", f"{cpu_ratio:.2f}x",
           f"{med['theirs_e2e']:.2f} s", f"{med['ours_e2e']:.2f} s", f"{worst:.1e}")
    parts = ", ".join(f"{k} {mb(v)}" for k, v in their_bytes.items())
    note = (f"{length} source tokens: bertviz float32 {parts}; llm_magic float16 weights "
            f"{mb(weights)} + pooled overviews {mb(pooled)}")
    return row, note


# -- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--source", type=int, default=24, help="source tokens for part 1")
    parser.add_argument("--rounds", type=int, default=5, help="generation rounds (median)")
    parser.add_argument("--sources", default="128,512", help="source lengths for part 2")
    parser.add_argument("--output", type=int, default=64, help="new tokens for part 2")
    parser.add_argument("--attention-rounds", type=int, default=5, help="rounds in part 2")
    parser.add_argument("--d-model", type=int, default=512, help="model width")
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--vocab", type=int, default=8000, help="tokenizer size to train")
    parser.add_argument("--skip", choices=("generation", "attention"), help="leave a part out")
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import MarianMTModel

    import llm_magic as lm

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    path = Path(tempfile.mkdtemp(prefix="llm_magic_bench_marian_"))
    lengths = [int(x) for x in args.sources.split(",")]
    positions = max(512, *lengths, args.output + 1, args.tokens + 1)
    t0 = time.perf_counter()
    params, vocab = build_marian(path, args.d_model, args.layers, args.heads, args.vocab,
                                 positions)
    print(f"built in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    handle = lm.load(str(path), name=NAME, dtype="float32", device="cpu")
    lm.set_threads(1)
    torch.set_num_threads(1)
    model, tokenizer = handle.model, handle.tokenizer
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"model: MarianMTModel, random, d_model {args.d_model}, {args.layers}+{args.layers} "
          f"layers, {args.heads} heads, FFN {4 * args.d_model}, vocab {vocab:,}, "
          f"{params / 1e6:.1f}M parameters, float32; torch threads: {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {load}")

    if args.skip != "generation":
        rows = generation(args, model, tokenizer)
        print(f"\n1. generation: {args.source} source tokens -> {args.tokens} new tokens, greedy, "
              f"eos suppressed; median of {args.rounds} interleaved rounds")
        print(table(rows, ("side", "tokens/s", "CPU ms/token", "ratio (wall)", "ratio (CPU)",
                           f"target >= {TARGET}")))

    if args.skip != "attention":
        lm.attention_max_tokens(max(1024, *lengths))
        eager = MarianMTModel.from_pretrained(path, attn_implementation="eager").eval()
        rows, notes = [], []
        for length in lengths:
            row, note = attention_rows(args, model, eager, tokenizer, length)
            rows.append(row)
            notes.append(note)
        print(f"\n2. attention: bertviz's approach (a second forward, output_attentions=True, "
              f"float32, all layers) against llm_magic's capture; {args.output} new tokens; "
              f"median of {args.attention_rounds} interleaved rounds; report, no target")
        print(table(rows, ("source", "output rows", "bytes bertviz", "bytes llm_magic", "ratio",
                           "capture bertviz", "capture llm_magic", "ratio", "ratio (CPU)",
                           "gen+att bertviz", "gen+att llm_magic", "max |diff|")))
        for note in notes:
            print(f"  {note}")
        print("  capture: the second forward alone (bertviz) vs lm.attention(source, "
              "target=ids); gen+att: model.generate then that forward vs "
              "lm.generate(..., attention=True)")
    lm.unload(NAME)
    shutil.rmtree(path, ignore_errors=True)  # about 200 MB of random weights


if __name__ == "__main__":
    main()
