"""Every generation, kept in SQLite: find it again, see what made it, run it again.

The history store listens to the ``generation_start`` and ``generation_end``
events of every manager in the process (:func:`llm_magic.events.subscribe_everywhere`),
so magics, widgets and Python calls are all recorded without knowing about it.
A row is written when a generation starts (its id becomes
:attr:`~llm_magic.generation.Generation.id`), its partial output is written
about once a second while it runs, and it is completed when it ends: an
interrupted generation, or one whose process died, is still there with the
status it had. Only the start is written in the caller's thread, before any
token; everything else is written by one background thread.

A generation with token records (``logprobs=K``) keeps them in its row in
compact form, K and the top K of every step (8 (K + 1) + 8 bytes a token, plus
each used token's text once; ``records.encode_records`` has the layout),
and a branch keeps its ``parent`` and ``branch_at``; a conversation's turn keeps
the conversation's id and its index, and the model's quantization is kept too.
:mod:`.replay` runs a row again.

The database lives in the per-user data directory (``platformdirs``) unless
``LLM_MAGIC_HISTORY`` names a file (or ``off``), ``%config
LLMMagics.history_path`` names one, or :func:`configure` is called. A database
that cannot be written (read-only, damaged, disk full) costs one
:class:`~llm_magic.errors.LLMMagicWarning`; generation goes on.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.text import check_text, shown
from ..errors import InvalidOptionError, LLMMagicWarning, outside_stacklevel
from ..events import Event, subscribe_everywhere
from .read import HistoryRow, HistoryTable, end_values, start_values

if TYPE_CHECKING:
    import sqlite3

    from ..generation import Generation, PendingGeneration

__all__ = ["ENV", "HistoryRow", "HistorySettings", "HistoryTable", "configure", "get", "history",
           "settings"]

log = logging.getLogger("llm_magic.history")

#: The environment variable naming the database file (or ``off``).
ENV = "LLM_MAGIC_HISTORY"
_FILE = "history.sqlite"


# -- settings -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HistorySettings:
    """Whether and where generations are recorded.

    ``origin`` says which setting chose the path: ``"configure"`` (a call or
    ``%config LLMMagics.history_path``), ``"LLM_MAGIC_HISTORY"`` or ``"default"``
    (the per-user data directory).
    """

    enabled: bool
    path: Path
    origin: str
    flush_interval: float

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"History is {state}: {self.path} ({self.origin})."


_lock = threading.Lock()
_explicit: dict[str, Any] = {"enabled": None, "path": None, "flush_interval": 1.0}


def settings() -> HistorySettings:
    """The history settings in force now.

    Examples
    --------
    >>> from llm_magic.history import settings
    >>> settings().enabled  # doctest: +SKIP
    True
    """
    with _lock:
        enabled, path, flush = (_explicit["enabled"], _explicit["path"],
                                _explicit["flush_interval"])
    env = os.environ.get(ENV, "").strip()
    off = env.lower() == "off"
    if path is not None:
        origin = "configure"
    elif env and not off:
        path, origin = Path(env).expanduser(), ENV
    else:
        import platformdirs

        path = platformdirs.user_data_path("llm_magic", appauthor=False) / _FILE
        origin = "default"
    return HistorySettings(enabled=(not off) if enabled is None else enabled,
                           path=Path(path).absolute(), origin=origin, flush_interval=flush)


def configure(*, enabled: bool | None = None, path: str | os.PathLike[str] | None = None,
              flush_interval: float | None = None, reset: bool = False) -> HistorySettings:
    """Turn history on or off, or move it to another file; returns the settings now.

    Parameters
    ----------
    enabled : bool, optional
        False stops recording (reading still works); True records even when
        ``LLM_MAGIC_HISTORY=off``.
    path : str or path, optional
        The database file; ``""`` goes back to ``LLM_MAGIC_HISTORY`` or the default.
    flush_interval : float, optional
        Seconds between writes of a running generation's partial output.
    reset : bool
        First forget every earlier ``configure`` (back to ``LLM_MAGIC_HISTORY``
        and the defaults).

    Examples
    --------
    >>> from llm_magic.history import configure
    >>> configure(path="/tmp/my-history.sqlite")  # doctest: +SKIP
    >>> configure(enabled=False)                  # doctest: +SKIP
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidOptionError("enabled must be True or False.")
    if flush_interval is not None and (isinstance(flush_interval, bool) or not isinstance(
            flush_interval, (int, float)) or not 0 < flush_interval <= 3600):
        raise InvalidOptionError("flush_interval must be a number of seconds, > 0 and <= 3600.")
    with _lock:
        if reset:
            _explicit.update(enabled=None, path=None, flush_interval=1.0)
        if enabled is not None:
            _explicit["enabled"] = enabled
        if path is not None:
            _explicit["path"] = Path(path).expanduser() if str(path) else None
        if flush_interval is not None:
            _explicit["flush_interval"] = float(flush_interval)
    _recorder.forget_failures()
    return settings()


# -- recording ------------------------------------------------------------------




Job = Callable[["sqlite3.Connection"], Any]


@dataclasses.dataclass
class _Running:
    pending: PendingGeneration
    path: Path
    written: tuple[str, int] = ("", 0)


class _Recorder:
    """The listener that writes generations, and its background writer thread.

    One SQLite connection per process, used under ``_lock`` by the caller's
    thread (the start of a generation, reads) and the writer thread (partial
    output, ends).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._con: sqlite3.Connection | None = None
        self._con_path: Path | None = None
        self._pid = os.getpid()
        self._refused: dict[Path, Exception] = {}  # damaged or newer files, until configure()
        self._warned = False
        self._deferred: str | None = None  # a writer-thread failure, warned in the caller's thread
        self._running: dict[int, _Running] = {}
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # -- the connection --------------------------------------------------

    def connection(self, path: Path) -> sqlite3.Connection:
        """The connection to ``path`` (opened, migrated); call with ``_lock`` held."""
        from . import db

        if self._pid != os.getpid():  # a forked child must not share its parent's connection
            self._con, self._con_path, self._pid = None, None, os.getpid()
            self._running.clear()
        if self._con is not None and self._con_path == path and path.exists():
            return self._con  # (a file deleted meanwhile is made again, not written unlinked)
        if path in self._refused:
            raise self._refused[path]
        self.close()
        try:
            self._con = db.connect(path)
        except Exception as exc:
            problem = db.problem_of(exc, path)
            if problem.kind in ("damaged", "newer"):
                self._refused[path] = problem
            raise problem from exc
        self._con_path = path
        return self._con

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                try:
                    self._con.close()
                except Exception:  # closing a broken connection must not break anything
                    log.debug("closing the history database failed", exc_info=True)
            self._con, self._con_path = None, None

    def forget_failures(self) -> None:
        """After a change of settings: try refused files again, and warn again."""
        self.flush()
        with self._lock:
            self._refused.clear()
            self._warned = False
            self._deferred = None
            self.close()

    # -- outcomes ----------------------------------------------------------

    def _failed(self, exc: BaseException, path: Path, *, in_writer: bool = False) -> None:
        from . import db

        problem = db.problem_of(exc, path)
        if problem.kind in ("damaged", "newer"):
            self._refused[path] = problem
            self.close()
        log.debug("history write failed: %s", problem)
        if self._warned:
            return
        self._warned = True
        if in_writer:
            self._deferred = str(problem)
            log.warning("%s", problem)
        else:
            warnings.warn(str(problem), LLMMagicWarning, stacklevel=outside_stacklevel())

    def _succeeded(self) -> None:
        if self._deferred is None:
            self._warned = False

    def _warn_deferred(self) -> None:
        message, self._deferred = self._deferred, None
        if message is not None:
            warnings.warn(message, LLMMagicWarning, stacklevel=outside_stacklevel())

    # -- events (the caller's thread) -------------------------------------

    def on_event(self, event: Event) -> None:
        if event.kind == "generation_start":
            self._start(event.data.get("generation"))
        elif event.kind == "generation_end":
            self._end(event.data.get("generation"), event.data.get("error"))

    def _start(self, pending: PendingGeneration | None) -> None:
        from . import db

        self._warn_deferred()
        now = settings()
        if pending is None or not now.enabled:
            return
        values = start_values(pending)
        # The writer thread may hold the lock while another program holds the file:
        # a generation waits a few seconds at most, then goes on unrecorded.
        if not self._lock.acquire(timeout=db.START_WAIT):
            self._failed(db.Problem("busy", db.busy_message(now.path, "the writer is waiting")),
                         now.path)
            return
        try:
            self._end_orphans(pending)
            row_id = db.insert(self.connection(now.path), values, db.START_ATTEMPTS)
        except Exception as exc:
            self._failed(exc, now.path)
            return
        else:
            self._succeeded()
            self._running[row_id] = _Running(pending, now.path)
        finally:
            self._lock.release()
        pending.id = row_id
        self._ensure_thread()
        self._jobs.put(None)  # the writer starts timing the partial-output writes

    def _end(self, gen: Generation | None, error: str | None) -> None:
        from . import db

        self._warn_deferred()
        if gen is None or gen.id is None:
            return
        with self._lock:
            running = self._running.pop(gen.id, None)
        if running is None:
            return
        row_id, values = gen.id, end_values(gen, error)
        self._jobs.put((running.path, lambda con: db.complete(con, row_id, values)))

    def _end_orphans(self, pending: PendingGeneration) -> None:
        """End rows of this model's earlier generations that never sent their end event.

        Generations on one loaded model never overlap (the manager's lock; the
        prompts of one batch run together), so a row still running when the same
        model starts again escaped by an exception in the code that received its
        text. Call with ``_lock`` held.
        """
        if pending.info is None:
            return
        for row_id, entry in list(self._running.items()):
            info = entry.pending.info
            together = pending.batch is not None and entry.pending.batch == pending.batch
            if entry.pending.model == pending.model and info is not None and \
                    info.loaded_at == pending.info.loaded_at and not together:
                del self._running[row_id]
                self._stop_row(row_id, entry, "error", (
                    "The generation stopped without ending: the code receiving its text "
                    "raised. The output is as far as it was written."))

    def _stop_row(self, row_id: int, entry: _Running, status: str, error: str | None) -> None:
        from . import db

        try:
            text, tokens = entry.pending.progress()
        except Exception:
            text, tokens = entry.written
        values = {"ended_at": time.time(), "status": status, "error": error, "output": text,
                  "new_tokens": tokens}
        self._jobs.put((entry.path, lambda con: db.complete(con, row_id, values)))

    def close_running(self) -> None:
        """At exit: rows of generations still running end as interrupted, with their output."""
        with self._lock:
            running, self._running = self._running, {}
        for row_id, entry in running.items():
            self._stop_row(row_id, entry, "interrupted", None)
        self.flush(5.0)

    # -- the writer thread ------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="llm_magic.history",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            interval = settings().flush_interval
            with self._lock:
                busy = bool(self._running)
            timeout = max(0.0, interval - (time.monotonic() - last)) if busy else None
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                job = None
            if isinstance(job, threading.Event):
                job.set()
            elif job is not None:
                self._do(*job)
            if time.monotonic() - last >= interval:
                self._write_progress()
                last = time.monotonic()

    def _do(self, path: Path, job: Job) -> None:
        with self._lock:
            try:
                job(self.connection(path))
            except Exception as exc:
                self._failed(exc, path, in_writer=True)
            else:
                self._succeeded()

    def _write_progress(self) -> None:
        from . import db

        with self._lock:
            running = list(self._running.items())
        updates: dict[Path, list[tuple[int, str, int]]] = {}
        for row_id, entry in running:
            try:
                now = entry.pending.progress()
            except Exception:  # a generation ending meanwhile; its end is written anyway
                continue
            if now != entry.written:
                updates.setdefault(entry.path, []).append((row_id, *now))
                entry.written = now
        for path, rows in updates.items():
            self._do(path, lambda con, rows=rows: db.progress(con, rows))  # type: ignore[misc]

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every write queued so far is done; False if the writer did not finish."""
        with self._lock:
            thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return True
        done = threading.Event()
        self._jobs.put(done)
        return done.wait(timeout)


_recorder = _Recorder()
subscribe_everywhere(_recorder.on_event, kinds={"generation_start", "generation_end"})
atexit.register(_recorder.close_running)


# -- reading ----------------------------------------------------------------------


def _read(**query: Any) -> tuple[Path, list[HistoryRow]]:
    from . import db

    _recorder.flush()
    _recorder._warn_deferred()
    path = settings().path
    if not path.exists():
        return path, []
    with _recorder._lock:
        try:
            rows = db.select(_recorder.connection(path), **query)
        except Exception as exc:
            raise db.read_failure(exc, path) from exc
    return path, [HistoryRow.from_db(dict(zip(db.COLUMNS, r, strict=True))) for r in rows]


def history(n: int | None = 20, search: str | None = None, model: str | None = None,
            conversation: Any = None) -> HistoryTable:
    """The latest generations, newest first; renders as a table.

    With ``conversation``, the turns of that conversation instead, in the order
    they were said (the latest ``n``), with their turn index.

    Parameters
    ----------
    n : int or None
        How many rows at most (None: all).
    search : str, optional
        Only generations whose prompt, system prompt or output contains this
        text, every character of it (a NUL too), case-insensitive for ASCII letters.
    model : str, optional
        Only generations of the model of this name.
    conversation : Conversation or str, optional
        Only the turns of this conversation: a :class:`~llm_magic.Conversation`,
        its id (``conv.id``, a turn's ``Generation.conversation``: 12 hex
        digits, the way to find a conversation of another kernel), or the name
        of a conversation of this kernel.

    Returns
    -------
    HistoryTable
        A tuple of :class:`HistoryRow`.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.history(5, search="import")  # doctest: +SKIP
    >>> lm.history()[0].output          # doctest: +SKIP
    >>> lm.history(conversation="chat-1")  # doctest: +SKIP
    """
    from .db import check_number

    if n is not None:
        n = check_number(n, "The number of rows (n)")
    if search is not None:
        check_text(search, "The search text", allow_empty=True)
    if model is not None:
        check_text(model, "The model name", allow_empty=True)
    key = None if conversation is None else conversation_id(conversation)
    path, rows = _read(limit=n, search=search or None, model=model, conversation=key)
    if key is not None:
        rows.reverse()  # a conversation reads in the order it was said
    return HistoryTable(rows, path=path, filtered=bool(search) or model is not None,
                        conversation=key)


_CONVERSATION_ID = re.compile(r"[0-9a-f]{12}")


def conversation_id(conversation: Any) -> str:
    """The id of a :class:`~llm_magic.Conversation`, of a conversation of this kernel named
    so, or the id itself (12 hex digits); else one clear line."""
    from ..generation.conversation import Conversation, conversations

    if isinstance(conversation, Conversation):
        return conversation.id
    if isinstance(conversation, str):
        check_text(conversation, "The conversation")
        for conv in conversations():
            if conv.name == conversation:
                return conv.id
        if _CONVERSATION_ID.fullmatch(conversation):
            return conversation
        raise InvalidOptionError(
            f"No conversation of this kernel is named {shown(conversation)}, and it is not a "
            "conversation's id (12 hex digits: conv.id, or a turn's Generation.conversation). "
            "See lm.conversations() for the names.")
    raise InvalidOptionError(f"conversation is a Conversation, its id or its name, not "
                             f"{shown(conversation)}.")


def get(row_id: int) -> HistoryRow:
    """One recorded generation by its id; :class:`HistoryError` if there is none."""
    from .db import HistoryError, check_number

    row_id = check_number(row_id, "A generation id")
    path, rows = _read(row_id=row_id, limit=1)
    if not rows:
        _, latest = _read(limit=1)
        last = f"the latest is {latest[0].id}" if latest else "it holds no generations yet"
        raise HistoryError(f"There is no generation {row_id} in the history at {path} ({last}). "
                           "See `lm.history()` or `%llm history` for the ids.")
    return rows[0]
