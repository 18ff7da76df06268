"""Conversations rebuilt from history: ``lm.chat(resume=ID)`` in a new kernel.

A conversation's turn keeps, in its history row, every message the model read
(the new user message last), the model's facts and the turn's options. A
conversation resumed from that row starts from those messages plus the row's
own reply, on the same model (source, revision, quantization), with the same
options; its first turn computes them all, later turns reuse the kept cache.

:func:`chat` is :func:`llm_magic.chat`: it starts a conversation as
:func:`llm_magic.generation.conversation.chat` does, and resumes one with
``resume=ID``. This package sits above generation, so the resume lives here.

Examples
--------
>>> import llm_magic as lm
>>> conv = lm.chat(resume=42, name="again")   # doctest: +SKIP
>>> conv.say("And then?")                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..common.text import shown
from ..errors import InvalidOptionError
from .replay import model_for, turn_options

if TYPE_CHECKING:
    from ..generation.conversation import Conversation
    from ..manager import ModelManager

__all__ = ["chat", "resume"]


def resume(id: int, *, name: str | None = None, trim: str | None = None,
           manager: ModelManager | None = None, **options: Any) -> Conversation:
    """A conversation rebuilt from a recorded turn: its messages and reply, model and options.

    Parameters
    ----------
    id : int
        The id of a conversation's turn in the history (``Generation.id``,
        ``lm.history(conversation=...)``).
    name : str, optional
        The new conversation's name ("chat-N" when omitted).
    trim : {None, "oldest"}
        As for :func:`llm_magic.chat`.
    **options
        Override the turn's options (``max_new_tokens``, ``temperature``, ...).

    Returns
    -------
    Conversation
        Holding the row's messages and its reply (marked interrupted when the
        turn did not end well); the next :meth:`~Conversation.say` continues it.

    Raises
    ------
    HistoryError
        No such generation, or it is not a conversation's turn.
    ModelNotLoadedError
        The row's model (source, revision, quantization) is not loaded; the
        message says how to load it.

    Examples
    --------
    >>> from llm_magic.history.conversations import resume
    >>> resume(42).say("Go on")   # doctest: +SKIP
    """
    from ..generation.conversation import chat as start
    from ..manager import get_manager
    from .db import HistoryError
    from .recorder import get

    row = get(id)
    messages = row.messages
    if row.conversation is None or not messages or messages[-1]["role"] != "user":
        what = "is not a conversation's turn" if row.conversation is None else (
            "holds no messages (written by an older llm_magic, or changed since)")
        raise HistoryError(
            f"Generation {row.id} {what}, so there is no conversation to resume from it. Give "
            "the id of a turn: lm.history(conversation=...) or `%llm history --conversation "
            "ID` lists them.")
    manager = manager or get_manager()
    model = model_for(manager, row, then="resume")
    reply: dict[str, Any] = {"role": "assistant", "content": row.output}
    if row.status != "ok":
        reply["interrupted"] = True
    return start(model, messages=[*messages, reply], name=name, trim=trim, manager=manager,
                 **{**turn_options(row), **options})


def chat(model: str | None = None, system: str | None = None, *, name: str | None = None,
         trim: str | None = None, messages: Iterable[Any] | None = None,
         resume: int | None = None, manager: ModelManager | None = None,
         **options: Any) -> Conversation:
    """Start a conversation with a loaded model (or resume one from history).

    Each turn reuses the model's kept cache, so only the new text is computed.

    Parameters
    ----------
    model : str, optional
        A loaded model's name; the default model when omitted.
    system : str, optional
        The system message (chat template) or the transcript's first paragraph.
    name : str, optional
        Its name in ``lm.conversations()`` and ``%%llm --conversation NAME``;
        "chat-1", "chat-2", ... when omitted.
    trim : {None, "oldest"}
        When the conversation outgrows the context: None refuses with the
        numbers; "oldest" drops the oldest turns and says so.
    messages : list of dict, optional
        Earlier turns to start from: alternating ``{"role": "user"|"assistant",
        "content": ...}`` dicts, a user message first (a leading system message
        sets ``system``). The first turn computes them all; later turns reuse.
    resume : int, optional
        The history id of a conversation's turn: start from the messages that
        turn was sent and its reply, on its model, with its options (given
        options override them). ``model``, ``system`` and ``messages`` come
        from the row then. Works in a new kernel: the history is a file.
    **options
        Defaults for every turn: ``max_new_tokens``, ``temperature``, ``top_p``,
        ``top_k``, ``seed``, ``stop``, ``chat``, ``logprobs``, ``logprobs_mode``,
        ``attention``.

    Returns
    -------
    Conversation

    Examples
    --------
    >>> import llm_magic as lm
    >>> conv = lm.chat(model="demo", max_new_tokens=20)   # doctest: +SKIP
    >>> print(conv.say("Hello"))                          # doctest: +SKIP
    >>> again = lm.chat(resume=conv.last.id)              # doctest: +SKIP
    """
    if resume is None:
        from ..generation.conversation import chat as start

        return start(model, system, name=name, trim=trim, messages=messages, manager=manager,
                     **options)
    given = [key for key, value in (("model", model), ("system", system),
                                    ("messages", messages)) if value is not None]
    if given:
        raise InvalidOptionError(
            f"resume={shown(resume)} takes the model, system message and messages from the "
            f"history row; drop {given[0]}=.")
    return _resume(resume, name=name, trim=trim, manager=manager, **options)


_resume = resume
