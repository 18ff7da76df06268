"""One generation path for every caller: magics, widgets and Python code.

:func:`generate` validates the options, takes the model's lock, runs the
backend in a worker thread that feeds a queue, and drains that queue here with
a timeout, so a kernel interrupt stops the worker within a fraction of a
second. The partial text is kept (``lm.last()``) and the model stays usable.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from ..backends.base import MAX_LOGPROBS, GenerationRequest, TokenRecord
from ..common import views
from ..errors import BackendError, InvalidOptionError, LLMMagicError
from ..manager import ModelInfo, ModelManager, get_manager
from .capture import capture, check_attention
from .choice import branch_token, chosen_record, served_choice
from .request import make_request, params_of
from .stream import Channel, Drained, Sink, StopTrimmer, drain, progress_of, sink

__all__ = ["MAX_LOGPROBS", "Generation", "GenerationStats", "PendingGeneration", "Sink", "branch",
           "generate", "make_request", "started"]

log = logging.getLogger("llm_magic.generation")

#: A generation's stop reason, as every view and footer says it.
STOP_REASONS = {"length": "reached the token limit", "eos": "the model ended the text",
                "stop": "reached a stop sequence", "interrupted": "interrupted",
                "error": "an error"}


#: How a conversation's turn branches (it forks the conversation): set by
#: ``generation.conversation`` when it is imported, which every turn's maker is.
TURN_BRANCH: list[Callable[..., Generation]] = []


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
    #: A conversation's turn: prompt tokens taken from its kept cache, and why the
    #: cache could not be used when it could not (None and "" outside conversations).
    reused_tokens: int | None = None
    cache_note: str = ""

    def __str__(self) -> str:
        first = self.time_to_first_token
        ttft = "-" if first is None else f"{first * 1000:.0f} ms"
        tps = "-" if self.tokens_per_second is None else f"{self.tokens_per_second:.1f}"
        line = (f"{self.prompt_tokens} prompt + {self.new_tokens} new tokens, first token {ttft}, "
                f"{tps} tokens/s, {self.duration:.2f} s ({self.stopped})")
        return f"{line}; {self.reuse}" if self.reuse else line

    @property
    def reuse(self) -> str:
        """A turn's cache in words: "reused 1,984 of 2,011 prompt tokens (98.7%)" ("" if none)."""
        if self.reused_tokens is None:
            return ""
        share = self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        words = (f"reused {self.reused_tokens:,} of {self.prompt_tokens:,} prompt tokens "
                 f"({share:.1%})")
        return f"{words}, {self.cache_note}" if self.cache_note else words

    @property
    def stopped(self) -> str:
        """Why the generation ended, in words ("reached the token limit", "interrupted")."""
        return STOP_REASONS.get(self.stop_reason, self.stop_reason)


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
    #: A conversation's turn: the conversation's id and the turn's index (from 0).
    conversation: str | None = None
    turn: int | None = None

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

        A branch of a conversation's turn forks the conversation: the branch is the
        last turn of a new conversation (``lm.conversations()`` lists it), which
        goes on from there.
        """
        if self.conversation is not None and TURN_BRANCH:
            return TURN_BRANCH[0](self, position, token, stream=stream, stop_event=stop_event,
                                  manager=manager)
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


def started(manager: ModelManager, name: str, request: GenerationRequest,
             progress: Callable[[], tuple[str, int]],
             batch: int | None = None) -> PendingGeneration:
    return PendingGeneration(request.prompt, name, request, manager.info(name), time.time(),
                             progress, batch=batch)


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
    target_lang: str | None = None,
    stream: bool | Sink | Callable[[str], Any] | None = None,
    stop_event: threading.Event | None = None,
    manager: ModelManager | None = None,
) -> Generation:
    """Generate a continuation of ``prompt`` with a loaded model.

    On an encoder–decoder model (T5, BART, Marian) ``prompt`` is the source and
    the result is its translation (or summary): the same options apply, except
    ``system`` and ``chat``.

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
    target_lang : str, optional
        A translation model's output language code (mBART's "fr_XX", NLLB's
        "fra_Latn"): its first output token is forced to it.
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
                           chat=chat, logprobs=logprobs, logprobs_mode=logprobs_mode,
                           target_lang=target_lang)
    emit = sink(stream)
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
    """Run one request on ``name``: prepare, run, record, then raise what went wrong."""
    with manager.checkout(name) as backend:
        run = _prepare(manager, name, backend, request, emit, stop_event, attention=attention)
        _execute(run, name, stop_event)
        gen, failed = _record(manager, name, backend, run, attention=attention,
                              branched=branched)
        run.job = None  # nothing keeps the job (and its tensors) past the model's lock
    return _outcome(name, gen, run, failed)


@dataclass
class _Running:
    """One generation between its steps: what was prepared, and what the run left."""

    request: GenerationRequest
    job: Any
    trimmer: StopTrimmer
    pending: PendingGeneration
    t0: float
    incremental: bool
    drained: Drained = field(default_factory=Drained)
    error: BaseException | None = None
    duration: float = 0.0


def _prepare(manager: ModelManager, name: str, backend: Any, request: GenerationRequest,
             emit: Callable[[str], Any] | None, stop_event: threading.Event, *,
             attention: bool) -> _Running:
    """Tokenize (the backend's job), refuse an impossible capture, announce the start."""
    t0 = time.perf_counter()
    job = backend.prepare(request, stop_event)
    if attention:
        check_attention(backend, name, job.prompt_tokens, request)
    log.debug("prompt processed: %d tokens in %.3fs", job.prompt_tokens,
              time.perf_counter() - t0)
    trimmer = StopTrimmer(request.stop, emit)
    trimmer.feed(job.lead_text())
    pending = started(manager, name, request, progress_of(trimmer, job))
    manager.events.emit("generation_start", name, request=request, generation=pending)
    return _Running(request, job, trimmer, pending, t0, incremental=emit is not None)


def _execute(run: _Running, name: str, stop_event: threading.Event) -> None:
    """The worker generates; this thread drains it until the end, an interrupt or a failure."""
    channel = Channel()
    worker = threading.Thread(target=channel.run, args=(run.job,), name=f"llm_magic-{name}",
                              daemon=True)
    run.drained = drain(worker, channel, run.job, run.trimmer, stop_event, run.t0,
                        incremental=run.incremental)
    run.error = channel.error or run.drained.sink_error
    run.duration = (channel.ended or time.perf_counter()) - run.t0


def _stats(run: _Running) -> GenerationStats:
    reason = "stop" if run.trimmer.hit else run.job.stop_reason
    if run.drained.interrupted:
        reason = "interrupted"
    elif run.drained.sink_error is not None:
        reason = "error"
    n, duration = run.job.new_tokens, run.duration
    return GenerationStats(
        prompt_tokens=run.job.prompt_tokens, new_tokens=n,
        time_to_first_token=run.drained.first,
        tokens_per_second=(n / duration) if duration > 0 and n else None,
        duration=duration, stop_reason=reason,
        reused_tokens=run.job.reused_tokens, cache_note=run.job.cache_note,
    )


def _record(manager: ModelManager, name: str, backend: Any, run: _Running, *,
            attention: bool, branched: _Branch | None) -> tuple[Generation, BaseException | None]:
    """The Generation (and its attention), kept as the latest, announced to listeners.

    A failed capture is returned, to be raised once the text itself is kept.
    """
    text = run.trimmer.finish(run.job.final_text())
    stats = _stats(run)
    amap: Any = None
    failed: BaseException | None = None
    if attention and not run.drained.interrupted and run.error is None:
        try:
            amap = capture(backend, run.job, name)
        except (LLMMagicError, KeyboardInterrupt) as exc:
            failed = exc
    gen = _result(run.request, run.job, name, text, stats, amap, run.pending.id, branched)
    manager.last_generation = gen
    if amap is not None:
        manager.last_attention = amap
    manager.events.emit("generation_end", name, generation=gen,
                        error=None if run.error is None else str(run.error))
    return gen, failed


def _outcome(name: str, gen: Generation, run: _Running, failed: BaseException | None
             ) -> Generation:
    """The generation, or the interrupt or error that ended it (the text is kept either way)."""
    log.debug("generation on %r: %s", name, gen.stats)
    if run.drained.interrupted:
        log.info("generation on %r interrupted after %d tokens; partial text kept", name,
                 gen.stats.new_tokens)
        raise KeyboardInterrupt
    if run.drained.sink_error is not None:
        raise run.drained.sink_error
    if run.error is not None:
        if isinstance(run.error, LLMMagicError):
            raise run.error
        raise BackendError(f"Generation on {name!r} failed: {run.error!r}") from run.error
    if failed is not None:  # the text is kept in lm.last(); the capture alone failed
        raise failed
    return gen


def _result(request: GenerationRequest, job: Any, name: str, text: str,
            stats: GenerationStats, amap: Any, id: int | None,
            branched: _Branch | None) -> Generation:
    records = job.token_records() if request.logprobs else None
    prompt_ids = job.prompt_ids()
    params = params_of(request)
    parent = at = None
    if branched is not None:
        records = branched.records + (records or ())
        params, parent, at = branched.params, branched.parent, branched.at
    turn = None if request.messages is None else sum(
        role == "user" for role, _ in request.messages) - 1
    return Generation(text=text, prompt=request.prompt, model=name, stats=stats,
                      params=params, attention=amap, id=id,
                      tokens=None if records is None else tuple(records), parent=parent,
                      branch_at=at, prompt_ids=None if prompt_ids is None else tuple(prompt_ids),
                      conversation=request.keep if request.messages is not None else None,
                      turn=turn)


def branch(gen: Generation, position: int, token: int | str, *,
           stream: bool | Sink | Callable[[str], Any] | None = None,
           stop_event: threading.Event | None = None,
           manager: ModelManager | None = None,
           turn: tuple[str, tuple[tuple[str, str], ...]] | None = None) -> Generation:
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
            record = served_choice(records[position], token, position)
        else:
            chosen = branch_token(backend, records[position], token)
            record = chosen_record(backend, gen.prompt_ids, records, position, chosen, k)
    lead = records[:position] + (record,)
    options = {key: params.get(key) for key in ("temperature", "top_p", "top_k", "seed",
                                                 "stop", "system", "chat", "target_lang")}
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
    if turn is not None:  # a conversation's turn: its fork keeps the cache, and its messages
        request = dataclasses.replace(request, keep=turn[0], messages=turn[1])
    return _run(manager, name, request, sink(stream), stop_event or threading.Event(),
                branched=branched)
