"""The static HTML of an :class:`~llm_magic.analysis.attribution.Attribution`.

A table: rows = output tokens, columns = input tokens, each cell shaded on a
diverging scale around 0 (red: the input raises f, blue: it lowers it), its
number written in the ink of :func:`~llm_magic.common.heatmap.ink` and its
exact value in the cell's title (hover). Every text is escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from ..common.heatmap import hex_colour, ink
from ..common.visible import visible

__all__ = ["NEGATIVE", "POSITIVE", "colour", "html", "scale_end"]

#: The darkest shades of the scale (ColorBrewer RdBu ends): f raised, f lowered.
POSITIVE = (178, 24, 43)
NEGATIVE = (33, 102, 172)
WHITE = (255, 255, 255)
#: Cells beyond this many are left out of the snapshot (the rows after are summed up).
MAX_CELLS = 20_000
_NOT_INPUT = "#eeeeee"


def scale_end(scores: Any) -> float:
    """The largest absolute finite score: the darkest shade (1 when there is none)."""
    import numpy as np

    finite = np.abs(scores[np.isfinite(scores)])
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def colour(value: float, end: float) -> tuple[int, int, int]:
    """The shade of ``value`` on the scale from ``-end`` (blue) through 0 (white) to ``end``."""
    f = max(-1.0, min(1.0, value / end))
    far = POSITIVE if f >= 0 else NEGATIVE
    a = abs(f)
    return tuple(round(w + (d - w) * a) for w, d in zip(WHITE, far, strict=True))  # type: ignore[return-value]


def _number(x: float) -> str:
    return f"{x:.2g}" if abs(x) < 0.995 else f"{x:.3g}" if abs(x) < 99.5 else f"{x:.0f}"


def _legend(attribution: Any, end: float) -> str:
    signed = attribution.method != "saliency"
    ramp = (f"linear-gradient(to right, {hex_colour(NEGATIVE)}, #ffffff, "
            f"{hex_colour(POSITIVE)})" if signed else
            f"linear-gradient(to right, #ffffff, {hex_colour(POSITIVE)})")
    ticks = ([(0, f"-{_number(end)}"), (50, "0"), (100, f"+{_number(end)}")] if signed
             else [(0, "0"), (100, _number(end))])
    where = {0: "left:0", 50: "left:50%;transform:translateX(-50%)", 100: "right:0"}
    marks = "".join(f"<span style='position:absolute;top:0;white-space:nowrap;{where[at]}'>"
                    f"{escape(text)}</span>" for at, text in ticks)
    meaning = ("red: the input token raises f, blue: it lowers it" if signed
               else "darker: f is more sensitive to the input token")
    caption = f"{attribution.unit}; {meaning}; darkest at {_number(end)} or beyond"
    return (
        "<div class='llm-magic-colourbar' style='display:flex;flex-wrap:wrap;gap:2px 10px;"
        "align-items:flex-start;font-size:11px;margin:4px 0;text-align:left'>"
        "<div style='flex:none;width:160px'>"
        f"<div role='img' aria-label='colour scale' style='width:160px;height:10px;"
        f"border:1px solid #bbb;box-sizing:border-box;background:{ramp}'></div>"
        f"<div style='position:relative;height:1.3em;width:160px'>{marks}</div></div>"
        f"<span style='flex:1 1 220px;min-width:0;opacity:.8'>{escape(caption)}</span></div>"
    )


def _cell(value: float, end: float, row: str, column: str, unit: str) -> str:
    if not math.isfinite(value):
        title = f"{column} → {row}: not an input of this token (it comes at or after it)"
        return f"<td title='{escape(title, quote=True)}' style='background:{_NOT_INPUT}'></td>"
    rgb = colour(value, end)
    title = f"{column} → {row}: {value:+.6g} ({unit})"
    return (f"<td title='{escape(title, quote=True)}' style='background:{hex_colour(rgb)};"
            f"color:{ink(rgb)};padding:1px 3px;white-space:nowrap'>{escape(_number(value))}</td>")


def html(attribution: Any) -> str:
    """The escaped HTML snapshot: summary, legend, notes and the labelled table."""
    scores = attribution.scores
    end = scale_end(scores)
    rows, cols = scores.shape
    shown_rows = max(1, min(rows, MAX_CELLS // max(cols, 1)))
    unit = attribution.unit
    columns = [visible(t) for t in attribution.input_tokens]
    prompt = attribution.prompt_tokens
    head = ["<th style='text-align:left;position:sticky;left:0;background:#fff;"
            "white-space:nowrap'>"
            "output ↓ · input →</th>"]
    source = attribution.source_tokens
    for j, text in enumerate(columns):
        edge = ("border-left:2px solid #888;" if prompt is not None and j == prompt else
                "border-left:2px dashed #888;" if source is not None and j == source else "")
        side = "" if source is None else " (source)" if j < source else " (decoder input)"
        head.append(f"<th title='{escape(f'input token {j}{side}: {text!r}', quote=True)}' "
                    f"style='{edge}white-space:pre;font-weight:normal;padding:1px 3px'>"
                    f"{escape(text)}</th>")
    body = []
    for r in range(shown_rows):
        name = visible(attribution.output_tokens[r])
        cells = "".join(_cell(float(scores[r, j]), end, repr(name), repr(columns[j]), unit)
                        for j in range(cols))
        body.append(f"<tr><th style='text-align:left;white-space:pre;position:sticky;left:0;"
                    f"background:#fff;font-weight:normal'>{escape(name)}</th>{cells}</tr>")
    more = (f"<div>{rows - shown_rows} more output tokens are in .scores.</div>"
            if shown_rows < rows else "")
    warning = ""
    if attribution.completeness is not None:
        worst = float(max(attribution.completeness))
        if not worst <= 0.01:
            warning = (f"<div style='color:#a00'>Completeness error {100 * worst:.2f}% (over "
                       "1%): the scores do not add up to f(x) - f(baseline); raise steps=.</div>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in attribution.notes)
    return (
        "<div class='llm-magic-attribution' style='max-width:100%;text-align:left;"
        "font-size:12px'>"
        f"<div>{escape(attribution.summary())}</div>{warning}{_legend(attribution, end)}"
        "<div style='max-width:100%;max-height:480px;overflow:auto'>"
        "<table style='border-collapse:collapse;font-family:monospace;font-size:11px'>"
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        f"{more}<details><summary>How this was computed</summary><ul>{notes}</ul></details>"
        "</div>"
    )
