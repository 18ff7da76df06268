"""What every head attended to over one sequence, kept compactly in the kernel.

:class:`AttentionMap` is what ``lm.attention`` and ``lm.generate(...,
attention=True)`` both return, so it lives below both. The interactive view asks
for one head at a time, so what reaches the notebook stays small whatever the length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOptionError
from . import _attention_snapshot as _snapshot
from . import heatmap as _heatmap
from . import views as _views
from .sizes import format_size

if TYPE_CHECKING:
    import numpy as np

__all__ = ["AttentionMap", "attention_max_tokens", "max_tokens"]

#: Longest sequence whose attention is captured unless a call asks for more.
#: 1,024 tokens of a 24-layer, 16-head model take 0.8 GB in float16.
_DEFAULT = {"max_tokens": 1024}


def attention_max_tokens(value: int | None = None) -> int:
    """Get, or set, the longest sequence whose attention is captured (1,024 at first).

    The weights take layers x heads x T^2 x 2 bytes in the kernel; longer
    sequences are refused with a message that says how much they would take.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.attention_max_tokens()
    1024
    >>> lm.attention_max_tokens(2048)  # doctest: +SKIP
    2048
    """
    if value is not None:
        _DEFAULT["max_tokens"] = _check_limit(value)
    return _DEFAULT["max_tokens"]


@dataclass(frozen=True, repr=False, eq=False)
class AttentionMap:
    """Every head's attention over one sequence, kept compactly (float16) in the kernel.

    Attributes
    ----------
    tokens : tuple of str
        The tokenizer's tokens, special tokens included (``"Ġthe"``, ``"[CLS]"``).
    labels : tuple of str
        The same tokens as readable text (byte-level tokens decoded, ``↵`` for a newline).
    layers : tuple of numpy.ndarray
        One float16 array (heads, T, T) per layer; row = query token, column = key token.
    model : str
        The model's name.
    causal : bool
        True for a causal LM (a token attends only to itself and those before it).
    prompt_tokens : int or None
        For a generation, how many of the tokens were the prompt.
    pooled : numpy.ndarray or None
        Every head averaged over blocks, (layers, heads, s, s) with s = min(T, 32):
        the overview behind thumbnails and the PNG grid.
    kind : str
        "causal", "encoder" (a BERT-style encoder, or an encoder–decoder's encoder),
        "decoder" (an encoder–decoder's decoder) or "cross" (its cross-attention:
        rows = output tokens, columns = source tokens). Defaults from ``causal``.
    key_labels : tuple of str or None
        The columns' tokens where they are not the rows' (cross-attention: the source).
    axes : tuple of (str, str) or None
        What the rows and columns are ("output", "source"); None: query and key tokens
        of one sequence.

    Examples
    --------
    >>> import llm_magic as lm
    >>> amap = lm.attention("def f(x):", model="demo")  # doctest: +SKIP
    >>> amap.head(0, 1).sum(axis=1)  # each row sums to 1  # doctest: +SKIP
    array([1., 1., 1., 1.], dtype=float32)
    """

    tokens: tuple[str, ...]
    labels: tuple[str, ...]
    layers: tuple[np.ndarray, ...]
    model: str
    causal: bool
    prompt_tokens: int | None = None
    pooled: np.ndarray | None = None
    kind: str = ""
    key_labels: tuple[str, ...] | None = None
    axes: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", "causal" if self.causal else "encoder")

    @classmethod
    def from_capture(cls, capture: Any, model: str, prompt_tokens: int | None = None,
                     **more: Any) -> AttentionMap:
        """Wrap a backend's capture (``llm_magic.backends.base.AttentionCapture``); ``more``
        sets ``kind``, ``key_labels`` and ``axes``."""
        return cls(tokens=capture.tokens, labels=capture.labels, layers=capture.layers,
                   model=model, causal=capture.causal, prompt_tokens=prompt_tokens,
                   pooled=capture.pooled, **more)

    # -- shape and values ---------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(layers, heads, T, T): rows (queries) by columns (keys; the source for "cross")."""
        heads, rows, cols = self.layers[0].shape
        return (len(self.layers), heads, rows, cols)

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns' (keys') tokens as readable text: ``labels`` unless cross-attention."""
        return self.labels if self.key_labels is None else self.key_labels

    @property
    def described(self) -> str:
        """The kind in words: "causal", "encoder", "cross-attention: output × source"."""
        words = {"decoder": "decoder self-attention", "cross": "cross-attention"}
        if self.axes is None:
            return words.get(self.kind, self.kind)
        if self.kind == "encoder":
            return f"encoder self-attention: {self.axes[0]} × {self.axes[1]}"
        return f"{words.get(self.kind, self.kind)}: {self.axes[0]} × {self.axes[1]}"

    def _counted(self) -> str:
        _, _, rows, cols = self.shape
        if self.axes is None or self.axes[0] == self.axes[1]:
            return f"{rows} tokens"
        return f"{rows} {self.axes[0]} × {cols} {self.axes[1]} tokens"

    @property
    def nbytes(self) -> int:
        """Bytes the weights take in the kernel."""
        return sum(int(layer.nbytes) for layer in self.layers)

    def _check(self, layer: int | None, head: int | None = None) -> None:
        n_layers, n_heads, _, _ = self.shape
        for what, value, count in (("layer", layer, n_layers), ("head", head, n_heads)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
                raise InvalidOptionError(
                    f"{what} must be an integer from 0 to {count - 1} ({self.model!r} has "
                    f"{count} {what}s); got {value!r}."
                )

    def head(self, layer: int, head: int) -> np.ndarray:
        """One head's weights as a float32 array (T, T): row = query, column = key.

        Examples
        --------
        >>> amap.head(0, 0)[-1]  # what the last token attends to  # doctest: +SKIP
        """
        import numpy as np

        self._check(layer, head)
        return np.asarray(self.layers[layer][head], dtype=np.float32)

    def mean(self, layer: int | None = None) -> np.ndarray:
        """The mean over heads of ``layer`` (T, T), or over every layer and head when None.

        Examples
        --------
        >>> amap.mean(0).shape  # doctest: +SKIP
        (4, 4)
        """
        import numpy as np

        self._check(layer)
        if layer is not None:
            return self.layers[layer].mean(axis=0, dtype=np.float32)  # type: ignore[no-any-return]
        total = np.zeros(self.shape[2:], dtype=np.float32)
        for weights in self.layers:
            total += weights.mean(axis=0, dtype=np.float32)
        return total / len(self.layers)  # type: ignore[no-any-return]

    def thumbnails(self, size: int = 32) -> np.ndarray:
        """Every head shrunk to at most ``size`` x ``size``, as palette levels (uint8).

        Returns an array (layers, heads, s, s) with s = min(T, size); each head is
        scaled to its own largest weight, as in the interactive view.
        """
        import numpy as np

        s = min(max(self.shape[2:]), size)
        if self.pooled is not None and self.pooled.shape[-1] == s:
            small = self.pooled
        else:
            small = np.stack([_snapshot.block_mean2(weights, s, s) for weights in self.layers])
        top = small.max(axis=(2, 3), keepdims=True)
        top[top <= 0] = 1
        return np.rint(small / top * 254).astype(np.uint8)  # type: ignore[no-any-return]

    # -- pictures -------------------------------------------------------------

    def to_png(self, path: str | os.PathLike[str] | None = None, *, layer: int | None = None,
               head: int | None = None) -> bytes:
        """A PNG heatmap: one head, the mean of a layer's heads, or a grid of every head.

        Parameters
        ----------
        path : str or path, optional
            Also write the PNG to this file.
        layer, head : int, optional
            Both: that head (one pixel per token pair, larger for short texts). Only
            ``layer``: the mean over its heads. Neither: the grid of all heads
            (rows = layers, columns = heads).

        Returns
        -------
        bytes
            The PNG file's bytes.

        Examples
        --------
        >>> png = amap.to_png("attention.png", layer=0, head=0)  # doctest: +SKIP
        """

        if head is not None and layer is None:
            raise InvalidOptionError("Name the layer of that head: to_png(layer=L, head=H).")
        self._check(layer, head)
        rows, cols = self.shape[2:]
        if layer is None:
            tiles = self.thumbnails()
            grow = max(1, 64 // tiles.shape[-1])  # tiles of about 64 pixels
            tiles = tiles.repeat(grow, axis=2).repeat(grow, axis=3)
            pixels = _heatmap.grid_pixels(tiles)
        else:
            values = self.head(layer, head) if head is not None else self.mean(layer)
            t = max(rows, cols)
            grow = max(1, 256 // t) if t <= 256 else 1
            pixels = _heatmap.levels(_snapshot.block_mean2(values, min(rows * grow, 1024),
                                                 min(cols * grow, 1024)))
        png = _heatmap.encode_png(pixels)
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def to_html(self, layer: int = 0, head: int | None = 0, note: str = "") -> str:
        """An escaped HTML snapshot of the view as it first looks: one head, labelled.

        The head (or, with ``head=None``, the mean of the layer's heads) as a
        heatmap with the tokens along both axes, its colour bar, and the
        labelled grid of every head with the shown one outlined. Notebooks show
        it where the live view cannot run (nbconvert, GitHub, a closed kernel).

        Examples
        --------
        >>> html = amap.to_html(layer=1, head=2)  # doctest: +SKIP

        ``note`` ends the title (why this head is shown).
        """
        self._check(layer, head)
        values = self.head(layer, head) if head is not None else self.mean(layer)
        which = f"head {head}" if head is not None else "mean of heads"
        title = f"{self.model} ({self.described}), {self._counted()}: layer {layer}, {which}"
        if note:
            title += f" ({note})"
        top = float(values.max()) if values.size else 0.0
        plot = _snapshot.head_plot(values, self.labels, self.prompt_tokens,
                                   columns=self.key_labels, axes=self.axes)
        side = max(self.shape[2:])
        tokens = _snapshot.token_list(self.labels, self.axes[0] if self.axes else None, side)
        if self.key_labels is not None and self.axes is not None:
            tokens += _snapshot.token_list(self.key_labels, self.axes[1], side)
        return _snapshot.page(title, plot, _snapshot.scale(top, mean=head is None), tokens,
                              _snapshot.thumbnails(self.thumbnails(), layer, head))

    def widget(self, layer: int = 0, head: int = 0) -> Any:
        """The interactive view (an anywidget), opened on ``layer`` and ``head``.

        Examples
        --------
        >>> amap.widget(layer=1, head=2)  # doctest: +SKIP
        """
        self._check(layer, head)
        return _views.view_class("attention")(self, layer=layer, head=head)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self.widget()._repr_mimebundle_(include=include, exclude=exclude)  # type: ignore[no-any-return]

    def summary(self) -> str:
        """One line: model, shape, size in the kernel."""
        layers, heads, _, _ = self.shape
        return (f"AttentionMap of {self.model!r} ({self.described}): {self._counted()}, "
                f"{layers} layers x "
                f"{heads} heads, {format_size(self.nbytes)} in float16")

    def __repr__(self) -> str:
        shown = " ".join(repr(x) for x in self.labels[:12])
        more = f" ... (+{len(self.labels) - 12})" if len(self.labels) > 12 else ""
        return f"<{self.summary()}; tokens: {shown}{more}>"


def _check_limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(f"max_tokens must be a positive integer, not {value!r}.")
    return value


def max_tokens(value: int | None) -> int:
    """``value`` checked, or the current cap when None."""
    return _DEFAULT["max_tokens"] if value is None else _check_limit(value)

