"""What the manager reports: facts about a loaded model, the models table, unload reports.

Plain frozen data and their text and HTML renderings, kept apart from the
manager's logic so both stay small. :mod:`llm_magic.manager` re-exports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..common.sizes import format_count, text_table

__all__ = ["ModelInfo", "ModelTable", "UnloadReport", "ago", "count", "quantized", "size"]


@dataclass(frozen=True)
class ModelInfo:
    """What the manager knows about one loaded model.

    ``memory`` is the measured size of its weights and buffers; ``estimate`` the
    figure predicted before loading (None when no estimate was possible).
    ``placement`` gives the measured bytes per device (one entry unless the
    model is spread over several devices). ``quantization`` is ``"int8"`` or
    ``"int4"`` for a model whose linear layers were quantized as it loaded, and
    ``saved`` the bytes that gave back (measured: those layers before and after).
    ``cache`` is what the model's kept conversation caches take besides.
    """

    name: str
    source: str
    backend: str
    device: str
    dtype: str
    parameters: int
    memory: int
    revision: str | None = None
    commit: str | None = None
    estimate: int | None = None
    load_seconds: float = 0.0
    loaded_at: float = 0.0
    last_used: float = 0.0
    pinned: bool = False
    generating: bool = False
    context_length: int | None = None
    chat: bool = False
    architecture: str = ""
    placement: tuple[tuple[str, int], ...] = ()
    #: The server's URL for a served model (None for a model in this kernel).
    endpoint: str | None = None
    quantization: str | None = None
    saved: int = 0
    #: Bytes of the conversation caches kept beside the model (they count in its budget).
    cache: int = 0
    #: "causal", "seq2seq" (encoder–decoder) or "encoder" (attention only).
    kind: str = "causal"


def quantized(info: ModelInfo) -> str:
    """The quantization and the memory it saved, as ``lm.models()`` shows it ("-" if none).

    Examples
    --------
    >>> quantized(ModelInfo("m", "demo", "hf", "cpu", "float32", 1, 1, quantization="int8",
    ...                     saved=4_428_864))
    'int8 (saved 4.4 MB)'
    """
    if not info.quantization:
        return "-"
    return f"{info.quantization} (saved {size(info.saved)})"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


count = format_count


def ago(t: float) -> str:
    if not t:
        return "never"
    dt = time.time() - t
    if dt < 60:
        return f"{dt:.0f}s ago"
    if dt < 3600:
        return f"{dt / 60:.0f}m ago"
    return f"{dt / 3600:.1f}h ago"


class ModelTable(tuple):  # type: ignore[type-arg]
    """The loaded models, a tuple of :class:`ModelInfo` that renders as a table."""

    columns = ("name", "source", "backend", "device", "dtype", "quantized", "params", "memory",
               "estimate", "revision", "last used")

    def rows(self) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for m in self:
            rev = m.commit[:10] if m.commit else (m.revision or "-")
            name = m.name + (" (pinned)" if m.pinned else "") + (" *" if m.generating else "")
            if m.endpoint:  # served: the server holds it; budgets leave it alone
                out.append((name, f"{m.architecture} at {m.endpoint}", m.backend, m.device,
                            m.dtype, "-", "-", "none here", "-", rev, ago(m.last_used)))
                continue
            memory = size(m.memory) + (f" + {size(m.cache)} cache" if m.cache else "")
            backend = m.backend if m.kind == "causal" else f"{m.backend} ({m.kind})"
            out.append((name, m.source, backend, m.device, m.dtype, quantized(m),
                        count(m.parameters), memory, size(m.estimate), rev,
                        ago(m.last_used)))
        return out

    def __str__(self) -> str:
        if not self:
            return "No models loaded. Load one with lm.load('demo') or `%llm load demo`."
        return text_table(self.columns, self.rows())

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        from html import escape

        if not self:
            return f"<p>{escape(str(self))}</p>"
        head = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in self.rows()
        )
        return (f"<table class='llm-magic-models'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")


@dataclass(frozen=True)
class UnloadReport:
    """The outcome of unloading one model.

    ``freed`` is True only when the model object is verifiably gone; otherwise
    ``holders`` says what still refers to it.
    """

    name: str
    memory: int
    freed: bool
    holders: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        if self.freed:
            return f"Unloaded {self.name!r}; {size(self.memory)} freed."
        held = "; ".join(self.holders) or "an object outside llm_magic"
        return (
            f"Unloaded {self.name!r} from the manager, but its memory ({size(self.memory)}) is "
            f"still held by: {held}. Delete those references to free it."
        )

    def __str__(self) -> str:
        return self.message

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.message)
