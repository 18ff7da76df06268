"""Change events of the model manager, for panels and hooks.

The manager emits an :class:`Event` when a model starts loading, is loaded,
unloaded or evicted, and when a generation starts and ends. Widgets subscribe
to redraw; the history store subscribes to record every generation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "EventBus", "EVENT_KINDS", "subscribe_everywhere"]

log = logging.getLogger("llm_magic.events")

EVENT_KINDS = frozenset(
    {
        "loading",  # data: source, estimate (bytes or None)
        "loaded",  # data: info (ModelInfo)
        "load_failed",  # data: error (str)
        "unloaded",  # data: freed (bool)
        "evicted",  # data: reason (str)
        "generation_start",  # data: generation (PendingGeneration)
        "generation_end",  # data: generation (Generation)
        "default_changed",  # model: the new default
    }
)


@dataclass(frozen=True)
class Event:
    """One change in the manager.

    Attributes
    ----------
    kind : str
        One of :data:`EVENT_KINDS`.
    model : str or None
        The name of the model concerned.
    data : dict
        Details that depend on ``kind``.
    """

    kind: str
    model: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]

# Listeners of every bus in the process (the history store records the
# generations of every manager, the kernel's and any other).
_everywhere: list[tuple[Listener, frozenset[str] | None]] = []
_everywhere_lock = threading.Lock()


def _wanted(kinds: Iterable[str] | None) -> frozenset[str] | None:
    wanted = None if kinds is None else frozenset(kinds)
    if wanted is not None and not wanted <= EVENT_KINDS:
        raise ValueError(f"Unknown event kinds: {sorted(wanted - EVENT_KINDS)}")
    return wanted


def subscribe_everywhere(
    listener: Listener, kinds: Iterable[str] | None = None
) -> Callable[[], None]:
    """Call ``listener(event)`` for the events of every :class:`EventBus`; returns an unsubscriber.

    Examples
    --------
    >>> seen = []
    >>> stop = subscribe_everywhere(seen.append, kinds={"unloaded"})
    >>> EventBus().emit("unloaded", "demo")
    >>> [e.model for e in seen]
    ['demo']
    >>> stop()
    """
    entry = (listener, _wanted(kinds))
    with _everywhere_lock:
        _everywhere.append(entry)

    def unsubscribe() -> None:
        with _everywhere_lock:
            if entry in _everywhere:
                _everywhere.remove(entry)

    return unsubscribe


class EventBus:
    """A thread-safe list of listeners.

    Listeners run in the thread that emits; one that raises is logged and
    the others still run, so a broken panel can never break a generation.

    Examples
    --------
    >>> bus = EventBus()
    >>> seen = []
    >>> stop = bus.subscribe(seen.append, kinds={"loaded"})
    >>> bus.emit("loaded", "demo")
    >>> bus.emit("unloaded", "demo")
    >>> [e.kind for e in seen]
    ['loaded']
    >>> stop()
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[tuple[Listener, frozenset[str] | None]] = []

    def subscribe(
        self, listener: Listener, kinds: Iterable[str] | None = None
    ) -> Callable[[], None]:
        """Call ``listener(event)`` for every event (or only ``kinds``); returns an unsubscriber."""
        entry = (listener, _wanted(kinds))
        with self._lock:
            self._listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return unsubscribe

    def emit(self, kind: str, model: str | None = None, **data: Any) -> None:
        """Send an event to every interested listener."""
        with self._lock:
            listeners = list(self._listeners)
        with _everywhere_lock:
            listeners += _everywhere
        if not listeners:
            return
        event = Event(kind, model, data)
        for listener, wanted in listeners:
            if wanted is not None and kind not in wanted:
                continue
            try:
                listener(event)
            except Exception:
                log.exception("Event listener %r failed on %s", listener, kind)
