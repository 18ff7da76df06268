"""The playground: a prompt, a model, sampling settings, Generate and Stop; or a conversation.

Generation runs ``lm.generate`` on a worker thread with a ``stop_event`` and
a streaming callback, so the kernel's shell stays free for other cells; the
model's lock in the manager keeps two generations on one model from
interleaving. The result is a :class:`~llm_magic.Generation` like any other,
and the latest one is ``lm.last()``. Stop works as an interrupt: the partial
text is kept and the model stays usable.

Generate, Stop and every edit arrive on llm_magic's kernel subshell (see
``_subshell``), so they act while another cell runs; the playground's state
(the running generation, its stop event, the latest result) changes under its
one lock, and a click's error is the output's one line, never printed.

With "conversation" ticked, the playground holds a :class:`~llm_magic.Conversation`
(``lm.chat``): the transcript shows its turns (``_transcript.TranscriptView``), the
box takes the next message, Send runs ``conv.say`` on the worker thread, and
New, Fork and Undo call the conversation's API. It continues the kernel's
current conversation (the one ``%%llm -c`` continues) when there is one, else
starts one; its name shows, so cells can take turns in it too. A turn never
interleaves with another on the same conversation: the second is refused in
one line (the API's ``ConversationBusyError``).

Examples
--------
>>> from llm_magic.widgets.playground import Playground
>>> p = Playground()                          # doctest: +SKIP
>>> p.prompt.value = "The import statement"   # doctest: +SKIP
>>> p.generate(wait=True).text                # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from html import escape
from typing import Any

import anywidget
import ipywidgets as w
import traitlets as t

from ..errors import InvalidOptionError, LLMMagicError
from ..events import Event
from ..generation import Generation, generate
from ..generation.conversation import Conversation
from ..manager import ModelManager, get_manager
from ._chat import ConversationMode
from ._common import (
    Throttled,
    button_html,
    control_html,
    css,
    esm,
    one_line,
    stoppable,
    with_fallback,
)
from ._subshell import route
from ._transcript import TranscriptView

__all__ = ["Playground", "StreamView"]

log = logging.getLogger("llm_magic.widgets")

_MAX_TOKENS = 8192  # the slider's end for a model whose context length is unknown


class StreamView(anywidget.AnyWidget):  # type: ignore[misc]
    """Streamed text, the generation's stats and an error line, shown as plain text.

    Examples
    --------
    >>> from llm_magic.widgets.playground import StreamView
    >>> StreamView(text="<b>not bold</b>").text   # doctest: +SKIP
    '<b>not bold</b>'
    """

    _esm = esm("stream.js")
    _css = css()

    prompt = t.Unicode("").tag(sync=True)  # shown dimmed before the text that continues it
    text = t.Unicode("").tag(sync=True)
    stats = t.Unicode("").tag(sync=True)
    state = t.Unicode("idle").tag(sync=True)  # idle, waiting, generating, done, stopped, error
    error = t.Unicode("").tag(sync=True)

    def lines(self) -> list[str]:
        return [line for line in (self.prompt + self.text, self.stats, self.error) if line]

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_fallback(super()._repr_mimebundle_(**kwargs), self.html())

    def html(self) -> str:
        """The prompt, text, stats and error as escaped HTML (the static fallback)."""
        return (f"<pre style='white-space:pre-wrap;min-height:3em;padding:4px;margin:4px 0;"
                f"border:1px solid #ddd'><span style='opacity:.6'>"
                f"{escape(self.prompt)}</span>{escape(self.text)}</pre>"
                f"<small>{escape(self.stats)}</small><div>{escape(self.error)}</div>")


def _stats_line(gen: Generation) -> str:
    s = gen.stats
    ttft = "-" if s.time_to_first_token is None else f"{s.time_to_first_token * 1000:.0f} ms"
    tps = "-" if s.tokens_per_second is None else f"{s.tokens_per_second:.1f}"
    return (f"{gen.model}: {s.new_tokens} new tokens, time to first token {ttft}, "
            f"{tps} tokens/s, {s.duration:.2f} s ({s.stopped})")


class Playground(ConversationMode, w.VBox):  # type: ignore[misc]
    """Prompt box, model dropdown, temperature/top-p/max-new-tokens sliders, seed, output.

    With ``conversation`` ticked it holds a conversation (``conv``): a transcript,
    the box for the next message, Send, Stop, New, Fork and Undo.

    Parameters
    ----------
    manager : ModelManager, optional
        The kernel's manager by default.

    Examples
    --------
    >>> from llm_magic.widgets.playground import Playground
    >>> Playground()                  # doctest: +SKIP
    """

    def __init__(self, *, manager: ModelManager | None = None, note: bool = True) -> None:
        self.manager = manager or get_manager()
        self.prompt = w.Textarea(placeholder="Write a prompt…", description="prompt",
                                 layout=w.Layout(width="100%", height="6em"))
        self.model = w.Dropdown(options=[], description="model")
        wide = {"description_width": "initial"}
        self.temperature = w.FloatSlider(value=0.0, min=0.0, max=2.0, step=0.05,
                                         description="temperature", style=wide)
        self.top_p = w.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p",
                                   style=wide)
        self.max_new_tokens = w.IntSlider(value=128, min=1, max=_MAX_TOKENS, style=wide,
                                          description="max tokens")
        self.seed = w.Text(value="", placeholder="none", description="seed")
        self.generate_button = w.Button(description="Generate", button_style="primary")
        self.stop_button = w.Button(description="Stop", button_style="warning", disabled=True)
        self.output = StreamView()
        self.conversation = w.Checkbox(value=False, description="conversation", indent=False,
                                       layout=w.Layout(width="auto", margin="0 0 0 12px"))
        small = {"layout": w.Layout(width="auto", min_width="64px")}
        self.new_button = w.Button(description="New", tooltip="Start a new conversation "
                                   "with the chosen model", **small)
        self.fork_button = w.Button(description="Fork", tooltip="Copy this conversation "
                                    "(and its kept cache); go on with the copy", **small)
        self.undo_button = w.Button(description="Undo", tooltip="Drop the last exchange; its "
                                    "message comes back to the box", **small)
        self.chat_buttons = w.HBox([self.new_button, self.fork_button, self.undo_button],
                                   layout=w.Layout(display="none", flex_flow="row wrap"))
        self.transcript = TranscriptView(layout=w.Layout(display="none"))
        #: One line when clicks wait for the running cell (no kernel subshell).
        self.wait_note = w.Label(value="", layout=w.Layout(display="none"))
        self.wait_note.add_class("llm-magic-wait-note")
        wrap = {"layout": w.Layout(flex_flow="row wrap")}  # a narrow output area: next line
        settings = w.HBox([self.model, self.seed], **wrap)
        sliders = w.HBox([self.temperature, self.top_p, self.max_new_tokens], **wrap)
        buttons = w.HBox([self.generate_button, self.stop_button, self.conversation,
                          self.chat_buttons], **wrap)
        super().__init__([self.transcript, self.prompt, settings, sliders, buttons, self.output,
                          self.wait_note])
        self.add_class("llm-magic-playground")
        self._lock = threading.Lock()  # the playground's state: running, stop event, thread, last
        self._running = False
        self._stop_event: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self.last: Generation | None = None
        self.conv: Conversation | None = None  # the conversation mode's conversation
        self._made: set[str] = set()  # ids of the conversations this playground started
        self.generate_button.on_click(lambda _b: self._guarded(self.generate))
        self.stop_button.on_click(lambda _b: self._guarded(self.stop))
        self.new_button.on_click(lambda _b: self._guarded(self.new))
        self.fork_button.on_click(lambda _b: self._guarded(self.fork))
        self.undo_button.on_click(lambda _b: self._guarded(self.undo))
        self.conversation.observe(lambda _change: self._guarded(self._mode), names="value")
        self.model.observe(lambda _change: self._guarded(self._fit_length), names="value")
        self._refresh_models()
        self._fit_length()
        self._unsubscribe = self.manager.events.subscribe(
            self._on_event, kinds=("loaded", "unloaded", "default_changed", "generation_start",
                                   "generation_end"))
        waits = route(self)
        if note and waits:
            self.wait_note.value, self.wait_note.layout.display = waits, ""

    def _guarded(self, action: Any) -> None:
        """Run a click's or an edit's action; an error is the view's one line, never printed."""
        try:
            action()
        except Exception as exc:
            log.debug("playground action failed", exc_info=True)
            view = self.transcript if self.conversation.value else self.output
            with view.hold_sync():
                view.error, view.state = one_line(exc), "error"

    # -- the model list

    def _on_event(self, event: Event) -> None:
        if event.kind in ("generation_start", "generation_end"):
            self._other_turn(event)
        else:
            self._refresh_models()

    def _refresh_models(self) -> None:
        # Gathered outside the lock: the manager may hold its own lock while it emits.
        names, default = self.manager.names(), self.manager.default
        with self._lock:
            if list(self.model.options) != names:
                keep = self.model.value if self.model.value in names else default
                self.model.options = names
                self.model.value = keep if keep in names else (names[0] if names else None)

    def _fit_length(self) -> None:
        """The max-new-tokens slider ends at the chosen model's context length."""
        name = self.model.value
        try:
            context = self.manager.info(name).context_length if name else None
        except LLMMagicError:  # unloaded meanwhile
            context = None
        self.max_new_tokens.max = context or _MAX_TOKENS

    # -- generation

    def request(self) -> dict[str, Any]:
        """The keyword arguments of ``lm.generate`` that the controls say."""
        seed_text = self.seed.value.strip()
        if seed_text and not seed_text.isdigit():
            raise InvalidOptionError(f"The seed must be a whole number, not {seed_text!r}.")
        return {
            "model": self.model.value,
            "temperature": float(self.temperature.value),
            "top_p": None if self.top_p.value >= 1.0 else float(self.top_p.value),
            "max_new_tokens": int(self.max_new_tokens.value),
            "seed": int(seed_text) if seed_text else None,
        }

    def generate(self, wait: bool = False) -> Generation | None:
        """Start generating on a worker thread (``wait=True`` blocks and returns the result).

        In conversation mode this sends the box as the conversation's next turn (:meth:`send`).
        """
        if self.conversation.value:
            return self.send(wait)
        out = self.output
        try:
            prompt = self.prompt.value
            kwargs = self.request()
            if kwargs["model"] is None:
                raise InvalidOptionError("No model is loaded: load one first (lm.load('demo')).")
        except LLMMagicError as exc:
            out.error, out.state = one_line(exc), "error"
            return None
        with self._lock:
            if self._running:
                out.error = "A generation is already running here; Stop it first."
                return None
            self._running = True
            stop_event = threading.Event()
            thread = threading.Thread(target=self._run, args=(prompt, kwargs, stop_event),
                                      name="llm_magic-playground", daemon=True)
            self._stop_event, self._thread = stop_event, thread
            with out.hold_sync():
                out.prompt, out.text, out.stats, out.error = prompt, "", "", ""
                out.state = "waiting"
            self._set_running(True)
        thread.start()
        if wait:
            thread.join()
            return self.last
        return None

    def _run(self, prompt: str, kwargs: dict[str, Any], stop_event: threading.Event) -> None:
        out = self.output

        def publish(text: str) -> None:
            with out.hold_sync():
                out.state, out.text = "generating", text

        stream = Throttled(publish)

        try:
            with stoppable(self.manager.events, stop_event):  # the models table's Stop too
                gen = generate(prompt, stream=stream, stop_event=stop_event,
                               manager=self.manager, **kwargs)
        except Exception as exc:
            if not isinstance(exc, LLMMagicError):
                log.debug("playground generation failed", exc_info=True)
            with out.hold_sync():
                out.text, out.error, out.state = stream.text, one_line(exc), "error"
        else:
            with self._lock:
                self.last = gen
            with out.hold_sync():
                out.text, out.stats = gen.text, _stats_line(gen)
                out.state = "stopped" if gen.interrupted else "done"
        finally:
            with self._lock:
                self._set_running(False)
                self._stop_event, self._running = None, False

    def stop(self, wait: bool = False) -> None:
        """Stop the running generation, keeping its text so far."""
        with self._lock:
            stop_event, thread = self._stop_event, self._thread
        if stop_event is not None:
            stop_event.set()
        if wait and thread is not None:
            thread.join()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    def close(self) -> None:
        if hasattr(self, "_unsubscribe"):  # ipywidgets also closes half-built widgets
            self.stop()
            self._unsubscribe()
            self.output.close()
            self.transcript.close()
        super().close()

    # -- static fallback

    def controls(self) -> list[tuple[str, str, str]]:
        """The settings as the snapshot shows them: (label, value, hint when empty)."""
        return [("model", self.model.value or "", "none loaded"),
                ("seed", self.seed.value.strip(), self.seed.placeholder),
                ("temperature", f"{self.temperature.value:.2f}", ""),
                ("top-p", f"{self.top_p.value:.2f}", ""),
                ("max tokens", str(self.max_new_tokens.value), "")]

    def _buttons(self) -> list[tuple[str, bool]]:
        """The buttons as shown: (label, disabled); the conversation's only in its mode."""
        shown = [self.generate_button, self.stop_button]
        if self.conversation.value:
            shown += [self.new_button, self.fork_button, self.undo_button]
        return [(b.description, bool(b.disabled)) for b in shown]

    def lines(self) -> list[str]:
        """The playground as lines of text: prompt, settings, buttons, output (or transcript)."""
        settings = ", ".join(f"{label}: {value or f'({hint})'}"
                             for label, value, hint in self.controls())
        buttons = " ".join(f"[{label}{' (disabled)' if off else ''}]"
                           for label, off in self._buttons())
        if not self.conversation.value:
            return [f"prompt: {self.prompt.value or '(empty)'}", settings, buttons,
                    *self.output.lines()]
        return [*self.transcript.lines(), f"message: {self.prompt.value or '(empty)'}",
                settings, f"{buttons} [x] conversation"]

    def html(self) -> str:
        """Prompt, settings, buttons and output (or transcript) as escaped HTML, as live."""
        on = bool(self.conversation.value)
        hint = f"<span style='color:#767676'>{escape(self.prompt.placeholder)}</span>"
        prompt = (f"<div style='margin:2px 0'>prompt <span style='white-space:pre-wrap;"
                  f"border:1px solid #bbb;padding:0 4px;display:inline-block;min-width:50%'>"
                  f"{escape(self.prompt.value) or hint}</span></div>")
        settings = "".join(control_html(*control) for control in self.controls())
        buttons = "".join(button_html(label, off) for label, off in self._buttons())
        tick = f"<span>{'&#9745;' if on else '&#9744;'} conversation</span>"
        head = self.transcript.html() if on else ""
        tail = "" if on else self.output.html()
        return (f"{head}{prompt}<div style='margin:4px 0'>{settings}</div>"
                f"<div style='margin:6px 0'>{buttons}{tick}</div>{tail}")

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_fallback(super()._repr_mimebundle_(**kwargs), self.html(), repr(self))
