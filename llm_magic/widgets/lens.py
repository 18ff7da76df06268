"""The interactive logit lens view: a grid of layers by positions, sent once as binary buffers.

The widget holds state only: the tokens, the row labels, the metric and layer
stride chosen in the page, and the lens itself as little-endian buffers (top-k
ids int32, probabilities float16, the four metrics per cell). Every number
comes from :class:`~llm_magic.analysis.lens.LensMap`; the page draws the grid
on a canvas and sets every token as text.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import numpy as np
import traitlets

from ..analysis.lens import METRICS, default_stride
from ._common import esm, with_fallback
from ._subshell import route

if TYPE_CHECKING:
    from ..analysis.lens import LensMap

__all__ = ["LensWidget"]

_STATIC = Path(__file__).parent / "static"


def _buffer(values: Any, dtype: str) -> bytes:
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


class LensWidget(anywidget.AnyWidget):
    """A canvas grid (rows = layers, last on top; columns = positions), a metric selector.

    Hovering or focusing a cell shows its top-k; the arrow keys move the focus.
    The actual next token runs along the top, starred where the final
    prediction got it right; the input tokens run along the bottom. A colour
    bar and its caption say what the shade shows, in which unit, over which range.

    Examples
    --------
    >>> import llm_magic as lm
    >>> view = lm.logit_lens("The import statement", model="demo").widget()  # doctest: +SKIP
    >>> view.metric = "kl"  # doctest: +SKIP
    """

    _esm = esm("lens.js")
    _css = _STATIC / "lens.css"

    model_name = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)
    #: The rows' names as shown: "embeddings", "block 1", ..., "block N (output)".
    layers = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)
    #: Per metric, how values become shades and what the legend and colour bar say
    #: (``LensMap.scale``): light, dark, log, caption, legend, ticks.
    scales = traitlets.Dict().tag(sync=True)
    size = traitlets.Int(0).tag(sync=True)
    top_k = traitlets.Int(1).tag(sync=True)
    vocab_size = traitlets.Int(0).tag(sync=True)
    prompt_tokens = traitlets.Int(-1).tag(sync=True)

    metric = traitlets.Unicode("probability").tag(sync=True)
    stride = traitlets.Int(1).tag(sync=True)

    #: [row, position, k] int32 and float16; [row, position] float16 (prob, entropy, kl)
    #: and int32 (rank); [position] uint8: 1 where the final prediction is the next token.
    top_ids = traitlets.Bytes(b"").tag(sync=True)
    top_probs = traitlets.Bytes(b"").tag(sync=True)
    final_prob = traitlets.Bytes(b"").tag(sync=True)
    final_rank = traitlets.Bytes(b"").tag(sync=True)
    entropy = traitlets.Bytes(b"").tag(sync=True)
    kl = traitlets.Bytes(b"").tag(sync=True)
    correct = traitlets.Bytes(b"").tag(sync=True)
    #: The ids that appear in ``top_ids`` and the inputs (int32), and their texts, in order.
    vocab_ids = traitlets.Bytes(b"").tag(sync=True)
    vocab_texts = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)

    def __init__(self, lens: LensMap, metric: str = "probability", stride: int | None = None,
                 **kwargs: Any) -> None:
        self._lens = lens
        rows, t, k = lens.shape
        known = sorted(lens.vocab)
        super().__init__(
            model_name=lens.model, tokens=list(lens.tokens),
            layers=lens.row_names, scales={m: lens.scale(m).as_dict() for m in METRICS},
            size=t,
            top_k=k, vocab_size=lens.vocab_size,
            prompt_tokens=-1 if lens.prompt_tokens is None else lens.prompt_tokens,
            metric=metric, stride=default_stride(rows) if stride is None else stride,
            top_ids=_buffer(lens.ids, "<i4"), top_probs=_buffer(lens.probs, "<f2"),
            final_prob=_buffer(lens.final_prob, "<f2"), final_rank=_buffer(lens.final_rank, "<i4"),
            entropy=_buffer(lens.entropy, "<f2"), kl=_buffer(lens.kl, "<f2"),
            correct=_buffer(lens.correct, "u1"), vocab_ids=_buffer(known, "<i4"),
            vocab_texts=[lens.vocab[i] for i in known], **kwargs,
        )
        route(self)  # the metric and stride act while another cell runs

    @traitlets.validate("metric")
    def _valid_metric(self, proposal: Any) -> str:
        value = str(proposal["value"])
        if value not in METRICS:
            raise traitlets.TraitError(
                f"metric must be one of {', '.join(METRICS)}; got {value!r}.")
        return value

    @traitlets.validate("stride")
    def _valid_stride(self, proposal: Any) -> int:
        value = int(proposal["value"])
        rows = max(len(self.layers), 1)
        return min(max(value, 1), max(rows - 1, 1))

    @property
    def payload_bytes(self) -> int:
        """Bytes of the binary buffers sent to the page."""
        names = ("top_ids", "top_probs", "final_prob", "final_rank", "entropy", "kl", "correct",
                 "vocab_ids")
        return sum(len(getattr(self, name)) for name in names)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The live view, with a text line, a PNG of the grid and an escaped HTML snapshot.

        Front ends without the widget manager (nbconvert, GitHub, a closed kernel)
        show the snapshot; JupyterLab and Notebook 7 show the view.
        """
        shown = super()._repr_mimebundle_(**kwargs)
        if shown is None:  # pragma: no cover - a widget without a view
            return None
        lens = self._lens
        html = lens.to_html(metric=self.metric, stride=self.stride)
        data, metadata = with_fallback(shown, html, repr(lens))
        data["image/png"] = base64.b64encode(
            lens.to_png(metric=self.metric, stride=self.stride)).decode("ascii")
        return data, metadata
