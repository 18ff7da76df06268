"""Heatmap pixels and PNG files from attention weights, with numpy and zlib only.

PNG is written here by hand (a signature, IHDR, PLTE, IDAT and IEND chunks,
each with its CRC): an 8-bit palette image of a heatmap is a few lines of
zlib, and a drawing library (Pillow, matplotlib) would be a dependency of
tens of megabytes for that. The palette is the same colour ramp that
``widgets/static/attention.js`` draws with, so the static fallback looks like
the interactive view.
"""

from __future__ import annotations

import base64
import functools
import struct
import zlib
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["RAMP", "block_mean", "colour", "colour_bar_html", "encode_png", "grid_pixels",
           "hex_colour", "ink", "levels", "luminance", "palette", "png_src"]

#: Anchors of the colour ramp, from weight 0 (white) to the head's largest weight (dark blue).
RAMP = ((255, 255, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))
#: Palette index of the gaps between the tiles of a grid (a light grey).
GAP = 255


@functools.cache
def palette() -> bytes:
    """255 ramp colours (indices 0 to 254) and the gap colour (index 255), as PLTE bytes."""
    out = bytearray()
    steps = 254
    for i in range(steps + 1):
        x = i / steps * (len(RAMP) - 1)
        k = min(int(x), len(RAMP) - 2)
        f = x - k
        out += bytes(round(a + (b - a) * f) for a, b in zip(RAMP[k], RAMP[k + 1], strict=True))
    out += bytes((224, 224, 224))
    return bytes(out)


def levels(values: np.ndarray) -> np.ndarray:
    """Weights as palette indices 0..254, scaled so the largest weight is 254."""
    import numpy as np

    values = np.asarray(values, dtype=np.float32)
    top = float(values.max()) if values.size else 0.0
    if top <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint(np.clip(values / top, 0, 1) * 254).astype(np.uint8)


def block_mean(values: np.ndarray, size: int) -> np.ndarray:
    """Shrink the last two axes (T, T) to (size, size) by averaging blocks; grow by repeating."""
    import numpy as np

    t = values.shape[-1]
    if t == size:
        return np.asarray(values, dtype=np.float32)
    if t < size:
        index = (np.arange(size) * t) // size
        return np.asarray(values, dtype=np.float32)[..., index[:, None], index[None, :]]
    edges = (np.arange(size) * t) // size
    counts = np.diff(np.append(edges, t)).astype(np.float32)
    rows = np.add.reduceat(np.asarray(values, dtype=np.float32), edges, axis=-2)
    both = np.add.reduceat(rows, edges, axis=-1)
    return both / (counts[:, None] * counts[None, :])  # type: ignore[no-any-return]


def grid_pixels(tiles: np.ndarray, gap: int = 2) -> np.ndarray:
    """Lay out (rows, cols, s, s) palette tiles as one image with ``gap`` pixels between them."""
    import numpy as np

    rows, cols, s, _ = tiles.shape
    image = np.full((rows * (s + gap) - gap, cols * (s + gap) - gap), GAP, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = r * (s + gap), c * (s + gap)
            image[y : y + s, x : x + s] = tiles[r, c]
    return image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(pixels: np.ndarray, colours: bytes | None = None) -> bytes:
    """An 8-bit palette PNG of a 2-D array of palette indices (of ``colours``, PLTE bytes of
    256 colours; default the blue ramp of :func:`palette`).

    Examples
    --------
    >>> import numpy as np
    >>> encode_png(np.zeros((2, 3), dtype=np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    import numpy as np

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # filter byte 0 (none) per row
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", header),
        _chunk(b"PLTE", palette() if colours is None else colours),
        _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
        _chunk(b"IEND", b""),
    ))


# -- colours and the colour bar of the static snapshots ---------------------------------


def colour(level: int) -> tuple[int, int, int]:
    """The ramp's colour at palette ``level`` (0 = white to 254 = dark blue), as (r, g, b)."""
    table = palette()
    i = 3 * max(0, min(254, int(level)))
    return table[i], table[i + 1], table[i + 2]


def hex_colour(rgb: Sequence[int]) -> str:
    """``#rrggbb`` of an (r, g, b) colour."""
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def luminance(rgb: Sequence[int]) -> float:
    """WCAG 2 relative luminance of an (r, g, b) colour (0 to 255 each)."""
    def lin(v: int) -> float:
        s = v / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4
    return 0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2])


def ink(rgb: Sequence[int]) -> str:
    """The text colour, ``"#fff"`` or ``"#000"``, of higher WCAG contrast on ``rgb``.

    The rule of ``inkOn`` in ``widgets/static/_shared.js``: a snapshot reads like the view.
    Black or white reaches at least 4.58:1 (the square root of 21) on any colour, so every
    shade keeps WCAG AA's 4.5:1; a softer dark ink (#111) fell to 4.35:1 on mid blues.

    Examples
    --------
    >>> ink((255, 255, 255)), ink((8, 48, 107))
    ('#000', '#fff')
    """
    lum = luminance(rgb)
    return "#fff" if 1.05 / (lum + 0.05) >= (lum + 0.05) / 0.05 else "#000"


def contrast(a: Sequence[int], b: Sequence[int]) -> float:
    """The WCAG contrast ratio of two colours, 1 to 21."""
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def png_src(png: bytes) -> str:
    """A ``data:`` URL of PNG bytes, for an ``<img>`` of a snapshot."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


#: Pixels of the colour bar on the page (the view's colourBar in _shared.js draws the same).
BAR_WIDTH = 160


def colour_bar_html(caption: str, ticks: Sequence[tuple[float, str]],
                    colours: bytes | None = None) -> str:
    """The ramp as an escaped HTML colour bar: ticks under it, a caption beside it.

    ``ticks`` are (fraction along the bar from white to dark, text) pairs (``colours``: the
    bar's own PLTE bytes, indices 0 to 254 from left to right, default the ramp); the
    caption says what the shade is, in which unit and over which range. It is
    ``colourBar`` of ``widgets/static/_shared.js`` for the static snapshots.

    Examples
    --------
    >>> "attention weight" in colour_bar_html("attention weight", [(0, "0"), (1, "1")])
    True
    """
    import numpy as np

    ramp = encode_png(np.arange(255, dtype=np.uint8)[None, :], colours)
    marks = []
    for at, text in ticks:
        f = max(0.0, min(1.0, float(at)))
        where = ("left:0" if f <= 0 else "right:0" if f >= 1
                 else f"left:{100 * f:.1f}%;transform:translateX(-50%)")
        marks.append(f"<span style='position:absolute;top:0;white-space:nowrap;{where}'>"
                     f"{escape(text)}</span>")
    return (
        "<div class='llm-magic-colourbar' style='display:flex;flex-wrap:wrap;"
        "align-items:flex-start;gap:2px 10px;font-size:11px;margin:4px 0;text-align:left'>"
        f"<div style='flex:none;width:{BAR_WIDTH}px'>"
        f"<img alt='colour scale' src='{png_src(ramp)}' width='{BAR_WIDTH}' height='10' "
        "style='display:block;width:160px;height:10px;max-width:none;border:1px solid #bbb;"
        "box-sizing:border-box;image-rendering:pixelated;margin:0'>"
        f"<div style='position:relative;height:1.3em;width:{BAR_WIDTH}px'>{''.join(marks)}"
        "</div></div>"
        f"<span style='flex:1 1 220px;min-width:0;opacity:.8'>{escape(caption)}</span></div>"
    )
