"""Token records from an OpenAI-compatible server's ``logprobs``, in both of its formats.

Chat completions stream ``choices[].logprobs.content``: one entry per token with
``token``, ``logprob`` and ``top_logprobs`` (a list of ``token``/``logprob``).
Completions stream the legacy ``choices[].logprobs``: parallel lists ``tokens``,
``token_logprobs`` and ``top_logprobs`` (one ``{token: logprob}`` dict per token).

A server sends token texts, not ids (vLLM gives ids only when asked for
``return_tokens_as_token_ids``, which then replaces the texts), so served records
have ``id=None``, and the rank is the token's place among the alternatives the
server sent (None when it is not among them). The server computes the numbers;
which distribution they describe is the server's choice (vLLM: the raw one by
default, ``logprobs-mode`` at its start).

Examples
--------
>>> from types import SimpleNamespace as NS
>>> top = [NS(token=" a", logprob=-0.1), NS(token=" b", logprob=-2.5)]
>>> chat = NS(content=[NS(token=" a", logprob=-0.1, top_logprobs=top)])
>>> [(r.text, r.rank) for r in records_of(chat, chat=True)]
[(' a', 1)]
"""

from __future__ import annotations

import math
from typing import Any

from .base import TokenRecord

__all__ = ["records_of", "request_options"]


def request_options(k: int, chat: bool) -> dict[str, Any]:
    """The request fields that ask for K alternatives per token."""
    return {"logprobs": True, "top_logprobs": k} if chat else {"logprobs": k}


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _record(text: str, logprob: Any, top: list[tuple[str, float]]) -> TokenRecord:
    top = sorted(top, key=lambda t: -t[1])
    rank = next((i for i, (t, _) in enumerate(top, start=1) if t == text), None)
    value = float(logprob) if logprob is not None else -math.inf
    return TokenRecord(None, text, value, rank, tuple((None, t, lp) for t, lp in top))


def records_of(logprobs: Any, *, chat: bool) -> list[TokenRecord]:
    """The records in one streamed choice's ``logprobs`` (empty when it has none)."""
    if logprobs is None:
        return []
    if chat:
        out = []
        for entry in _field(logprobs, "content") or ():
            top = [(str(_field(t, "token")), float(_field(t, "logprob")))
                   for t in _field(entry, "top_logprobs") or ()]
            out.append(_record(str(_field(entry, "token")), _field(entry, "logprob"), top))
        return out
    tokens = _field(logprobs, "tokens") or []
    values = _field(logprobs, "token_logprobs") or []
    tops = _field(logprobs, "top_logprobs") or []
    out = []
    for i, token in enumerate(tokens):
        alternatives = tops[i] if i < len(tops) and tops[i] else {}
        top = [(str(t), float(lp)) for t, lp in dict(alternatives).items()]
        out.append(_record(str(token), values[i] if i < len(values) else None, top))
    return out
