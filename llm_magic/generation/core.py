"""One generation path for every caller: magics, widgets and Python code.

:func:`generate` validates the options, takes the model's lock, runs the
backend in a worker thread that feeds a queue, and drains that queue here with
a timeout, so a kernel interrupt stops the worker within a fraction of a
second. The partial text is kept (``lm.last()``) and the model stays usable.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any, Protocol

from ..backends.base import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_LOGPROBS,
    Backend,
    GenerationRequest,
    TokenRecord,
    check_logprobs,
)
from ..common import views
from ..common.attention_map import AttentionMap, attention_max_tokens
from ..common.attention_map import max_tokens as attention_cap
from ..errors import BackendError, InvalidOptionError, LLMMagicError, NotAvailableError
from ..manager import ModelInfo, ModelManager, get_manager

__all__ = [
    "MAX_LOGPROBS",
    "Generation",
    "GenerationStats",
    "PendingGeneration",
    "Sink",
    "generate",
    "generate_batch",
    "make_request",
]

log = logging.getLogger("llm_magic.generation")

_POLL = 0.05  # seconds between drains of the worker's output (and checks for an interrupt)
_JOIN = 2.0  # how long to wait for an interrupted worker to finish its current step


class Sink(Protocol):
    """Receives streamed text; ``write`` is called with each new piece."""

    def write(self, text: str) -> Any: ...


@dataclass(frozen=True)
class GenerationStats:
    """Counts and timings of one generation.

    ``time_to_first_token`` and ``duration`` are seconds from the start of the
    generation (model lock held); ``tokens_per_second`` is new tokens over duration.
    """

    prompt_tokens: int
    new_tokens: int
    time_to_first_token: float | None
    tokens_per_second: float | None
    duration: float
    stop_reason: str

    def __str__(self) -> str:
        first = self.time_to_first_token
        ttft = "-" if first is None else f"{first * 1000:.0f} ms"
        tps = "-" if self.tokens_per_second is None else f"{self.tokens_per_second:.1f}"
        return (f"{self.prompt_tokens} prompt + {self.new_tokens} new tokens, first token {ttft}, "
                f"{tps} tokens/s, {self.duration:.2f} s ({self.stop_reason})")


@dataclass(frozen=True)
class Generation:
    """The result of one generation. Refers to its model by name only.

    Examples
    --------
    >>> import llm_magic as lm
    >>> g = lm.generate("The import statement", model="demo", max_new_tokens=5)  # doctest: +SKIP
    >>> g.stats.new_tokens  # doctest: +SKIP
    5
    """

    text: str
    prompt: str
    model: str
    stats: GenerationStats
    params: dict[str, Any] = field(default_factory=dict)
    attention: Any = None
    id: int | None = None
    #: One :class:`~llm_magic.TokenRecord` per generated token (with ``logprobs=K``), else None.
    tokens: tuple[TokenRecord, ...] | None = None
    #: The generation this one branched from (its history id) and at which position of it.
    parent: int | None = None
    branch_at: int | None = None
    #: The prompt's token ids as the model saw them (what a branch continues from).
    prompt_ids: tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def interrupted(self) -> bool:
        return self.stats.stop_reason == "interrupted"

    @property
    def logprobs_mode(self) -> str | None:
        """Which distribution :attr:`tokens` describe: "raw" or "sampled" (None: no records)."""
        return None if self.tokens is None else str(self.params.get("logprobs_mode") or "raw")

    def branch(self, position: int, token: int | str, *, stream: Any = None,
               stop_event: threading.Event | None = None,
               manager: ModelManager | None = None) -> Generation:
        """Continue from token ``position`` of :attr:`tokens`, with ``token`` there instead.

        The branch keeps the prompt and the tokens before ``position``, puts
        ``token`` (an id, or a text that is exactly one token) at ``position``,
        and generates the rest with the same options and seed, up to where this
        generation would have ended. It works on token ids: nothing is
        re-tokenised (except for a served model, which is sent the text).

        Examples
        --------
        >>> g = lm.generate("The import statement", max_new_tokens=10, logprobs=5)  # doctest: +SKIP
        >>> alt = g.tokens[3].top[1][0]  # the second likeliest at step 3  # doctest: +SKIP
        >>> b = g.branch(3, alt)                                                   # doctest: +SKIP
        >>> b.parent == g.id, b.branch_at                                          # doctest: +SKIP
        (True, 3)
        """
        return branch(self, position, token, stream=stream, stop_event=stop_event,
                      manager=manager)

    def __str__(self) -> str:
        return self.text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The token probability view when there are records; else the text as HTML."""
        if self.tokens is not None:
            view = views.view_class("tokens")(self)
            return view._repr_mimebundle_(include=include, exclude=exclude)  # type: ignore[no-any-return]
        return {"text/plain": self.text, "text/html": self._repr_html_()}

    def _repr_html_(self) -> str:
        text = escape(self.text)
        about = f"{escape(self.model)}: {escape(str(self.stats))}"
        return (f"<pre class='llm-magic-output' style='white-space:pre-wrap'>{text}</pre>"
                f"<small style='opacity:.7'>{about}</small>")


@dataclass
class PendingGeneration:
    """A generation that has started, as the ``generation_start`` event carries it.

    ``info`` is the model's facts at the start (source, backend, revision,
    commit, dtype, device); ``progress()`` returns the text streamed so far
    and the count of new tokens, and may be called from any thread. ``id`` is
    set by the listener that records the generation (the history store) and
    becomes :attr:`Generation.id`; it stays None when nothing records it.
    ``batch`` is shared by the prompts of one :func:`generate_batch` call, which
    run together (None for a single generation).
    """

    prompt: str
    model: str
    request: GenerationRequest
    info: ModelInfo | None
    started: float
    progress: Callable[[], tuple[str, int]] = lambda: ("", 0)
    id: int | None = None
    batch: int | None = None


def _progress(trimmer: _StopTrimmer, job: Any) -> Callable[[], tuple[str, int]]:
    """What a generation has produced so far, without keeping its job (and model) alive."""
    ref = weakref.ref(job)

    def progress() -> tuple[str, int]:
        alive = ref()
        return trimmer.text[: trimmer.sent], (alive.new_tokens if alive is not None else 0)

    return progress


def _started(manager: ModelManager, name: str, request: GenerationRequest,
             progress: Callable[[], tuple[str, int]],
             batch: int | None = None) -> PendingGeneration:
    return PendingGeneration(request.prompt, name, request, manager.info(name), time.time(),
                             progress, batch=batch)


_batches = itertools.count(1)


def _check_number(name: str, value: Any, *, low: float, high: float | None = None,
                   integer: bool = False, low_open: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise InvalidOptionError(f"{name} must be {kind}, not {value!r}.")
    if not math.isfinite(value) or value < low or (low_open and value == low) or (
        high is not None and value > high
    ):
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        hi = f" and <= {high:g}" if high is not None else ""
        raise InvalidOptionError(f"{name} must be {lo}{hi}; got {value!r}.")


def make_request(
    prompt: str,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    system: str | None = None,
    chat: bool | None = None,
    logprobs: int | None = None,
    logprobs_mode: str = "raw",
) -> GenerationRequest:
    """Validate options into a :class:`GenerationRequest`; raise ``InvalidOptionError`` if unfit."""
    if not isinstance(prompt, str):
        raise InvalidOptionError(f"The prompt must be a string, not {type(prompt).__name__}.")
    if not prompt.strip():
        raise InvalidOptionError("The prompt is empty: write some text to continue.")
    explicit = max_new_tokens is not None
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    _check_number("max_new_tokens", max_new_tokens, low=1, integer=True)
    _check_number("temperature", temperature, low=0, high=100)
    if top_p is not None:
        _check_number("top_p", top_p, low=0, high=1, low_open=True)
    if top_k is not None:
        _check_number("top_k", top_k, low=1, integer=True)
    if seed is not None:
        _check_number("seed", seed, low=0, high=2**63 - 1, integer=True)
    stops: tuple[str, ...]
    if stop is None:
        stops = ()
    elif isinstance(stop, str):
        stops = (stop,)
    else:
        stops = tuple(stop)
    if any(not isinstance(s, str) or s == "" for s in stops):
        raise InvalidOptionError("Stop strings must be non-empty strings.")
    if system is not None and not isinstance(system, str):
        raise InvalidOptionError("system must be a string.")
    if chat is not None and not isinstance(chat, bool):
        raise InvalidOptionError("chat must be True, False or None (use the template if any).")
    check_logprobs(logprobs, logprobs_mode)
    return GenerationRequest(
        prompt=prompt, max_new_tokens=max_new_tokens, temperature=float(temperature),
        top_p=top_p, top_k=top_k, seed=seed, stop=stops, system=system or None, chat=chat,
        explicit_length=explicit, logprobs=logprobs or None, logprobs_mode=logprobs_mode,
    )


class _StopTrimmer:
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


def _sink(stream: bool | Sink | Callable[[str], Any] | None) -> Callable[[str], Any] | None:
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


class _Channel:
    """The worker's queue to the caller's thread.

    The worker appends without waking anyone; the caller drains it every
    ``_POLL`` seconds (or at the end). Waking the kernel thread for every token
    would cost measurable tokens/s through thread switches and the GIL.
    """

    def __init__(self) -> None:
        self.items: collections.deque[tuple[float, Any]] = collections.deque()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.ended: float | None = None

    def put(self, chunk: Any) -> None:
        self.items.append((time.perf_counter(), chunk))

    def run(self, job: Any) -> None:
        try:
            job.run(self.put)
        except BaseException as exc:  # handed back to the caller, which re-raises it
            self.error = exc
        finally:
            self.ended = time.perf_counter()
            self.done.set()

    def drain(self) -> list[tuple[float, Any]]:
        out = []
        while self.items:
            out.append(self.items.popleft())
        return out


def generate(
    prompt: str,
    *,
    model: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    system: str | None = None,
    chat: bool | None = None,
    attention: bool = False,
    logprobs: int | None = None,
    logprobs_mode: str = "raw",
    stream: bool | Sink | Callable[[str], Any] | None = None,
    stop_event: threading.Event | None = None,
    manager: ModelManager | None = None,
) -> Generation:
    """Generate a continuation of ``prompt`` with a loaded model.

    Parameters
    ----------
    prompt : str
        The text to continue (or the user message, with a chat template).
    model : str, optional
        A loaded model's name; the default model when omitted.
    max_new_tokens : int, optional
        Upper bound on generated tokens; by default 128, or what fits in the context.
    temperature : float
        0 means greedy decoding; above 0 samples.
    top_p, top_k : optional
        Nucleus and top-k filtering when sampling.
    seed : int, optional
        Makes sampling reproducible.
    stop : str or list of str, optional
        Stop at the first of these strings (not included in the text).
    system : str, optional
        System prompt (chat template) or a preamble (plain models).
    chat : bool, optional
        Use the model's chat template; by default when it has one.
    attention : bool
        Also capture the attention of the whole sequence (prompt and new tokens)
        in ``.attention``, an :class:`~llm_magic.analysis.attention.AttentionMap`. It is one
        extra, exact forward pass after the generation, which keeps its fast kernel.
    logprobs : int, optional
        Record each new token's log-probability, its rank and the ``logprobs``
        likeliest alternatives (1 to 20) in ``.tokens``, inside the one
        generation loop; the view shades the text by probability.
    logprobs_mode : {"raw", "sampled"}
        "raw": the model's own distribution (softmax of the raw logits);
        "sampled": the one drawn from, after temperature, top-k and top-p.
    stream : bool, callable or object with ``write``
        Where streamed text goes: True prints to stdout.
    stop_event : threading.Event, optional
        Setting it stops the generation, like a Stop button.

    Returns
    -------
    Generation

    Raises
    ------
    LLMMagicError
        Bad options, an unknown model, or a prompt that does not fit.
    KeyboardInterrupt
        On interrupt, after the worker stopped; the partial result is ``lm.last()``.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.load("demo")  # doctest: +SKIP
    >>> print(lm.generate("The import statement", max_new_tokens=20))  # doctest: +SKIP
    """
    manager = manager or get_manager()
    request = make_request(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, seed=seed, stop=stop, system=system,
                           chat=chat, logprobs=logprobs, logprobs_mode=logprobs_mode)
    emit = _sink(stream)
    name = manager.resolve(model)
    return _run(manager, name, request, emit, stop_event or threading.Event(),
                attention=attention)


@dataclass(frozen=True)
class _Branch:
    """What a branch keeps of its parent: records before the branch point, and where."""

    records: tuple[TokenRecord, ...]
    parent: int | None
    at: int
    params: dict[str, Any]


def _run(manager: ModelManager, name: str, request: GenerationRequest,
         emit: Callable[[str], Any] | None, stop_event: threading.Event, *,
         attention: bool = False, branched: _Branch | None = None) -> Generation:
    """Run one request on ``name``: the worker, the drain, the result and its events."""
    with manager.checkout(name) as backend:
        t0 = time.perf_counter()
        job = backend.prepare(request, stop_event)
        if attention:
            _check_attention(backend, name, job.prompt_tokens, request)
        log.debug("prompt processed: %d tokens in %.3fs", job.prompt_tokens,
                  time.perf_counter() - t0)
        trimmer = _StopTrimmer(request.stop, emit)
        trimmer.feed(job.lead_text())
        pending = _started(manager, name, request, _progress(trimmer, job))
        manager.events.emit("generation_start", name, request=request, generation=pending)
        channel = _Channel()
        worker = threading.Thread(target=channel.run, args=(job,), name=f"llm_magic-{name}",
                                  daemon=True)
        drained = _drain(worker, channel, job, trimmer, stop_event, t0,
                         incremental=emit is not None)
        error = channel.error or drained.sink_error
        duration = (channel.ended or time.perf_counter()) - t0
        text = trimmer.finish(job.final_text())
        reason = "stop" if trimmer.hit else job.stop_reason
        if drained.interrupted:
            reason = "interrupted"
        elif drained.sink_error is not None:
            reason = "error"
        n = job.new_tokens
        stats = GenerationStats(
            prompt_tokens=job.prompt_tokens, new_tokens=n, time_to_first_token=drained.first,
            tokens_per_second=(n / duration) if duration > 0 and n else None,
            duration=duration, stop_reason=reason,
        )
        amap: Any = None
        failed: BaseException | None = None
        if attention and not drained.interrupted and error is None:
            try:
                amap = _capture(backend, job, name)
            except (LLMMagicError, KeyboardInterrupt) as exc:
                failed = exc  # raised once the generation itself is kept
        gen = _result(request, job, name, text, stats, amap, pending.id, branched)
        manager.last_generation = gen
        if amap is not None:
            manager.last_attention = amap
        manager.events.emit("generation_end", name, generation=gen,
                            error=None if error is None else str(error))
        del job
    log.debug("generation on %r: %s", name, stats)
    if drained.interrupted:
        log.info("generation on %r interrupted after %d tokens; partial text kept", name, n)
        raise KeyboardInterrupt
    if drained.sink_error is not None:
        raise drained.sink_error
    if error is not None:
        if isinstance(error, LLMMagicError):
            raise error
        raise BackendError(f"Generation on {name!r} failed: {error!r}") from error
    if failed is not None:  # the text is kept in lm.last(); the capture alone failed
        raise failed
    return gen


@dataclass
class _Drained:
    first: float | None = None
    interrupted: bool = False
    sink_error: Exception | None = None


def _drain(worker: threading.Thread, channel: _Channel, job: Any, trimmer: _StopTrimmer,
           stop_event: threading.Event, t0: float, *, incremental: bool) -> _Drained:
    """Start the worker and read its output until it ends, an interrupt, or a failing sink.

    Without a sink the text is decoded once at the end; the worker's own
    stopping criteria enforce stop strings.
    """
    out = _Drained()
    worker.start()
    try:
        while True:
            finished = channel.done.wait(_POLL)
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
        _stop_worker(stop_event, worker, job, channel)
    except Exception as exc:  # the stream's receiver raised: stop, keep what was made
        out.sink_error = exc
        trimmer.emit = None
        _stop_worker(stop_event, worker, job, channel)
    return out


def _result(request: GenerationRequest, job: Any, name: str, text: str,
            stats: GenerationStats, amap: Any, id: int | None,
            branched: _Branch | None) -> Generation:
    records = job.token_records() if request.logprobs else None
    prompt_ids = job.prompt_ids()
    params = _params(request)
    parent = at = None
    if branched is not None:
        records = branched.records + (records or ())
        params, parent, at = branched.params, branched.parent, branched.at
    return Generation(text=text, prompt=request.prompt, model=name, stats=stats,
                      params=params, attention=amap, id=id,
                      tokens=None if records is None else tuple(records), parent=parent,
                      branch_at=at, prompt_ids=None if prompt_ids is None else tuple(prompt_ids))


def branch(gen: Generation, position: int, token: int | str, *,
           stream: bool | Sink | Callable[[str], Any] | None = None,
           stop_event: threading.Event | None = None,
           manager: ModelManager | None = None) -> Generation:
    """A generation from ``gen`` with ``token`` at ``position``; see :meth:`Generation.branch`."""
    manager = manager or get_manager()
    records = gen.tokens
    if records is None:
        raise InvalidOptionError(
            "This generation has no token records to branch from: generate with logprobs=K "
            "(`%%llm --logprobs K`), then branch."
        )
    if isinstance(position, bool) or not isinstance(position, int) or not (
        0 <= position < len(records)
    ):
        raise InvalidOptionError(
            f"position indexes the generation's tokens: an integer from 0 to "
            f"{len(records) - 1}, not {position!r}."
        )
    name = manager.resolve(gen.model)
    params = dict(gen.params)
    k = int(params.get("logprobs") or len(records[position].top) or 1)
    mode = str(params.get("logprobs_mode") or "raw")
    with manager.checkout(name) as backend:
        if records[position].id is None:  # a served model's records carry texts, not ids
            record = _served_choice(records[position], token, position)
        else:
            chosen = _branch_token(backend, records[position], token)
            record = _chosen_record(backend, gen, records, position, chosen, k)
    lead = records[:position] + (record,)
    options = {key: params.get(key) for key in ("temperature", "top_p", "top_k", "seed",
                                                 "stop", "system", "chat")}
    total = int(params.get("max_new_tokens") or len(records))
    request = make_request(gen.prompt, max_new_tokens=max(1, total - position - 1),
                           logprobs=k, logprobs_mode=mode,
                           **{key: value for key, value in options.items() if value is not None})
    lead_ids = tuple(int(r.id) for r in lead if r.id is not None)
    if gen.prompt_ids is not None and len(lead_ids) == len(lead):
        request = dataclasses.replace(request, prefix_ids=gen.prompt_ids + lead_ids,
                                      lead_ids=lead_ids)
    else:  # a served model: the server is sent the text and tokenizes it again
        request = dataclasses.replace(request, lead="".join(r.text for r in lead))
    branched = _Branch(records=lead, parent=gen.id, at=position, params=params)
    if total - position - 1 <= 0:
        request = dataclasses.replace(request, max_new_tokens=0)
    return _run(manager, name, request, _sink(stream), stop_event or threading.Event(),
                branched=branched)


def _served_choice(record: TokenRecord, token: int | str, position: int) -> TokenRecord:
    """The alternative a served record offers under that text (a server sends no ids)."""
    if not isinstance(token, str):
        raise InvalidOptionError(
            "A served model's tokens come as texts without ids: pass the alternative's text, "
            f"not {token!r}."
        )
    if token == record.text:
        return record
    for rank, (_, text, logprob) in enumerate(record.top, start=1):
        if text == token:
            return TokenRecord(None, text, logprob, rank, record.top, record.entropy)
    raise NotAvailableError(
        f"{token!r} is not one of the {len(record.top)} alternatives the server sent at "
        f"position {position}; choose one of them."
    )


def _branch_token(backend: Any, record: TokenRecord, token: int | str) -> int:
    """The id the user means: an id, or a text that is one token (an alternative's first)."""
    if isinstance(token, bool):
        raise InvalidOptionError(f"token must be a token id or its text, not {token!r}.")
    if isinstance(token, int):
        return token
    if not isinstance(token, str) or not token:
        raise InvalidOptionError(f"token must be a token id or its text, not {token!r}.")
    same = [i for i, text, _ in record.top if text == token and i is not None]
    if len(same) > 1:
        raise InvalidOptionError(
            f"Several alternatives here read {token!r} (ids {same}); pass the id you mean."
        )
    if same:
        return int(same[0])
    return int(backend.token_id(token))


def _chosen_record(backend: Any, gen: Generation, records: tuple[TokenRecord, ...],
                   position: int, chosen: int, k: int) -> TokenRecord:
    """The record of the token put at ``position``: the same distribution as the original's."""
    at = records[position]
    if chosen == at.id:
        return at
    for rank, (i, text, logprob) in enumerate(at.top, start=1):
        if i == chosen:
            return TokenRecord(chosen, text, logprob, rank, at.top, at.entropy)
    if gen.prompt_ids is None:
        raise InvalidOptionError(
            f"Token {chosen} is not one of the {len(at.top)} alternatives the server sent at "
            f"position {position}; choose one of them."
        )
    ids = list(gen.prompt_ids) + [int(r.id) for r in records[:position] if r.id is not None]
    scored = backend.score(ids + [chosen], logprobs=k)
    last = scored.records[-1]
    return TokenRecord(chosen, last.text, last.logprob, last.rank, at.top, at.entropy)


def _check_attention(backend: Any, name: str, prompt_tokens: int,
                     request: GenerationRequest) -> None:
    """Refuse a capture that cannot be done before generating, not after."""
    if type(backend).capture_attention is Backend.capture_attention:
        endpoint = backend.describe().get("endpoint")
        if endpoint:
            raise NotAvailableError(
                f"Model {name!r} is served at {endpoint}; attention capture needs the model's "
                "weights in this kernel. Load the model here (a local directory or hub id) to "
                "see its attention."
            )
        raise NotAvailableError(
            f"Model {name!r} runs on the {backend.kind!r} backend, which cannot capture "
            "attention; generate without attention=True (--attention)."
        )
    longest = prompt_tokens + (request.max_new_tokens if request.explicit_length else 0)
    cap = attention_max_tokens()
    if longest > cap:
        raise InvalidOptionError(
            f"The prompt ({prompt_tokens} tokens) and up to {longest - prompt_tokens} new "
            f"tokens pass the attention cap of {cap} tokens; ask for fewer tokens, or raise "
            f"the cap with lm.attention_max_tokens({longest}) if the memory is there (the "
            "weights take layers x heads x T^2 x 2 bytes)."
        )


def _capture(backend: Any, job: Any, name: str) -> AttentionMap:
    ids = job.sequence_ids()
    if ids is None:
        raise NotAvailableError(f"Model {name!r} does not report the tokens it generated, so "
                                "their attention cannot be captured.")
    captured = backend.capture_attention(ids, max_tokens=attention_cap(None))
    return AttentionMap.from_capture(captured, name, job.prompt_tokens)


def _stop_worker(stop_event: threading.Event, worker: threading.Thread, job: Any,
                 channel: _Channel) -> None:
    """Stop a generation early and take what the worker produced up to then."""
    stop_event.set()
    worker.join(_JOIN)
    if worker.is_alive():
        log.warning("generation worker still finishing its current step")
    job.count([chunk for _, chunk in channel.drain()])


def _params(request: GenerationRequest) -> dict[str, Any]:
    return {
        "max_new_tokens": request.max_new_tokens, "temperature": request.temperature,
        "top_p": request.top_p, "top_k": request.top_k, "seed": request.seed,
        "stop": list(request.stop), "system": request.system, "chat": request.chat,
        "logprobs": request.logprobs, "logprobs_mode": request.logprobs_mode,
    }


def generate_batch(
    prompts: Sequence[str],
    *,
    model: str | None = None,
    stop_event: threading.Event | None = None,
    manager: ModelManager | None = None,
    **options: Any,
) -> list[Generation]:
    """Generate several prompts as one padded batch with the same options.

    Examples
    --------
    >>> import llm_magic as lm
    >>> gens = lm.generate_batch(["A list", "A dict"], max_new_tokens=5)  # doctest: +SKIP
    """
    manager = manager or get_manager()
    if isinstance(prompts, str) or not prompts:
        raise InvalidOptionError("generate_batch takes a non-empty list of prompts.")
    if options.pop("attention", False):
        raise InvalidOptionError(
            "Attention is captured for one prompt at a time: generate without --batch "
            "(lm.generate(..., attention=True)), or use lm.attention(text) on each prompt."
        )
    requests = [make_request(p, **options) for p in prompts]
    name = manager.resolve(model)
    stop_event = stop_event or threading.Event()
    with manager.checkout(name) as backend:
        batch = next(_batches)
        pendings = [_started(manager, name, r, lambda: ("", 0), batch) for r in requests]
        for pending in pendings:
            manager.events.emit("generation_start", name, request=pending.request,
                                generation=pending)
        t0 = time.perf_counter()
        try:
            results = backend.generate_batch(requests, stop_event)
        except BaseException as exc:
            _batch_failed(manager, name, pendings, exc, time.perf_counter() - t0)
            raise
        duration = time.perf_counter() - t0
    gens = []
    for request, result, pending in zip(requests, results, pendings, strict=True):
        trimmer = _StopTrimmer(request.stop, None)
        text = trimmer.finish(result.text)
        stats = GenerationStats(
            prompt_tokens=result.prompt_tokens, new_tokens=result.new_tokens,
            time_to_first_token=None,
            tokens_per_second=result.new_tokens / duration if duration > 0 else None,
            duration=duration, stop_reason="stop" if trimmer.hit else result.stop_reason,
        )
        gen = Generation(text=text, prompt=request.prompt, model=name, stats=stats,
                         params=_params(request), id=pending.id,
                         tokens=result.records if request.logprobs else None,
                         prompt_ids=result.prompt_ids)
        manager.events.emit("generation_end", name, generation=gen, error=None)
        gens.append(gen)
    if gens:
        manager.last_generation = gens[-1]
    return gens


def _batch_failed(manager: ModelManager, name: str, pendings: list[PendingGeneration],
                  exc: BaseException, duration: float) -> None:
    """End the started generations of a batch that stopped or failed: nothing came out."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    for pending in pendings:
        stats = GenerationStats(prompt_tokens=0, new_tokens=0, time_to_first_token=None,
                                tokens_per_second=None, duration=duration,
                                stop_reason="interrupted" if interrupted else "error")
        gen = Generation(text="", prompt=pending.prompt, model=name, stats=stats,
                         params=_params(pending.request), id=pending.id)
        manager.events.emit("generation_end", name, generation=gen,
                            error=None if interrupted else str(exc) or repr(exc))


