"""A padded batch of prompts through one ``model.generate``: ``HFBackend.generate_batch``.

The prompts share sampling settings and one seeded generator; a causal model's
prompts are padded on the left, an encoder–decoder's sources on the right with
one decoder prefix for every row. Each row's new tokens end at its first
end-of-sequence token.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from . import seq2seq as _s2s
from ._devices import torch_module as _torch
from ._hf_job import _recording
from ._oom import out_of_memory_guard as _out_of_memory_guard
from ._stopping import Interrupted as _Interrupted
from ._stopping import stop_hooks as _stop_hooks
from .base import BatchResult, GenerationRequest

__all__ = ["generate_batch"]


def generate_batch(
    backend: Any, requests: Sequence[GenerationRequest], stop_event: threading.Event
) -> list[BatchResult]:
    """Generate all prompts as one left-padded batch (they share sampling settings).

    A seed seeds one generator that draws every row's token at each step: it
    fixes the texts of this batch (its prompts, in their order), while a row
    need not equal its prompt generated alone with that seed. An encoder–decoder's
    sources are padded on the right (their positions start at 0, as alone) and every
    row's decoder starts from the same prefix: its start token, a forced language.
    """
    backend._check_generates()
    prefix = _s2s.batch_ids(backend, requests) if backend.seq2seq else None
    torch = _torch()
    first = requests[0]
    rendered = [backend.render_prompt(r) for r in requests]
    templated = rendered[0][1]
    tokenizer = backend.tokenizer
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token_id
    tokenizer.padding_side = "left" if prefix is None else "right"
    if tokenizer.pad_token_id is None and backend.pad_id is not None:
        tokenizer.pad_token_id = backend.pad_id
    try:
        inputs = backend._encode([t for t, _ in rendered], templated)
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token_id = old_pad
    width = int(inputs["input_ids"].shape[-1])
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    if prefix is not None:  # the decoder writes after its prefix: the source takes no room
        inputs["decoder_input_ids"] = torch.tensor([prefix] * len(requests),
                                                   device=backend.model.device)
        limit = _s2s.decoder_limit(backend.model.config)
        max_new = first.max_new_tokens if limit is None else min(first.max_new_tokens,
                                                                 limit - len(prefix))
    else:
        max_new = backend._check_length(width, first.max_new_tokens, first.explicit_length)
    kwargs = backend._generate_kwargs(first, max_new)
    recorder = backend._processors(first, kwargs)  # a seed: one generator for the batch
    interrupted = False
    with (_out_of_memory_guard(repr(backend.spec.name), backend.device), torch.inference_mode(),
          _stop_hooks(backend.model, stop_event), _recording(backend.model, recorder)):
        try:
            out = backend.model.generate(
                **inputs, **kwargs,
                stopping_criteria=backend._criteria(first, _new_from(width, prefix),
                                                    stop_event, recorder),
            )
        except _Interrupted:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    results = []
    eos = set(backend.eos_ids)
    rows = out[:, _new_from(width, prefix):].tolist()
    prompts = inputs["input_ids"].tolist()
    records: list[Any] = [None] * len(rows)
    if recorder is not None:
        records = recorder.records([_row_length(row, eos) for row in rows])
    for row, prompt_len, prompt, kept in zip(rows, lengths, prompts, records, strict=True):
        ids: list[int] = []
        reason = "length"
        for tok in row:
            if tok in eos:
                reason = "eos"
                break
            ids.append(tok)
        if stop_event.is_set():
            reason = "interrupted"
        text = tokenizer.decode(ids, skip_special_tokens=True)
        results.append(BatchResult(text, int(prompt_len), len(ids) + (reason == "eos"), reason,
                                   records=kept,
                                   prompt_ids=tuple(prompt[: int(prompt_len)] if prefix
                                                    else prompt[width - int(prompt_len):])))
    return results


def _new_from(width: int, prefix: Sequence[int] | None) -> int:
    """Where a batch's new ids start in what ``generate`` returns (an encoder–decoder's
    after its decoder prefix: the start token, a forced language)."""
    return width if prefix is None else len(prefix)


def _row_length(row: list[int], eos: set[int]) -> int:
    """New tokens of one batch row: up to and including its first end-of-sequence token."""
    for i, tok in enumerate(row):
        if tok in eos:
            return i + 1
    return len(row)
