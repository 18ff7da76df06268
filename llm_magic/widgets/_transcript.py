"""The playground's transcript: a conversation's turns as text, and the rows it shows.

The playground (``playground.py``) holds a :class:`~llm_magic.Conversation`
in its conversation mode; :class:`TranscriptView` shows it: the user and
assistant turns (an interrupted reply marked so), each reply with its footer
(new tokens and the reuse of the kept cache, the words of
``GenerationStats.reuse``), the reply streaming in, and one line for an error
or a refusal. Everything goes to the page as text (``static/playground.js``
sets ``textContent``); the static snapshot escapes it.

Examples
--------
>>> from llm_magic.widgets._transcript import TranscriptView
>>> TranscriptView(name="chat-1").lines()   # doctest: +SKIP
['chat-1', 'No turns yet: write a message below and press Send.']
"""

from __future__ import annotations

from html import escape
from typing import Any

import anywidget
import traitlets as t

from ..common.heatmap import ink
from ..generation import GenerationStats
from ..generation.conversation import Conversation, Turn, conversations
from ..manager import ModelManager
from ._common import STATIC, esm, size

__all__ = ["EMPTY", "MARK", "SHADES", "STATES", "TranscriptView", "about", "footer",
           "registered", "rows"]

#: What the transcript says before the first turn.
EMPTY = "No turns yet: write a message below and press Send."
#: The transcript's states (``state``) as the view words them.
STATES = {"idle": "", "waiting": "waiting for the model…", "generating": "answering…",
          "done": "", "stopped": "stopped: the reply so far is kept as the turn",
          "error": "", "elsewhere": "another turn of this conversation runs (a cell)…"}


def footer(turn: Turn) -> str:
    """A reply's footer: its new tokens and what its prompt reused of the kept cache.

    Examples
    --------
    >>> footer(Turn(1, prompt_tokens=44, reused=31, new_tokens=12))
    '12 new tokens; reused 31 of 44 prompt tokens (70.5%)'
    """
    stats = GenerationStats(turn.prompt_tokens, turn.new_tokens, None, None, 0.0,
                            "interrupted" if turn.interrupted else "",
                            reused_tokens=turn.reused, cache_note=turn.note)
    return "; ".join(part for part in (f"{turn.new_tokens:,} new tokens", stats.reuse) if part)


def rows(conv: Conversation) -> list[dict[str, Any]]:
    """The conversation's messages as the transcript shows them, each reply with its footer.

    Turns and replies are matched from the end: messages given to ``lm.chat(messages=...)``
    have no turn (no footer), and turns dropped by ``trim`` have no message.
    """
    messages = conv.messages
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    footers = {index: footer(turn) for index, turn in zip(reversed(replies),
                                                          reversed(conv.turns), strict=False)}
    return [{"role": m["role"], "content": m["content"],
             "interrupted": bool(m.get("interrupted")), "footer": footers.get(i, "")}
            for i, m in enumerate(messages)]


def about(conv: Conversation) -> str:
    """The transcript's heading after the name: the model, the turns, the kept cache."""
    turns = len(conv.turns)
    return (f"with {conv.model!r} · {turns} turn{'' if turns == 1 else 's'} · "
            f"cache {size(conv.cache_bytes)}")


def registered(conv: Conversation, manager: ModelManager) -> bool:
    """Whether ``conv`` is still one of the kernel's conversations (not forgotten)."""
    return any(c is conv for c in conversations(manager=manager))


class TranscriptView(anywidget.AnyWidget):  # type: ignore[misc]
    """A conversation's turns as text: user and assistant, footers, the reply streaming in.

    Examples
    --------
    >>> from llm_magic.widgets._transcript import TranscriptView
    >>> TranscriptView(messages=[{"role": "user", "content": "<b>hi</b>"}]).html()  # doctest: +SKIP
    """

    _esm = esm("playground.js")
    _css = STATIC / "playground.css"

    name = t.Unicode("").tag(sync=True)  # the conversation's name ("" before there is one)
    about = t.Unicode("").tag(sync=True)  # "with 'demo' · 3 turns · cache 1.2 MB"
    messages = t.List(t.Dict()).tag(sync=True)  # role, content, interrupted, footer
    pending_prompt = t.Unicode("").tag(sync=True)  # the turn that runs: its message...
    pending_text = t.Unicode("").tag(sync=True)  # ...and its reply so far
    state = t.Unicode("idle").tag(sync=True)  # see STATES
    notice = t.Unicode("").tag(sync=True)  # one line: what New, Fork or Undo did
    error = t.Unicode("").tag(sync=True)  # one line: an error or a refusal

    def show(self, conv: Conversation | None) -> None:
        """Show ``conv`` as it is now (its name, heading and turns); None shows nothing."""
        with self.hold_sync():
            self.name = conv.name if conv is not None else ""
            self.about = about(conv) if conv is not None else ""
            self.messages = rows(conv) if conv is not None else []

    def lines(self) -> list[str]:
        """The transcript as lines of text (the plain-text fallback)."""
        head = " ".join(part for part in (self.name, self.about) if part)
        out = [head] if head else []
        for m in self.messages:
            mark = " (interrupted)" if m.get("interrupted") else ""
            out.append(f"{m['role']}{mark}: {m['content']}")
            if m.get("footer"):
                out.append(f"  {m['footer']}")
        if self.pending_prompt:
            out += [f"user: {self.pending_prompt}", f"assistant: {self.pending_text}"]
        elif not self.messages:
            out.append(EMPTY)
        state = STATES.get(self.state, self.state)
        return out + [line for line in (state, self.notice, self.error) if line]

    def html(self) -> str:
        """The transcript as escaped HTML, laid out as the live view first shows it."""
        turns = [(m["role"], m["content"], bool(m.get("interrupted")), m.get("footer", ""))
                 for m in self.messages]
        if self.pending_prompt:
            turns += [("user", self.pending_prompt, False, ""),
                      ("assistant", self.pending_text, False, "")]
        body = "".join(_turn_html(*turn) for turn in turns) or \
            f"<div style='color:#595959'>{escape(EMPTY)}</div>"
        head = (f"<div><b>{escape(self.name)}</b> <span style='color:#595959'>"
                f"{escape(self.about)}</span></div>") if self.name else ""
        state = STATES.get(self.state, self.state)
        tail = "".join(f"<div>{escape(line)}</div>" for line in (state, self.notice, self.error)
                       if line)
        return (f"<div class='llm-magic-chat-static' style='font-family:sans-serif;"
                f"font-size:13px;max-width:100%'>{head}{body}{tail}</div>")

    def __repr__(self) -> str:
        return "\n".join(self.lines())


# The turns' shades and the interrupted mark's, as playground.js has them; ink by inkOn's rule.
SHADES = {"user": (227, 236, 250), "assistant": (243, 243, 243), "system": (251, 243, 220)}
MARK = (245, 124, 0)


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _turn_html(role: str, content: str, interrupted: bool, foot: str) -> str:
    mark = (f" <span style='background:{_rgb(MARK)};color:{ink(MARK)};padding:0 4px;"
            "font-size:11px'>interrupted</span>") if interrupted else ""
    shade = SHADES.get(role, SHADES["assistant"])
    footer_html = (f"<div style='font-size:11px;opacity:.75'>{escape(foot)}</div>" if foot
                   else "")
    return (f"<div style='background:{_rgb(shade)};color:{ink(shade)};margin:4px 0;"
            f"padding:4px 6px'>"
            f"<div style='font-size:11px;font-weight:600'>{escape(role)}{mark}</div>"
            f"<div style='white-space:pre-wrap;overflow-wrap:anywhere'>{escape(content)}</div>"
            f"{footer_html}</div>")
