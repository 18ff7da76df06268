"""The side-by-side view: one column per generation, streamed, then shaded by Δlog-probability.

While :func:`llm_magic.analysis.compare.compare` generates, each column's
text streams in (throttled trait updates from the generating thread); when
the cross-scores are in, each column shows its output piece by piece, shaded
by how much likelier (blue) or less likely (red) the reference model found
each piece, with a marker where the greedy choices first diverge and a note
when the pieces are aligned on characters (the tokenizers differ).

The shading has one fixed scale, stated in its legend: Δ log p in nats,
saturating at ±2 nats (a factor of e² ≈ 7.4), so a bfloat16 rounding of
0.05 nats stays pale and a real disagreement stands out. Each column says in
words what it is shaded against; hovering a piece shows its numbers in a
small label beside it. Text on a shade is near-black or white, whichever
keeps WCAG AA contrast (``inkOn`` in the page, :func:`ink` here).

State changes under the view's one lock: the stream writes from the thread
that generates, and the page's messages may arrive on a kernel subshell.
Deltas travel as one float32 buffer. The static fallback is an escaped,
left-aligned HTML snapshot with inline colours and the same legend.

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

from ..common.heatmap import ink
from ..common.visible import visible
from ._common import STATIC, esm, with_fallback
from ._subshell import route

if TYPE_CHECKING:
    from ..analysis.compare import Comparison, CrossScore
    from ..generation import Generation

__all__ = ["SCALE", "CompareWidget", "colour", "ink", "shade", "table_html"]

_THROTTLE = 0.15  # seconds between streamed updates of a column
_NEG, _POS = (214, 39, 40), (31, 119, 180)  # less likely under the reference / likelier
#: |Δ log p| in nats that gets the darkest shade (a factor of e² ≈ 7.4 in probability).
SCALE = 2.0
#: The values the legend shows a swatch of, in nats.
LEGEND = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


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
    #: Per column: the reference's name, the pieces' texts, their hover readouts.
    references = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    #: Per column, in words: what the shading shows against what; where the greedy choices
    #: first differ; what could not be scored there, and why.
    captions = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    firsts = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    column_notes = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    pieces = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    tips = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    #: Every column's deltas, one after another (float32, little-endian); ``counts`` per column.
    deltas = t.Bytes(b"").tag(sync=True)
    counts = t.List(t.Int(), default_value=[]).tag(sync=True)
    #: Per column: the piece where the greedy choices first diverge (-1: never).
    diverge = t.List(t.Int(), default_value=[]).tag(sync=True)
    #: |Δ| in nats that gets the darkest shade: fixed, so shades compare across views.
    scale = t.Float(SCALE).tag(sync=True)

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
        notes = list(comparison.column_notes) + [""] * (len(comparison) - len(
            comparison.column_notes))
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
            self.captions = [_caption(s) for s in scores]
            self.firsts = [_first(s) for s in scores]
            self.column_notes = notes[:len(comparison)]
            self.scale = SCALE
            self.note = _note(comparison)
            self.active, self.state = -1, "done"

    # -- the static fallback ------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        shown = super()._repr_mimebundle_(**kwargs)
        if self._comparison is None:
            return with_fallback(shown, table_html(self.labels, self.texts, self.stats,
                                                   prompt=self.prompt))
        return with_fallback(shown, comparison_html(self._comparison), repr(self._comparison))


def _stats(gen: Generation) -> str:
    s = gen.stats
    tps = "-" if s.tokens_per_second is None else f"{s.tokens_per_second:.1f}"
    return f"{s.new_tokens} new tokens, {tps} tokens/s, {s.duration:.2f} s ({s.stopped})"


# -- words: what each column shows, where it leaves the greedy choices, each piece's numbers ----


def _quoted(text: str) -> str:
    return f"'{visible(text)}'"


def _unit(score: CrossScore) -> str:
    return "token" if score.by == "tokens" else "piece"


def _caption(score: CrossScore | None) -> str:
    """What a column is shaded by, against what, in words ("" when it is not shaded)."""
    if score is None:
        return ""
    m, r = score.model, score.reference
    if score.scored_by == "own":
        if score.divergence is None and all(abs(d) < 1e-6 for d in score.deltas):
            return f"Every token is {m}'s likeliest choice (greedy): nothing to shade."
        return (f"Shaded by Δ log p = log p of each token − log p of {m}'s likeliest token at "
                "that step (0 where it took the likeliest).")
    if score.scored_by == "reference":
        return (f"Shaded by how {r} reads this text: Δ log p = log p under {r} of each of its "
                f"tokens − that of {r}'s likeliest token there (0 where {r} would pick it).")
    return (f"Shaded by Δ log p = log p under {r} − log p under {m}, {_unit(score)} by "
            f"{_unit(score)}: blue where {r} found it likelier, red where less likely.")


def _first(score: CrossScore | None) -> str:
    """Where the greedy choices first differ, in words ("" when there is nothing to say)."""
    if score is None:
        return ""
    m, r, j, unit = score.model, score.reference, score.divergence, _unit(score)
    if j is None:
        if score.scored_by == "own":
            return ""
        if score.scored_by == "reference":
            return f"{r} would have picked every token of it."
        return f"{m} and {r} would pick the same next {unit} at every step."
    p = score.pieces[j]
    if score.scored_by == "own":
        return (f"First leaves the greedy choice at token {j + 1}: {_quoted(p.text)} where "
                f"{m}'s likeliest was {_quoted(p.own_top[1])}.")
    if score.scored_by == "reference":
        return (f"First leaves {r}'s greedy choice at token {j + 1}: {_quoted(p.text)} where "
                f"{r} would pick {_quoted(p.other_top[1])}.")
    return (f"The greedy choices first differ at {unit} {j + 1}: {m} would pick "
            f"{_quoted(p.own_top[1])}, {r} {_quoted(p.other_top[1])}.")


def _tips(score: CrossScore) -> list[str]:
    """Each piece's numbers, in words, one line each (the hover readout)."""
    out = []
    m, r = score.model, score.reference
    for p, d in zip(score.pieces, score.deltas, strict=True):
        head = f"{_quoted(p.text)}: Δ log p {d:+.3f} nats"
        if score.scored_by == "own":
            lines = [head, f"log p {p.own:.3f} nats; the likeliest token there, "
                           f"{_quoted(p.own_top[1])}, had {p.other:.3f}"]
        elif score.scored_by == "reference":
            lines = [head + f" against {r}'s likeliest",
                     f"{r}: log p {p.other:.3f}; likeliest {_quoted(p.other_top[1])} "
                     f"{p.other_top[2]:.3f}",
                     f"{m}: served, so no log-probabilities"]
        else:
            lines = [head + f" ({r} found it {'likelier' if d > 0 else 'less likely'})",
                     f"{m}: log p {p.own:.3f}; likeliest {_quoted(p.own_top[1])}",
                     f"{r}: log p {p.other:.3f}; likeliest {_quoted(p.other_top[1])}"]
        out.append("\n".join(lines))
    return out


def _note(comparison: Comparison) -> str:
    """What the whole view needs to say: the alignment, and notes that name no column."""
    parts = []
    if comparison.by_characters:
        parts.append("Aligned by characters: the tokenizers differ, so tokens are merged "
                     "until both tokenizations share a boundary.")
    if not any(getattr(comparison, "column_notes", ())):
        parts.extend(comparison.notes)
    return " ".join(parts)


# -- colours -------------------------------------------------------------------------------


def shade(delta: float, scale: float = SCALE) -> tuple[int, int, int]:
    """A piece's background: red where the reference found it less likely, blue likelier.

    ``|delta| >= scale`` (nats) gets the darkest shade; a NaN or infinite Δ stays white.
    The page's ``colour`` in ``static/compare.js`` is the same ramp.
    """
    x = 0.0 if not math.isfinite(delta) else min(1.0, abs(delta) / scale)
    end = _NEG if delta < 0 else _POS
    r, g, b = (int(255 + (c - 255) * x * 0.8 + 0.5) for c in end)
    return r, g, b


def colour(delta: float, scale: float = SCALE) -> str:
    """:func:`shade` as ``#rrggbb``."""
    r, g, b = shade(delta, scale)
    return f"#{r:02x}{g:02x}{b:02x}"


# -- the static snapshot ---------------------------------------------------------------------

_SMALL = "font-size:11px;color:#555;margin:2px 0"
_TEXT = ("font-family:ui-monospace,monospace;white-space:pre-wrap;overflow-wrap:anywhere;"
         "line-height:1.7;margin:4px 0;text-align:left")


def _legend_label(value: float) -> str:
    """A legend swatch's words: ``≤ −2``, ``−1``, ``0``, ``+0.5``, ``≥ +2``."""
    text = "0" if value == 0 else f"{value:+g}".replace("-", "−")
    if abs(value) >= SCALE:
        text = ("≤ " if value < 0 else "≥ ") + text
    return text


def _legend_html() -> str:
    """The fixed scale, its unit and what the colours and the marker mean."""
    swatches = "".join(
        f"<span style='display:inline-block;min-width:3em;padding:1px 4px;text-align:center;"
        f"background:{colour(v)};color:{ink(shade(v))}'>{escape(_legend_label(v))}</span>"
        for v in LEGEND)
    return ("<div style='margin:4px 0 8px;text-align:left'>"
            f"<strong>Δ log p (nats)</strong> {swatches}"
            f"<div style='{_SMALL}'>Fixed scale: shades saturate at ±{SCALE:g} nats (a factor "
            f"of {math.exp(SCALE):.1f} in probability). Blue: the "
            "reference found the piece likelier; red: less likely. ▶ marks where the greedy "
            "choices first differ.</div></div>")


def table_html(labels: list[str], texts: list[str], stats: list[str],
               cells: list[str] | None = None, note: str = "", *, prompt: str = "",
               heads: list[str] | None = None, legend: bool = False) -> str:
    """An escaped, left-aligned HTML snapshot: one column per generation, side by side.

    ``cells`` (the columns' bodies) and ``heads`` (what goes under each label) are
    already-escaped markup; everything else is escaped here.
    """
    columns = []
    for i, label in enumerate(labels):
        body = cells[i] if cells is not None else (
            f"<div style='{_TEXT}'>{escape(texts[i] if i < len(texts) else '')}</div>")
        head = heads[i] if heads else ""
        stat = stats[i] if i < len(stats) else ""
        columns.append(
            "<div style='flex:1 1 0;min-width:200px;border:1px solid #ddd;border-radius:4px;"
            f"padding:6px;text-align:left'><div style='font-weight:600'>{escape(label)}</div>"
            f"{head}{body}<div style='{_SMALL}'>{escape(stat)}</div></div>")
    top = ("<div style='margin-bottom:4px'><strong>Prompt</strong> <span style='font-family:"
           f"ui-monospace,monospace;white-space:pre-wrap'>{escape(prompt)}</span></div>"
           if prompt else "")
    extra = f"<div style='{_SMALL}'>{escape(note)}</div>" if note else ""
    return ("<div class='llm-magic-compare' style='text-align:left;font:13px/1.4 system-ui,"
            "sans-serif;max-width:100%;overflow-x:auto'>"
            f"{top}{_legend_html() if legend else ''}"
            f"<div style='display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start'>"
            f"{''.join(columns)}</div>{extra}</div>")


def comparison_html(comparison: Comparison) -> str:
    """The finished comparison as the live view first shows it: escaped, with inline colours."""
    cells, heads = [], []
    notes = list(getattr(comparison, "column_notes", ()))
    for i, gen in enumerate(comparison):
        score = comparison.against(i)
        words = [_caption(score), _first(score), notes[i] if i < len(notes) else ""]
        heads.append("".join(f"<div style='{_SMALL}'>{escape(w)}</div>" for w in words if w))
        if score is None:
            cells.append(f"<div style='{_TEXT}'>{escape(gen.text)}</div>")
            continue
        spans = []
        for j, (p, d) in enumerate(zip(score.pieces, score.deltas, strict=True)):
            if j == score.divergence:
                spans.append("<span title='the greedy choices first differ here' "
                             "style='color:#b00;font-weight:bold'>▶</span>")
            back = shade(d)
            spans.append(f"<span title='{escape(f'Δ log p {d:+.3f} nats')}' style='background:"
                         f"{colour(d)};color:{ink(back)};unicode-bidi:isolate'>"
                         f"{escape(visible(p.text, breaks=True))}</span>")
        cells.append(f"<div style='{_TEXT}'>{''.join(spans)}</div>")
    return table_html(list(comparison.labels), [], [_stats(g) for g in comparison], cells,
                      _note(comparison), prompt=comparison.prompt, heads=heads, legend=True)
