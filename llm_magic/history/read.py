"""What a history row holds: the values written, and what reading gives back.

Rows, the table they render as, rerun results, and the values of a row as a
generation starts and ends (credentials taken out), with the token records in
compact form (:mod:`.records`). Private to :mod:`llm_magic.history`,
which exports the public names.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.base import GenerationRequest, TokenRecord
from ..common.sizes import text_table
from ..common.visible import visible
from .records import RECORD_TOLERANCE, decode_records, encode_records, record_difference

if TYPE_CHECKING:
    from ..generation import Generation, PendingGeneration
    from ..manager import ModelInfo

__all__ = ["RECORD_TOLERANCE", "HistoryRow", "HistoryTable", "RerunResult", "branch_params",
           "decode_records", "encode_records", "end_values", "notes", "parent_prompt_ids",
           "record_difference", "redact", "rerun_options", "start_values", "versions"]

@dataclass(frozen=True)
class HistoryRow:
    """One recorded generation.

    Times are seconds since the epoch (``started`` and ``ended`` give them as
    local datetimes); ``status`` is ``"running"`` (still going, or its process
    died), ``"ok"``, ``"interrupted"`` or ``"error"`` (then ``error`` says why).
    ``params`` holds every generation option; ``commit`` is the resolved commit
    of a hub model; the ``*_version`` fields are the libraries that produced it.
    A conversation's turn has ``conversation`` (the conversation's id) and
    ``turn`` (its index from 0), and ``params["messages"]`` holds every message
    the model was sent, the new user message last.
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
    #: K, and which distribution the records show ("raw" or "sampled"); None: no records.
    logprobs: int | None = None
    logprobs_mode: str | None = None
    #: The generation this one branched from (its id), and at which of its tokens.
    parent: int | None = None
    branch_at: int | None = None
    #: A conversation's turn: the conversation's id and the turn's index (from 0).
    conversation: str | None = None
    turn: int | None = None
    #: How the model's linear layers were quantized as it loaded ("int8", "int4"; None: not).
    quantization: str | None = None
    #: The records as stored (see :func:`encode_records`); :attr:`tokens` decodes them.
    token_blob: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_db(cls, values: dict[str, Any]) -> HistoryRow:
        values = dict(values)
        values["commit"] = values.pop("commit_hash", None)
        values["params"] = _params(values.get("params"))
        values["new_tokens"] = values.get("new_tokens") or 0
        values["token_blob"] = values.pop("tokens", None)
        return cls(**values)

    @property
    def messages(self) -> list[dict[str, str]] | None:
        """A turn's messages as the model read them (role/content dicts); None for a
        generation outside a conversation."""
        found = self.params.get("messages")
        if self.conversation is None or not isinstance(found, list):
            return None
        return [{"role": str(m[0]), "content": str(m[1])} for m in found
                if isinstance(m, list) and len(m) == 2]

    @functools.cached_property
    def tokens(self) -> tuple[TokenRecord, ...] | None:
        """The token records of the generation (``logprobs=K``), decoded on first use."""
        return None if self.token_blob is None else decode_records(bytes(self.token_blob))

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
        return (str(self.id), self.started.strftime("%Y-%m-%d %H:%M:%S"), visible(self.model),
                status, str(self.new_tokens), tps, _short(self.prompt, 32),
                _short(self.output, 40))


def _params(stored: str | None) -> dict[str, Any]:
    """The stored options; a damaged value reads as none, so one row cannot hide the rest."""
    try:
        params = json.loads(stored or "{}")
    except ValueError:
        return {"damaged": stored}
    return params if isinstance(params, dict) else {"damaged": stored}


def _short(text: str, width: int) -> str:
    """One line of at most ``width`` characters; control and bidi characters written out, so an
    escape sequence or a U+202E in a prompt cannot recolour a terminal or reverse the table."""
    flat = visible(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class HistoryTable(tuple):  # type: ignore[type-arg]
    """Recorded generations, newest first: a tuple of :class:`HistoryRow`, shown as a table.

    The turns of one conversation (``conversation`` is its id) read in the order
    they were said, with a column for the turn's index.
    """

    columns = ("id", "started", "model", "status", "new tokens", "tokens/s", "prompt", "output")
    path: Path | None
    filtered: bool
    conversation: str | None

    def __new__(cls, rows: Any = (), path: Path | None = None, filtered: bool = False,
                conversation: str | None = None) -> HistoryTable:
        table = super().__new__(cls, rows)
        table.path, table.filtered, table.conversation = path, filtered, conversation
        return table

    def _empty(self) -> str:
        where = f" in {self.path}" if self.path is not None else ""
        if self.conversation is not None:
            return f"No turn of conversation {self.conversation} is recorded{where}."
        if self.filtered:
            return f"No generation recorded{where} matches."
        return f"No generations recorded{where} yet."

    def _header(self) -> tuple[str, ...]:
        return self.columns if self.conversation is None else ("turn", *self.columns)

    def _cells(self, row: HistoryRow) -> tuple[str, ...]:
        if self.conversation is None:
            return row.cells()
        return ("-" if row.turn is None else str(row.turn), *row.cells())

    def __str__(self) -> str:
        if not self:
            return self._empty()
        return text_table(self._header(), [self._cells(r) for r in self])

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        if not self:
            return f"<p>{escape(self._empty())}</p>"
        head = "".join(f"<th>{escape(c)}</th>" for c in self._header())
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{escape(v)}</td>"
                             for v in self._cells(r)) + "</tr>"
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
        "logprobs": p.get("logprobs"), "logprobs_mode": p.get("logprobs_mode") or "raw",
    }
    if p.get("explicit_length", True) and p.get("max_new_tokens") is not None:
        options["max_new_tokens"] = p["max_new_tokens"]
    if p.get("target_lang") is not None:  # a translation's forced language code
        options["target_lang"] = p["target_lang"]
    return options


_OPTIONS = ("temperature", "top_p", "top_k", "seed", "stop", "system", "chat", "logprobs",
            "logprobs_mode")


def branch_params(row: HistoryRow) -> dict[str, Any]:
    """The options of ``row`` as :attr:`Generation.params` holds them, to branch from it.

    A branch's own row holds the request that continued it (the tokens left);
    its whole length counts the tokens before the branch point and the chosen one.
    """
    p = row.params
    params = {key: p.get(key) for key in _OPTIONS}
    params["logprobs_mode"] = params["logprobs_mode"] or "raw"
    if p.get("target_lang") is not None:  # a translation's forced language code
        params["target_lang"] = p["target_lang"]
    total = p.get("max_new_tokens")
    if total is not None and row.branch_at is not None:
        total += row.branch_at + 1
    params["max_new_tokens"] = total
    return params


def parent_prompt_ids(row: HistoryRow) -> tuple[int, ...] | None:
    """The prompt's token ids of a branch's row (the ids before its output), if recorded."""
    prefix, lead = row.params.get("prefix_ids"), row.params.get("lead_ids") or ()
    if prefix is None:
        return None
    return tuple(int(i) for i in prefix[: len(prefix) - len(lead)])


def notes(row: HistoryRow, info: ModelInfo) -> tuple[str, ...]:
    """What differs between the recorded generation and a rerun now, and may change it."""
    found = []
    now = versions()
    then = {"llm_magic": row.llm_magic_version, "torch": row.torch_version,
            "transformers": row.transformers_version}
    changed = [f"{lib} {then[lib] or '-'} then, {now[lib] or '-'} now"
               for lib in ("llm_magic", "torch", "transformers") if then[lib] != now[lib]]
    if changed:
        found.append("Library versions differ (" + "; ".join(changed) + "): the output may "
                     "differ for that reason alone.")
    if (row.device, row.dtype) != (info.device, info.dtype):
        found.append(f"It ran on {row.device} in {row.dtype}; this rerun on {info.device} in "
                     f"{info.dtype}: the output may differ for that reason.")
    if row.quantization != info.quantization:
        found.append(f"It ran with {row.quantization or 'unquantized'} weights; this rerun "
                     f"with {info.quantization or 'unquantized'} ones: the output may differ.")
    if float(row.params.get("temperature") or 0) > 0 and row.seed is None:
        found.append("It sampled without a seed: a rerun is not expected to match. Give a "
                     "seed (--seed) to make sampling reproducible.")
    if row.status != "ok":
        found.append(f"It ended as {row.status!r} after {row.new_tokens} tokens: its partial "
                     "output is compared with the start of the rerun.")
    return tuple(found)


@dataclass(frozen=True)
class RerunResult:
    """A recorded generation run again: the original row, the new generation, and the verdict.

    ``matches`` is True when the new text equals the recorded output (or, for
    a generation that was cut short, starts with it). ``records_match`` says
    the same of the token records, when the generation had them: the same ids
    and log-probabilities within :data:`RECORD_TOLERANCE`. ``notes`` say what
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
    def first_record_difference(self) -> int | None:
        """The first token whose record differs; None when they match or there are none."""
        old, new = self.original.tokens, self.generation.tokens
        if old is None:
            return None
        return record_difference(old, new or (), partial=self.original.status != "ok")

    @property
    def records_match(self) -> bool | None:
        """Whether the token records match too; None when the original had none."""
        if self.original.tokens is None:
            return None
        return self.first_record_difference is None

    def _records_line(self) -> list[str]:
        if self.records_match is None:
            return []
        if self.records_match:
            return ["The token records match too (ids equal, log-probabilities within "
                    f"{RECORD_TOLERANCE:g})."]
        at = self.first_record_difference or 0
        old, new = self.original.tokens or (), self.generation.tokens or ()

        def shown(records: Sequence[TokenRecord]) -> str:
            if at >= len(records):
                return "no record"
            r = records[at]
            return f"id {r.id} {r.text!r} log-probability {r.logprob:.5f}"

        return [f"The token records differ from token {at} on (then {shown(old)}; now "
                f"{shown(new)})."]

    @property
    def message(self) -> str:
        as_id = "" if self.generation.id is None else f" as generation {self.generation.id}"
        what = "" if self.original.branch_at is None else (
            f" (a branch of generation {self.original.parent} at token "
            f"{self.original.branch_at}, branched again)")
        if self.original.conversation is not None:
            what = (f" (turn {self.original.turn} of conversation "
                    f"{self.original.conversation}, replayed from its messages)")
        head = (f"Generation {self.original.id}{what} ran again on "
                f"{self.generation.model!r}{as_id}: ")
        if self.matches:
            lines = [head + "the output matches."]
        else:
            at = self.first_difference or 0
            lines = [head + f"the output differs from character {at} on.",
                     f"  then: {self.original.output[at:at + 60]!r}",
                     f"  now:  {self.generation.text[at:at + 60]!r}"]
        lines += self._records_line()
        return "\n".join(lines + [f"Note: {n}" for n in self.notes])

    def __str__(self) -> str:
        return self.message

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.message)

    def _repr_html_(self) -> str:
        lines = self.message.splitlines()
        verdict = "✓" if self.matches and self.records_match is not False else "✗"
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
        "quantization": info.quantization if info else None, **_turn_of(request),
        "params": params, "seed": request.seed, "system": request.system,
        "prompt": request.prompt, "output": "", "new_tokens": 0,
        "llm_magic_version": found["llm_magic"], "torch_version": found["torch"],
        "transformers_version": found["transformers"],
    }


def _turn_of(request: GenerationRequest) -> dict[str, Any]:
    """A conversation turn's id and index (as :attr:`Generation.turn` counts it)."""
    if request.messages is None:
        return {}
    return {"conversation": request.keep,
            "turn": sum(role == "user" for role, _ in request.messages) - 1}


def end_values(gen: Generation, error: str | None) -> dict[str, Any]:
    """The columns that complete a generation's row at its end."""
    stats = gen.stats
    status = "error" if error else ("interrupted" if gen.interrupted else "ok")
    records = gen.tokens
    k = int(gen.params.get("logprobs") or 0) if records is not None else None
    if records is not None and not k:
        k = max((len(r.top) for r in records), default=1)
    return {
        "ended_at": time.time(), "status": status, "error": error, "output": gen.text,
        "prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens,
        "time_to_first_token": stats.time_to_first_token, "duration": stats.duration,
        "tokens_per_second": stats.tokens_per_second, "stop_reason": stats.stop_reason,
        "logprobs": k, "logprobs_mode": gen.logprobs_mode,
        "tokens": None if records is None or k is None else encode_records(records, k),
        "parent": gen.parent, "branch_at": gen.branch_at,
    }
