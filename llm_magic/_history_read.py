"""What reading the history gives back: rows, the table they render as, rerun results.

Private to :mod:`llm_magic.history`, which exports these names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._sizes import text_table

if TYPE_CHECKING:
    from .generation import Generation

__all__ = ["HistoryRow", "HistoryTable", "RerunResult", "rerun_options"]


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
