"""The history database: schema, migrations, connections and retries.

Private to :mod:`llm_magic.history`. The schema is versioned with SQLite's
``user_version``; :data:`MIGRATIONS` lists the steps from an empty file, applied
in order inside one write transaction, so two processes opening the same new
file never apply a step twice. The journal is WAL: readers never block the
writer, and a process killed at any point leaves every committed row intact.
"""

from __future__ import annotations

import json
import operator
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..common.text import shown
from ..errors import InvalidOptionError, LLMMagicError

__all__ = ["COLUMNS", "MAX_INTEGER", "MIGRATIONS", "START_ATTEMPTS", "START_WAIT", "HistoryError",
           "Problem", "busy_message", "check_number", "complete", "connect", "insert", "migrate",
           "newer", "problem_of", "progress", "read_failure", "retried", "select", "version_of",
           "write"]

T = TypeVar("T")

#: One tuple of statements per schema version: step ``i`` takes version ``i`` to ``i + 1``.
#: Never edit a released step; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: one row per generation, written at its start and completed at its end.
    ("""
     CREATE TABLE generations (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         started_at REAL NOT NULL,
         ended_at REAL,
         status TEXT NOT NULL DEFAULT 'running'
             CHECK (status IN ('running', 'ok', 'interrupted', 'error')),
         error TEXT,
         model TEXT NOT NULL,
         source TEXT,
         backend TEXT,
         endpoint TEXT,
         revision TEXT,
         commit_hash TEXT,
         dtype TEXT,
         device TEXT,
         params TEXT NOT NULL DEFAULT '{}',
         seed INTEGER,
         system TEXT,
         prompt TEXT NOT NULL,
         output TEXT NOT NULL DEFAULT '',
         prompt_tokens INTEGER,
         new_tokens INTEGER NOT NULL DEFAULT 0,
         time_to_first_token REAL,
         duration REAL,
         tokens_per_second REAL,
         stop_reason TEXT,
         llm_magic_version TEXT,
         torch_version TEXT,
         transformers_version TEXT
     )
     """,),
    # 2: reads filter by model and order by time.
    ("CREATE INDEX generations_model ON generations (model, id)",
     "CREATE INDEX generations_started ON generations (started_at)"),
    # 3: token records (logprobs=K) in compact form (records.encode_records: ids as
    # int32, log-probabilities as float32, per token), and where a branch came from.
    ("ALTER TABLE generations ADD COLUMN logprobs INTEGER",
     "ALTER TABLE generations ADD COLUMN logprobs_mode TEXT",
     "ALTER TABLE generations ADD COLUMN tokens BLOB",
     "ALTER TABLE generations ADD COLUMN parent INTEGER",
     "ALTER TABLE generations ADD COLUMN branch_at INTEGER",
     "CREATE INDEX generations_parent ON generations (parent)"),
    # 4: a conversation's turns (the conversation's id, the turn's index from 0), and the
    # quantization of the model (int8, int4), so a rerun asks for the same weights.
    ("ALTER TABLE generations ADD COLUMN conversation TEXT",
     "ALTER TABLE generations ADD COLUMN turn INTEGER",
     "ALTER TABLE generations ADD COLUMN quantization TEXT",
     "CREATE INDEX generations_conversation ON generations (conversation, id)"),
)

#: The columns of a row, in the order :func:`select` returns them.
COLUMNS = (
    "id", "started_at", "ended_at", "status", "error", "model", "source", "backend", "endpoint",
    "revision", "commit_hash", "dtype", "device", "params", "seed", "system", "prompt", "output",
    "prompt_tokens", "new_tokens", "time_to_first_token", "duration", "tokens_per_second",
    "stop_reason", "llm_magic_version", "torch_version", "transformers_version",
    "logprobs", "logprobs_mode", "tokens", "parent", "branch_at",
    "conversation", "turn", "quantization",
)
_END_COLUMNS = ("ended_at", "status", "error", "output", "prompt_tokens", "new_tokens",
                "time_to_first_token", "duration", "tokens_per_second", "stop_reason",
                "logprobs", "logprobs_mode", "tokens", "parent", "branch_at")

_RETRIES = 10  # attempts of a write that finds the database busy, after the busy timeout
_BUSY_TIMEOUT = 2.0  # seconds SQLite itself waits for another writer
#: Attempts of the write at a generation's start, in the caller's thread: a file that
#: another program keeps locked delays a generation by a few seconds at most.
START_ATTEMPTS = 2
START_WAIT = 5.0  # seconds a start waits for the writer thread's turn with the connection
#: The largest id or row count a query takes: SQLite's INTEGER is signed 64-bit.
MAX_INTEGER = 2**63 - 1


class HistoryError(LLMMagicError):
    """The history database cannot be read (or has no such generation)."""


class Problem(Exception):
    """A failure of the history database, sorted into what the user can do about it.

    ``kind`` is "damaged", "read-only", "full", "busy", "newer" or "other"; ``str()``
    is the sentence for the warning; ``detail`` what SQLite or the system said.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail: str | None = None


def problem_of(exc: BaseException, path: Path) -> Problem:
    """Sort an error of SQLite or the file system into a :class:`Problem` with a clear message."""
    if isinstance(exc, Problem):
        return exc
    problem = _sort(exc, path)
    problem.detail = str(exc) or type(exc).__name__
    return problem


def _sort(exc: BaseException, path: Path) -> Problem:
    name = getattr(exc, "sqlite_errorname", "") or ""
    detail = str(exc) or type(exc).__name__
    lowered = detail.lower()
    elsewhere = ("point LLM_MAGIC_HISTORY (or %config LLMMagics.history_path) at another file, "
                 "or turn history off")
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in lowered \
            or "malformed" in lowered:
        return Problem("damaged", (
            f"The history database {path} is damaged or not an SQLite file ({detail}). "
            f"Generations go on without history: move the file away (a new one is made) or "
            f"{elsewhere}."))
    if name.startswith("SQLITE_FULL") or "disk is full" in lowered or \
            getattr(exc, "errno", None) == 28:
        return Problem("full", (
            f"The disk holding the history database {path} is full ({detail}); this "
            "generation is not recorded. Free some space: history resumes by itself."))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in lowered:
        return Problem("busy", busy_message(path, detail))
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) or \
            isinstance(exc, PermissionError) or "readonly" in lowered or "read-only" in lowered \
            or "unable to open" in lowered:
        return Problem("read-only", (
            f"The history database {path} cannot be written ({detail}). Generations go on "
            f"without history: make it writable, or {elsewhere}."))
    return Problem("other", (
        f"The history database {path} failed ({detail}); this generation is not recorded."))


def read_failure(exc: BaseException, path: Path) -> HistoryError:
    """A failure to read the history as a :class:`HistoryError` that says it was a read."""
    problem = problem_of(exc, path)
    if problem.kind == "newer":  # its own message says what to do
        return HistoryError(str(problem))
    advice = {
        "damaged": "the file is damaged or not an SQLite file: move it away (a new one is "
                   "made) or point LLM_MAGIC_HISTORY at another file",
        "busy": "another program keeps it locked: try again once the lock is gone",
        "read-only": "SQLite needs to write beside the file even to read it: make the file "
                     "and its folder writable, or read a copy",
        "full": "the disk is full: free some space",
    }.get(problem.kind, "nothing was changed")
    detail = problem.detail or str(exc) or type(exc).__name__
    return HistoryError(f"Reading the history at {path} failed ({detail}); {advice}.")


def check_number(value: Any, what: str) -> int:
    """``value`` as an ``int`` from 1 to :data:`MAX_INTEGER` (NumPy integers too); else one
    clear line."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or not 1 <= number <= MAX_INTEGER:
        raise InvalidOptionError(
            f"{what} must be a positive integer of at most 2**63 - 1, not {shown(value)}.")
    return number


def busy_message(path: Path, detail: str) -> str:
    return (f"The history database {path} is locked by another program ({detail}); this "
            "generation is not recorded. History resumes when the lock is gone.")


def _busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc)


def retried(fn: Callable[[], T], attempts: int = _RETRIES) -> T:
    """Run ``fn``; when the database stays busy past SQLite's own wait, back off and retry."""
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(1.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def write(con: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T],
          attempts: int = _RETRIES) -> T:
    """Run ``fn(con)`` in one immediate write transaction, retried while the file is busy."""

    def attempt() -> T:
        con.execute("BEGIN IMMEDIATE")
        try:
            result = fn(con)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return result

    return retried(attempt, attempts)


def version_of(con: sqlite3.Connection) -> int:
    return int(con.execute("PRAGMA user_version").fetchone()[0])


def migrate(con: sqlite3.Connection,
            steps: Sequence[tuple[str, ...]] = MIGRATIONS) -> int:
    """Bring the schema up to ``len(steps)``; returns the version it was at."""
    found = newer(con, steps)
    if found == len(steps):
        return found

    def apply(con: sqlite3.Connection) -> int:
        at = version_of(con)  # another process may have migrated meanwhile
        for step in steps[at:]:
            for statement in step:
                con.execute(statement)
        con.execute(f"PRAGMA user_version = {len(steps)}")
        return at

    return write(con, apply)


def newer(con: sqlite3.Connection, steps: Sequence[tuple[str, ...]] = MIGRATIONS) -> int:
    """The file's schema version; :class:`Problem` if a newer llm_magic wrote it."""
    found = version_of(con)
    if found > len(steps):
        raise Problem("newer", (
            f"The history database was written by a newer llm_magic (schema version {found}; "
            f"this one knows {len(steps)}): generations are not recorded there. Upgrade "
            "llm_magic, or point LLM_MAGIC_HISTORY at another file."))
    return found


def connect(path: Path, steps: Sequence[tuple[str, ...]] = MIGRATIONS) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path``, in WAL mode, migrated.

    The connection is in autocommit mode (transactions are explicit) and may be
    used from any thread under the caller's lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT, isolation_level=None,
                          check_same_thread=False)
    try:
        newer(con, steps)  # before anything is written to a file of a newer version
        mode = retried(lambda: con.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"attempt to write a readonly database (journal {mode})")
        # A text that is not valid UTF-8 (written by another program, or a damaged page)
        # reads with U+FFFD in its place: one such row must not make the history unreadable.
        con.text_factory = _decoded
        # In WAL mode NORMAL loses no committed row when the process dies; only a
        # power cut can take the last transactions.
        con.execute("PRAGMA synchronous=NORMAL")
        migrate(con, steps)
    except BaseException:
        con.close()
        raise
    return con


def insert(con: sqlite3.Connection, values: dict[str, Any], attempts: int = _RETRIES) -> int:
    """Add a row; returns its id."""
    names = [c for c in COLUMNS if c in values]
    sql = (f"INSERT INTO generations ({', '.join(names)}) "
           f"VALUES ({', '.join('?' for _ in names)})")
    row = [_cell(values[n]) for n in names]
    cursor = write(con, lambda c: c.execute(sql, row), attempts)
    assert cursor.lastrowid is not None
    return int(cursor.lastrowid)


def progress(con: sqlite3.Connection, updates: Sequence[tuple[int, str, int]]) -> None:
    """Write the partial output of running generations: ``(id, text, new_tokens)`` each."""
    write(con, lambda c: c.executemany(
        "UPDATE generations SET output = ?, new_tokens = ? WHERE id = ? AND status = 'running'",
        [(text, tokens, row_id) for row_id, text, tokens in updates]))


def complete(con: sqlite3.Connection, row_id: int, values: dict[str, Any]) -> None:
    """Fill in the end of a generation (status, output, counts and timings)."""
    names = [c for c in _END_COLUMNS if c in values]
    sql = f"UPDATE generations SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?"
    row = [_cell(values[n]) for n in names] + [row_id]
    write(con, lambda c: c.execute(sql, row))


def select(con: sqlite3.Connection, *, limit: int | None = 20, search: str | None = None,
           model: str | None = None, row_id: int | None = None,
           conversation: str | None = None) -> list[tuple[Any, ...]]:
    """Rows newest first, filtered by a text in the prompt, system or output, a model and a
    conversation's id."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("id", row_id), ("model", model), ("conversation", conversation)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if search:
        # instr() compares every byte; LIKE stops at a NUL and would match every row.
        # lower() on both sides keeps LIKE's case-insensitivity (ASCII letters only).
        where.append("(instr(lower(prompt), lower(?)) > 0 OR instr(lower(output), lower(?)) > 0 "
                     "OR instr(lower(system), lower(?)) > 0)")
        args += [search] * 3
    sql = f"SELECT {', '.join(COLUMNS)} FROM generations"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return retried(lambda: con.execute(sql, args).fetchall())


def _decoded(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value
