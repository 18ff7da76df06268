"""One generation path for every caller: magics, widgets and Python code.

:func:`generate` validates the options, takes the model's lock, runs the
backend in a worker thread that feeds a queue, and drains that queue here with
a timeout, so a kernel interrupt stops the worker within a fraction of a
second. The partial text is kept (``lm.last()``) and the model stays usable.
"""

from __future__ import annotations

import collections
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

from .backends.base import GenerationRequest
from .errors import BackendError, InvalidOptionError, LLMMagicError, NotAvailableError
from .manager import ModelInfo, ModelManager, get_manager, set_generator

__all__ = [
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
DEFAULT_MAX_NEW_TOKENS = 128


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

    @property
    def interrupted(self) -> bool:
        return self.stats.stop_reason == "interrupted"

    def __str__(self) -> str:
        return self.text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)

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
    return GenerationRequest(
        prompt=prompt, max_new_tokens=max_new_tokens, temperature=float(temperature),
        top_p=top_p, top_k=top_k, seed=seed, stop=stops, system=system or None, chat=chat,
        explicit_length=explicit,
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
        in ``.attention``, an :class:`~llm_magic.attention.AttentionMap`. It is one
        extra, exact forward pass after the generation, which keeps its fast kernel.
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
                           chat=chat)
    emit = _sink(stream)
    name = manager.resolve(model)
    stop_event = stop_event or threading.Event()
    with manager.checkout(name) as backend:
        t0 = time.perf_counter()
        job = backend.prepare(request, stop_event)
        if attention:
            _check_attention(backend, name, job.prompt_tokens, request)
        log.debug("prompt processed: %d tokens in %.3fs", job.prompt_tokens,
                  time.perf_counter() - t0)
        trimmer = _StopTrimmer(request.stop, emit)
        pending = _started(manager, name, request, _progress(trimmer, job))
        manager.events.emit("generation_start", name, request=request, generation=pending)
        channel = _Channel()
        worker = threading.Thread(target=channel.run, args=(job,), name=f"llm_magic-{name}",
                                  daemon=True)
        first: float | None = None
        interrupted = False
        sink_error: Exception | None = None
        # Without a sink the text is decoded once at the end; the worker's own
        # stopping criteria enforce stop strings.
        incremental = emit is not None
        worker.start()
        try:
            while True:
                finished = channel.done.wait(_POLL)
                chunks = channel.drain()
                if chunks and first is None:
                    first = chunks[0][0] - t0
                    log.debug("first token after %.3fs", first)
                if incremental:
                    trimmer.feed(job.decode([chunk for _, chunk in chunks]))
                else:
                    job.count([chunk for _, chunk in chunks])
                if finished and not channel.items:
                    break
        except KeyboardInterrupt:
            interrupted = True
            _stop_worker(stop_event, worker, job, channel)
        except Exception as exc:  # the stream's receiver raised: stop, keep what was made
            sink_error = exc
            trimmer.emit = None
            _stop_worker(stop_event, worker, job, channel)
        error = channel.error or sink_error
        duration = (channel.ended or time.perf_counter()) - t0
        text = trimmer.finish(job.final_text())
        reason = "stop" if trimmer.hit else job.stop_reason
        if interrupted:
            reason = "interrupted"
        elif sink_error is not None:
            reason = "error"
        n = job.new_tokens
        stats = GenerationStats(
            prompt_tokens=job.prompt_tokens, new_tokens=n, time_to_first_token=first,
            tokens_per_second=(n / duration) if duration > 0 and n else None,
            duration=duration, stop_reason=reason,
        )
        amap: Any = None
        failed: BaseException | None = None
        if attention and not interrupted and error is None:
            try:
                amap = _capture(backend, job, name)
            except (LLMMagicError, KeyboardInterrupt) as exc:
                failed = exc  # raised once the generation itself is kept
        gen = Generation(text=text, prompt=prompt, model=name, stats=stats,
                         params=_params(request), attention=amap, id=pending.id)
        manager.last_generation = gen
        if amap is not None:
            manager.last_attention = amap
        manager.events.emit("generation_end", name, generation=gen,
                            error=None if error is None else str(error))
        del job
    log.debug("generation on %r: %s", name, stats)
    if interrupted:
        log.info("generation on %r interrupted after %d tokens; partial text kept", name, n)
        raise KeyboardInterrupt
    if sink_error is not None:
        raise sink_error
    if error is not None:
        if isinstance(error, LLMMagicError):
            raise error
        raise BackendError(f"Generation on {name!r} failed: {error!r}") from error
    if failed is not None:  # the text is kept in lm.last(); the capture alone failed
        raise failed
    return gen


def _check_attention(backend: Any, name: str, prompt_tokens: int,
                     request: GenerationRequest) -> None:
    """Refuse a capture that cannot be done before generating, not after."""
    from .attention import attention_max_tokens
    from .backends.base import Backend

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


def _capture(backend: Any, job: Any, name: str) -> Any:
    from .attention import capture

    ids = job.sequence_ids()
    if ids is None:
        raise NotAvailableError(f"Model {name!r} does not report the tokens it generated, so "
                                "their attention cannot be captured.")
    return capture(backend, ids, name, prompt_tokens=job.prompt_tokens)


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
                         params=_params(request), id=pending.id)
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


set_generator(generate)  # ModelHandle.generate
