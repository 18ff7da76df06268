"""The pictures of a logit lens: the colour scale of each metric, a PNG, an HTML snapshot.

:func:`scale` is the one place that says how a metric becomes a shade: the view
(``lens.js``, through the widget's ``scales``), the PNG and the snapshot all
shade with it, and its caption (what, in which unit, over which range, how
clipped) is the legend under every one of them. The colours are the ramp of
:mod:`..common.heatmap`; every token is escaped, and whitespace is made visible
the way the view shows it. Exported notebooks, nbval and GitHub show the
snapshot where the live view cannot run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any, Protocol

from ..common import heatmap as _heatmap
from ..common.visible import visible

if TYPE_CHECKING:
    import numpy as np


__all__ = ["LEGENDS", "Scale", "grid_png", "row_names", "scale", "snapshot_html", "visible"]

#: What a dark cell means, per metric (the view shows the same lines).
LEGENDS = {
    "probability": "darker = the final prediction is likelier at this layer",
    "rank": "darker = the final prediction ranks higher at this layer",
    "entropy": "darker = a more uncertain layer",
    "kl": "darker = further from the final distribution",
}
#: Positions the HTML table shows at most (the PNG above it shows every one).
TABLE_POSITIONS = 48
#: Height in pixels of a row of the PNG.
ROW_PIXELS = 12


class _Lens(Protocol):
    """What a picture reads of a :class:`~llm_magic.analysis.lens.LensMap` (which imports
    this module, so it is described here rather than imported)."""

    @property
    def layers(self) -> Any: ...
    @property
    def tokens(self) -> Any: ...
    @property
    def ids(self) -> Any: ...
    @property
    def final_prob(self) -> Any: ...
    @property
    def final_rank(self) -> Any: ...
    @property
    def entropy(self) -> Any: ...
    @property
    def kl(self) -> Any: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int, int]: ...
    @property
    def correct(self) -> tuple[bool, ...]: ...
    @property
    def next_ids(self) -> tuple[int | None, ...]: ...
    def rows_shown(self, stride: int = 1) -> list[int]: ...
    def shade(self, metric: str = "probability") -> Any: ...
    def to_png(self, path: Any = None, *, metric: str = "probability",
               stride: int = 1) -> bytes: ...
    def text(self, token_id: int) -> str: ...
    def top(self, row: int, position: int) -> tuple[tuple[int, str, float], ...]: ...
    def summary(self) -> str: ...


# -- scales ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """How one metric's values become shades from 0 (white) to 1 (darkest).

    A value at ``light`` is white and one at ``dark`` darkest, linearly in the
    value or (``log``) in its logarithm; values beyond either end are clipped.

    Attributes
    ----------
    metric : str
    light, dark : float
        The values drawn white and darkest (``dark < light`` for rank: rank 1 is darkest).
    log : bool
        Shade by the logarithm of the value.
    caption : str
        What the shade shows, its unit, its range and how it was clipped.
    legend : str
        What a darker cell means.
    ticks : tuple of (float, str)
        Marks under the colour bar: (shade, text).
    """

    metric: str
    light: float
    dark: float
    log: bool
    caption: str
    legend: str
    ticks: tuple[tuple[float, str], ...]

    def shade(self, values: Any) -> np.ndarray:
        """The shades (0 to 1, float32) of an array of values."""
        import numpy as np

        v = np.asarray(values, dtype=np.float64)
        lo, hi = self._ends()
        if self.log:
            v = np.log(np.maximum(v, 1e-12))
        if hi == lo:
            return np.zeros(v.shape, dtype=np.float32)  # type: ignore[no-any-return]
        out = np.nan_to_num((v - lo) / (hi - lo), nan=0.0)
        return np.clip(out, 0, 1).astype(np.float32)  # type: ignore[no-any-return]

    def _ends(self) -> tuple[float, float]:
        if self.log:
            return math.log(max(self.light, 1e-12)), math.log(max(self.dark, 1e-12))
        return self.light, self.dark

    def at(self, value: float) -> float:
        """The shade of one value."""
        return float(self.shade([value])[0])

    def as_dict(self) -> dict[str, Any]:
        """What the view needs to shade and label the same way (the widget's ``scales``)."""
        return {"light": self.light, "dark": self.dark, "log": self.log,
                "caption": self.caption, "legend": self.legend,
                "ticks": [[at, text] for at, text in self.ticks]}


def _number(x: float) -> str:
    """A value as a scale's caption writes it: 3.2, 0.45, 30."""
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def _middle(lens: _Lens, values: Any) -> tuple[Any, str]:
    """The rows between the embeddings and the output (the blocks the lens reads through),
    and what they are called; every row but the output where there is no such row."""
    rows = lens.shape[0]
    if rows > 2:
        return values[1:-1], (f"blocks 1 to {rows - 2}" if rows > 3 else "block 1")
    return values[:-1], "the rows before the output"


def scale(lens: _Lens, metric: str) -> Scale:
    """The colour scale of ``metric`` for this lens, chosen so that the grid shows its structure.

    probability: 0 to 1. rank: log scale from rank 1 (darkest) to the 99th
    percentile of the blocks' ranks (white), so the embeddings row does not
    flatten the blocks. entropy: nats, 0 to the grid's 95th percentile. kl:
    nats, 0 to the 95th percentile of the blocks; the embeddings row, often far
    larger, is clipped and its largest value stated.
    """
    import numpy as np

    legend = LEGENDS[metric]
    if metric == "probability":
        return Scale(metric, 0.0, 1.0, False,
                     "probability of the final prediction at this layer, 0 to 1", legend,
                     ((0.0, "0"), (0.5, "0.5"), (1.0, "1")))
    if metric == "rank":
        middle, where = _middle(lens, np.asarray(lens.final_rank))
        top = float(np.percentile(middle, 99)) if middle.size else 10.0
        clip = int(min(max(10, math.ceil(top)), max(lens.vocab_size, 10)))
        sc = Scale(metric, float(clip), 1.0, True, "", legend, ())
        marks = [(0.0, f"≥{clip:,}"), (1.0, "1")]
        marks += [(sc.at(10.0 ** e), f"{10 ** e:,}") for e in range(1, 7)
                  if 0.15 <= sc.at(10.0 ** e) <= 0.85]
        caption = (f"rank of the final prediction at this layer, log scale: 1 = darkest, "
                   f"{clip:,} or more = white ({clip:,} = the 99th percentile of {where}; "
                   f"the vocabulary has {lens.vocab_size:,} tokens)")
        return Scale(metric, float(clip), 1.0, True, caption, legend,
                     tuple(sorted(marks)))
    values = np.asarray(lens.entropy if metric == "entropy" else lens.kl, dtype=np.float64)
    if metric == "entropy":
        top = float(np.percentile(values, 95)) if values.size else 1.0
        caption = (f"entropy of the layer's prediction, nats: 0 = white, {_number(top)} or "
                   f"more = darkest (the 95th percentile of the grid; at most ln "
                   f"{lens.vocab_size:,} = {math.log(max(lens.vocab_size, 2)):.1f})")
    else:
        middle, where = _middle(lens, values)
        top = float(np.percentile(middle, 95)) if middle.size else 1.0
        largest = float(values.max()) if values.size else 0.0
        caption = (f"KL to the final layer, nats: 0 = white, {_number(top)} or more = darkest "
                   f"(clipped at the 95th percentile of {where}; the grid's largest is "
                   f"{_number(largest)})")
    top = top if top > 0 else 1.0
    ticks = ((0.0, "0"), (0.5, _number(top / 2)), (1.0, f"≥{_number(top)}"))
    return Scale(metric, 0.0, top, False, caption, legend, ticks)


def row_names(lens: _Lens) -> list[str]:
    """The rows' names as the views label them: the last one is also called the output."""
    names = [str(name) for name in lens.layers]
    if len(names) > 1:
        names[-1] = f"{names[-1]} (output)"
    return names


# -- the PNG and the snapshot ---------------------------------------------------------------


def _column_pixels(t: int) -> int:
    return max(1, min(24, 1536 // max(t, 1)))


def grid_png(shade: np.ndarray) -> bytes:
    """A palette PNG of ``shade`` (rows from the embeddings up, positions), last row on top.

    Examples
    --------
    >>> import numpy as np
    >>> grid_png(np.zeros((3, 4), dtype=np.float32))[:4]
    b'\\x89PNG'
    """
    import numpy as np

    rows, t = shade.shape
    width = _column_pixels(t)
    height = ROW_PIXELS
    levels = np.rint(np.clip(shade[::-1], 0, 1) * 254).astype(np.uint8)
    pixels = levels.repeat(height, axis=0).repeat(width, axis=1)
    if width >= 4:  # a light line between cells, where there is room for one
        pixels[:, width - 1 :: width] = _heatmap.GAP
    pixels[height - 1 :: height, :] = _heatmap.GAP
    return _heatmap.encode_png(pixels)


_TH = ("text-align:right;padding:0 6px 0 0;white-space:nowrap;font-weight:normal;"
       "font-family:system-ui,sans-serif;border:none;background:transparent;color:#444")
_TOKEN = ("padding:1px 3px;unicode-bidi:isolate;text-align:left;vertical-align:middle;"
          "line-height:1.25;border:none")
_CELL = _TOKEN + ";border:1px solid #fff"
#: Tokens up to this many characters stay on one line; longer ones wrap inside it, whole.
_ONE_LINE = 20


def _wrap(text: str) -> str:
    """The white-space of a cell holding ``text``: one line, or wrapping where it is long."""
    if len(text) <= _ONE_LINE:
        return "white-space:pre"
    return f"white-space:pre-wrap;overflow-wrap:anywhere;min-width:{_ONE_LINE // 2}ch;" \
        f"max-width:{_ONE_LINE}ch"


def _overview(lens: _Lens, rows: list[int], metric: str, stride: int) -> str:
    """The PNG of every position, rows labelled, under a table too narrow to show them all."""
    _, t, _ = lens.shape
    names = row_names(lens)
    png = _heatmap.png_src(lens.to_png(metric=metric, stride=stride))
    width, height = t * _column_pixels(t), len(rows) * ROW_PIXELS
    labels = "".join(f"<div style='height:{ROW_PIXELS}px;line-height:{ROW_PIXELS}px;"
                     f"font-size:10px;text-align:right;white-space:nowrap'>{escape(names[r])}"
                     "</div>" for r in reversed(rows))
    return (
        "<div style='max-width:100%;overflow-x:auto;margin:4px 0'>"
        "<div style='display:grid;grid-template-columns:auto auto;justify-content:start;"
        f"column-gap:6px'><div>{labels}</div>"
        f"<img alt='logit lens grid, every position' src='{png}' width='{width}' "
        f"height='{height}' style='display:block;width:{width}px;height:{height}px;"
        "max-width:none;margin:0;image-rendering:pixelated'><div></div>"
        f"<div style='font-size:11px;opacity:.75'>positions 0 to {t - 1} \u2192 (every "
        f"position; the table below shows the first {TABLE_POSITIONS})</div></div></div>"
    )


def _source(lens: _Lens) -> str:
    """An encoder–decoder's source (what its encoder read), above its decoder's grid."""
    source = getattr(lens, "source", None)
    if source is None:
        return ""
    return ("<div style='font-size:12px;margin-top:2px;white-space:pre-wrap;"
            f"overflow-wrap:anywhere'>source: {escape(visible(source))}; the rows are the "
            "decoder's, the inputs its output after its start token</div>")


def snapshot_html(lens: _Lens, *, metric: str = "probability", stride: int = 1) -> str:
    """The escaped snapshot, as the view first looks: the title, the legend and its colour
    bar, then the grid as a table (rows = layers by name, the output on top; the actual
    next tokens along the top, the input tokens along the bottom), each cell shaded and
    holding its top token in the ink of higher contrast.

    Examples
    --------
    >>> html = snapshot_html(lens)  # doctest: +SKIP
    """
    rows = lens.rows_shown(stride)
    sc = scale(lens, metric)
    shade = lens.shade(metric)
    names = row_names(lens)
    _, t, _ = lens.shape
    shown = min(t, TABLE_POSITIONS)
    correct = lens.correct
    head = [f"<tr style='background:transparent'><th style='{_TH}'>next \u2192</th>"]
    for pos in range(shown):
        nxt = lens.next_ids[pos]
        label = "" if nxt is None else visible(lens.text(nxt))
        star = "<span style='color:#e6550d'>\u2605</span>" if correct[pos] else ""
        ink = "color:#006d2c;font-weight:600" if correct[pos] else "color:#444;font-weight:normal"
        head.append(f"<th style='{_TOKEN};{_wrap(label)};{ink}'>{escape(label)}{star}</th>")
    lines = ["".join(head) + "</tr>"]
    for row in reversed(rows):
        tds = [f"<th style='{_TH}'>{escape(names[row])}</th>"]
        for pos in range(shown):
            rgb = _heatmap.colour(int(round(float(shade[row, pos]) * 254)))
            word = visible(lens.text(int(lens.ids[row, pos, 0])))
            tip = "; ".join(f"{visible(w)!r} {p * 100:.1f}%" for _, w, p in lens.top(row, pos))
            tds.append(f"<td title='{escape(tip)}' style='{_CELL};{_wrap(word)};background:"
                       f"{_heatmap.hex_colour(rgb)};color:{_heatmap.ink(rgb)}'>"
                       f"{escape(word)}</td>")
        lines.append("<tr style='background:transparent'>" + "".join(tds) + "</tr>")
    inputs = "".join(f"<th style='{_TOKEN};{_wrap(visible(w))};font-weight:normal;color:#444'>"
                     f"{escape(visible(w))}</th>" for w in lens.tokens[:shown])
    lines.append(f"<tr style='background:transparent'><th style='{_TH}'>input \u2192</th>"
                 f"{inputs}</tr>")
    more = f"; the table shows the first {shown} of {t} positions" if shown < t else ""
    skipped = f"; every {stride}th layer and the output" if stride > 1 else ""
    note = (f"{sc.legend}; \u2605 = the final prediction is the next token; rows: layers, the "
            f"output on top; columns: positions{more}{skipped}.")
    return (
        "<div class='llm-magic-lens' style='font:13px/1.4 system-ui,sans-serif;color:#222;"
        "text-align:left;max-width:100%'>"
        f"<div style='font-weight:600'>{escape(lens.summary())}</div>{_source(lens)}"
        f"<div style='font-size:11px;opacity:.75;margin-top:2px'>{escape(note)}</div>"
        f"{_heatmap.colour_bar_html(sc.caption, sc.ticks)}"
        f"{_overview(lens, rows, metric, stride) if shown < t else ''}"
        "<div style='overflow-x:auto;max-width:100%'><table style='border-collapse:collapse;"
        "margin:0;table-layout:auto;font-family:ui-monospace,monospace;font-size:10px;"
        f"color:#222'>{''.join(lines)}</table></div></div>"
    )
