"""What a history row holds: the values written, and what reading gives back.

Rows, the table they render as, rerun results, and the values of a row as a
generation starts and ends (credentials taken out). Private to
:mod:`llm_magic.history`, which exports the public names.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._sizes import text_table

if TYPE_CHECKING:
    from .generation import Generation, PendingGeneration
    from .manager import ModelInfo

__all__ = ["HistoryRow", "HistoryTable", "RerunResult", "end_values", "redact", "rerun_options",
           "start_values", "versions"]


@dataclass(frozen=True)
class HistoryRow:
    """One recorded generation.

    Times are seconds since the epoch (``started`` and ``ended`` give them as
    local datetimes); ``status`` is ``"running"`` (still going, or its process
    died), ``"ok"``, ``"interrupted"`` or ``"error"`` (then ``error`` says why).
    ``params`` holds every generation option; ``commit`` is the resolved commit
    of a hub model; the ``*_version`` fields are the libraries that produced it.
    """

    id: int
    started_at: float
    status: str
    model: str
    prompt: str
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    ended_at: float | None = None
    error: str | None = None
    source: str | None = None
    backend: str | None = None
    endpoint: str | None = None
    revision: str | None = None
    commit: str | None = None
    dtype: str | None = None
    device: str | None = None
    seed: int | None = None
    system: str | None = None
    prompt_tokens: int | None = None
    new_tokens: int = 0
    time_to_first_token: float | None = None
    duration: float | None = None
    tokens_per_second: float | None = None
    stop_reason: str | None = None
    llm_magic_version: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None

    @classmethod
    def from_db(cls, values: dict[str, Any]) -> HistoryRow:
        values = dict(values)
        values["commit"] = values.pop("commit_hash", None)
        values["params"] = json.loads(values.get("params") or "{}")
        values["new_tokens"] = values.get("new_tokens") or 0
        return cls(**values)

    @property
    def started(self) -> datetime:
        return datetime.fromtimestamp(self.started_at)

    @property
    def ended(self) -> datetime | None:
        return None if self.ended_at is None else datetime.fromtimestamp(self.ended_at)

    def cells(self) -> tuple[str, ...]:
        """The row as the table shows it."""
        tps = "-" if self.tokens_per_second is None else f"{self.tokens_per_second:.1f}"
        status = self.status if self.error is None else f"error: {_short(self.error, 30)}"
        return (str(self.id), self.started.strftime("%Y-%m-%d %H:%M:%S"), self.model, status,
                str(self.new_tokens), tps, _short(self.prompt, 32), _short(self.output, 40))


def _short(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class HistoryTable(tuple):  # type: ignore[type-arg]
    """Recorded generations, newest first: a tuple of :class:`HistoryRow`, shown as a table."""

    columns = ("id", "started", "model", "status", "new tokens", "tokens/s", "prompt", "output")
    path: Path | None
    filtered: bool

    def __new__(cls, rows: Any = (), path: Path | None = None,
                filtered: bool = False) -> HistoryTable:
        table = super().__new__(cls, rows)
        table.path, table.filtered = path, filtered
        return table

    def _empty(self) -> str:
        where = f" in {self.path}" if self.path is not None else ""
        if self.filtered:
            return f"No generation recorded{where} matches."
        return f"No generations recorded{where} yet."

    def __str__(self) -> str:
        if not self:
            return self._empty()
        return text_table(self.columns, [r.cells() for r in self])

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        if not self:
            return f"<p>{escape(self._empty())}</p>"
        head = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{escape(v)}</td>"
                             for v in r.cells()) + "</tr>"
            for r in self
        )
        return (f"<table class='llm-magic-history'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")


def rerun_options(row: HistoryRow) -> dict[str, Any]:
    """The keyword arguments of :func:`llm_magic.generate` that repeat ``row``."""
    p = row.params
    options: dict[str, Any] = {
        "temperature": p.get("temperature", 0.0), "top_p": p.get("top_p"),
        "top_k": p.get("top_k"), "seed": p.get("seed", row.seed), "stop": p.get("stop") or None,
        "system": p.get("system", row.system), "chat": p.get("chat"),
    }
    if p.get("explicit_length", True) and p.get("max_new_tokens") is not None:
        options["max_new_tokens"] = p["max_new_tokens"]
    return options


@dataclass(frozen=True)
class RerunResult:
    """A recorded generation run again: the original row, the new generation, and the verdict.

    ``matches`` is True when the new text equals the recorded output (or, for
    a generation that was cut short, starts with it). ``notes`` say what
    differs between then and now (library versions, device, dtype, no seed).
    """

    original: HistoryRow
    generation: Generation
    notes: tuple[str, ...] = ()

    @property
    def matches(self) -> bool:
        if self.original.status == "ok":
            return self.generation.text == self.original.output
        return self.generation.text.startswith(self.original.output)

    @property
    def first_difference(self) -> int | None:
        """The index of the first character that differs, None when the output matches."""
        if self.matches:
            return None
        old, new = self.original.output, self.generation.text
        pairs = zip(old, new, strict=False)
        return next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(old), len(new)))

    @property
    def message(self) -> str:
        as_id = "" if self.generation.id is None else f" as generation {self.generation.id}"
        head = f"Generation {self.original.id} ran again on {self.generation.model!r}{as_id}: "
        if self.matches:
            lines = [head + "the output matches."]
        else:
            at = self.first_difference or 0
            lines = [head + f"the output differs from character {at} on.",
                     f"  then: {self.original.output[at:at + 60]!r}",
                     f"  now:  {self.generation.text[at:at + 60]!r}"]
        return "\n".join(lines + [f"Note: {n}" for n in self.notes])

    def __str__(self) -> str:
        return self.message

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.message)

    def _repr_html_(self) -> str:
        lines = self.message.splitlines()
        verdict = "✓" if self.matches else "✗"
        rest = "".join(f"<br><small>{escape(line)}</small>" for line in lines[1:])
        return (f"<div class='llm-magic-rerun'><b>{verdict}</b> {escape(lines[0])}{rest}"
                f"<pre style='white-space:pre-wrap'>{escape(self.generation.text)}</pre></div>")


# -- the values written ---------------------------------------------------------


_versions_cache: dict[str, str | None] = {}


def versions() -> dict[str, str | None]:
    """The installed versions of llm_magic, torch and transformers (None when missing)."""
    if not _versions_cache:
        from importlib import metadata

        for dist in ("llm_magic", "torch", "transformers"):
            try:
                _versions_cache[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                _versions_cache[dist] = None
    return dict(_versions_cache)


_SECRET_WORDS = ("key", "token", "secret", "password", "auth", "signature", "credential")


def redact(url: str | None) -> str | None:
    """A source or endpoint without credentials: no ``user:password@``, no key-like query values."""
    if not url or "://" not in url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        (f"{k}=REDACTED" if any(w in k.lower() for w in _SECRET_WORDS) else f"{k}={v}")
        if sep else k
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def start_values(pending: PendingGeneration) -> dict[str, Any]:
    """The columns of a generation's row at its start."""
    request = pending.request
    info: ModelInfo | None = pending.info
    params = {k: v for k, v in dataclasses.asdict(request).items() if k != "prompt"}
    found = versions()
    return {
        "started_at": pending.started, "status": "running", "model": pending.model,
        "source": redact(info.source) if info else None,
        "backend": info.backend if info else None,
        "endpoint": redact(getattr(info, "endpoint", None)),
        "revision": info.revision if info else None,
        "commit_hash": info.commit if info else None,
        "dtype": info.dtype if info else None, "device": info.device if info else None,
        "params": params, "seed": request.seed, "system": request.system,
        "prompt": request.prompt, "output": "", "new_tokens": 0,
        "llm_magic_version": found["llm_magic"], "torch_version": found["torch"],
        "transformers_version": found["transformers"],
    }


def end_values(gen: Generation, error: str | None) -> dict[str, Any]:
    """The columns that complete a generation's row at its end."""
    stats = gen.stats
    status = "error" if error else ("interrupted" if gen.interrupted else "ok")
    return {
        "ended_at": time.time(), "status": status, "error": error, "output": gen.text,
        "prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens,
        "time_to_first_token": stats.time_to_first_token, "duration": stats.duration,
        "tokens_per_second": stats.tokens_per_second, "stop_reason": stats.stop_reason,
    }
