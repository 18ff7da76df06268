"""Conversations across cells: the model's cache is kept, so each turn computes only what is new.

A :class:`Conversation` holds its messages; every turn renders the whole
message list (the chat template, or the plain transcript of a model without
one) and the backend reuses what still matches of the cache it kept after the
previous turn (``backends/_kept``). The kept caches count in the model's
memory, leave first under memory pressure, and go with the model.

Examples
--------
>>> import llm_magic as lm
>>> conv = lm.chat(model="demo", max_new_tokens=20)       # doctest: +SKIP
>>> conv.say("What does import do?")                       # doctest: +SKIP
>>> conv.say("And from ... import?").stats.reuse           # doctest: +SKIP
'reused 31 of 44 prompt tokens (70.5%)'
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..backends.base import GenerationRequest
from ..common.sizes import text_table
from ..common.text import check_text, shown
from ..errors import (
    ConversationBusyError,
    InvalidOptionError,
    LLMMagicWarning,
    ModelNotLoadedError,
    PromptTooLongError,
)
from ..manager import ModelManager, get_manager
from ..manager.info import ago, size
from . import room as _room
from .core import TURN_BRANCH, Generation, _run
from .core import branch as _branch
from .request import make_request
from .stream import Sink, sink

__all__ = ["Conversation", "ConversationTable", "Turn", "chat", "conversations", "find", "forget"]

#: Ways to make room when the conversation outgrows the context: None refuses.
TRIMS = (None, "oldest")
#: Options a conversation keeps for its turns (each turn may override them).
OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "chat",
           "logprobs", "logprobs_mode", "attention", "target_lang")
#: The stop a plain transcript needs: the model would otherwise write the user's next line.
TRANSCRIPT_STOP = "\nUser:"


@dataclass(frozen=True)
class Turn:
    """One turn's counts: prompt tokens, those taken from the kept cache, new tokens."""

    index: int
    prompt_tokens: int
    reused: int
    new_tokens: int
    note: str = ""
    interrupted: bool = False
    id: int | None = None

    @property
    def computed(self) -> int:
        """Prompt tokens this turn computed (the rest came from the cache)."""
        return self.prompt_tokens - self.reused


class Conversation:
    """Messages with one model, whose cache is kept between turns.

    Create one with :func:`llm_magic.chat`. Each :meth:`say` sends the whole
    conversation, but the model computes only the tokens its kept cache does
    not already hold. Two turns on one conversation never interleave: the
    second is refused while the first runs.
    """

    def __init__(self, model: str, *, name: str, system: str | None = None,
                 options: dict[str, Any] | None = None, trim: str | None = None,
                 manager: ModelManager) -> None:
        self.model = model
        self.name = name
        self.id = uuid.uuid4().hex[:12]
        self.system = system
        self.options = dict(options or {})
        self.trim = trim
        self._manager = manager
        self._messages: list[dict[str, Any]] = []
        self.turns: list[Turn] = []
        self.last: Generation | None = None
        self.used = time.time()
        self._loaded_at = manager.info(model).loaded_at
        self._lock = threading.Lock()

    # -- what it holds -------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Role/content dicts, the system message first if any (a copy)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self._messages]

    @property
    def cache_bytes(self) -> int:
        """Bytes of the model's cache kept for this conversation (0 once dropped)."""
        if not self._manager.is_loaded(self.model):
            return 0
        return self._manager.backend(self.model).kept_bytes(self.id)

    @property
    def stats(self) -> list[Turn]:
        """Per turn: prompt tokens, reused from the cache, computed, new."""
        return list(self.turns)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    # -- turns ---------------------------------------------------------------

    def say(self, text: str, *, stream: bool | Sink | Callable[[str], Any] | None = None,
            stop_event: threading.Event | None = None, **options: Any) -> Generation:
        """Send ``text`` as the next user message; return the reply, a :class:`Generation`.

        Options override the conversation's for this turn (``max_new_tokens``,
        ``temperature``, ``seed``, ``logprobs``, ``attention``, ...). On an
        interrupt the partial reply stays as this turn, marked interrupted.
        """
        check_text(text, "The message")
        _check_options(options)
        if not self._lock.acquire(blocking=False):
            raise ConversationBusyError(
                f"Conversation {self.name!r} is answering another turn; wait for it to finish "
                "(or stop it), then send this one.")
        try:
            return self._say(text, sink(stream), stop_event or threading.Event(), options)
        finally:
            self.used = time.time()
            self._lock.release()

    def _say(self, text: str, emit: Callable[[str], Any] | None, stop_event: threading.Event,
             overrides: dict[str, Any]) -> Generation:
        name = self._model_name()
        merged = {**self.options, **overrides}
        attention = bool(merged.pop("attention", False))
        request = self._request(text, name, merged)
        note = self._reloaded(name)
        with self._manager.checkout(name) as backend:
            request, tokens = self._fit(request, backend)
            _room.make_room(self._manager, name, backend, self.id,
                            tokens + request.max_new_tokens)
        before = self._manager.last_generation
        try:
            gen = _run(self._manager, name, request, emit, stop_event, attention=attention)
        except KeyboardInterrupt:
            partial = self._manager.last_generation
            if partial is not before and getattr(partial, "conversation", None) == self.id:
                self._append(request, partial, note)
            raise
        return self._append(request, gen, note)

    def _request(self, text: str, name: str, options: dict[str, Any]) -> GenerationRequest:
        request = make_request(text, system=self.system, **options)
        info = self._manager.info(name)
        if info.endpoint:  # a served model is sent the messages, unless told chat=False
            plain = request.chat is False
        else:
            plain = not (info.chat if request.chat is None else request.chat)
        stops = request.stop + ((TRANSCRIPT_STOP,) if plain and
                                TRANSCRIPT_STOP not in request.stop else ())
        messages = [(m["role"], m["content"]) for m in self.messages] + [("user", text)]
        return dataclasses.replace(request, messages=tuple(messages), keep=self.id, stop=stops)

    def _fit(self, request: GenerationRequest, backend: Any) -> tuple[GenerationRequest, int]:
        """Refuse a conversation that outgrew the context, or drop its oldest turns (trim)."""
        limit = getattr(backend, "context_length", None)
        ids = backend.render_ids(request)
        if ids is None:
            return request, 0
        if limit is None:
            return dataclasses.replace(request, prefix_ids=tuple(ids)), len(ids)
        # An encoder–decoder's reply is the decoder's: the source (the transcript) takes
        # the whole encoder.
        room = 0 if getattr(backend, "seq2seq", False) else min(
            request.max_new_tokens, max(1, limit // 4)) if self.trim else 1
        assert request.messages is not None
        messages = list(request.messages)
        dropped = 0
        while len(ids) + room > limit:
            if not self.trim:
                raise PromptTooLongError(
                    f"Conversation {self.name!r} is {len(ids):,} tokens with this message, but "
                    f"{self.model!r} reads at most {limit:,}. Undo turns (conv.undo()), start a "
                    f"new conversation, or continue with trim='oldest' (`--trim`) to drop the "
                    "oldest turns.")
            first = 1 if messages[0][0] == "system" else 0
            if sum(role == "user" for role, _ in messages) <= 1:
                raise PromptTooLongError(
                    f"This message alone is {len(ids):,} tokens with the system text; "
                    f"{self.model!r} reads at most {limit:,}. Shorten it.")
            end = next(i for i in range(first + 1, len(messages)) if messages[i][0] == "user")
            del messages[first:end]
            dropped += 1
            request = dataclasses.replace(request, messages=tuple(messages))
            ids = backend.render_ids(request)
        if dropped:
            self._messages = self._messages[2 * dropped:]
            warnings.warn(f"Conversation {self.name!r} dropped its {dropped} oldest turn(s) to "
                          f"fit the {limit:,}-token context; its cache is rebuilt from there.",
                          LLMMagicWarning, stacklevel=5)
        # The backend reads these ids as they are: a turn is rendered and tokenized once.
        return dataclasses.replace(request, prefix_ids=tuple(ids)), len(ids)

    def _append(self, request: GenerationRequest, gen: Generation, note: str) -> Generation:
        if note:
            stats = dataclasses.replace(gen.stats, cache_note=", ".join(
                n for n in (gen.stats.cache_note, note) if n))
            gen = dataclasses.replace(gen, stats=stats)
            if self._manager.last_generation is not None and \
                    self._manager.last_generation.conversation == self.id:
                self._manager.last_generation = gen
        reply: dict[str, Any] = {"role": "assistant", "content": gen.text}
        if gen.interrupted:
            reply["interrupted"] = True
        self._messages += [{"role": "user", "content": request.prompt}, reply]
        self.turns.append(Turn(len(self.turns), gen.stats.prompt_tokens,
                               gen.stats.reused_tokens or 0, gen.stats.new_tokens,
                               gen.stats.cache_note, gen.interrupted, gen.id))
        self.last = gen
        return gen

    def _model_name(self) -> str:
        if not self._manager.is_loaded(self.model):
            raise ModelNotLoadedError(
                f"Conversation {self.name!r} talks to {self.model!r}, which is no longer loaded. "
                f"Load it again (lm.load({self.model!r})): the conversation goes on, its cache "
                "recomputed on the next turn.")
        return self.model

    def _reloaded(self, name: str) -> str:
        loaded_at = self._manager.info(name).loaded_at
        if loaded_at == self._loaded_at:
            return ""
        self._loaded_at = loaded_at
        return f"recomputed: {name!r} was loaded again"

    # -- editing ---------------------------------------------------------------

    def undo(self) -> None:
        """Drop the last exchange (the last message and its reply)."""
        with self._held("undo"):
            if not self._messages:
                raise InvalidOptionError(f"Conversation {self.name!r} has no turn to undo.")
            del self._messages[-2:]
            self.turns.pop()

    def fork(self, name: str | None = None) -> Conversation:
        """A copy that goes its own way: same messages, a copy of the kept cache."""
        registry = _registry(self._manager)
        new_name = registry.new_name(name)
        twin = Conversation(self.model, name=new_name, system=self.system, options=self.options,
                            trim=self.trim, manager=self._manager)
        with self._held("fork"):
            twin._messages = [dict(m) for m in self._messages]
            twin.turns = list(self.turns)
            if self._manager.is_loaded(self.model):
                with self._manager.checkout(self.model) as backend:
                    backend.fork_kept(self.id, twin.id)
        registry.add(twin)
        return twin

    def branch(self, gen: Generation, position: int, token: int | str, *,
               stream: bool | Sink | Callable[[str], Any] | None = None,
               stop_event: threading.Event | None = None) -> Generation:
        """Branch a turn of this conversation: a fork ends with the branched reply.

        Same as ``gen.branch(position, token)`` for a turn ``gen``; the result's
        ``.conversation`` is the fork's id (``find(name)`` or ``lm.conversations()``).
        """
        return _branch_turn(gen, position, token, stream=stream, stop_event=stop_event,
                            manager=self._manager)

    def forget(self) -> int:
        """Free the kept cache and drop this conversation from the list; the bytes freed."""
        freed = self.cache_bytes
        if self._manager.is_loaded(self.model):
            self._manager.backend(self.model).forget(self.id)
        _registry(self._manager).remove(self)
        return freed

    def _held(self, what: str) -> Any:
        conv = self

        class _Hold:
            def __enter__(self) -> None:
                if not conv._lock.acquire(blocking=False):
                    raise ConversationBusyError(
                        f"Conversation {conv.name!r} is answering a turn; {what} when it ends.")

            def __exit__(self, *exc: Any) -> None:
                conv._lock.release()

        return _Hold()

    # -- display ------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"<Conversation {self.name!r} with {self.model!r}: {len(self.turns)} turns, "
                f"cache {size(self.cache_bytes)}>")

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<div style='margin:.3em 0'><b>{escape(m['role'])}</b>"
            f"{' (interrupted)' if m.get('interrupted') else ''}: "
            f"<span style='white-space:pre-wrap'>{escape(m['content'])}</span></div>"
            for m in self.messages)
        about = escape(repr(self))
        return f"<div class='llm-magic-conversation'>{rows}<small>{about}</small></div>"


# -- the kernel's conversations ------------------------------------------------------


class _Registry:
    """A manager's conversations by name, and the current one (``%%llm -c``)."""

    def __init__(self) -> None:
        self.named: dict[str, Conversation] = {}
        self.current: Conversation | None = None
        self._numbers = itertools.count(1)
        self.lock = threading.Lock()

    def new_name(self, name: str | None) -> str:
        if name is not None:
            _check_name(name)
            if name in self.named:
                raise InvalidOptionError(f"A conversation named {name!r} exists; pick another "
                                         "name, or forget it first.")
            return name
        while True:
            candidate = f"chat-{next(self._numbers)}"
            if candidate not in self.named:
                return candidate

    def add(self, conv: Conversation) -> None:
        with self.lock:
            self.named[conv.name] = conv
            self.current = conv

    def remove(self, conv: Conversation) -> None:
        with self.lock:
            if self.named.get(conv.name) is conv:
                del self.named[conv.name]
            if self.current is conv:
                self.current = None


_REGISTRIES: dict[int, tuple[ModelManager, _Registry]] = {}


def _registry(manager: ModelManager) -> _Registry:
    found = _REGISTRIES.get(id(manager))
    if found is None or found[0] is not manager:
        found = _REGISTRIES[id(manager)] = (manager, _Registry())
    return found[1]


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or len(name) > 64 or not all(
            c.isalnum() or c in "-_." for c in name):
        raise InvalidOptionError(
            f"A conversation's name is 1 to 64 letters, digits, '-', '_' or '.', not "
            f"{shown(name)}.")


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidOptionError(f"Unknown option {unknown[0]!r} for a conversation; it takes "
                                 f"{', '.join(OPTIONS)}.")
    probe = {k: v for k, v in options.items() if k != "attention"}
    make_request("x", **probe)


def chat(model: str | None = None, system: str | None = None, *, name: str | None = None,
         trim: str | None = None, messages: Iterable[Any] | None = None,
         manager: ModelManager | None = None, **options: Any) -> Conversation:
    """Start a conversation with a loaded model; each turn reuses the model's kept cache.

    ``lm.chat`` (``history.conversations.chat``) documents the parameters; it calls this,
    and also rebuilds a conversation from history (``resume=``).

    Examples
    --------
    >>> conv = chat(model="demo", max_new_tokens=20)   # doctest: +SKIP
    >>> print(conv.say("Hello"))                        # doctest: +SKIP
    """
    manager = manager or get_manager()
    if trim not in TRIMS:
        raise InvalidOptionError(f"trim is None (refuse) or 'oldest', not {shown(trim)}.")
    if system is not None:
        check_text(system, "The system message", allow_empty=True)
    _check_options(options)
    earlier = _check_messages(messages)
    if earlier and earlier[0]["role"] == "system":
        system = system or earlier.pop(0)["content"]
    resolved = manager.resolve(model)
    registry = _registry(manager)
    conv = Conversation(resolved, name=registry.new_name(name), system=system or None,
                        options=options, trim=trim, manager=manager)
    conv._messages = earlier
    registry.add(conv)
    return conv


def _check_messages(messages: Iterable[Any] | None) -> list[dict[str, Any]]:
    """Earlier turns as role/content dicts: user and assistant alternating, user first."""
    if messages is None:
        return []
    if isinstance(messages, (str, bytes, dict)):
        raise InvalidOptionError("messages is a list of {'role': ..., 'content': ...} dicts, not "
                                 f"{type(messages).__name__}.")
    out: list[dict[str, Any]] = []
    for number, item in enumerate(messages, 1):
        role = item.get("role") if isinstance(item, dict) else None
        content = item.get("content") if isinstance(item, dict) else None
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise InvalidOptionError(
                f"Message {number} must be a dict with 'role' (system, user or assistant) and "
                f"'content' (a text); got {shown(item)}.")
        expected = "user" if len([m for m in out if m["role"] != "system"]) % 2 == 0 \
            else "assistant"
        if role == "system" and number != 1:
            raise InvalidOptionError(f"Message {number}: only the first message may be the "
                                     "system message.")
        if role != "system" and role != expected:
            raise InvalidOptionError(f"Message {number} is from the {role}, but the {expected} "
                                     "speaks next: turns alternate, the user first.")
        entry = {"role": role, "content": content}
        if isinstance(item, dict) and item.get("interrupted"):
            entry["interrupted"] = True
        out.append(entry)
    if out and out[-1]["role"] == "user":
        raise InvalidOptionError("The last earlier message is the user's: end on a reply, and "
                                 "send the new message with conv.say(...).")
    return out


def _branch_turn(gen: Generation, position: int, token: int | str, *,
                 stream: bool | Sink | Callable[[str], Any] | None = None,
                 stop_event: threading.Event | None = None,
                 manager: ModelManager | None = None) -> Generation:
    """A turn's branch, as the last turn of a fork of its conversation up to that turn."""
    manager = manager or get_manager()
    sent = [tuple(m) for m in gen.params.get("messages") or ()]
    if not sent:
        raise InvalidOptionError("This turn does not keep the messages it was sent, so its "
                                 "conversation cannot be forked here.")
    registry = _registry(manager)
    parent = next((c for c in registry.named.values() if c.id == gen.conversation), None)
    system = sent[0][1] if sent[0][0] == "system" else None
    earlier = [{"role": r, "content": c} for r, c in sent if r != "system"][:-1]
    fork = chat(model=gen.model, system=system, messages=earlier, manager=manager,
                trim=parent.trim if parent else None, **(parent.options if parent else {}))
    if parent is not None:
        fork.turns = list(parent.turns[: len(earlier) // 2])
    with fork._held("branch"):
        result = _branch(gen, position, token, stream=stream, stop_event=stop_event,
                         manager=manager, turn=(fork.id, tuple((r, c) for r, c in sent)))
        fork._append(make_request(gen.prompt), result, "")
    return fork.last or result


TURN_BRANCH.append(_branch_turn)


def find(name: str | None = None, *, manager: ModelManager | None = None) -> Conversation | None:
    """The conversation named ``name`` (the current one when None), or None."""
    registry = _registry(manager or get_manager())
    if name is None:
        return registry.current
    _check_name(name)
    conv = registry.named.get(name)
    if conv is not None:
        registry.current = conv
    return conv


def forget(name: str | None = None, *, all: bool = False,
           manager: ModelManager | None = None) -> int:
    """Free conversations (one by name, or all); the cache bytes freed."""
    registry = _registry(manager or get_manager())
    if all:
        targets = list(registry.named.values())
    elif name is None:
        raise InvalidOptionError("Name the conversation to forget, or pass all=True.")
    else:
        _check_name(name)
        if name not in registry.named:
            known = ", ".join(sorted(registry.named)) or "none"
            raise InvalidOptionError(f"No conversation named {name!r} (known: {known}).")
        targets = [registry.named[name]]
    return sum(conv.forget() for conv in targets)


class ConversationTable(tuple):  # type: ignore[type-arg]
    """The kernel's conversations: name, model, turns, tokens, cache bytes, last used."""

    columns = ("name", "model", "turns", "tokens", "cache", "last used")

    def rows(self) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for conv in self:
            last = conv.turns[-1] if conv.turns else None
            tokens = last.prompt_tokens + last.new_tokens if last else 0
            out.append((conv.name, conv.model, str(len(conv.turns)), f"{tokens:,}",
                        size(conv.cache_bytes), ago(conv.used)))
        return out

    def __str__(self) -> str:
        if not self:
            return "No conversations. Start one with lm.chat() or `%%llm --conversation NAME`."
        return text_table(self.columns, self.rows())

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))


def conversations(*, manager: ModelManager | None = None) -> ConversationTable:
    """The kernel's conversations, most recently used first."""
    registry = _registry(manager or get_manager())
    items: Iterable[Conversation] = sorted(registry.named.values(), key=lambda c: c.used,
                                           reverse=True)
    return ConversationTable(items)
