"""An encoder–decoder's attention: three :class:`AttentionMap` objects, one per kind.

``encoder`` (source x source), ``decoder`` (output x output, causal) and
``cross`` (output x source: which source tokens each output token read, the
alignment picture). ``lm.attention(gen)``, ``lm.attention(source, model=...,
target=...)`` and ``lm.generate(..., attention=True)`` on a T5, BART or Marian
model return one; its view switches among the three kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError
from . import views as _views
from .attention_map import AttentionMap
from .sizes import format_size

__all__ = ["KINDS", "Seq2SeqAttention"]

#: The three kinds, in the order the view's selector lists them.
KINDS = ("encoder", "decoder", "cross")


@dataclass(frozen=True, repr=False, eq=False)
class Seq2SeqAttention:
    """The encoder's, the decoder's and the cross-attention of one source and output.

    Attributes
    ----------
    encoder, decoder, cross : AttentionMap
        Each float16 in the kernel; ``cross.head(l, h)`` is (output, source).
    model : str
        The model's name.

    Examples
    --------
    >>> import llm_magic as lm
    >>> att = lm.attention(gen)  # a T5 / BART / Marian generation  # doctest: +SKIP
    >>> att.cross.head(*att.best_head()[:2]).argmax(axis=1)  # an alignment  # doctest: +SKIP
    """

    encoder: AttentionMap
    decoder: AttentionMap
    cross: AttentionMap
    model: str

    @classmethod
    def from_capture(cls, capture: Any, model: str) -> Seq2SeqAttention:
        """Wrap a backend's three captures (``encoder``, ``decoder``, ``cross``)."""
        source = tuple(capture.encoder.labels)
        return cls(
            encoder=AttentionMap.from_capture(capture.encoder, model, kind="encoder",
                                              axes=("source", "source")),
            decoder=AttentionMap.from_capture(capture.decoder, model, kind="decoder",
                                              axes=("output", "output")),
            cross=AttentionMap.from_capture(capture.cross, model, kind="cross",
                                            key_labels=source, axes=("output", "source")),
            model=model)

    @property
    def kinds(self) -> tuple[str, ...]:
        """("encoder", "decoder", "cross")."""
        return KINDS

    def __getitem__(self, kind: str) -> AttentionMap:
        if kind not in KINDS:
            raise InvalidOptionError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}.")
        return getattr(self, kind)  # type: ignore[no-any-return]

    @property
    def nbytes(self) -> int:
        """Bytes the three kinds take in the kernel."""
        return sum(self[k].nbytes for k in KINDS)

    def best_head(self) -> tuple[int, int, float]:
        """The cross-attention head that aligns best: (layer, head, score).

        The score is the mean over output tokens of each row's largest weight
        (1.0: every output token reads one source token only).
        """
        import numpy as np

        best = (0, 0, -1.0)
        for layer, weights in enumerate(self.cross.layers):
            scores = weights.max(axis=2).mean(axis=1, dtype=np.float32)
            head = int(np.argmax(scores))
            if float(scores[head]) > best[2]:
                best = (layer, head, float(scores[head]))
        return best

    def to_html(self, kind: str = "cross", layer: int | None = None,
                head: int | None = None) -> str:
        """The snapshot of one kind (cross-attention's best-aligned head by default).

        Examples
        --------
        >>> html = att.to_html()  # doctest: +SKIP
        """
        amap = self[kind]
        note = ""
        if layer is None and head is None:
            layer, head = 0, 0
            if kind == "cross":
                layer, head, score = self.best_head()
                note = f"the best-aligned head: its rows' largest weights average {score:.2f}"
        return amap.to_html(layer=layer or 0, head=head, note=note)

    def to_png(self, kind: str = "cross", **options: Any) -> bytes:
        """A PNG of one kind (:meth:`AttentionMap.to_png`'s options)."""
        return self[kind].to_png(**options)

    def widget(self, kind: str = "cross", layer: int | None = None,
               head: int | None = None) -> Any:
        """The interactive view, opened on ``kind`` (the best-aligned cross head by default).

        Examples
        --------
        >>> att.widget(kind="encoder", layer=1, head=0)  # doctest: +SKIP
        """
        amap = self[kind]
        if layer is None and head is None and kind == "cross":
            layer, head, _ = self.best_head()
        layer, head = layer or 0, head or 0
        amap._check(layer, head)
        return _views.view_class("attention")(self, layer=layer, head=head, kind=kind)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self.widget()._repr_mimebundle_(include=include, exclude=exclude)  # type: ignore[no-any-return]

    def summary(self) -> str:
        """One line: model, source and output lengths, layers and heads, size in the kernel."""
        _, _, n_out, n_src = self.cross.shape
        return (f"Seq2SeqAttention of {self.model!r}: {n_src} source x {n_out} output tokens; "
                f"encoder {self.encoder.shape[0]} layers x {self.encoder.shape[1]} heads, "
                f"decoder {self.decoder.shape[0]} layers x {self.decoder.shape[1]} heads "
                f"(self and cross); {format_size(self.nbytes)} in float16")

    def __repr__(self) -> str:
        return f"<{self.summary()}>"
