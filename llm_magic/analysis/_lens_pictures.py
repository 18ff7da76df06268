"""The static fallback of a logit lens: a PNG of the grid and an escaped HTML snapshot.

Exported notebooks, nbval and GitHub show these where the live view cannot
run. The colours are the ramp of :mod:`._heatmap`, which ``lens.js`` draws
with too; every token is escaped, and whitespace is made visible the way the
view shows it.
"""

from __future__ import annotations

import base64
from html import escape
from typing import TYPE_CHECKING, Any, Protocol

from ..common import heatmap as _heatmap
from ..common.visible import visible

if TYPE_CHECKING:
    import numpy as np


__all__ = ["LEGENDS", "grid_png", "snapshot_html", "visible"]

#: What a dark cell means, per metric (the view shows the same lines).
LEGENDS = {
    "probability": "darker = the final prediction is likelier at this layer",
    "rank": "darker = the final prediction ranks higher at this layer (log scale)",
    "entropy": "darker = a more uncertain layer (entropy over its largest, log vocabulary)",
    "kl": "darker = further from the final distribution (KL, over the grid's largest)",
}
#: Positions the HTML table shows at most (the PNG shows every one).
TABLE_POSITIONS = 48


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
    width = max(1, min(24, 1536 // max(t, 1)))
    height = 12
    levels = np.rint(np.clip(shade[::-1], 0, 1) * 254).astype(np.uint8)
    pixels = levels.repeat(height, axis=0).repeat(width, axis=1)
    if width >= 4:  # a light line between cells, where there is room for one
        pixels[:, width - 1 :: width] = _heatmap.GAP
    pixels[height - 1 :: height, :] = _heatmap.GAP
    return _heatmap.encode_png(pixels)


def _colour(level: int, palette: bytes) -> str:
    r, g, b = palette[3 * level : 3 * level + 3]
    return f"#{r:02x}{g:02x}{b:02x}"


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


def snapshot_html(lens: _Lens, *, metric: str = "probability", stride: int = 1) -> str:
    """The escaped snapshot: a title, the grid's PNG, a table of top tokens, the legend.

    Examples
    --------
    >>> html = snapshot_html(lens)  # doctest: +SKIP
    """
    rows = lens.rows_shown(stride)
    shade = lens.shade(metric)
    png = base64.b64encode(lens.to_png(metric=metric, stride=stride)).decode("ascii")
    _, t, _ = lens.shape
    shown = min(t, TABLE_POSITIONS)
    palette = _heatmap.palette()
    cell = "padding:1px 3px;white-space:pre;border:1px solid #eee"
    correct = lens.correct
    head = ["<tr><th style='text-align:right;padding-right:4px'>next token</th>"]
    for pos in range(shown):
        nxt = lens.next_ids[pos]
        label = "" if nxt is None else visible(lens.text(nxt))
        star = " ★" if correct[pos] else ""
        head.append(f"<th style='{cell};font-weight:normal'>{escape(label + star)}</th>")
    lines = ["".join(head) + "</tr>"]
    for row in reversed(rows):
        tds = [f"<th style='text-align:right;padding-right:4px'>{escape(lens.layers[row])}</th>"]
        for pos in range(shown):
            level = int(round(float(shade[row, pos]) * 254))
            ink = "#fff" if level > 150 else "#222"
            word = visible(lens.text(int(lens.ids[row, pos, 0])))
            tip = "; ".join(f"{visible(w)!r} {p * 100:.1f}%" for _, w, p in lens.top(row, pos))
            tds.append(f"<td title='{escape(tip)}' style='{cell};background:"
                       f"{_colour(level, palette)};color:{ink}'>{escape(word)}</td>")
        lines.append("<tr>" + "".join(tds) + "</tr>")
    inputs = "".join(f"<th style='{cell};font-weight:normal'>{escape(visible(w))}</th>"
                     for w in lens.tokens[:shown])
    lines.append(f"<tr><th style='text-align:right;padding-right:4px'>input</th>{inputs}</tr>")
    more = f"; the table shows the first {shown} of {t} positions" if shown < t else ""
    skipped = f"; every {stride}th layer and the last" if stride > 1 else ""
    return (
        f"<div class='llm-magic-lens'><div style='font-weight:600'>{escape(lens.summary())}</div>"
        f"<img alt='logit lens grid' src='data:image/png;base64,{png}' "
        "style='image-rendering:pixelated;max-width:100%'>"
        "<div style='overflow-x:auto'><table style='border-collapse:collapse;"
        f"font-family:monospace;font-size:11px'>{''.join(lines)}</table></div>"
        f"<div style='opacity:.7;font-size:smaller'>{escape(LEGENDS[metric])}; ★ = the final "
        f"prediction is the next token{escape(more + skipped)}.</div></div>"
    )
