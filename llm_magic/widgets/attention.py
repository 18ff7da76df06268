"""The interactive attention view: one head at a time, sent on demand as a binary buffer.

The widget holds state only: which layer and head are shown, the tokens, the
thumbnails of every head, and the weights of the head on screen (float16
bytes, T x T x 2 bytes). Choosing another head in the page changes ``layer``,
``head`` or ``mean``; the kernel answers with that head's bytes. Every number
comes from :class:`~llm_magic.analysis.attention.AttentionMap`.

The page's head requests arrive on llm_magic's kernel subshell (see
``_subshell``), so a head opens while a cell runs; the head is read and sent
under the view's one lock, from the choice as it is then, so two requests
from two threads cannot leave one head's bytes under another head's name.
"""

from __future__ import annotations

import base64
import threading
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import ipywidgets
import traitlets

from ._common import esm, with_fallback
from ._subshell import route

if TYPE_CHECKING:
    from ..analysis.attention import AttentionMap

__all__ = ["AttentionWidget", "SideBySide", "side_by_side"]

_STATIC = Path(__file__).parent / "static"
#: Thumbnails are at most this many pixels a side; the grid of a 24 x 16 model is 384 KB.
THUMB = 32


class AttentionWidget(anywidget.AnyWidget):
    """A heatmap of one head, layer and head selectors, a grid of every head, the tokens.

    Hovering the map shows the token pair and its weight; clicking a token
    shades the tokens it attends to; clicking a thumbnail opens that head.

    Examples
    --------
    >>> import llm_magic as lm
    >>> view = lm.attention("The import statement", model="demo").widget()  # doctest: +SKIP
    >>> view.layer, view.head = 1, 2  # doctest: +SKIP
    """

    _esm = esm("attention.js")
    _css = _STATIC / "attention.css"

    model_name = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)
    size = traitlets.Int(0).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    causal = traitlets.Bool(True).tag(sync=True)
    prompt_tokens = traitlets.Int(-1).tag(sync=True)

    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    mean = traitlets.Bool(False).tag(sync=True)
    selected = traitlets.Int(-1).tag(sync=True)

    #: The head on screen: T x T float16, little-endian, row = query.
    data = traitlets.Bytes(b"").tag(sync=True)
    #: Which head ``data`` holds: "layer:head" or "layer:mean".
    data_key = traitlets.Unicode("").tag(sync=True)
    #: Every head shrunk to thumb_size^2 palette levels (uint8), layer-major.
    thumbs = traitlets.Bytes(b"").tag(sync=True)
    thumb_size = traitlets.Int(0).tag(sync=True)

    #: An encoder–decoder's view: the kinds it switches among ("encoder", "decoder",
    #: "cross"; empty for one map), the kind shown and its words ("cross-attention: ...").
    kinds = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)
    kind = traitlets.Unicode("").tag(sync=True)
    kind_title = traitlets.Unicode("").tag(sync=True)
    #: The columns' tokens where they differ from the rows' (cross-attention: the source),
    #: and what rows and columns are ("output", "source"; empty: query and key tokens).
    key_tokens = traitlets.List(traitlets.Unicode(), default_value=[]).tag(sync=True)
    key_size = traitlets.Int(0).tag(sync=True)
    row_axis = traitlets.Unicode("").tag(sync=True)
    col_axis = traitlets.Unicode("").tag(sync=True)

    def __init__(self, amap: Any, layer: int = 0, head: int = 0, kind: str | None = None,
                 **kwargs: Any) -> None:
        kinds = tuple(getattr(amap, "kinds", ()))
        self._maps = {k: amap[k] for k in kinds} if kinds else {"": amap}
        self._whole = amap
        kind = kind if kind is not None else (kinds[-1] if kinds else "")
        self._map = self._maps[kind]
        self._lock = threading.Lock()
        super().__init__(kinds=list(kinds), kind=kind, **self._fields(self._map),
                         layer=layer, head=head, **kwargs)
        self._send_head()
        route(self)

    @staticmethod
    def _fields(amap: AttentionMap) -> dict[str, Any]:
        """The traits that follow the map shown (a kind's map, for an encoder–decoder)."""
        n_layers, n_heads, t, cols = amap.shape
        thumbs = amap.thumbnails(THUMB)
        axes = amap.axes or ("", "")
        return dict(
            model_name=amap.model, tokens=list(amap.labels), size=t, n_layers=n_layers,
            n_heads=n_heads, causal=amap.causal,
            prompt_tokens=-1 if amap.prompt_tokens is None else amap.prompt_tokens,
            thumbs=thumbs.tobytes(), thumb_size=int(thumbs.shape[-1]),
            key_tokens=[] if amap.key_labels is None else list(amap.key_labels),
            key_size=cols if amap.key_labels is not None else 0,
            row_axis=axes[0], col_axis=axes[1], kind_title=amap.described)

    @traitlets.validate("kind")
    def _valid_kind(self, proposal: Any) -> str:
        value = str(proposal["value"])
        if value not in self._maps:
            raise traitlets.TraitError(f"kind must be one of {', '.join(self._maps)}; "
                                       f"got {value!r}.")
        return value

    @traitlets.observe("kind")
    def _on_kind(self, change: Any) -> None:
        amap = self._maps.get(change["new"])
        if not hasattr(self, "_lock") or amap is None or amap is self._map:
            return  # the construction's own value, or no change
        with self._lock:
            self._map, self._switching = amap, True
            layer, head = (0, 0)
            if change["new"] == "cross" and hasattr(self._whole, "best_head"):
                layer, head, _ = self._whole.best_head()
            try:
                self._switch(amap, layer, head)
            finally:
                self._switching = False
        self._send_head()

    def _switch(self, amap: AttentionMap, layer: int, head: int) -> None:
        """The traits of ``amap``, in one message; layer and head valid at every step."""
        with self.hold_sync():
            # The head first, then the shape: both valid for the old and the new map.
            self.set_trait("layer", 0)
            self.set_trait("head", 0)
            self.set_trait("mean", False)
            self.set_trait("selected", -1)
            for name, value in self._fields(amap).items():
                self.set_trait(name, value)
            self.set_trait("layer", layer)
            self.set_trait("head", head)

    @traitlets.validate("layer")
    def _valid_layer(self, proposal: Any) -> int:
        return self._in_range("layer", proposal["value"], self.n_layers)

    @traitlets.validate("head")
    def _valid_head(self, proposal: Any) -> int:
        return self._in_range("head", proposal["value"], self.n_heads)

    @traitlets.validate("selected")
    def _valid_selected(self, proposal: Any) -> int:
        value = int(proposal["value"])
        return value if -1 <= value < self.size else -1

    @staticmethod
    def _in_range(what: str, value: int, count: int) -> int:
        if not 0 <= int(value) < count:
            raise traitlets.TraitError(f"{what} must be from 0 to {count - 1}; got {value}.")
        return int(value)

    @traitlets.observe("layer", "head", "mean")
    def _on_choice(self, change: Any) -> None:
        if hasattr(self, "_map") and self.size and not getattr(self, "_switching", False):
            self._send_head()

    def _send_head(self) -> None:
        """Put the chosen head (or the mean of the layer's heads) into ``data``."""
        amap = self._map
        with self._lock:
            layer, head, mean = self.layer, self.head, self.mean
            values = amap.mean(layer) if mean else amap.layers[layer][head]
            key = f"{layer}:mean" if mean else f"{layer}:{head}"
            with self.hold_sync():
                self.data = values.astype("<f2").tobytes()
                self.data_key = key

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The live view, with a text line, an HTML snapshot and a PNG of the head shown.

        Front ends without the widget manager (nbconvert, GitHub, a closed
        kernel) show the snapshot: the head the view was opened on (or shows
        now), labelled with its layer and head, the tokens on both axes, its
        colour bar and the labelled grid of every head. JupyterLab shows the view.
        """
        shown = super()._repr_mimebundle_(**kwargs)
        if shown is None:  # pragma: no cover - a widget without a view
            return None
        head = None if self.mean else self.head
        note = ""
        if self.kind == "cross" and hasattr(self._whole, "best_head"):
            best = self._whole.best_head()
            if (self.layer, head) == best[:2]:
                note = f"the best-aligned head: its rows' largest weights average {best[2]:.2f}"
        html = self._map.to_html(layer=self.layer, head=head, note=note)
        data, metadata = with_fallback(shown, html, repr(self._map))
        data["image/png"] = base64.b64encode(
            self._map.to_png(layer=self.layer, head=head)).decode("ascii")
        return data, metadata


class SideBySide(ipywidgets.HBox):
    """Views in a row that wraps where the output area is narrow, with a static fallback.

    Live, each view takes an equal share of the row and at least ``min_width``
    pixels; a narrower output area puts the next view under the first instead
    of off the page. Without the widget manager (nbconvert, GitHub) the cell
    shows each view's own snapshot, side by side where they fit.

    Examples
    --------
    >>> from llm_magic.widgets.attention import side_by_side
    >>> side_by_side(amap.widget(), encoder.widget())  # doctest: +SKIP
    """

    def __init__(self, views: list[Any], min_width: int = 360, **kwargs: Any) -> None:
        for view in views:
            view.layout.flex = f"1 1 {min_width}px"
            view.layout.min_width = f"{min(min_width, 300)}px"
        layout = ipywidgets.Layout(flex_flow="row wrap", align_items="flex-start",
                                   width="100%")
        super().__init__(children=list(views), layout=layout, **kwargs)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        shown = super()._repr_mimebundle_(**kwargs)
        if shown is None:  # pragma: no cover - a widget without a view
            return None
        parts, texts = [], []
        for view in self.children:
            bundle = view._repr_mimebundle_() if hasattr(view, "_repr_mimebundle_") else None
            data = (bundle[0] if isinstance(bundle, tuple) else bundle) or {}
            text = str(data.get("text/plain", repr(view)))
            texts.append(text)
            if "text/html" in data:
                part = str(data["text/html"])
            elif "image/png" in data:
                part = f"<img alt='{escape(text)}' src='data:image/png;base64,{data['image/png']}'>"
            else:
                part = f"<pre>{escape(text)}</pre>"
            parts.append(f"<div style='flex:0 1 auto;min-width:0;max-width:100%'>{part}</div>")
        html = ("<div class='llm-magic-side-by-side' style='display:flex;flex-wrap:wrap;"
                f"gap:16px 32px;align-items:flex-start;text-align:left'>{''.join(parts)}</div>")
        return with_fallback(shown, html, "\n".join(texts))


def side_by_side(*views: Any, min_width: int = 360) -> SideBySide:
    """Put views (attention views, any widgets) side by side, readable without a kernel too.

    Parameters
    ----------
    *views : widgets
        The views, left to right.
    min_width : int
        Pixels under which a view moves to the next line instead of shrinking.

    Examples
    --------
    >>> from llm_magic.widgets.attention import side_by_side
    >>> side_by_side(amap.widget(layer=3, head=0), encoder.widget())  # doctest: +SKIP
    """
    return SideBySide(list(views), min_width=min_width)
