"""Run a recorded generation again: a prompt, a branch, or a conversation's turn.

:func:`rerun` finds the row's model among the loaded ones (same source,
revision and quantization) and runs the row again through the same
generation path: a prompt is generated again, a branch is branched again from
its parent, and a conversation's turn is replayed from the messages its row
holds, in a temporary conversation that is forgotten after (no kept cache is
needed). The :class:`~llm_magic.history.RerunResult` says whether it matches.
"""

from __future__ import annotations

import shlex
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import ModelNotLoadedError
from .read import (
    HistoryRow,
    RerunResult,
    branch_params,
    notes,
    parent_prompt_ids,
    redact,
    rerun_options,
)
from .recorder import _read, get

if TYPE_CHECKING:
    from ..generation import Generation
    from ..manager import ModelInfo, ModelManager

__all__ = ["model_for", "rerun", "turn_options"]


def _at(revision: str | None) -> str:
    return f" at revision {revision!r}" if revision else ""


def _weights(quantization: str | None) -> str:
    return f" with {quantization} weights" if quantization else ""


def model_for(manager: ModelManager, row: HistoryRow, then: str = "rerun") -> str:
    """The loaded model that is the row's model (same source, revision and quantization), or
    :class:`ModelNotLoadedError` saying what to load; ``then`` is what to do after."""
    wanted = row.commit or row.revision

    def same(info: ModelInfo) -> bool:
        if row.source is not None and redact(info.source) != row.source:
            return False
        if (info.quantization or None) != row.quantization:
            return False
        return (info.commit == row.commit) if row.commit else (info.revision == row.revision)

    names = manager.names()
    for name in sorted(names, key=lambda n: n != row.model):
        if same(manager.info(name)):
            return name
    source = row.source or row.model
    load = f"lm.load({source!r}, name={row.model!r}" + (
        f", revision={wanted!r}" if wanted else "") + (
        f", quantize={row.quantization!r}" if row.quantization else "") + ")"
    magic = f"%llm load {shlex.quote(source)} --as {row.model}" + (
        f" --revision {wanted}" if wanted else "") + (
        f" --quantize {row.quantization}" if row.quantization else "")
    ran = (f"Generation {row.id} ran on {row.model!r} from {source!r}{_at(wanted)}"
           f"{_weights(row.quantization)}")
    if row.model in names:
        info = manager.info(row.model)
        raise ModelNotLoadedError(
            f"{ran}, but the loaded {row.model!r} comes from {info.source!r}"
            f"{_at(info.commit or info.revision)}{_weights(info.quantization)}. Load the "
            f"original with {load[:-1]}, reload=True) or `{magic} --reload` (or under "
            f"another name), then {then}."
        )
    raise ModelNotLoadedError(f"{ran}, which is not loaded. Load it with {load} or `{magic}`, "
                              f"then {then}.")


def turn_options(row: HistoryRow) -> dict[str, Any]:
    """The options of a conversation's turn, as :func:`llm_magic.chat` takes them."""
    options = rerun_options(row)
    del options["system"]  # the first of the row's messages when there is one
    return options


def rerun(id: int, *, stream: Any = None, manager: ModelManager | None = None) -> RerunResult:
    """Run a recorded generation again: same model, revision, parameters and seed.

    The rerun is itself recorded. Greedy and seeded generations on the same
    machine and library versions give the same text; the result says whether
    they did, and notes what differs (library versions, device, dtype,
    quantization). A generation with token records (``logprobs=K``) reruns
    with the same K and mode, and the result says whether the records match too.

    A branch (``Generation.branch``) is branched again: from its parent's
    recorded tokens, at the same position, with the same token, so it
    continues from the same ids. When the parent's row is gone, the rerun is
    refused with a message that says so.

    A conversation's turn is replayed: the messages its row holds (every one
    the model read, the new user message last) are sent again in a temporary
    conversation, computed from scratch, which is forgotten after.

    Parameters
    ----------
    id : int
        The generation's id (``lm.history()``, ``Generation.id``).
    stream : optional
        Where to stream the new text, as for :func:`llm_magic.generate`.

    Returns
    -------
    RerunResult

    Raises
    ------
    ModelNotLoadedError
        The model (or its revision, or its quantization) is not loaded; the
        message says what to load.

    Examples
    --------
    >>> import llm_magic as lm
    >>> g = lm.generate("The import statement", max_new_tokens=20)  # doctest: +SKIP
    >>> lm.rerun(g.id).matches                                      # doctest: +SKIP
    True
    """
    from ..generation import generate
    from ..manager import get_manager

    row = get(id)
    manager = manager or get_manager()
    name = model_for(manager, row)
    info = manager.info(name)
    if row.branch_at is not None or row.params.get("lead_ids"):
        gen = _rebranch(row, name, stream, manager)
    elif row.conversation is not None:
        gen = _replay(row, name, stream, manager)
    else:
        gen = generate(row.prompt, model=name, stream=stream, manager=manager,
                       **rerun_options(row))
    return RerunResult(original=row, generation=gen, notes=notes(row, info))


def _replay(row: HistoryRow, name: str, stream: Any, manager: ModelManager) -> Generation:
    """A conversation's turn sent again from its messages, in a conversation forgotten after."""
    from ..generation.conversation import chat, find
    from .db import HistoryError

    messages = row.messages
    if not messages or messages[-1]["role"] != "user":
        raise HistoryError(
            f"Generation {row.id} is turn {row.turn} of conversation {row.conversation}, but its "
            "row holds no messages to send again (it was written by an older llm_magic or "
            "changed since). Resume the conversation from an earlier turn instead.")
    current = find(manager=manager)  # chat() makes the new one current: put it back after
    conv = chat(name, messages=messages[:-1], name=f"rerun-{row.id}-{uuid.uuid4().hex[:8]}",
                manager=manager, **turn_options(row))
    try:
        return conv.say(messages[-1]["content"], stream=stream)
    finally:
        conv.forget()
        if current is not None:
            find(current.name, manager=manager)


def _rebranch(row: HistoryRow, name: str, stream: Any, manager: ModelManager) -> Generation:
    """Branch the parent of ``row`` again where ``row`` branched, with the token it chose."""
    from ..generation import Generation, GenerationStats, branch
    from .db import HistoryError

    parent = None
    if row.parent is not None:
        found = _read(row_id=row.parent, limit=1)[1]
        parent = found[0] if found else None
    chosen = row.tokens[row.branch_at] if row.tokens and row.branch_at is not None and \
        row.branch_at < len(row.tokens) else None
    tokens = parent.tokens if parent is not None else None
    if parent is None or tokens is None or chosen is None or row.branch_at is None \
            or row.branch_at >= len(tokens):
        whence = (f"generation {row.parent}, which is no longer in the history"
                  if row.parent is not None else "a generation that was not recorded")
        raise HistoryError(
            f"Generation {row.id} is a branch of {whence}, so it cannot be branched again. "
            "Generate the original again with logprobs and branch it (g.branch(position, "
            "token)).")
    stats = GenerationStats(prompt_tokens=parent.prompt_tokens or 0,
                            new_tokens=parent.new_tokens, time_to_first_token=None,
                            tokens_per_second=None, duration=parent.duration or 0.0,
                            stop_reason=parent.stop_reason or parent.status)
    original = Generation(text=parent.output, prompt=parent.prompt, model=name, stats=stats,
                          params=branch_params(parent), id=parent.id, tokens=tokens,
                          parent=parent.parent, branch_at=parent.branch_at,
                          prompt_ids=parent_prompt_ids(row))
    token = chosen.id if chosen.id is not None else chosen.text
    return branch(original, row.branch_at, token, stream=stream, manager=manager)
