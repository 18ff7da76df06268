"""What the widgets share: their static files, text formatting and safe updates."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html import escape
from pathlib import Path
from typing import Any

from ..common.sizes import format_size

__all__ = ["NA", "Updates", "button_html", "control_html", "css", "esm", "html_lines",
           "one_line", "percent", "size", "stop_running", "stop_with_comm", "stoppable",
           "with_fallback"]

STATIC = Path(__file__).resolve().parent / "static"
NA = "n/a"  # what a field shows when NVML reports it unsupported or it cannot be read


SHARED_ESM = "_shared.js"  # the helpers every view's module starts with


#: Seconds between a view's streamed updates: each is a message to the browser and a redraw.
THROTTLE = 0.1


class Throttled:
    """A stream sink that collects the pieces and hands ``publish`` the text so far, at
    most every :data:`THROTTLE` seconds; :attr:`text` is everything streamed (what a
    view keeps when the generation fails or ends)."""

    def __init__(self, publish: Callable[[str], None]) -> None:
        self._publish = publish
        self._pieces: list[str] = []
        self._sent = 0.0

    def __call__(self, piece: str) -> None:
        self._pieces.append(piece)
        now = time.monotonic()
        if now - self._sent >= THROTTLE:
            self._sent = now
            self._publish(self.text)

    @property
    def text(self) -> str:
        return "".join(self._pieces)


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


def control_html(label: str, value: str, hint: str = "") -> str:
    """A form's control in a static snapshot: its label, then its value in a box (or its hint).

    Examples
    --------
    >>> "seed" in control_html("seed", "", "none") and "<b>" not in control_html("x", "<b>")
    True
    """
    shown = escape(value) if value else f"<span style='color:#767676'>{escape(hint)}</span>"
    return (f"<span style='margin-right:12px'>{escape(label)} "
            f"<span style='border:1px solid #bbb;padding:0 4px'>{shown}</span></span>")


def button_html(label: str, disabled: bool = False) -> str:
    """A button in a static snapshot; a disabled one is grey with a dashed edge, as live."""
    look = ("background:#eee;color:#767676;border:1px dashed #bbb" if disabled
            else "background:#f0f0f0;color:#111;border:1px solid #999")
    return f"<span style='{look};padding:1px 10px;margin-right:6px'>{escape(label)}</span>"


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


# -- the Stop of a generation that another cell (or the playground) runs

# (a manager's event bus, a model's name) -> the stop event of the generation running there
_stops: dict[tuple[Any, str], threading.Event] = {}
_stops_lock = threading.Lock()


@contextmanager
def stoppable(events: Any, stop_event: threading.Event) -> Iterator[None]:
    """Let a panel's Stop set ``stop_event`` while a generation this thread runs is going.

    ``events`` is the manager's event bus. Inside the block, a generation that
    this thread starts (its ``generation_start`` is emitted on the thread that
    runs it) is registered under its model until its ``generation_end``, so
    :func:`stop_running` finds exactly the generation that holds the model, not
    one still waiting for it.
    """
    me = threading.get_ident()
    mine: list[tuple[Any, str]] = []

    def follow(event: Any) -> None:
        if threading.get_ident() != me or event.model is None:
            return
        key = (events, event.model)
        with _stops_lock:
            if event.kind == "generation_start":
                _stops[key] = stop_event
                mine.append(key)
            elif _stops.get(key) is stop_event:
                del _stops[key]

    unsubscribe = events.subscribe(follow, kinds=("generation_start", "generation_end"))
    try:
        yield
    finally:
        unsubscribe()
        with _stops_lock:
            for key in mine:
                if _stops.get(key) is stop_event:
                    del _stops[key]


def stop_running(events: Any, model: str) -> bool:
    """Set the stop event of the generation running on ``model``; False when none is known."""
    with _stops_lock:
        stop_event = _stops.get((events, model))
    if stop_event is None:
        return False
    stop_event.set()
    return True
