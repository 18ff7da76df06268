"""The playground's conversation mode: its conversation, a turn on the worker, New, Fork, Undo.

:class:`ConversationMode` is mixed into the playground (``playground.py``);
the transcript it fills is ``_transcript.TranscriptView``. Each button calls
the conversation's API (``lm.chat``, ``conv.say``, ``conv.fork``,
``conv.undo``); a refusal or an error is the transcript's one line.

Examples
--------
>>> from llm_magic.widgets.playground import Playground
>>> p = Playground()                     # doctest: +SKIP
>>> p.conversation.value = True          # doctest: +SKIP
>>> p.prompt.value = "What is a list?"   # doctest: +SKIP
>>> p.send(wait=True).stats.reuse        # doctest: +SKIP
'reused 0 of 9 prompt tokens (0.0%)'
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..common.text import check_text
from ..errors import ConversationBusyError, InvalidOptionError, LLMMagicError
from ..events import Event
from ..generation import Generation
from ..generation.conversation import Conversation, chat, find
from ..manager import ModelManager
from ._common import Throttled, one_line, stoppable
from ._transcript import TranscriptView, registered

__all__ = ["ConversationMode"]

log = logging.getLogger("llm_magic.widgets")

_SETTLE = 60.0  # seconds to wait for a cell's turn to end before the transcript shows it


class ConversationMode:
    """The playground's conversation mode: its conversation, a turn on the worker, New, Fork, Undo.

    Mixed into :class:`~llm_magic.widgets.playground.Playground`, which owns the
    controls and the worker's state (``_lock``, ``_running``, ``_thread``,
    ``_stop_event``). Manager and conversation calls happen outside ``_lock``:
    the manager may hold its own lock while it emits the event that takes it.
    """

    manager: ModelManager
    transcript: TranscriptView
    prompt: Any
    model: Any
    conversation: Any
    generate_button: Any
    stop_button: Any
    new_button: Any
    fork_button: Any
    undo_button: Any
    chat_buttons: Any
    output: Any
    conv: Conversation | None
    last: Generation | None
    _made: set[str]
    _lock: threading.Lock
    _running: bool
    _thread: threading.Thread | None
    _stop_event: threading.Event | None

    def request(self) -> dict[str, Any]:  # the playground's controls
        raise NotImplementedError

    # -- the mode

    def _mode(self) -> None:
        """Show the transcript and the conversation's buttons, or the one-shot output."""
        on = bool(self.conversation.value)
        self.output.layout.display = "none" if on else ""
        self.transcript.layout.display = "" if on else "none"
        self.chat_buttons.layout.display = "" if on else "none"
        self.generate_button.description = "Send" if on else "Generate"
        self.prompt.placeholder = "Write the next message…" if on else "Write a prompt…"
        self.prompt.description = "message" if on else "prompt"
        if on and (self.conv is None or not registered(self.conv, self.manager)):
            self._choose()

    def _choose(self) -> None:
        """The kernel's current conversation (``%%llm -c``'s) if its model is loaded, else new."""
        current = find(manager=self.manager)
        if current is not None and self.manager.is_loaded(current.model):
            self._use(current, f"Continuing the kernel's current conversation {current.name!r}.")
        elif self.model.value is not None:
            self.new()
        else:
            self.transcript.show(None)
            raise InvalidOptionError("No model is loaded: load one first (lm.load('demo')), "
                                     "then press New.")

    def _use(self, conv: Conversation, notice: str = "") -> None:
        self.conv = conv
        if conv.model in self.model.options and self.model.value != conv.model:
            self.model.value = conv.model
        view = self.transcript
        with view.hold_sync():
            view.show(conv)
            view.pending_prompt, view.pending_text = "", ""
            view.notice, view.error, view.state = notice, "", "idle"

    def _set_running(self, running: bool) -> None:
        """Send (or Generate) and the conversation's buttons while a turn runs; Stop otherwise."""
        self.generate_button.disabled, self.stop_button.disabled = running, not running
        for control in (self.conversation, self.new_button, self.fork_button, self.undo_button):
            control.disabled = running

    # -- the buttons

    def new(self) -> Conversation:
        """Start a new conversation with the chosen model; the playground goes on with it."""
        model = self.model.value
        if model is None:
            raise InvalidOptionError("No model is loaded: load one first (lm.load('demo')), "
                                     "then press New.")
        self._idle("press New")
        conv = chat(model=model, manager=self.manager)
        self._made.add(conv.id)
        self._use(conv, f"Started {conv.name!r} with {model!r}.")
        return conv

    def fork(self) -> Conversation:
        """Copy the conversation (and its kept cache); the playground goes on with the copy."""
        conv = self._current("fork")
        twin = conv.fork()
        self._made.add(twin.id)
        self._use(twin, f"Forked {conv.name!r} into {twin.name!r}; this playground goes on "
                        f"with {twin.name!r}.")
        return twin

    def undo(self) -> None:
        """Drop the last exchange; its message comes back to the box when the box is empty."""
        conv = self._current("undo")
        message = next((m["content"] for m in reversed(conv.messages) if m["role"] == "user"), "")
        conv.undo()
        back = not self.prompt.value.strip()
        if back:
            self.prompt.value = message
        self._use(conv, "Undid the last exchange" + ("; its message is back in the box." if back
                                                     else "."))

    def _idle(self, what: str) -> None:
        with self._lock:
            if self._running:
                raise ConversationBusyError(f"A turn is running here; Stop it first, then {what}.")

    def _current(self, what: str) -> Conversation:
        self._idle(what)
        conv = self.conv
        if conv is None:
            raise InvalidOptionError(f"No conversation to {what}: tick 'conversation' or press "
                                     "New.")
        self._check_registered(conv)
        return conv

    def _check_registered(self, conv: Conversation) -> None:
        if not registered(conv, self.manager):
            raise InvalidOptionError(f"Conversation {conv.name!r} was forgotten (its cache "
                                     "freed); press New to start another.")

    def _for_model(self, model: str) -> Conversation:
        """The conversation the next turn goes to, talking to ``model``."""
        conv = self.conv
        if conv is None:
            return self.new()
        self._check_registered(conv)
        if conv.model == model:
            return conv
        if not conv.messages and conv.id in self._made:  # empty and ours: start it afresh
            conv.forget()
            return self.new()
        raise InvalidOptionError(
            f"Conversation {conv.name!r} talks to {conv.model!r}, not {model!r}: choose "
            f"{conv.model!r} again, or press New for a conversation with {model!r}.")

    # -- a turn

    def send(self, wait: bool = False) -> Generation | None:
        """Send the box as the conversation's next turn, answered on a worker thread.

        ``wait=True`` blocks and returns the turn's :class:`~llm_magic.Generation`
        (None when it was refused or failed: the view says why in one line, and
        the message stays in the box).
        """
        view = self.transcript
        try:
            text = check_text(self.prompt.value, "The message", hint="write one to send")
            options = self.request()
            model = options.pop("model")
            if model is None:
                raise InvalidOptionError("No model is loaded: load one first (lm.load('demo')).")
            self._idle("send")
            conv = self._for_model(model)
            if conv.busy:
                raise ConversationBusyError(
                    f"Conversation {conv.name!r} is answering another turn (a cell's); send "
                    "this one when it ends. Your message stays in the box.")
        except LLMMagicError as exc:
            with view.hold_sync():  # refused while another turn runs: cleared when it ends
                view.error = one_line(exc)
                view.state = "elsewhere" if isinstance(exc, ConversationBusyError) else "error"
            return None
        result: list[Generation] = []
        with self._lock:
            if self._running:
                view.error = "A turn is already running here; Stop it first."
                return None
            self._running = True
            stop_event = threading.Event()
            thread = threading.Thread(target=self._turn,
                                      args=(conv, text, options, stop_event, result),
                                      name="llm_magic-playground", daemon=True)
            self._stop_event, self._thread = stop_event, thread
            with view.hold_sync():
                view.pending_prompt, view.pending_text = text, ""
                view.notice, view.error, view.state = "", "", "waiting"
            self._set_running(True)
        thread.start()
        if wait:
            thread.join()
            return result[0] if result else None
        return None

    def _turn(self, conv: Conversation, text: str, options: dict[str, Any],
              stop_event: threading.Event, result: list[Generation]) -> None:
        view = self.transcript

        def publish(text: str) -> None:
            with view.hold_sync():
                view.state, view.pending_text = "generating", text

        stream = Throttled(publish)

        try:
            with stoppable(self.manager.events, stop_event):  # the models table's Stop too
                gen = conv.say(text, stream=stream, stop_event=stop_event, **options)
        except Exception as exc:
            if not isinstance(exc, LLMMagicError):
                log.debug("playground turn failed", exc_info=True)
            with view.hold_sync():  # not a turn: what came stays shown, the message in the box
                view.pending_prompt = text if stream.text else ""
                view.pending_text = stream.text
                view.error, view.state = one_line(exc), "error"
        else:
            result.append(gen)
            with self._lock:
                self.last = gen
            with view.hold_sync():
                view.show(conv)
                view.pending_prompt, view.pending_text = "", ""
                view.state = "stopped" if gen.interrupted else "done"
            if self.prompt.value == text:
                self.prompt.value = ""
        finally:
            with self._lock:
                self._stop_event, self._running = None, False
                self._set_running(False)

    # -- turns from elsewhere (a cell, code, another playground)

    def _other_turn(self, event: Event) -> None:
        """Say that a turn of this conversation runs elsewhere; show it once it has ended."""
        conv = self.conv
        if conv is None or threading.current_thread() is self._thread:
            return
        if event.kind == "generation_start":
            if getattr(event.data.get("request"), "keep", None) == conv.id:
                self.transcript.state = "elsewhere"
        elif getattr(event.data.get("generation"), "conversation", None) == conv.id:
            threading.Thread(target=self._settle, args=(conv,), name="llm_magic-playground-show",
                             daemon=True).start()

    def _settle(self, conv: Conversation) -> None:
        deadline = time.monotonic() + _SETTLE
        while conv.busy and time.monotonic() < deadline:  # the turn is appended, then let go
            time.sleep(0.02)
        with self._lock:
            mine = self.conv is conv and not self._running
        if mine:
            view = self.transcript
            with view.hold_sync():
                view.show(conv)
                if view.state == "elsewhere":
                    view.state, view.error = "done", ""
