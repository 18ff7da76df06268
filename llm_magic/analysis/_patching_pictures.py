"""The pictures of ablation and patching: a diverging heatmap (HTML and PNG), a table.

The patching scale is fixed: the normalised effect from -1 (blue) through 0 (white) to
+1 (red), values beyond clipped, so two grids read alike. The PNG is written with
:func:`..common.heatmap.encode_png` and a diverging palette, and carries its own labels
(layer numbers, column numbers, the scale's ticks) in a 3 x 5 pixel digit font, since no
drawing library is a dependency. Every token is escaped and made visible.
"""

from __future__ import annotations

import functools
from html import escape
from typing import Any

from ..common import heatmap as _heatmap
from ..common.visible import visible

__all__ = ["BLUE", "CELL", "PART_NAMES", "RED", "colour", "diverging", "from_capture", "level",
           "patching_html", "patching_png", "png_size", "position_word"]

#: An encoder–decoder's parts, as a summary names them.
PART_NAMES = {"encoder": "encoder", "decoder": "decoder", "cross": "cross-attention"}

#: The colours of -1 and +1 (0 is white).
BLUE, RED = (33, 102, 172), (178, 24, 43)
#: Pixels of a grid cell's height (and width, when the columns fit).
CELL = 16
_INK, _WHITE = 255, 127  # palette indices: black text, white (the level of 0)
_FONT = {  # 3 x 5 digits, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001010010", "8": "111101111101111",
    "9": "111101111001111", "-": "000000111000000", "+": "000010111010000",
}
_SCALE = 2  # font pixels
_GLYPH_W, _GLYPH_H = 4 * _SCALE, 5 * _SCALE  # advance (3 + 1 space) and height


@functools.cache
def diverging() -> bytes:
    """PLTE bytes: 0..254 from blue (-1) through white (127, 0) to red (+1), 255 black."""
    out = bytearray()
    for i in range(255):
        v = i / 127 - 1
        end, f = (BLUE, -v) if v < 0 else (RED, v)
        out += bytes(round(255 + (c - 255) * min(1.0, f)) for c in end)
    out += bytes((0, 0, 0))
    return bytes(out)


def level(value: float) -> int:
    """The palette index of a normalised effect (clipped to -1..1; NaN is white)."""
    if value != value:
        return _WHITE
    return int(round((max(-1.0, min(1.0, float(value))) + 1) * 127))


def colour(value: float) -> tuple[int, int, int]:
    """The (r, g, b) of a normalised effect."""
    table, i = diverging(), 3 * level(value)
    return table[i], table[i + 1], table[i + 2]


# -- the result ------------------------------------------------------------------------------


def position_word(part: str | None) -> str:
    """What a column's position indexes: "positions", "source positions", "decoder positions"."""
    return {None: "positions", "encoder": "source positions"}.get(part, "decoder positions")


def from_capture(cls: Any, cap: Any, model: str, metric: Any) -> Any:
    """A :class:`~llm_magic.analysis.patching.Patching` of a backend's capture."""
    part = getattr(cap, "part", None)
    # An encoder–decoder's decoder or cross-attention is patched at the decoder's positions.
    labels = (cap.decoder_texts if getattr(cap, "positions", "input") == "decoder"
              else cap.corrupt_texts)
    if cap.over == "heads":
        columns = tuple(f"head {h}" for h in cap.columns)
    else:
        columns = tuple((f"{b}" if a == b else f"{a}\u2192{b}")
                        + f" {visible(labels[b])!r}" for a, b in cap.columns)
    if metric is None:
        a, b = cap.answer_texts
        name = f"logit({visible(a)!r}) \u2212 logit({visible(b)!r}) at the last position"
    else:
        name = getattr(metric, "__name__", None) or type(metric).__name__
        name = f"{name}(logits)"
    sanity = (f"sanity: clean patched into clean changed the logits by exactly "
              f"{cap.clean_change:g}; the unpatched corrupt run equals the model's own logits "
              f"(torch.equal: {cap.corrupt_equal})")
    stack = "" if part is None else ("encoder " if part == "encoder" else "decoder ")
    return cls(model=model, over=cap.over, grid=cap.grid, values=cap.values,
               rows=tuple(f"{stack}layer {i}" for i in range(cap.grid.shape[0])),
               columns=columns, clean_value=cap.clean_value, corrupt_value=cap.corrupt_value,
               metric_name=name, sanity=sanity, clean_tokens=cap.clean_texts,
               corrupt_tokens=cap.corrupt_texts, forwards=cap.forwards,
               rows_per_forward=cap.rows_per_forward, part=part,
               decoder_tokens=tuple(getattr(cap, "decoder_texts", ())))


# -- PNG ------------------------------------------------------------------------------------


def _column_width(columns: int) -> int:
    return max(4, min(CELL, 1024 // max(columns, 1)))


def _label_width(rows: int) -> int:
    return len(str(max(rows - 1, 0))) * _GLYPH_W + 4


#: Height of the margins: the column numbers on top; the gap, bar and ticks below.
_TOP = _GLYPH_H + 4
_BAR_GAP, _BAR_H = 6, 10
_BOTTOM = _BAR_GAP + _BAR_H + 2 + _GLYPH_H + 2


def png_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`patching_png` of a ``rows`` x ``columns`` grid."""
    width = _label_width(rows) + columns * _column_width(columns)
    return max(width, _label_width(rows) + 100), _TOP + rows * CELL + _BOTTOM


def _text(pixels: Any, x: int, y: int, text: str) -> None:
    for k, ch in enumerate(text):
        bits = _FONT[ch]
        for r in range(5):
            for c in range(3):
                if bits[3 * r + c] == "1":
                    x0, y0 = x + k * _GLYPH_W + c * _SCALE, y + r * _SCALE
                    pixels[y0 : y0 + _SCALE, x0 : x0 + _SCALE] = _INK


def _text_width(text: str) -> int:
    return len(text) * _GLYPH_W - _SCALE


def patching_png(grid: Any) -> bytes:
    """A labelled palette PNG of a patching grid: layer 0 on top, layer numbers on the left,
    column numbers (positions or heads) above, the scale -1..+1 with its ticks below.

    Examples
    --------
    >>> import numpy as np
    >>> patching_png(np.zeros((2, 3), dtype=np.float32))[:4]
    b'\\x89PNG'
    """
    import numpy as np

    rows, cols = grid.shape
    width, height = png_size(rows, cols)
    cw, left = _column_width(cols), _label_width(rows)
    pixels = np.full((height, width), _WHITE, dtype=np.uint8)
    levels = np.rint((np.clip(np.nan_to_num(np.asarray(grid, dtype=np.float64)), -1, 1) + 1)
                     * 127).astype(np.uint8)
    cells = levels.repeat(CELL, axis=0).repeat(cw, axis=1)
    pixels[_TOP : _TOP + rows * CELL, left : left + cols * cw] = cells
    for r in range(rows):
        _text(pixels, left - 4 - _text_width(str(r)), _TOP + r * CELL + (CELL - _GLYPH_H) // 2,
              str(r))
    step = 1
    while step * cw < _text_width(str(cols - 1)) + 2:
        step += 1
    for c in range(0, cols, step):
        label = str(c)
        _text(pixels, max(0, left + c * cw + (cw - _text_width(label)) // 2), 1, label)
    bar_y, bar_w = _TOP + rows * CELL + _BAR_GAP, min(width - left, 254)
    ramp = np.rint(np.linspace(0, 254, bar_w)).astype(np.uint8)
    pixels[bar_y : bar_y + _BAR_H, left : left + bar_w] = ramp[None, :]
    tick_y = bar_y + _BAR_H + 2
    for frac, label in ((0.0, "-1"), (0.5, "0"), (1.0, "+1")):
        x = left + int(frac * (bar_w - 1)) - _text_width(label) // 2
        _text(pixels, min(max(0, x), width - _text_width(label)), tick_y, label)
    return _heatmap.encode_png(pixels, diverging())


# -- HTML -----------------------------------------------------------------------------------

_TH = ("text-align:right;padding:0 6px 0 0;white-space:nowrap;font-weight:normal;"
       "border:none;background:transparent;color:#444")
_HEAD = ("padding:1px 3px;white-space:pre;font-weight:normal;color:#444;border:none;"
         "writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;max-height:12em;"
         "overflow:hidden")
_CELL = "min-width:22px;height:18px;padding:0 2px;border:1px solid #fff;text-align:center"
_BOX = ("font:13px/1.4 system-ui,sans-serif;color:#222;text-align:left;max-width:100%")


def patching_html(p: Any) -> str:
    """The escaped snapshot: the summary, the sanity line, the scale, the labelled grid,
    each cell shaded by its effect with its numbers in a title (hover)."""
    caption = ("normalised effect (patched \u2212 corrupt) / (clean \u2212 corrupt): "
               "\u22121 = blue, 0 = white (no effect), +1 = red (the clean behaviour fully "
               "restored); values beyond \u00b11 are clipped")
    ticks = ((0.0, "\u22121"), (0.5, "0"), (1.0, "+1"))
    head = "".join(f"<th style='{_HEAD}'>{escape(c)}</th>" for c in p.columns)
    body = []
    for i, row in enumerate(p.rows):
        tds = [f"<th style='{_TH}'>{escape(row)}</th>"]
        for j, col in enumerate(p.columns):
            v = float(p.grid[i, j]) + 0.0  # no "-0.00"
            rgb = colour(v)
            tip = (f"{row}, {col}: normalised effect {v:+.3f}; metric {float(p.values[i, j]):.4g}"
                   f" (clean {p.clean_value:.4g}, corrupt {p.corrupt_value:.4g})")
            tds.append(f"<td title='{escape(tip)}' style='{_CELL};background:"
                       f"{_heatmap.hex_colour(rgb)};color:{_heatmap.ink(rgb)}'>"
                       f"{escape(f'{v:.2f}')}</td>")
        body.append("<tr style='background:transparent'>" + "".join(tds) + "</tr>")
    part = getattr(p, "part", None)
    where = position_word(part)
    token = "the decoder token both runs read" if part in ("decoder", "cross") else \
        "corrupt token"
    what = f"heads (each at every patched {where[:-1]})" if p.over == "heads" else \
        f"{where} ({token})"
    rows = "layers" if part is None else (
        "encoder layers" if part == "encoder" else
        "decoder layers" + " (their cross-attention)" * (part == "cross"))
    note = (f"rows: {rows}; columns: {what}; metric: {p.metric_name}; "
            f"{p.forwards} batched forwards of up to {p.rows_per_forward} rows.")
    return (
        f"<div class='llm-magic-patching' style='{_BOX}'>"
        f"<div style='font-weight:600'>{escape(p.summary())}</div>"
        f"<div style='font-size:11px;opacity:.75;margin-top:2px'>{escape(note)}</div>"
        f"<div style='font-size:11px;color:#006d2c'>{escape(p.sanity)}</div>"
        f"{_heatmap.colour_bar_html(caption, ticks, diverging())}"
        "<div style='overflow-x:auto;max-width:100%'><table style='border-collapse:collapse;"
        "margin:0;font-family:ui-monospace,monospace;font-size:10px'>"
        f"<tr style='background:transparent'><th></th>{head}</tr>{''.join(body)}"
        "</table></div></div>"
    )


def ablation_html(a: Any) -> str:
    """An escaped table: each position's token, its prediction before and after, the change."""
    lines = ["<tr><th style='text-align:left'>pos</th><th style='text-align:left'>token</th>"
             "<th style='text-align:left'>predicted before</th>"
             "<th style='text-align:left'>predicted after</th>"
             "<th style='text-align:right'>\u0394 log-prob of the answer, nats</th>"
             "<th style='text-align:right'>KL, nats</th></tr>"]
    source = getattr(a, "source_tokens", ())
    intro = "" if not getattr(a, "part", None) else (
        "<div style='font-size:11px;opacity:.75;margin-top:2px'>"
        + escape(f"decoder positions (start token, then the target) for the source "
                 f"{''.join(visible(t) for t in source)!r}") + "</div>")
    for t, token in enumerate(a.tokens):
        before = visible(a.text(int(a.base_top_ids[t, 0])))
        after = visible(a.text(int(a.top_ids[t, 0])))
        answers = ", ".join(f"{visible(a.text(int(i)))!r} {float(d):+.3f}"
                            for i, d in zip(a.answer_ids[t], a.delta[t], strict=True))
        lines.append(f"<tr><td>{t}</td><td style='white-space:pre'>{escape(visible(token))}</td>"
                     f"<td style='white-space:pre'>{escape(before)}</td>"
                     f"<td style='white-space:pre'>{escape(after)}</td>"
                     f"<td style='text-align:right'>{escape(answers)}</td>"
                     f"<td style='text-align:right'>{float(a.kl[t]):.4f}</td></tr>")
    return (f"<div class='llm-magic-ablation' style='{_BOX}'>"
            f"<div style='font-weight:600'>{escape(a.summary())}</div>{intro}"
            "<div style='overflow-x:auto;max-width:100%'><table style='border-collapse:collapse;"
            f"font-size:12px'>{''.join(lines)}</table></div></div>")
