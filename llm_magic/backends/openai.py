"""Models served over an OpenAI-compatible API: vLLM, TGI, Ollama, ``transformers serve``.

The model runs on its server; this backend holds an ``openai`` client and the
remote model's id, nothing else. A load asks the server for its model list
(``/v1/models``), so a wrong URL or id fails at once. Generation streams over
SSE (completions, or chat completions when the call asks for chat) into the
same generation path as a model in the kernel. When the stop event is set the
stream is closed, even in the middle of a read, so an interrupt or a Stop
button returns control within a fraction of a second.

A generation ends at the model's context as it does in the kernel: where the
model list gives the context (vLLM's ``max_model_len``) and the server counts
a prompt's tokens (vLLM's ``/tokenize``), the request asks for no more tokens
than fit, and ends with stop reason ``length``. Where the server says neither
(``transformers serve``) and breaks the stream at the context, the partial
text is kept and the error says that the context is probably full.

The API key comes only from the environment variable the user names
(``api_key_env``); it is read at load, handed to the client, and never stored
in the model's facts, shown, logged or put in an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

from ..errors import (
    InvalidOptionError,
    LLMMagicWarning,
    MissingDependencyError,
    PromptTooLongError,
    ServerError,
)
from . import _openai_logprobs
from ._kept import transcript
from .base import Backend, GenerationJob, GenerationRequest, LoadSpec

__all__ = ["OpenAIBackend", "OpenAIJob", "server_timeout"]

log = logging.getLogger("llm_magic.openai")

#: Seconds to wait for a connection, and (``LLM_MAGIC_SERVER_TIMEOUT``) for each answer.
CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 60.0
#: How often the stream's watcher looks at the stop event (seconds).
_WATCH = 0.05
#: OpenAI's API takes at most four stop strings; the generation path trims the rest.
_MAX_STOPS = 4


def server_timeout() -> float:
    """Seconds to wait for the server's next answer: ``LLM_MAGIC_SERVER_TIMEOUT``, else 60.

    Examples
    --------
    >>> server_timeout() > 0
    True
    """
    raw = os.environ.get("LLM_MAGIC_SERVER_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidOptionError(
            f"LLM_MAGIC_SERVER_TIMEOUT={raw!r} is not a positive number of seconds."
        )
    return value


def _httpx() -> Any:
    import httpx  # the openai client's own HTTP library

    return httpx


def _openai() -> Any:
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - a dependency
        raise MissingDependencyError(
            "Served models need the `openai` client: `pip install openai`."
        ) from exc
    return openai


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _detail(exc: Any) -> str:
    """What the server said in an error answer, in one line."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        for found in (body.get("detail"), body.get("message"),
                      inner.get("message") if isinstance(inner, dict) else inner):
            if found:
                return _one_line(str(found))
    response = getattr(exc, "response", None)
    text = ""
    with contextlib.suppress(Exception):
        text = response.text if response is not None else ""
    return _one_line(text or str(exc))


def _server_error(exc: BaseException, url: str, key_env: str | None) -> ServerError:
    """One clear line for whatever the client raised talking to ``url``."""
    openai = _openai()
    if isinstance(exc, openai.APITimeoutError):
        return ServerError(
            f"The model server at {url} did not answer within {server_timeout():g} s. Check that "
            "it is not overloaded, or wait longer (LLM_MAGIC_SERVER_TIMEOUT=seconds)."
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        reason = "connection refused" if "refused" in str(cause).lower() else _one_line(
            str(cause or exc), 120)
        return ServerError(
            f"Cannot reach the model server at {url} ({reason}). Start the server, or check "
            "the host, the port and the /v1 at the end of the URL."
        )
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code in (401, 403):
            where = (f"the key in ${key_env}" if key_env
                     else "no key (pass api_key_env='VAR', `--api-key-env VAR`)")
            return ServerError(
                f"The model server at {url} refused the request ({code}): it was sent {where}. "
                f"Server says: {_detail(exc)}"
            )
        return ServerError(f"The model server at {url} answered {code}: {_detail(exc)}")
    return ServerError(f"Talking to the model server at {url} failed: "
                       f"{type(exc).__name__}: {_one_line(str(exc), 160)}")


def _context_of(entry: Any) -> int | None:
    """The context length a model-list entry gives (vLLM: ``max_model_len``), else None."""
    extra = getattr(entry, "model_extra", None) or {}
    value = extra.get("max_model_len", getattr(entry, "max_model_len", None))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidOptionError(
            f"{url!r} is not a server URL: write it like http://HOST:PORT/v1."
        )
    if parsed.username or parsed.password:
        raise InvalidOptionError(
            "Put no credentials in the URL; name the environment variable that holds the key "
            "(api_key_env='VAR', `--api-key-env VAR`)."
        )
    return url.rstrip("/")


def _read_key(api_key_env: str | None) -> str:
    if api_key_env is None:
        return "none"  # servers without keys ignore it; the client needs a value
    if not isinstance(api_key_env, str) or not api_key_env.strip().isidentifier():
        raise InvalidOptionError(
            f"api_key_env must name an environment variable (like OPENAI_API_KEY), not "
            f"{api_key_env!r}."
        )
    key = os.environ.get(api_key_env.strip(), "")
    if not key.strip():
        raise InvalidOptionError(
            f"The environment variable {api_key_env.strip()} is empty or not set. Set it to "
            "the server's API key before loading."
        )
    return key.strip()


class OpenAIBackend(Backend):
    """A model served over an OpenAI-compatible API (nothing of it lives in this kernel)."""

    kind = "openai"
    resident = False

    def __init__(self, spec: LoadSpec, client: Any, model: str, served: Sequence[str],
                 context_length: int | None = None) -> None:
        self.spec = spec
        self.url = spec.source.rstrip("/")
        self.model = model
        self.served = tuple(served)
        self.key_env = spec.api_key_env
        #: Prompt and new tokens together, as the server's model list says (None: not said).
        self.context_length = context_length
        self._client = client
        self._tokenize = context_length is not None  # False once the server cannot count

    # -- what the manager asks before a load -------------------------------

    @classmethod
    def resolve_device(cls, device: str) -> str:
        if (device or "auto").strip().lower() not in ("auto", "server"):
            raise InvalidOptionError(
                f"A served model runs on its server; device={device!r} does not apply. Choose "
                "the devices when you start the server (vLLM: --tensor-parallel-size N)."
            )
        return "server"

    @classmethod
    def resolve_dtype(cls, dtype: str, device: str) -> str:
        if (dtype or "auto").strip().lower() not in ("auto", "server"):
            raise InvalidOptionError(
                f"A served model runs on its server; dtype={dtype!r} does not apply. Choose "
                "it when you start the server (vLLM: --dtype)."
            )
        return "server"

    @classmethod
    def load(cls, spec: LoadSpec, placement: Any = None) -> OpenAIBackend:
        """Connect to the server and check that it serves ``spec.model``."""
        openai = _openai()
        url = _check_url(spec.source.strip())
        key = _read_key(spec.api_key_env)
        timeout = openai.Timeout(server_timeout(), connect=CONNECT_TIMEOUT)
        client = openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0)
        del key
        try:
            entries = list(client.models.list().data)
        except openai.OpenAIError as exc:
            client.close()
            raise _server_error(exc, url, spec.api_key_env) from None
        except BaseException:
            client.close()
            raise
        served = [m.id for m in entries]
        model = spec.model
        listing = ", ".join(repr(s) for s in served[:10]) or "none"
        if model is None:
            if len(served) != 1:
                client.close()
                raise InvalidOptionError(
                    f"The server at {url} serves {len(served)} models ({listing}); say which "
                    "with model='ID' (`--model ID`)."
                )
            model = served[0]
        elif model not in served:
            client.close()
            raise ServerError(
                f"Model {model!r} is not served at {url}; it serves {listing}. Pass one of "
                "those as model='ID' (`--model ID`)."
            )
        context = next((_context_of(m) for m in entries if m.id == model), None)
        log.debug("%s serves %s (context of %s: %s)", url, served, model, context)
        return cls(spec, client, model, served, context)

    # -- facts -------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "device": "server",
            "dtype": "server",
            "parameters": 0,
            "memory": 0,
            "context_length": self.context_length,
            "chat": False,
            "architecture": self.model,
            "endpoint": self.url,
        }

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- generation ------------------------------------------------------

    def prepare(self, request: GenerationRequest, stop_event: threading.Event) -> OpenAIJob:
        if self._client is None:
            raise ServerError(f"The connection to {self.url} is closed; load the model again.")
        options: dict[str, Any] = {
            "model": self.model,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature > 0 and request.top_p is not None:
            options["top_p"] = request.top_p
        if request.temperature > 0 and request.top_k is not None:
            options["extra_body"] = {"top_k": request.top_k}  # vLLM, TGI and Ollama read it
        if request.seed is not None:
            options["seed"] = request.seed
        if request.stop:
            options["stop"] = list(request.stop[:_MAX_STOPS])
        chat = bool(request.chat) or (request.messages is not None and request.chat is None)
        if request.messages is not None and not chat:  # a conversation, as a plain transcript
            options["prompt"] = transcript(request.messages)
        elif chat:  # a conversation's messages: the server caches their common prefix
            messages = request.chat_messages()
            if request.lead:  # a branch: the server continues the assistant's answer
                messages.append({"role": "assistant", "content": request.lead})
                options["extra_body"] = {**options.get("extra_body", {}),
                                         "continue_final_message": True,
                                         "add_generation_prompt": False}
            options["messages"] = messages
        else:
            text = request.prompt
            options["prompt"] = (f"{request.system}\n\n{text}" if request.system else text) + (
                request.lead)
        if request.logprobs:
            options.update(_openai_logprobs.request_options(request.logprobs, chat))
        prompt_tokens = self._count_prompt(options)
        options["max_tokens"] = self._fit(prompt_tokens, request.max_new_tokens,
                                          request.explicit_length)
        job = OpenAIJob(self, options, chat, stop_event, lead=request.lead,
                        logprobs=request.logprobs)
        job.conversation = request.messages is not None
        job.prompt_tokens = prompt_tokens or 0
        return job

    def _count_prompt(self, options: dict[str, Any]) -> int | None:
        """The prompt's tokens, counted by the server (vLLM's ``/tokenize``), when it knows
        its context; None when it cannot count."""
        if not self._tokenize or self._client is None:
            return None
        body: dict[str, Any] = {"model": self.model}
        if "messages" in options:
            body.update(messages=options["messages"], add_generation_prompt=True)
        else:
            body["prompt"] = options["prompt"]
        root = self.url.removesuffix("/v1")
        try:
            answer = self._client.with_options(base_url=root).post(
                "/tokenize", body=body, cast_to=_httpx().Response)
            count = answer.json()["count"]
        except Exception as exc:  # no such endpoint: generate uncapped, as before
            log.debug("%s cannot count tokens (%s); requests are not capped", root, exc)
            self._tokenize = False
            return None
        return int(count)

    def _fit(self, prompt_tokens: int | None, max_new_tokens: int, explicit: bool) -> int:
        """At most the new tokens that fit in the context, as a model in the kernel does."""
        ctx = self.context_length
        if ctx is None or prompt_tokens is None:
            return max_new_tokens
        if prompt_tokens >= ctx:
            raise PromptTooLongError(
                f"The prompt is {prompt_tokens} tokens, but model {self.spec.name!r} reads at most "
                f"{ctx}. Shorten the prompt or use a model with a longer context."
            )
        room = ctx - prompt_tokens
        if max_new_tokens > room and explicit:
            warnings.warn(
                f"Only {room} new tokens fit after a {prompt_tokens}-token prompt in "
                f"the {ctx}-token context of {self.spec.name!r}; generating {room}.",
                LLMMagicWarning,
                stacklevel=4,
            )
        return min(max_new_tokens, room)


class OpenAIJob(GenerationJob):
    """One streamed completion; ``run`` reads the SSE stream in the worker thread."""

    def __init__(self, backend: OpenAIBackend, options: dict[str, Any], chat: bool,
                 stop_event: threading.Event, *, lead: str = "",
                 logprobs: int | None = None) -> None:
        self.backend = backend
        self.options = options
        self.chat = chat
        self.stop_event = stop_event
        self.lead = lead
        self.logprobs = logprobs
        self.records: list[Any] = []
        self.pieces: list[str] = []
        self._counted = 0
        self._usage_new: int | None = None
        #: A conversation's turn: the server's own prefix cache is reported from its usage.
        self.conversation = False

    def _served_reuse(self, usage: Any) -> None:
        """The prompt tokens the server says it took from its prefix cache, if it says."""
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) if details is not None else None
        if cached is None:
            self.reused_tokens = None
            self.cache_note = "the server reports no cached tokens"
        else:
            self.reused_tokens = int(cached)
            self.cache_note = "the server's own prefix cache"

    @property  # type: ignore[override]
    def new_tokens(self) -> int:
        """Tokens the server counted (its usage), else one per streamed piece."""
        return self._usage_new if self._usage_new is not None else self._counted

    @new_tokens.setter
    def new_tokens(self, value: int) -> None:
        self._counted = value

    def _open(self) -> Any:
        client = self.backend._client
        if client is None:
            raise ServerError(f"The connection to {self.backend.url} is closed.")
        if self.chat:
            return client.chat.completions.create(**self.options)
        return client.completions.create(**self.options)

    def run(self, put: Callable[[Any], None]) -> None:
        openai = _openai()
        url, key_env = self.backend.url, self.backend.key_env
        try:
            stream = self._open()
        except openai.OpenAIError as exc:
            if self.logprobs and isinstance(exc, openai.APIStatusError) and (
                    "logprob" in str(exc).lower()):
                raise self._refused(exc) from None
            raise _server_error(exc, url, key_env) from None
        finished = threading.Event()
        watcher = threading.Thread(target=self._close_on_stop, args=(stream, finished),
                                   name="llm_magic-served-stop", daemon=True)
        watcher.start()
        got, ended = 0, False
        try:
            for chunk in stream:
                if self.stop_event.is_set():
                    self.stop_reason = "interrupted"
                    break
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    self.prompt_tokens = int(usage.prompt_tokens or 0)
                    self._usage_new = int(usage.completion_tokens or 0)
                    if self.conversation:
                        self._served_reuse(usage)
                for choice in chunk.choices or ():
                    if self.chat:
                        delta = getattr(choice, "delta", None)
                        piece = (getattr(delta, "content", None) if delta else None) or ""
                    else:
                        piece = getattr(choice, "text", None) or ""
                    if self.logprobs:
                        self.records += _openai_logprobs.records_of(
                            getattr(choice, "logprobs", None), chat=self.chat)
                    if piece:
                        got += 1
                        put(piece)
                    if choice.finish_reason:
                        ended = True
                        self.stop_reason = "length" if choice.finish_reason == "length" else "eos"
        except Exception as exc:
            if self.stop_event.is_set():
                self.stop_reason = "interrupted"
                return
            if isinstance(exc, openai.APIStatusError | openai.APITimeoutError):
                raise _server_error(exc, url, key_env) from None
            if got and isinstance(exc, openai.APIError) and not isinstance(
                    exc, openai.APIConnectionError):
                raise self._context_full(exc, got) from None
            raise ServerError(
                f"The model server at {url} broke the stream after {got} pieces of text "
                f"({type(exc).__name__}: {_one_line(str(exc), 120)}); the partial text is kept."
            ) from None
        finally:
            finished.set()
            watcher.join()
            stream.close()
        if self.stop_event.is_set():
            self.stop_reason = "interrupted"
        elif not ended:
            raise ServerError(
                f"The model server at {url} ended the stream after {got} pieces of text without "
                "saying that the generation finished; the partial text is kept."
            )
        elif self.logprobs and got and not self.records:
            raise ServerError(
                f"The model server at {url} sent no logprobs: it does not support them (vLLM "
                "does). The text is kept; generate without logprobs=K (--logprobs) there."
            )

    def _refused(self, exc: Exception) -> ServerError:
        return ServerError(
            f"The model server at {self.backend.url} refused logprobs "
            f"({_one_line(_detail(exc), 120)}); generate without logprobs=K (--logprobs) there."
        )

    def token_records(self) -> tuple[Any, ...] | None:
        return tuple(self.records) if self.logprobs else None

    def lead_text(self) -> str:
        return self.lead

    def _context_full(self, exc: Exception, got: int) -> ServerError:
        """The error for a server that ended a generation with an error event mid-stream.

        ``transformers serve`` does that when the context is full; it gives no
        context length, so the prompt's tokens are asked for afterwards.
        """
        prompt = self.prompt_tokens or self._prompt_tokens_of_server()
        self.prompt_tokens = prompt or 0
        counts = (f"a {prompt}-token prompt and {got} new tokens" if prompt
                  else f"{got} new tokens after the prompt")
        return ServerError(
            f"The model server at {self.backend.url} stopped the generation with an error "
            f"({_one_line(str(exc), 80)}): the model's context is probably full ({counts}). "
            "The partial text is kept; ask for fewer new tokens (-n) or a shorter prompt."
        )

    def _prompt_tokens_of_server(self) -> int | None:
        """The prompt's length as the server counts it: its usage for one new token."""
        options = {k: v for k, v in self.options.items() if k not in ("stream", "stream_options")}
        options["max_tokens"] = 1
        client = self.backend._client
        try:
            create = client.chat.completions.create if self.chat else client.completions.create
            return int(create(**options).usage.prompt_tokens) or None
        except Exception as exc:
            log.debug("cannot count the prompt's tokens: %r", exc)
            return None

    def _close_on_stop(self, stream: Any, finished: threading.Event) -> None:
        """Close the connection under a blocked read once the stop event is set."""
        while not finished.wait(_WATCH):
            if self.stop_event.is_set():
                sock = _socket_of(stream)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return

    def decode(self, chunks: Sequence[Any]) -> str:
        self._counted += len(chunks)
        text = "".join(chunks)
        self.pieces.append(text)
        return text

    def count(self, chunks: Sequence[Any]) -> None:
        self.decode(chunks)

    def final_text(self) -> str:
        return self.lead + "".join(self.pieces)


def _socket_of(stream: Any) -> socket.socket | None:
    """The socket under a streaming response (httpcore's ``network_stream`` extension)."""
    with contextlib.suppress(Exception):
        network = stream.response.extensions["network_stream"]
        sock = network.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            return sock
    return None
