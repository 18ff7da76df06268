"""A generation's options, checked once into a :class:`GenerationRequest`.

Every caller (``lm.generate``, a batch, a branch, a rerun, the magics and the
playground) builds its request here, so one set of rules and messages applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..backends.base import DEFAULT_MAX_NEW_TOKENS, GenerationRequest, check_logprobs
from ..errors import InvalidOptionError

__all__ = ["check_number", "make_request", "params_of"]


def check_number(name: str, value: Any, *, low: float, high: float | None = None,
                   integer: bool = False, low_open: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise InvalidOptionError(f"{name} must be {kind}, not {value!r}.")
    if not math.isfinite(value) or value < low or (low_open and value == low) or (
        high is not None and value > high
    ):
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        hi = f" and <= {high:g}" if high is not None else ""
        raise InvalidOptionError(f"{name} must be {lo}{hi}; got {value!r}.")


def make_request(
    prompt: str,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    system: str | None = None,
    chat: bool | None = None,
    logprobs: int | None = None,
    logprobs_mode: str = "raw",
) -> GenerationRequest:
    """Validate options into a :class:`GenerationRequest`; raise ``InvalidOptionError`` if unfit."""
    if not isinstance(prompt, str):
        raise InvalidOptionError(f"The prompt must be a string, not {type(prompt).__name__}.")
    if not prompt.strip():
        raise InvalidOptionError("The prompt is empty: write some text to continue.")
    explicit = max_new_tokens is not None
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    check_number("max_new_tokens", max_new_tokens, low=1, integer=True)
    check_number("temperature", temperature, low=0, high=100)
    if top_p is not None:
        check_number("top_p", top_p, low=0, high=1, low_open=True)
    if top_k is not None:
        check_number("top_k", top_k, low=1, integer=True)
    if seed is not None:
        check_number("seed", seed, low=0, high=2**63 - 1, integer=True)
    stops: tuple[str, ...]
    if stop is None:
        stops = ()
    elif isinstance(stop, str):
        stops = (stop,)
    else:
        stops = tuple(stop)
    if any(not isinstance(s, str) or s == "" for s in stops):
        raise InvalidOptionError("Stop strings must be non-empty strings.")
    if system is not None and not isinstance(system, str):
        raise InvalidOptionError("system must be a string.")
    if chat is not None and not isinstance(chat, bool):
        raise InvalidOptionError("chat must be True, False or None (use the template if any).")
    check_logprobs(logprobs, logprobs_mode)
    return GenerationRequest(
        prompt=prompt, max_new_tokens=max_new_tokens, temperature=float(temperature),
        top_p=top_p, top_k=top_k, seed=seed, stop=stops, system=system or None, chat=chat,
        explicit_length=explicit, logprobs=logprobs or None, logprobs_mode=logprobs_mode,
    )


def params_of(request: GenerationRequest) -> dict[str, Any]:
    """The options a Generation keeps (and history stores) of its request."""
    return {
        "max_new_tokens": request.max_new_tokens, "temperature": request.temperature,
        "top_p": request.top_p, "top_k": request.top_k, "seed": request.seed,
        "stop": list(request.stop), "system": request.system, "chat": request.chat,
        "logprobs": request.logprobs, "logprobs_mode": request.logprobs_mode,
    }
