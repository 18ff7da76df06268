"""The token view's "why?": one output token attributed to the prompt and the output before it.

A click on "why?" (the pinned token) or "why not?" (an alternative of it) is a
comm message ``{"action": "why", "position", "choice"}`` (``choice`` -1 for the
chosen token) on the view's route, the kernel subshell where there is one. The
kernel runs :func:`~llm_magic.analysis.attribution.attribute` with
``positions=[position]`` on a worker thread (the model's lock may be held by a
running cell) and sends back one row: a float32 per input token, the prompt's
tokens then the output tokens before ``position``, and the prompt tokens'
texts. "why not?" attributes the contrast f = log p(chosen) - log p(alternative),
so red (positive) is what favoured the chosen token over the alternative.

The row is bounded: :func:`attribute` refuses a sequence past
:data:`~llm_magic.analysis.attribution.ATTRIBUTION_MAX_TOKENS`, so the message
holds at most that many floats and token texts.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis.attribution import COMPLETENESS_TOLERANCE, METHODS, attribute
from ..common.visible import visible
from ..errors import InvalidOptionError, LLMMagicWarning, NotAvailableError
from ..generation.core import Generation
from ._common import one_line

__all__ = ["METHOD_WORDS", "Explainer", "Why", "explain"]

log = logging.getLogger("llm_magic.widgets")

#: The methods as the view's selector names them.
METHOD_WORDS = {"input_x_gradient": "input \u00d7 gradient",
                "integrated_gradients": "integrated gradients",
                "occlusion": "occlusion", "saliency": "saliency (gradient norm)"}


def _quoted(text: str) -> str:
    return f"\u201c{visible(text)}\u201d"


@dataclass(frozen=True)
class Why:
    """One attribution row as the view receives it.

    ``info`` is the view's ``why`` trait (words and numbers about the row),
    ``scores`` a little-endian float32 per column (the prompt's tokens, then the
    output tokens before ``position``), ``prompt`` the prompt tokens' texts.
    """

    info: dict[str, Any]
    scores: bytes
    prompt: tuple[str, ...]

    @property
    def bytes(self) -> int:
        """What the row costs on the wire: its floats and the prompt tokens' UTF-8."""
        return len(self.scores) + sum(len(s.encode("utf-8")) for s in self.prompt)


def _caption(method: str, contrast: bool) -> str:
    what = "log-probability difference" if contrast else "log-probability"
    if method == "saliency":
        return f"gradient norm of the {what}, nats per unit of embedding (never negative)"
    return f"{what} attributed, nats"


def explain(gen: Generation, position: int, choice: int | None = None,
            method: str = "input_x_gradient", *, manager: Any = None) -> Why:
    """Attribute output token ``position`` of ``gen`` (or its contrast with alternative ``choice``).

    Raises ``InvalidOptionError`` or ``NotAvailableError`` with a one-line message
    (a served or int4 model, a sequence too long, a position or choice out of range).

    Examples
    --------
    >>> w = explain(g, 3)                       # doctest: +SKIP
    >>> w.info["caption"]                       # doctest: +SKIP
    'log-probability attributed, nats'
    """
    if method not in METHODS:
        raise InvalidOptionError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    records = gen.tokens or ()
    if isinstance(position, bool) or not isinstance(position, int) or not (
            0 <= position < len(records)):
        raise InvalidOptionError(f"There is no output token {position!r} here.")
    record = records[position]
    contrast = None
    alternative = ""
    if choice is not None:
        if isinstance(choice, bool) or not isinstance(choice, int) or not (
                0 <= choice < len(record.top)):
            raise InvalidOptionError(f"Token {position} has no alternative {choice!r}.")
        alt_id, alternative, _ = record.top[choice]
        if alt_id is None or record.id is None:
            raise NotAvailableError("A served model's tokens carry no ids here: it cannot be "
                                    "attributed (load the model in the kernel).")
        if alt_id == record.id:
            raise InvalidOptionError("That alternative is the chosen token: ask why? instead.")
        contrast = (record.id, alt_id)
    with warnings.catch_warnings():
        # The view shows the completeness and its own warning: nothing is printed from here.
        warnings.filterwarnings("ignore", message="Integrated gradients",
                                category=LLMMagicWarning)
        found = attribute(gen, positions=[position], method=method, contrast=contrast,
                          manager=manager)
    prompt_count = found.prompt_tokens or 0
    columns = prompt_count + position
    earlier = [r.id for r in records[:position]]
    if list(found.input_ids[prompt_count:columns]) != earlier or found.scores.shape[1] < columns:
        raise NotAvailableError("The attribution's tokens are not the ones shown (the output was "
                                "tokenized again): generate with logprobs=K in the kernel.")
    row = np.asarray(found.scores[0, :columns], dtype="<f4")
    f = float(found.value[0])
    chosen = _quoted(record.text)
    if contrast is None:
        target = f"log p({chosen})"
        about = f"why {chosen} (token {position})"
        reading = f"red raised log p({chosen}), blue lowered it"
    else:
        target = f"log p({chosen}) \u2212 log p({_quoted(alternative)})"
        about = f"why {chosen} and not {_quoted(alternative)} (token {position})"
        reading = (f"red favoured {chosen} over {_quoted(alternative)}, "
                   f"blue favoured {_quoted(alternative)}")
    if method == "saliency":
        reading = "darker: f is more sensitive to that token (saliency has no sign)"
    completeness = None if found.completeness is None else float(found.completeness[0])
    warning = ""
    if completeness is not None and not completeness <= COMPLETENESS_TOLERANCE:
        shown = "infinite" if math.isinf(completeness) else f"{100 * completeness:.2f} %"
        warning = (f"Completeness error {shown}, over {100 * COMPLETENESS_TOLERANCE:.0f} %: the "
                   "scores do not add up to f(input) \u2212 f(baseline); call lm.attribute with "
                   "more steps= for a closer sum.")
    finite = row[np.isfinite(row)]
    info = {
        "position": position, "choice": -1 if choice is None else choice, "method": method,
        "method_words": METHOD_WORDS[method], "about": about, "target": target,
        "f": f, "reading": reading, "caption": _caption(method, contrast is not None),
        "sum": float(finite.sum()) if finite.size else 0.0,
        "largest": float(np.abs(finite).max()) if finite.size else 0.0,
        "completeness": completeness, "warning": warning, "columns": columns,
        "prompt_tokens": prompt_count, "model": found.model,
    }
    return Why(info, row.tobytes(), tuple(found.input_tokens[:prompt_count]))


class Explainer:
    """Runs a view's "why?" requests on worker threads; the latest request's row is shown.

    ``widget`` is the token view: its ``shown``, ``current``, ``_lock`` and
    ``why*``/``error`` traits. A request made while another runs is not refused:
    both wait for the model's lock in turn, and only the newest reaches the page.
    """

    def __init__(self, widget: Any, manager: Any = None) -> None:
        self._widget = widget
        self._manager = manager
        self._ticket = 0
        self._threads: list[threading.Thread] = []

    def request(self, position: Any, choice: Any = None, method: str | None = None, *,
                wait: bool = False) -> Why | None:
        """Start attributing ``position`` of the branch on screen; with ``wait``, return the row."""
        w = self._widget
        with w._lock:
            shown, current = w.shown, w.current
            if not isinstance(shown, Generation):
                raise InvalidOptionError("why? reads a generation; attribute a scored text with "
                                         "lm.attribute(text, model=...).")
            method = w.why_method if method is None else method
            if method not in METHODS:
                raise InvalidOptionError(f"method must be one of {', '.join(METHODS)}, "
                                         f"not {method!r}.")
            self._ticket += 1
            ticket = self._ticket
            with w.hold_sync():
                w.why_method, w.why_state, w.error = method, "running", ""
            done: list[Why] = []
            thread = threading.Thread(
                target=self._run, args=(shown, current, position, choice, method, ticket, done),
                name="llm_magic-why", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        if wait:
            thread.join()
            return done[0] if done else None
        return None

    def _run(self, gen: Generation, current: int, position: Any, choice: Any, method: str,
             ticket: int, done: list[Why]) -> None:
        w = self._widget
        try:
            why = explain(gen, position, None if choice in (None, -1) else choice, method,
                          manager=self._manager)
        except Exception as exc:
            log.debug("why? failed", exc_info=True)
            with w._lock:
                if ticket == self._ticket:
                    with w.hold_sync():
                        w.why_state, w.error = "", one_line(exc)
            return
        done.append(why)
        with w._lock:
            if ticket != self._ticket:
                return
            with w.hold_sync():
                w.why_state = ""
                if w.current == current:  # the page still shows the branch it was asked on
                    w.why_scores, w.why_prompt = why.scores, list(why.prompt)
                    w.why = {**why.info, "branch": current}

    def clear(self) -> None:
        """Back to the probability shading (a newer request, if any, is dropped)."""
        w = self._widget
        with w._lock:
            self._ticket += 1
            with w.hold_sync():
                w.why, w.why_scores, w.why_prompt, w.why_state = {}, b"", [], ""

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the requests under way."""
        with self._widget._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
