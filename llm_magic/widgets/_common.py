"""What the widgets share: their static files, text formatting and safe updates."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape
from pathlib import Path
from typing import Any

from ..common.sizes import format_size

__all__ = ["NA", "Updates", "css", "esm", "html_lines", "one_line", "percent", "size",
           "stop_with_comm", "with_fallback"]

STATIC = Path(__file__).resolve().parent / "static"
NA = "n/a"  # what a field shows when NVML reports it unsupported or it cannot be read


SHARED_ESM = "_shared.js"  # the helpers every view's module starts with


def esm(name: str) -> str:
    """A view's ES module: ``static/_shared.js``, then the view's own ``static/<name>``.

    anywidget takes one module per view and the views import nothing, so the
    helpers they share travel in front of each view's code. Read when the class
    is made (its ``_esm``), from the files that ship inside the package.
    """
    shared = (STATIC / SHARED_ESM).read_text(encoding="utf-8")
    return f"{shared.rstrip()}\n\n{(STATIC / name).read_text(encoding='utf-8')}"


def css() -> Path:
    """The style sheet shared by every custom view."""
    return STATIC / "widgets.css"


def one_line(exc: BaseException | str) -> str:
    """An error as the one line a panel shows: the message, whitespace collapsed."""
    text = " ".join(str(exc).split())
    if isinstance(exc, BaseException) and not text:
        text = type(exc).__name__
    return text


def size(n: int | float | None) -> str:
    """Bytes in decimal units, or ``n/a``."""
    return NA if n is None else format_size(int(n))


def percent(value: float | None, digits: int = 0) -> str:
    """``42 %``, or ``n/a``."""
    return NA if value is None else f"{value:.{digits}f} %"


def html_lines(cls: str, lines: list[str]) -> str:
    """An escaped HTML snapshot: one ``div`` per line of text."""
    body = "".join(f"<div>{escape(line)}</div>" for line in lines)
    return f"<div class='{escape(cls)}' style='font-family:monospace'>{body}</div>"


def stop_with_comm(widget: Any, stop: Any) -> None:
    """Call ``stop()`` when the page closes the widget's comm (its updates would go nowhere)."""
    comm = getattr(widget, "comm", None)
    if comm is not None and hasattr(comm, "on_close"):
        comm.on_close(lambda _msg: stop())


def with_fallback(bundle: Any, html: str, plain: str | None = None) -> tuple[dict[str, Any],
                                                                      dict[str, Any]]:
    """A widget's MIME bundle plus the static fallback: an escaped HTML snapshot, plain text.

    Front ends with a widget manager show the live view; nbval, nbconvert and
    GitHub show the snapshot.
    """
    data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
    data = dict(data or {})
    data["text/html"] = html
    if plain is not None:
        data["text/plain"] = plain
    return data, dict(metadata or {})


class Updates:
    """Serialises trait updates made from several threads (sampler, events, workers).

    Data is gathered *before* taking the lock (gathering may wait on the
    manager's locks, whose holder may be emitting the event that got us here),
    and each update carries a ticket drawn before gathering: an update whose
    data is older than one already shown is dropped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets = itertools.count()
        self._shown = -1

    def ticket(self) -> int:
        return next(self._tickets)

    @contextmanager
    def apply(self, widget: Any, ticket: int | None = None) -> Iterator[bool]:
        """Hold the lock and the widget's sync; yields False when the data is stale."""
        with self._lock:
            if ticket is not None:
                if ticket < self._shown:
                    yield False
                    return
                self._shown = ticket
            with widget.hold_sync():
                yield True
