"""Heatmap pixels and PNG files from attention weights, with numpy and zlib only.

PNG is written here by hand (a signature, IHDR, PLTE, IDAT and IEND chunks,
each with its CRC): an 8-bit palette image of a heatmap is a few lines of
zlib, and a drawing library (Pillow, matplotlib) would be a dependency of
tens of megabytes for that. The palette is the same colour ramp that
``widgets/static/attention.js`` draws with, so the static fallback looks like
the interactive view.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["RAMP", "block_mean", "encode_png", "grid_pixels", "levels", "palette"]

#: Anchors of the colour ramp, from weight 0 (white) to the head's largest weight (dark blue).
RAMP = ((255, 255, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))
#: Palette index of the gaps between the tiles of a grid (a light grey).
GAP = 255


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


def encode_png(pixels: np.ndarray) -> bytes:
    """An 8-bit palette PNG of a 2-D array of palette indices.

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
        _chunk(b"PLTE", palette()),
        _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
        _chunk(b"IEND", b""),
    ))
