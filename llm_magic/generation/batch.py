"""Several prompts as one padded batch, with the same options and the same events."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidOptionError
from ..manager import ModelManager, get_manager
from .core import Generation, GenerationStats, PendingGeneration, started
from .request import make_request, params_of
from .stream import StopTrimmer

__all__ = ["generate_batch"]

_batches = itertools.count(1)


def generate_batch(
    prompts: Sequence[str],
    *,
    model: str | None = None,
    stop_event: threading.Event | None = None,
    manager: ModelManager | None = None,
    **options: Any,
) -> list[Generation]:
    """Generate several prompts as one padded batch with the same options.

    Examples
    --------
    >>> import llm_magic as lm
    >>> gens = lm.generate_batch(["A list", "A dict"], max_new_tokens=5)  # doctest: +SKIP
    """
    manager = manager or get_manager()
    if isinstance(prompts, str) or not prompts:
        raise InvalidOptionError("generate_batch takes a non-empty list of prompts.")
    if options.pop("attention", False):
        raise InvalidOptionError(
            "Attention is captured for one prompt at a time: generate without --batch "
            "(lm.generate(..., attention=True)), or use lm.attention(text) on each prompt."
        )
    requests = [make_request(p, **options) for p in prompts]
    name = manager.resolve(model)
    stop_event = stop_event or threading.Event()
    with manager.checkout(name) as backend:
        batch = next(_batches)
        pendings = [started(manager, name, r, lambda: ("", 0), batch) for r in requests]
        for pending in pendings:
            manager.events.emit("generation_start", name, request=pending.request,
                                generation=pending)
        t0 = time.perf_counter()
        try:
            results = backend.generate_batch(requests, stop_event)
        except BaseException as exc:
            _batch_failed(manager, name, pendings, exc, time.perf_counter() - t0)
            raise
        duration = time.perf_counter() - t0
    gens = []
    for request, result, pending in zip(requests, results, pendings, strict=True):
        trimmer = StopTrimmer(request.stop, None)
        text = trimmer.finish(result.text)
        stats = GenerationStats(
            prompt_tokens=result.prompt_tokens, new_tokens=result.new_tokens,
            time_to_first_token=None,
            tokens_per_second=result.new_tokens / duration if duration > 0 else None,
            duration=duration, stop_reason="stop" if trimmer.hit else result.stop_reason,
        )
        gen = Generation(text=text, prompt=request.prompt, model=name, stats=stats,
                         params=params_of(request), id=pending.id,
                         tokens=result.records if request.logprobs else None,
                         prompt_ids=result.prompt_ids)
        manager.events.emit("generation_end", name, generation=gen, error=None)
        gens.append(gen)
    if gens:
        manager.last_generation = gens[-1]
    return gens


def _batch_failed(manager: ModelManager, name: str, pendings: list[PendingGeneration],
                  exc: BaseException, duration: float) -> None:
    """End the started generations of a batch that stopped or failed: nothing came out."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    for pending in pendings:
        stats = GenerationStats(prompt_tokens=0, new_tokens=0, time_to_first_token=None,
                                tokens_per_second=None, duration=duration,
                                stop_reason="interrupted" if interrupted else "error")
        gen = Generation(text="", prompt=pending.prompt, model=name, stats=stats,
                         params=params_of(pending.request), id=pending.id)
        manager.events.emit("generation_end", name, generation=gen,
                            error=None if interrupted else str(exc) or repr(exc))
