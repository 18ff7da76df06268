"""The side-by-side view: one column per generation, streamed, then shaded by Δlog-probability.

While :func:`llm_magic.analysis.compare.compare` generates, each column's
text streams in (throttled trait updates from the generating thread); when
the cross-scores are in, each column shows its output piece by piece, shaded
by how much likelier (blue) or less likely (red) the reference model found
each piece, with a marker where the greedy choices first diverge and a note
when the pieces are aligned on characters (the tokenizers differ).

State changes under the view's one lock: the stream writes from the thread
that generates, and the page's messages may arrive on a kernel subshell.
Deltas travel as one float32 buffer. The static fallback is an escaped HTML
table with inline colours.

Examples
--------
>>> c = lm.compare("The import", models=["demo", "demo16"])  # doctest: +SKIP
>>> c.widget().diverge                                          # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
import time
from html import escape
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets as t

from ..common.visible import visible
from ._common import STATIC, esm, with_fallback
from ._subshell import route

if TYPE_CHECKING:
    from ..analysis.compare import Comparison, CrossScore
    from ..generation import Generation

__all__ = ["CompareWidget", "colour", "table_html"]

_THROTTLE = 0.15  # seconds between streamed updates of a column
_NEG, _POS = (214, 39, 40), (31, 119, 180)  # less likely under the reference / likelier


class CompareWidget(anywidget.AnyWidget):  # type: ignore[misc]
    """Columns side by side: label, streamed text, stats, then the shaded pieces.

    Examples
    --------
    >>> from llm_magic.widgets.compare import CompareWidget
    >>> v = CompareWidget(labels=["a", "b"], texts=["", ""], stats=["", ""])
    >>> v.write(0, "<b>"); v.flush(); v.texts[0]
    '<b>'
    """

    _esm = esm("compare.js")
    _css = STATIC / "compare.css"

    prompt = t.Unicode("").tag(sync=True)
    labels = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    texts = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    stats = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    #: The column being generated (-1: none); "done" once the cross-scores are in.
    active = t.Int(-1).tag(sync=True)
    state = t.Unicode("waiting").tag(sync=True)  # waiting, generating, scoring, done, error
    note = t.Unicode("").tag(sync=True)
    #: Per column: the reference's name, the pieces' texts, their tooltips.
    references = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    pieces = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    tips = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    #: Every column's deltas, one after another (float32, little-endian); ``counts`` per column.
    deltas = t.Bytes(b"").tag(sync=True)
    counts = t.List(t.Int(), default_value=[]).tag(sync=True)
    #: Per column: the piece where the greedy choices first diverge (-1: never).
    diverge = t.List(t.Int(), default_value=[]).tag(sync=True)
    #: |Δ| that gets the darkest shade.
    scale = t.Float(1.0).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.RLock()
        self._pending: dict[int, list[str]] = {}
        self._sent = 0.0
        self._echoed = True
        self._comparison: Comparison | None = None
        route(self)

    # -- made by compare() --------------------------------------------------

    @classmethod
    def live(cls, labels: list[str], prompt: str) -> CompareWidget:
        """An empty view for ``labels``, displayed now; ``compare`` streams into it."""
        from IPython.display import display

        view = cls(labels=list(labels), texts=[""] * len(labels), stats=[""] * len(labels),
                   prompt=prompt)
        view._echoed = False
        display(view)
        return view

    @classmethod
    def of(cls, comparison: Comparison) -> CompareWidget:
        """The finished view of ``comparison``."""
        n = len(comparison)
        view = cls(labels=list(comparison.labels), texts=[""] * n, stats=[""] * n,
                   prompt=comparison.prompt)
        for i, gen in enumerate(comparison):
            view.finish(i, gen)
        view.show(comparison)
        return view

    def start(self, column: int) -> None:
        with self._lock, self.hold_sync():
            self.active, self.state = column, "generating"

    def write(self, column: int, piece: str) -> None:
        """Add streamed text to ``column`` (sent at most every few tenths of a second)."""
        with self._lock:
            self._pending.setdefault(column, []).append(piece)
            if time.monotonic() - self._sent >= _THROTTLE:
                self.flush()

    def flush(self) -> None:
        """Send the text streamed since the last update."""
        with self._lock:
            if not self._pending:
                return
            texts = list(self.texts)
            for column, parts in self._pending.items():
                texts[column] += "".join(parts)
            self._pending = {}
            self._sent = time.monotonic()
            self.texts = texts

    def finish(self, column: int, gen: Generation) -> None:
        """The column's final text and stats."""
        with self._lock, self.hold_sync():
            self._pending.pop(column, None)
            self.texts = [gen.text if i == column else x for i, x in enumerate(self.texts)]
            self.stats = [_stats(gen) if i == column else x for i, x in enumerate(self.stats)]
            self.state = "scoring"

    def failed(self, message: str) -> None:
        with self._lock, self.hold_sync():
            self.flush()
            self.active, self.state, self.note = -1, "error", " ".join(message.split())

    def show(self, comparison: Comparison) -> None:
        """The cross-scores: shaded pieces, divergence markers, the alignment note."""
        import numpy as np

        scores = [comparison.against(i) for i in range(len(comparison))]
        deltas = [[] if s is None else s.deltas for s in scores]
        flat = [d for column in deltas for d in column if math.isfinite(d)]
        with self._lock, self.hold_sync():
            self._comparison = comparison
            self.references = ["" if s is None else s.reference for s in scores]
            self.pieces = [[] if s is None else [visible(p.text, breaks=True) for p in s.pieces]
                           for s in scores]
            self.tips = [[] if s is None else _tips(s) for s in scores]
            self.deltas = np.asarray([d for c in deltas for d in c], "<f4").tobytes()
            self.counts = [len(c) for c in deltas]
            self.diverge = [-1 if s is None or s.divergence is None else s.divergence
                            for s in scores]
            self.scale = _scale(flat)
            self.note = _note(comparison)
            self.active, self.state = -1, "done"

    # -- the static fallback ------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        shown = super()._repr_mimebundle_(**kwargs)
        if self._comparison is None:
            return with_fallback(shown, table_html(self.labels, self.texts, self.stats))
        return with_fallback(shown, comparison_html(self._comparison), repr(self._comparison))


def _scale(deltas: list[float]) -> float:
    """The |Δ| of the darkest shade: the largest, but never below 0.05 nats (noise stays pale)."""
    return max(0.05, max((abs(d) for d in deltas), default=0.05))


def _stats(gen: Generation) -> str:
    s = gen.stats
    tps = "-" if s.tokens_per_second is None else f"{s.tokens_per_second:.1f}"
    return f"{s.new_tokens} new tokens, {tps} tokens/s, {s.duration:.2f} s ({s.stop_reason})"


def _tips(score: CrossScore) -> list[str]:
    out = []
    for p in score.pieces:
        if score.reference == "greedy":
            out.append(f"log p {p.own:.3f}; greedy {p.own_top[1]!r} {p.other:.3f}")
        else:
            out.append(f"{score.model}: log p {p.own:.3f}, likeliest {p.own_top[1]!r}; "
                       f"{score.reference}: log p {p.other:.3f}, likeliest {p.other_top[1]!r}; "
                       f"Δ {p.other - p.own:+.3f}")
    return out


def _note(comparison: Comparison) -> str:
    parts = []
    scores = [comparison.against(i) for i in range(len(comparison))]
    deltas = [d for s in scores if s is not None for d in s.deltas if math.isfinite(d)]
    if deltas:
        parts.append(f"Darkest shade: |Δ log p| ≥ {_scale(deltas):.3g} nats.")
    if comparison.by_characters:
        parts.append("Aligned by characters: the tokenizers differ, so tokens are merged "
                     "until both tokenizations share a boundary.")
    parts.extend(comparison.notes)
    return " ".join(parts)


def colour(delta: float, scale: float) -> str:
    """The background of a piece: red where the reference found it less likely, blue likelier."""
    x = 0.0 if not math.isfinite(delta) else min(1.0, abs(delta) / scale)
    end = _NEG if delta < 0 else _POS
    r, g, b = (round(255 + (c - 255) * x * 0.8) for c in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def table_html(labels: list[str], texts: list[str], stats: list[str],
               cells: list[str] | None = None, note: str = "") -> str:
    """Escaped HTML: one table column per generation (``cells`` is already-escaped markup)."""
    head = "".join(f"<th style='text-align:left'>{escape(label)}</th>" for label in labels)
    body = cells if cells is not None else [
        f"<pre style='white-space:pre-wrap;margin:0'>{escape(x)}</pre>" for x in texts]
    row = "".join(f"<td style='vertical-align:top;font-family:monospace;padding:4px'>{c}</td>"
                  for c in body)
    foot = "".join(f"<td><small style='opacity:.7'>{escape(s)}</small></td>" for s in stats)
    extra = f"<div style='font-size:smaller;opacity:.8'>{escape(note)}</div>" if note else ""
    return (f"<div class='llm-magic-compare'><table style='table-layout:fixed;width:100%'>"
            f"<tr>{head}</tr><tr>{row}</tr><tr>{foot}</tr></table>{extra}</div>")


def comparison_html(comparison: Comparison) -> str:
    """The finished comparison as escaped HTML with inline colours and divergence markers."""
    cells, labels = [], []
    scores = [comparison.against(i) for i in range(len(comparison))]
    scale = _scale([d for s in scores if s is not None for d in s.deltas if math.isfinite(d)])
    for i, (gen, score) in enumerate(zip(comparison, scores, strict=True)):
        label = comparison.labels[i]
        if score is None:
            labels.append(label)
            cells.append(f"<pre style='white-space:pre-wrap;margin:0'>{escape(gen.text)}</pre>")
            continue
        labels.append(f"{label} (Δ against {score.reference})")
        spans = []
        for j, (p, d) in enumerate(zip(score.pieces, score.deltas, strict=True)):
            if j == score.divergence:
                spans.append("<span title='greedy choices diverge here' style='color:#b00;"
                             "font-weight:bold'>▶</span>")
            spans.append(f"<span title='{escape(f'Δ {d:+.3f}')}' style='background:"
                         f"{colour(d, scale)};white-space:pre-wrap'>"
                         f"{escape(visible(p.text, breaks=True))}</span>")
        cells.append("".join(spans))
    return table_html(labels, [], [_stats(g) for g in comparison], cells, _note(comparison))
