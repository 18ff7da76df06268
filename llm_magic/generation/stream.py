"""Between the worker that generates and the thread that called it: the channel, the
drain, the stop-string trimmer and the sink that receives streamed text.

The worker appends to a :class:`Channel`, waking the calling thread for each
piece until streamed text first shows (so the first token appears at once);
after that the caller drains it every :data:`POLL` seconds, feeds a
:class:`StopTrimmer` and the sink, and stops the worker on an interrupt or when
the sink fails.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InvalidOptionError

__all__ = ["JOIN", "POLL", "Channel", "Drained", "Sink", "StopTrimmer", "drain", "progress_of",
           "sink", "stop_worker"]

log = logging.getLogger("llm_magic.generation")

POLL = 0.05  # seconds between drains of the worker's output (and checks for an interrupt)
JOIN = 2.0  # how long to wait for an interrupted worker to finish its current step


class Sink(Protocol):
    """Receives streamed text; ``write`` is called with each new piece."""

    def write(self, text: str) -> Any: ...


class StopTrimmer:
    """Withholds streamed text that could be the start of a stop string."""

    def __init__(self, stops: tuple[str, ...], emit: Callable[[str], Any] | None) -> None:
        self.stops = stops
        self.emit = emit
        self.text = ""
        self.sent = 0
        self.hit = False
        self.hold = max((len(s) for s in stops), default=1) - 1

    def feed(self, piece: str) -> None:
        if self.hit or not piece:
            return
        self.text += piece
        if self.stops:
            cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.hit = True
                self._send(len(self.text))
                return
        self._send(len(self.text) - self.hold if self.stops else len(self.text))

    def finish(self, final: str | None = None) -> str:
        if final is not None and not self.hit:
            # The exact decoding of all tokens wins over the incremental one.
            cut = min((i for i in (final.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                final, self.hit = final[:cut], True
            self.text = final
        self._send(len(self.text))
        return self.text

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            if self.emit is not None:
                self.emit(self.text[self.sent : upto])
            self.sent = upto


def sink(stream: bool | Sink | Callable[[str], Any] | None) -> Callable[[str], Any] | None:
    if stream is None or stream is False:
        return None
    if stream is True:
        def to_stdout(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        return to_stdout
    write = getattr(stream, "write", None)
    if callable(write):
        return write  # type: ignore[no-any-return]
    if callable(stream):
        return stream
    raise InvalidOptionError("stream must be True, False, a callable or an object with .write().")


class Channel:
    """The worker's queue to the caller's thread.

    The worker wakes the caller (``started``) until the caller has shown text,
    and then appends without waking anyone; the caller drains it every ``POLL`` seconds
    (or at the end). Waking the kernel thread for every token would cost
    measurable tokens/s through thread switches and the GIL.
    """

    def __init__(self) -> None:
        self.items: collections.deque[tuple[float, Any]] = collections.deque()
        self.done = threading.Event()
        self.started = threading.Event()  # a piece is in (or the worker ended); the caller
        # clears it while it waits for the first text
        self.error: BaseException | None = None
        self.ended: float | None = None

    def put(self, chunk: Any) -> None:
        self.items.append((time.perf_counter(), chunk))
        if not self.started.is_set():
            self.started.set()

    def run(self, job: Any) -> None:
        try:
            job.run(self.put)
        except BaseException as exc:  # handed back to the caller, which re-raises it
            self.error = exc
        finally:
            self.ended = time.perf_counter()
            self.done.set()
            self.started.set()

    def drain(self) -> list[tuple[float, Any]]:
        out = []
        while self.items:
            out.append(self.items.popleft())
        return out


@dataclass
class Drained:
    first: float | None = None
    interrupted: bool = False
    sink_error: Exception | None = None


def drain(worker: threading.Thread, channel: Channel, job: Any, trimmer: StopTrimmer,
           stop_event: threading.Event, t0: float, *, incremental: bool) -> Drained:
    """Start the worker and read its output until it ends, an interrupt, or a failing sink.

    Without a sink the text is decoded once at the end; the worker's own
    stopping criteria enforce stop strings.
    """
    out = Drained()
    worker.start()
    try:
        while True:
            if incremental and not trimmer.sent:  # until text shows, each new piece wakes us
                channel.started.wait(POLL)
                channel.started.clear()  # before the drain: a piece put after it wakes again
                finished = channel.done.is_set()
            else:
                finished = channel.done.wait(POLL)
            chunks = channel.drain()
            if chunks and out.first is None:
                out.first = chunks[0][0] - t0
                log.debug("first token after %.3fs", out.first)
            if incremental:
                trimmer.feed(job.decode([chunk for _, chunk in chunks]))
            else:
                job.count([chunk for _, chunk in chunks])
            if finished and not channel.items:
                break
    except KeyboardInterrupt:
        out.interrupted = True
        stop_worker(stop_event, worker, job, channel)
    except Exception as exc:  # the stream's receiver raised: stop, keep what was made
        out.sink_error = exc
        trimmer.emit = None
        stop_worker(stop_event, worker, job, channel)
    return out


def stop_worker(stop_event: threading.Event, worker: threading.Thread, job: Any,
                 channel: Channel) -> None:
    """Stop a generation early and take what the worker produced up to then."""
    stop_event.set()
    worker.join(JOIN)
    if worker.is_alive():
        log.warning("generation worker still finishing its current step")
    job.count([chunk for _, chunk in channel.drain()])


def progress_of(trimmer: StopTrimmer, job: Any) -> Callable[[], tuple[str, int]]:
    """What a generation has produced so far, without keeping its job (and model) alive."""
    ref = weakref.ref(job)

    def progress() -> tuple[str, int]:
        alive = ref()
        return trimmer.text[: trimmer.sent], (alive.new_tokens if alive is not None else 0)

    return progress
