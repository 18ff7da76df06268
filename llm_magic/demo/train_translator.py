"""Train the bundled translator: a tiny BART that rewrites dates as ISO ``YYYY-MM-DD``.

Run ``python -m llm_magic.demo.train_translator`` to rebuild ``llm_magic/demo/translator``
(a few minutes on two CPU cores). Sources are dates written many ways (``the third of March,
2021``, ``Wed 3 Mar '21``, ``3/3/2021``, ``2021 March 3`` ...; see
:mod:`llm_magic.demo._dates`); targets are ``2021-03-03``. The year moves from the end of the
source to the front of the target and each target field has its own source field, so the
model's cross-attention has a real alignment to show.

The tokenizer (:mod:`llm_magic.demo._date_tokenizer`) is word level, built from the task's own
words, with every digit a token of its own, so a year's four digits line up with the output's.

The run is seeded (initialisation, batches and the held-out set), uses ``--threads`` torch
threads (default 2, with ``OMP_WAIT_POLICY=PASSIVE`` unless set), prints the held-out
exact-match accuracy and the training time, and writes safetensors weights, the tokenizer and a
model card.

Nothing heavy is imported until :func:`train` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _dates
from ._date_tokenizer import BOS, EOS, PAD, build_tokenizer
from .train import save_tokenizer

__all__ = ["TrainResult", "build_tokenizer", "main", "train", "translate"]

#: Where ``python -m llm_magic.demo.train_translator`` writes by default.
DEFAULT_OUT = Path(__file__).resolve().parent / "translator"
#: Optimiser steps of the shipped model.
DEFAULT_STEPS = 1600
#: The model's shape (a BART; tied input and output embeddings).
SHAPE: dict[str, Any] = {"d_model": 128, "encoder_layers": 2, "decoder_layers": 2,
                         "encoder_attention_heads": 4, "decoder_attention_heads": 4,
                         "encoder_ffn_dim": 256, "decoder_ffn_dim": 256,
                         "max_position_embeddings": 64}
#: Sources of the model card's examples.
SAMPLES = ("the third of March, 2021", "March 3rd 21", "3/3/2021", "2021 March 3",
           "Wednesday, 3 March 2021", "Sat 29 Feb '20")


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What a training run made and measured.

    Attributes
    ----------
    out_dir : str
        Where the model, tokenizer and model card were written.
    parameters : int
        Number of distinct parameters.
    weights_bytes : int
        Size of ``model.safetensors``.
    accuracy : float
        Exact-match accuracy of greedy translations on the held-out set (unseen dates in
        unseen format mixes).
    held_out : int
        Size of the held-out set.
    train_loss : float
        Mean training loss (nats per target token) over the last 50 steps.
    steps, threads, seed : int
        The run's settings.
    train_seconds, total_seconds : float
        Wall time of the optimisation loop, and of the whole run.
    load_before, load_after : float
        The machine's 1-minute load average when training started and ended (0 where unknown):
        runs on a shared machine take longer.
    samples : dict of str to str
        Greedy translations of :data:`SAMPLES`.
    """

    out_dir: str
    parameters: int
    weights_bytes: int
    accuracy: float
    held_out: int
    train_loss: float
    steps: int
    threads: int
    seed: int
    train_seconds: float
    total_seconds: float
    load_before: float = 0.0
    load_after: float = 0.0
    samples: dict[str, str] = field(default_factory=dict)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on this platform
        return 0.0


def _batch(tokenizer, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    sources = [s for s, _ in pairs]
    targets = [t for _, t in pairs]
    batch = tokenizer(sources, text_target=targets, padding=True, return_tensors="pt")
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    return dict(batch)


def translate(model, tokenizer, sources: Sequence[str], batch_size: int = 256) -> list[str]:
    """Greedy translations of ``sources``."""
    import torch

    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for b in range(0, len(sources), batch_size):
            chunk = list(sources[b:b + batch_size])
            inputs = tokenizer(chunk, padding=True, return_tensors="pt")
            ids = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=16)
            out.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
    return out


def train(out_dir: Path | str = DEFAULT_OUT, *, steps: int = DEFAULT_STEPS, seed: int = 0,
          threads: int = 2, batch_size: int = 64, lr: float = 3e-3, warmup: int = 200,
          held_out: int = 2000, verbose: bool = True) -> TrainResult:
    """Train the translator and write it to ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Output directory (created if missing).
    steps : int
        Optimiser steps.
    seed : int
        Seed of initialisation, training batches and held-out set.
    threads : int
        torch CPU threads while training (restored afterwards).
    batch_size : int
        Pairs per step, drawn afresh every step.
    lr : float
        Peak learning rate of AdamW (linear warmup, cosine decay to a tenth).
    warmup : int
        Warmup steps.
    held_out : int
        Size of the held-out set (unseen dates in unseen format mixes).
    verbose : bool
        Print the loss now and then.

    Returns
    -------
    TrainResult
    """
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = build_tokenizer(SHAPE["max_position_embeddings"])
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, EOS, BOS)}
        config = BartConfig(
            vocab_size=len(tokenizer), **SHAPE, dropout=0.0, attention_dropout=0.0,
            activation_function="gelu", pad_token_id=ids[PAD], eos_token_id=ids[EOS],
            bos_token_id=ids[BOS], decoder_start_token_id=ids[BOS], forced_eos_token_id=None,
            forced_bos_token_id=None, scale_embedding=True, tie_word_embeddings=True)
        model = BartForConditionalGeneration(config)
        model.generation_config = GenerationConfig(
            decoder_start_token_id=ids[BOS], bos_token_id=ids[BOS], eos_token_id=ids[EOS],
            pad_token_id=ids[PAD], max_new_tokens=16, do_sample=False, num_beams=1)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=lr, betas=(0.9, 0.98))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        pairs = _dates.examples(steps * batch_size, held_out=False, seed=seed)
        losses: list[float] = []
        load_before = _load()
        train_started = time.perf_counter()
        model.train()
        for step in range(steps):
            batch = _batch(tokenizer, [next(pairs) for _ in range(batch_size)])
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if verbose and (step % 100 == 0 or step == steps - 1):
                print(f"step {step:5d}  loss {losses[-1]:.4f}  "
                      f"{time.perf_counter() - train_started:6.1f} s", flush=True)
        train_seconds = time.perf_counter() - train_started
        load_after = _load()

        test = list(_dates.examples(held_out, held_out=True, seed=seed + 1))
        guesses = translate(model, tokenizer, [s for s, _ in test])
        right = [g == iso for g, (_, iso) in zip(guesses, test, strict=True)]
        errors = [(s, iso, g) for g, (s, iso) in zip(guesses, test, strict=True) if g != iso]
        samples = dict(zip(SAMPLES, translate(model, tokenizer, SAMPLES), strict=True))

        model.save_pretrained(out)
        save_tokenizer(tokenizer, out)
        weights = out / "model.safetensors"
        weights.chmod(0o644)  # written through a private temporary file
        result = TrainResult(
            out_dir=str(out), parameters=sum(p.numel() for p in model.parameters()),
            weights_bytes=weights.stat().st_size, accuracy=sum(right) / max(1, len(right)),
            held_out=len(test), train_loss=sum(losses[-50:]) / max(1, len(losses[-50:])),
            steps=steps, threads=threads, seed=seed, train_seconds=train_seconds,
            total_seconds=0.0, load_before=load_before, load_after=load_after,
            samples=samples, errors=errors[:20],
            config={**SHAPE, "batch_size": batch_size, "lr": lr, "warmup": warmup,
                    "vocab_size": len(tokenizer)})
        result.total_seconds = time.perf_counter() - started
        (out / "README.md").write_text(_model_card(result), encoding="utf-8")
        return result
    finally:
        torch.set_num_threads(previous_threads)


# --------------------------------------------------------------------------- model card


def _command(result: TrainResult) -> str:
    parts = ["python -m llm_magic.demo.train_translator"]
    if Path(result.out_dir).resolve() != DEFAULT_OUT:
        parts.append(f"--out {result.out_dir}")
    if result.steps != DEFAULT_STEPS:
        parts.append(f"--steps {result.steps}")
    if result.seed:
        parts.append(f"--seed {result.seed}")
    if result.threads != 2:
        parts.append(f"--threads {result.threads}")
    return " ".join(parts)


def _model_card(result: TrainResult) -> str:
    import tokenizers
    import torch
    import transformers

    c = result.config
    samples = "\n".join(f"| `{s}` | `{t}` |" for s, t in result.samples.items())
    return f"""---
license: mit
library_name: transformers
pipeline_tag: text2text-generation
tags: [llm_magic, demo, bart, synthetic]
---

# llm_magic demo translator: dates to ISO 8601

A tiny encoder–decoder (BART) that rewrites a date written in English, in many ways, as
`YYYY-MM-DD`. It ships inside `llm_magic` so that translation, cross-attention and the
decoder views work offline. It knows nothing but dates.

| source | greedy output |
| --- | --- |
{samples}

## Model

- BART ({c['encoder_layers']} encoder and {c['decoder_layers']} decoder layers,
  d_model {c['d_model']}, {c['encoder_attention_heads']} heads, feed-forward
  {c['encoder_ffn_dim']}, learned positions up to {c['max_position_embeddings']}, tied
  embeddings): {result.parameters:,} parameters, float32 safetensors
  ({result.weights_bytes / 1e6:.2f} MB).
- Tokenizer: word level, {c['vocab_size']} tokens, built from the task's own words. Input is
  lower-cased; month and weekday names, ordinal words and suffixes are single tokens (`▁`
  marks a preceding space, as in SentencePiece); every digit and punctuation mark is its own
  token, so the year's four digits line up with the output's four. `</s>` ends every
  sequence, `<s>` starts the decoder, `<pad>` pads, anything else is `<unk>`.

## Data

Synthetic (`llm_magic/demo/_dates.py`): dates from {_dates.FIRST_YEAR} to {_dates.LAST_YEAR}
written in {len(_dates.all_formats())} formats (layouts such as `the third of March, 2021`,
`March 3rd 21`, `3/3/2021`, `2021 March 3`, `Wednesday, 3 March 2021`, `3-Mar-21`; the day as
`3`, `03`, `3rd` or `third`; the month as a name, an abbreviation or a number; the year as
`2021`, `21` or `'21`; an optional weekday). Numeric dates are read **day first**
(`3/4/2021` is 2021-04-03); two-digit years follow Python's `%y` (69-99 are 1969-1999, 00-68
are 2000-2068).

One date in {_dates.HELD_OUT_EVERY} and {len(_dates.held_out_formats())} of the formats (new
mixes of known parts) never appear in training. **Held-out exact match: {result.accuracy:.2%}**
of {result.held_out:,} unseen dates written in unseen formats (greedy decoding).

## Training

AdamW (betas 0.9/0.98), peak learning rate {c['lr']:g}, {c['warmup']} warmup steps then cosine
decay to a tenth, gradient clipping at 1.0, no dropout, {result.steps:,} steps of
{c['batch_size']} fresh pairs, seed {result.seed}, {result.threads} CPU thread(s). Training
took {result.train_seconds / 60:.1f} minutes (the whole run {result.total_seconds / 60:.1f};
1-minute load average {result.load_before:.1f} at the start and {result.load_after:.1f} at the
end on {os.cpu_count()} CPUs) with torch {torch.__version__}, transformers
{transformers.__version__}, tokenizers {tokenizers.__version__}, on {platform.machine()}.
Final training loss {result.train_loss:.4f} nats per token.

## Reproduce

```bash
{_command(result)}
```

## Licence

MIT, like `llm_magic`. The data is generated by the script; no outside text was used.
"""


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: train, write, and print the held-out accuracy and the time.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m llm_magic.demo.train_translator",
        description="Train the llm_magic demo translator (dates to ISO 8601).",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="optimiser steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--held-out", type=int, default=2000,
                        help="size of the held-out set (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    for name in ("steps", "threads", "held_out"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    # On a shared machine, OpenMP threads that spin while waiting for a descheduled sibling made
    # two threads five to eight times slower than one; sleeping instead costs little. Read when
    # torch loads, so it applies to a fresh process (``python -m ...``), not to one that
    # imported torch already.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    result = train(args.out, steps=args.steps, seed=args.seed, threads=args.threads,
                   held_out=args.held_out, verbose=not args.quiet)
    print(json.dumps(asdict(result), indent=2, ensure_ascii=False))
    print(f"\nWrote {result.out_dir}: {result.parameters:,} parameters, "
          f"{result.weights_bytes / 1e6:.2f} MB.\n"
          f"Held-out exact match: {result.accuracy:.2%} of {result.held_out:,}.\n"
          f"Training time: {result.train_seconds:.1f} s ({result.steps} steps, "
          f"{result.threads} threads; load average {result.load_before:.1f} -> "
          f"{result.load_after:.1f}); whole run {result.total_seconds:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
