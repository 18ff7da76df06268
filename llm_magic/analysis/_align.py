"""Aligning one text as two models read it: by token ids, or by character spans.

Two models with one tokenizer read the same ids, so their records line up
one for one. Two tokenizers cut the text differently; the pieces that can be
compared are the runs of tokens between character offsets where both put a
boundary. A run's log-probability is the sum of its tokens' (the chain rule):
how likely each model found that piece of text after the same prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..backends.base import TokenRecord

__all__ = ["Piece", "boundaries", "by_characters", "by_tokens", "compatible"]


@dataclass(frozen=True)
class Piece:
    """A piece of a text (one token, or a run of tokens) as two models scored it.

    ``start`` and ``end`` are token indexes of the column's own sequence
    (``end`` excluded); ``own`` and ``other`` are log-probabilities (natural
    log); ``own_top`` and ``other_top`` each model's likeliest next token at
    the piece's first position, as text, with its log-probability.
    """

    text: str
    start: int
    end: int
    own: float
    other: float
    own_top: tuple[int | None, str, float]
    other_top: tuple[int | None, str, float]
    #: Where the piece starts in the text, in characters (-1 when aligned by tokens).
    offset: int = -1


def by_tokens(texts: Sequence[str], own: Sequence[TokenRecord],
              other: Sequence[TokenRecord]) -> list[Piece]:
    """One piece per token after the first: ``own[i]`` and ``other[i]`` score token ``i + 1``."""
    return [Piece(texts[i + 1], i + 1, i + 2, a.logprob, b.logprob, a.top[0], b.top[0])
            for i, (a, b) in enumerate(zip(own, other, strict=False))]


def boundaries(ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> tuple[str, list[int]]:
    """The decoded text and, for each token, the character offset where it ends.

    A token that ends inside a character (one byte of a multi-byte letter)
    has no boundary of its own: its offset is -1, and the run goes on to
    the next token that completes the character.
    """
    full = decode(ids)
    ends = []
    for k in range(1, len(ids) + 1):
        prefix = decode(ids[:k])
        ends.append(len(prefix) if full.startswith(prefix) else -1)
    return full, ends


def by_characters(text: str, own_ends: Sequence[int], own: Sequence[TokenRecord],
                  other_ends: Sequence[int], other: Sequence[TokenRecord]) -> list[Piece]:
    """Pieces between the character offsets where both tokenizations have a boundary.

    ``own_ends[k]`` is where the column's token ``k`` ends (see :func:`boundaries`),
    ``own[k - 1]`` its record; likewise for the other model's tokenization of
    the same text. A piece whose first token of either side is the sequence's
    first (nothing predicts it) is left out.
    """
    shared = sorted((set(own_ends) & set(other_ends)) - {-1})
    pieces = []
    a = b = 0  # the first token of each side not yet in a piece
    previous = 0
    for cut in shared:
        a_end, b_end = _upto(own_ends, a, cut), _upto(other_ends, b, cut)
        if a_end > a and b_end > b and a >= 1 and b >= 1:
            pieces.append(Piece(
                text[previous:cut], a, a_end,
                sum(r.logprob for r in own[a - 1:a_end - 1]),
                sum(r.logprob for r in other[b - 1:b_end - 1]),
                own[a - 1].top[0], other[b - 1].top[0], previous,
            ))
        a, b, previous = a_end, b_end, cut
    return pieces


def _upto(ends: Sequence[int], first: int, cut: int) -> int:
    """One past the last token from ``first`` on that ends exactly at ``cut``."""
    end = first
    for k in range(first, len(ends)):
        if ends[k] == cut:
            end = k + 1
        elif ends[k] > cut:
            break
    return end


def compatible(a: str, b: str) -> bool:
    """Whether two next-token guesses agree: one is the start of the other."""
    return bool(a) and bool(b) and (a.startswith(b) or b.startswith(a))
