"""A generation's options, checked once into a :class:`GenerationRequest`.

Every caller (``lm.generate``, a batch, a branch, a rerun, the magics and the
playground) builds its request here, so one set of rules and messages applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..backends.base import DEFAULT_MAX_NEW_TOKENS, GenerationRequest, check_logprobs
from ..common.text import check_text, shown
from ..errors import InvalidOptionError

__all__ = ["check_number", "make_request", "params_of"]

#: The largest token count an option may name (what a 32-bit signed integer holds).
_MOST = 2**31 - 1


def check_number(name: str, value: Any, *, low: float, high: float | None = None,
                 integer: bool = False, low_open: bool = False) -> None:
    """Refuse a value of the wrong type or outside [low, high], in one line."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise InvalidOptionError(f"{name} must be {kind}, not {shown(value)}.")
    out_of_range = value < low or (low_open and value == low) or (
        high is not None and value > high)
    if (isinstance(value, float) and not math.isfinite(value)) or out_of_range:
        def number(x: float) -> str:
            return f"{int(x):,}" if integer else f"{x:g}"

        lo = f"> {number(low)}" if low_open else f">= {number(low)}"
        hi = f" and <= {number(high)}" if high is not None else ""
        raise InvalidOptionError(f"{name} must be {lo}{hi}; got {shown(value)}.")


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
    target_lang: str | None = None,
) -> GenerationRequest:
    """Validate options into a :class:`GenerationRequest`; raise ``InvalidOptionError`` if unfit."""
    check_text(prompt, "The prompt")
    explicit = max_new_tokens is not None
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    check_number("max_new_tokens", max_new_tokens, low=1, high=_MOST, integer=True)
    check_number("temperature", temperature, low=0, high=100)
    if top_p is not None:
        check_number("top_p", top_p, low=0, high=1, low_open=True)
    if top_k is not None:
        check_number("top_k", top_k, low=1, high=_MOST, integer=True)
    if seed is not None:
        check_number("seed", seed, low=0, high=2**63 - 1, integer=True)
    stops: tuple[str, ...]
    if stop is None:
        stops = ()
    elif isinstance(stop, str):
        stops = (stop,)
    else:
        try:
            stops = tuple(stop)
        except TypeError:
            raise InvalidOptionError("stop is a text or a list of texts, not "
                                     f"{type(stop).__name__}.") from None
    for number, each in enumerate(stops, 1):
        check_text(each, f"Stop string {number}", allow_blank=True,
                   hint="give the text to stop before, or leave it out")
    if system is not None:
        check_text(system, "The system prompt", allow_empty=True)
    if chat is not None and not isinstance(chat, bool):
        raise InvalidOptionError("chat must be True, False or None (use the template if any).")
    check_logprobs(logprobs, logprobs_mode)
    if target_lang is not None:
        check_text(target_lang, "target_lang", hint="give a language code such as 'fr_XX'")
    return GenerationRequest(
        prompt=prompt, max_new_tokens=max_new_tokens, temperature=float(temperature),
        top_p=top_p, top_k=top_k, seed=seed, stop=stops, system=system or None, chat=chat,
        explicit_length=explicit, logprobs=logprobs or None, logprobs_mode=logprobs_mode,
        target_lang=target_lang,
    )


def params_of(request: GenerationRequest) -> dict[str, Any]:
    """The options a Generation keeps (and history stores) of its request.

    A conversation's turn also keeps every message it was sent, so a rerun or a
    resume rebuilds exactly what the model read, whatever was undone or forked.
    """
    params: dict[str, Any] = {
        "max_new_tokens": request.max_new_tokens, "temperature": request.temperature,
        "top_p": request.top_p, "top_k": request.top_k, "seed": request.seed,
        "stop": list(request.stop), "system": request.system, "chat": request.chat,
        "logprobs": request.logprobs, "logprobs_mode": request.logprobs_mode,
    }
    if request.target_lang is not None:
        params["target_lang"] = request.target_lang
    if request.messages is not None:
        params["messages"] = [list(m) for m in request.messages]
        params["conversation"] = request.keep
    return params
