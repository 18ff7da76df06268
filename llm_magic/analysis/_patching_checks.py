"""The argument checks of :func:`~llm_magic.analysis.patching.ablate` and ``patch``.

Each refuses in one line, before a model is touched: a bool where an index belongs, a
string where a list belongs, an empty text or target, an unknown part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..common.text import check_text, shown
from ..errors import InvalidOptionError

__all__ = ["PARTS", "answers", "index", "indices", "pairs", "part", "source", "target"]

#: An encoder–decoder's stacks: ``part=`` of ablate and patch.
PARTS = ("encoder", "decoder", "cross")


def index(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"{what} must be an integer index, not {shown(value)}.")
    return value


def indices(values: Any, what: str) -> list[int]:
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidOptionError(f"{what} must be a list of layer indices, not {shown(values)}.")
    return [index(v, f"Each of {what}") for v in values]


def pairs(values: Any, what: str, example: str) -> list[tuple[int, int]]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidOptionError(f"{what} must be a list of {example} pairs, not "
                                 f"{shown(values)}.")
    out = []
    for pair in values:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidOptionError(f"Each of {what} must be a {example} pair, not "
                                     f"{shown(pair)}.")
        out.append((index(pair[0], f"In {what}, {example.split(', ')[0]}"),
                    index(pair[1], f"In {what}, {example.split(', ')[1]}")))
    return out


def answers(values: Any, exactly: int | None) -> list[str | int]:
    if isinstance(values, (str, int)) or not isinstance(values, Sequence):
        values = [values]
    out: list[str | int] = []
    for v in values:
        if isinstance(v, str):
            out.append(check_text(v, "An answer", allow_blank=True,
                                  hint="name a token's text or its id"))
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(v)
        else:
            raise InvalidOptionError(f"An answer is a token's text or id, not {shown(v)}.")
    if exactly is not None and len(out) != exactly or not out:
        raise InvalidOptionError(f"answers must be {exactly or 'one or more'} tokens "
                                 f"(texts or ids), not {shown(values)}.")
    return out


def source(value: Any, what: str) -> str | list[int]:
    if isinstance(value, str):
        return check_text(value, what, hint="write some text")
    if isinstance(value, Sequence) and value and all(
            isinstance(i, int) and not isinstance(i, bool) for i in value):
        return list(value)
    raise InvalidOptionError(f"{what} must be a text or a list of token ids, not {shown(value)}.")


def target(value: Any) -> str | list[int] | None:
    """An encoder–decoder's output for the decoder to read: a text or its ids (None: none)."""
    if value is None:
        return None
    if isinstance(value, str):
        return check_text(value, "The target", hint="write the output the decoder reads")
    if isinstance(value, Sequence) and value and all(
            isinstance(i, int) and not isinstance(i, bool) for i in value):
        return list(value)
    raise InvalidOptionError(f"target is an output: a text, or its token ids, not "
                             f"{shown(value)}.")


def part(value: Any) -> str | None:
    if value is None or isinstance(value, str) and value in PARTS:
        return value
    raise InvalidOptionError(f"part must be one of {', '.join(PARTS)} (an encoder–decoder's "
                             f"stacks), not {shown(value)}.")
