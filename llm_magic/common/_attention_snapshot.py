"""The static snapshot of an attention view: escaped HTML, as the live view first looks.

:meth:`AttentionMap.to_html <llm_magic.common.attention_map.AttentionMap.to_html>`
puts these pieces together: the head as a heatmap (a PNG) with the tokens as
text along both axes, its colour bar, and the grid of every head with its rows
(layers) and columns (heads) labelled. The sizes follow
``widgets/static/attention.js`` at its widest, so the snapshot and the view
look alike. Every token is escaped; nothing here runs script.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from . import heatmap as _heatmap
from .visible import visible

if TYPE_CHECKING:
    import numpy as np

__all__ = ["block_mean2", "head_plot", "page", "scale", "thumbnails", "token_list"]

#: Pixels of the heatmap at most, and the cell size from which tokens label the axes
#: (MAX_SIDE and LABELLED in attention.js).
MAX_SIDE = 480
LABELLED = 10
GAP = 2
#: Tokens listed under a map too dense to label.
TOKENS = 256
_LABEL = ("font-family:ui-monospace,monospace;white-space:pre;overflow:hidden;"
          "text-overflow:ellipsis;color:#444;unicode-bidi:isolate")
_NOTE = "font-size:11px;opacity:.75"


def _cell(t: int) -> int:
    return max(1, min(24, MAX_SIDE // max(t, 1)))


def _pixels(values: np.ndarray, cell: int) -> tuple[np.ndarray, int, int]:
    """Palette pixels of a (rows x cols) head: ``cell`` pixels a token, or block means."""
    n_rows, n_cols = (int(n) for n in values.shape[-2:])
    if max(n_rows, n_cols) * cell <= MAX_SIDE:
        pixels = _heatmap.levels(values).repeat(cell, axis=0).repeat(cell, axis=1)
        return pixels, n_cols * cell, n_rows * cell
    # more tokens than pixels: block means, at most one pixel each
    h, w = min(n_rows, MAX_SIDE), min(n_cols, MAX_SIDE)
    return _heatmap.levels(block_mean2(values, h, w)), w, h


def head_plot(values: np.ndarray, labels: tuple[str, ...], prompt_tokens: int | None = None,
              *, columns: tuple[str, ...] | None = None, axes: tuple[str, str] | None = None
              ) -> str:
    """The heatmap of one head (rows x columns) with the tokens along both axes where cells
    allow; a generation's new tokens in green (the view underlines them in green).

    ``columns`` are the columns' tokens where they differ from the rows' (cross-attention);
    ``axes`` names rows and columns ("output", "source")."""
    t = int(values.shape[-2])
    n_cols = int(values.shape[-1])
    columns = labels if columns is None else columns
    cell = _cell(max(t, n_cols))
    pixels, width, height = _pixels(values, cell)
    img = (f"<img alt='attention heatmap' src='{_heatmap.png_src(_heatmap.encode_png(pixels))}'"
           f" width='{width}' height='{height}' style='display:block;width:{width}px;"
           f"height:{height}px;max-width:none;border:1px solid #ccc;image-rendering:pixelated;"
           "margin:0'>")
    rows = cols = ""
    new = t if prompt_tokens is None else prompt_tokens
    row_name, col_name = ("query token", "key token") if axes is None else (
        f"{axes[0]} token (query)", f"{axes[1]} token (key)")
    if cell >= LABELLED and t == len(labels) and n_cols == len(columns):
        font = f"font-size:{min(11, cell - 2)}px;line-height:{cell}px"
        ink = [";color:#006d2c;font-weight:600" if i >= new else "" for i in range(t)]
        col_ink = ink if columns is labels else [""] * n_cols
        rows = "".join(f"<div style='{_LABEL};{font};height:{cell}px;max-width:120px;"
                       f"text-align:right{ink[i]}'>{escape(visible(w))}</div>"
                       for i, w in enumerate(labels))
        cols = "".join(f"<div style='{_LABEL};{font};width:{cell}px;max-height:90px;"
                       "writing-mode:vertical-rl;transform:rotate(180deg);text-align:left"
                       f"{col_ink[i]}'>{escape(visible(w))}</div>" for i, w in enumerate(columns))
        axes_note = f"rows: {row_name}, columns: {col_name}"
    else:
        rows_of, cols_of = (name.replace("token", "tokens", 1) for name in (row_name, col_name))
        axes_note = f"rows: {rows_of} 0 to {t - 1}, columns: {cols_of} 0 to {n_cols - 1}"
    if new < t:
        axes_note += f"; tokens {new} to {t - 1} (in green where labelled) were generated"
    plot = (
        "<div style='display:grid;grid-template-columns:auto auto;align-items:end;"
        "justify-content:start'><div></div>"
        f"<div style='display:flex;align-items:flex-end;margin-bottom:4px;padding-left:1px'>"
        f"{cols}</div>"
        "<div style='display:flex;flex-direction:column;align-self:start;margin-right:4px;"
        f"padding-top:1px'>{rows}</div>{img}<div></div>"
        f"<div style='{_NOTE}'>{escape(axes_note)}</div></div>"
    )
    return plot


def token_list(labels: tuple[str, ...], name: str | None = None, side: int | None = None
               ) -> str:
    """The tokens in order, under a map too dense for token labels on its axes ("" else);
    ``name`` says which ("source"), ``side`` is the map's most tokens a side."""
    if not labels or _cell(side or len(labels)) >= LABELLED:
        return ""
    token = ("display:inline-block;white-space:pre;unicode-bidi:isolate;border:1px solid "
             "#ddd;border-radius:3px;padding:0 2px;margin:0 2px 2px 0")
    shown = "".join(f"<span style='{token}'>{escape(visible(w))}</span>"
                    for w in labels[:TOKENS])
    more = f" … (+{len(labels) - TOKENS})" if len(labels) > TOKENS else ""
    return ("<div style='font-size:11px;font-family:ui-monospace,monospace;margin-top:4px;"
            f"max-height:12em;overflow-y:auto'>{name + ' ' if name else ''}tokens 0 to "
            f"{len(labels) - 1}: {shown}{more}</div>")


def scale(top: float, mean: bool = False) -> str:
    """The colour bar of a map whose largest weight is ``top`` (attention.js weightScale)."""
    what = "the mean's largest" if mean else "this head's largest"
    caption = (f"attention weight (each query row sums to 1): white = 0, darkest = {top:.3f}, "
               f"{what}")
    return _heatmap.colour_bar_html(caption, [(0, "0"), (0.5, f"{top / 2:.2f}"),
                                              (1, f"{top:.2f}")])


def thumbnails(levels: np.ndarray, layer: int, head: int | None) -> str:
    """The grid of every head (layers x heads palette tiles), labelled, the shown one outlined."""
    import numpy as np

    n_layers, n_heads, _, _ = levels.shape
    tile = max(12, min(40, MAX_SIDE // max(n_heads, 1) - GAP))
    tiles = np.rint(_heatmap.block_mean(levels.astype(np.float32), tile)).astype(np.uint8)
    png = _heatmap.encode_png(_heatmap.grid_pixels(tiles, gap=GAP))
    unit = tile + GAP
    width, height = n_heads * unit - GAP, n_layers * unit - GAP
    short = tile < 22
    label = "font-size:10px;color:#555;white-space:nowrap;overflow:hidden;flex:none"
    cols = "".join(f"<div style='{label};text-align:center;"
                   f"width:{unit if h < n_heads - 1 else tile}px'>"
                   f"{h if short else f'H{h}'}</div>" for h in range(n_heads))
    rows = "".join(f"<div style='{label};text-align:right;line-height:{tile}px;"
                   f"height:{unit if r < n_layers - 1 else tile}px'>{r if short else f'L{r}'}"
                   "</div>" for r in range(n_layers))
    if head is None:
        box = (0, layer * unit, width, tile)
    else:
        box = (head * unit, layer * unit, tile, tile)
    mark = (f"<div style='position:absolute;left:{box[0]}px;top:{box[1]}px;width:{box[2]}px;"
            f"height:{box[3]}px;border:2px solid #e6550d;box-sizing:border-box'></div>")
    return (
        "<div style='max-width:100%;overflow-x:auto'>"
        f"<div style='{_NOTE};max-width:{MAX_SIDE}px;margin-bottom:2px'>Every head: rows = "
        "layers (L), columns = heads (H), each scaled to its own largest weight</div>"
        "<div style='display:grid;grid-template-columns:auto auto;justify-content:start'>"
        f"<div></div><div style='display:flex'>{cols}</div>"
        f"<div style='display:flex;flex-direction:column;padding-right:4px'>{rows}</div>"
        f"<div style='position:relative;width:{width}px;height:{height}px'>"
        f"<img alt='every head' src='{_heatmap.png_src(png)}' width='{width}' height='{height}' "
        f"style='display:block;width:{width}px;height:{height}px;max-width:none;margin:0;"
        f"image-rendering:pixelated'>{mark}</div></div></div>"
    )


def page(title: str, plot: str, bar: str, tokens: str, grid: str) -> str:
    """The snapshot: the title, then the plot, its colour bar and tokens, beside the grid."""
    return (
        "<div class='llm-magic-attention' style='font:13px/1.4 system-ui,sans-serif;"
        "color:#222;text-align:left;max-width:100%'>"
        f"<div style='font-weight:600;margin-bottom:6px'>{escape(title)}</div>"
        "<div style='display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start'>"
        f"<div style='max-width:100%;overflow-x:auto'>{plot}"
        f"<div style='width:0;min-width:100%'>{bar}{tokens}</div></div>{grid}</div></div>"
    )


def block_mean2(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Shrink (or grow, by repeating) the last two axes of ``values`` to (rows, cols)."""
    import numpy as np

    if rows == cols and values.shape[-1] == values.shape[-2]:
        return _heatmap.block_mean(values, rows)
    out = np.asarray(values, dtype=np.float32)
    for axis, size in ((-2, rows), (-1, cols)):
        t = out.shape[axis]
        if t == size:
            continue
        if t < size:
            out = np.take(out, (np.arange(size) * t) // size, axis=axis)
            continue
        edges = (np.arange(size) * t) // size
        counts = np.diff(np.append(edges, t)).astype(np.float32)
        out = np.add.reduceat(out, edges, axis=axis)
        out = out / (counts[:, None] if axis == -2 else counts)
    return out  # type: ignore[no-any-return]
