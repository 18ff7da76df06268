"""The token a branch puts in place of a generated one, and its record.

A branch names its token by id or by text; these helpers find the id the user
means and the record that token gets (the same distribution as the original step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..backends.base import TokenRecord
from ..errors import InvalidOptionError, NotAvailableError

__all__ = ["branch_token", "chosen_record", "served_choice"]


def served_choice(record: TokenRecord, token: int | str, position: int) -> TokenRecord:
    """The alternative a served record offers under that text (a server sends no ids)."""
    if not isinstance(token, str):
        raise InvalidOptionError(
            "A served model's tokens come as texts without ids: pass the alternative's text, "
            f"not {token!r}."
        )
    if token == record.text:
        return record
    for rank, (_, text, logprob) in enumerate(record.top, start=1):
        if text == token:
            return TokenRecord(None, text, logprob, rank, record.top, record.entropy)
    raise NotAvailableError(
        f"{token!r} is not one of the {len(record.top)} alternatives the server sent at "
        f"position {position}; choose one of them."
    )


def branch_token(backend: Any, record: TokenRecord, token: int | str) -> int:
    """The id the user means: an id, or a text that is one token (an alternative's first)."""
    if isinstance(token, bool):
        raise InvalidOptionError(f"token must be a token id or its text, not {token!r}.")
    if isinstance(token, int):
        return token
    if not isinstance(token, str) or not token:
        raise InvalidOptionError(f"token must be a token id or its text, not {token!r}.")
    same = [i for i, text, _ in record.top if text == token and i is not None]
    if len(same) > 1:
        raise InvalidOptionError(
            f"Several alternatives here read {token!r} (ids {same}); pass the id you mean."
        )
    if same:
        return int(same[0])
    return int(backend.token_id(token))


def chosen_record(backend: Any, prompt_ids: Sequence[int] | None,
                  records: tuple[TokenRecord, ...], position: int, chosen: int,
                  k: int) -> TokenRecord:
    """The record of the token put at ``position``: the same distribution as the original's."""
    at = records[position]
    if chosen == at.id:
        return at
    for rank, (i, text, logprob) in enumerate(at.top, start=1):
        if i == chosen:
            return TokenRecord(chosen, text, logprob, rank, at.top, at.entropy)
    if prompt_ids is None:
        raise InvalidOptionError(
            f"Token {chosen} is not one of the {len(at.top)} alternatives the server sent at "
            f"position {position}; choose one of them."
        )
    ids = list(prompt_ids) + [int(r.id) for r in records[:position] if r.id is not None]
    scored = backend.score(ids + [chosen], logprobs=k)
    last = scored.records[-1]
    return TokenRecord(chosen, last.text, last.logprob, last.rank, at.top, at.entropy)
