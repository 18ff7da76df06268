"""Token records (``logprobs=K``) in the compact form a history row stores, and compared.

Private to :mod:`llm_magic.history`: :mod:`.read` hands the names on.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence

from ..backends.base import TokenRecord

__all__ = ["RECORD_TOLERANCE", "decode_records", "encode_records", "record_difference"]

#: How far a rerun's log-probabilities may be from the recorded ones and still match.
RECORD_TOLERANCE = 1e-4


# -- token records in compact form ----------------------------------------------

_MAGIC = b"LMTR"
_LAYOUT = 1
_HEADER = struct.Struct("<4sHHI")  # magic, layout version, K, steps
_EMPTY = -1  # a slot with no alternative (fewer than K were known)


def encode_records(records: Sequence[TokenRecord], k: int) -> bytes:
    """The records of one generation as one BLOB: 56 bytes a token at K=5, plus the texts.

    Layout (little-endian), for ``n`` steps and ``w = 1 + K`` slots a step (the
    chosen token, then the K alternatives likeliest first):

    ======================  =================================================
    12 bytes                ``b"LMTR"``, layout version (uint16), K (uint16),
                            n (uint32)
    int32 ``[n, w]``        token ids; -1 is an empty slot; ``<= -2`` a token
                            the backend gave no id (its text is in the table)
    float32 ``[n, w]``      natural-log probabilities (-inf: filtered out)
    int32 ``[n]``           rank of the chosen token (0: unknown)
    float32 ``[n]``         entropy in nats (NaN: unknown)
    UTF-8 JSON              ``[[slot id, text], ...]``: each id used, once
    ======================  =================================================

    That is ``8 (K + 1) + 8`` bytes a token plus the distinct texts. The
    numbers were float32 on the device, so storing float32 loses nothing.
    """
    k = max([k, *(len(r.top) for r in records)])
    width = 1 + k
    ids: list[int] = []
    lps: list[float] = []
    texts: dict[int, str] = {}
    nameless: dict[str, int] = {}

    def slot(token: int | None, text: str) -> int:
        if token is None:
            token = nameless.setdefault(text, -2 - len(nameless))
        texts.setdefault(int(token), text)
        return int(token)

    for r in records:
        ids.append(slot(r.id, r.text))
        lps.append(r.logprob)
        for token, text, lp in r.top[:k]:
            ids.append(slot(token, text))
            lps.append(lp)
        pad = width - 1 - min(len(r.top), k)
        ids += [_EMPTY] * pad
        lps += [math.nan] * pad
    n = len(records)
    table = json.dumps(sorted(texts.items()), ensure_ascii=False, separators=(",", ":"))
    return b"".join([
        _HEADER.pack(_MAGIC, _LAYOUT, k, n),
        struct.pack(f"<{n * width}i", *ids),
        struct.pack(f"<{n * width}f", *lps),
        struct.pack(f"<{n}i", *(r.rank or 0 for r in records)),
        struct.pack(f"<{n}f", *(math.nan if r.entropy is None else r.entropy for r in records)),
        table.encode("utf-8", "surrogatepass"),
    ])


def decode_records(blob: bytes) -> tuple[TokenRecord, ...]:
    """The records :func:`encode_records` stored, as :class:`TokenRecord` again."""
    magic, layout, k, n = _HEADER.unpack_from(blob)
    if magic != _MAGIC or layout != _LAYOUT:
        raise ValueError(f"not token records of layout {_LAYOUT} ({magic!r}, {layout})")
    width, at = 1 + k, _HEADER.size
    ids = struct.unpack_from(f"<{n * width}i", blob, at)
    at += 4 * n * width
    lps = struct.unpack_from(f"<{n * width}f", blob, at)
    at += 4 * n * width
    ranks = struct.unpack_from(f"<{n}i", blob, at)
    entropies = struct.unpack_from(f"<{n}f", blob, at + 4 * n)
    texts = {int(i): t for i, t in json.loads(blob[at + 8 * n:].decode("utf-8", "surrogatepass"))}

    def named(token: int) -> int | None:
        return token if token >= 0 else None

    out = []
    for step in range(n):
        row = range(step * width, (step + 1) * width)
        chosen, *alternatives = ((ids[i], lps[i]) for i in row)
        top = tuple((named(i), texts[i], lp) for i, lp in alternatives if i != _EMPTY)
        entropy = entropies[step]
        out.append(TokenRecord(named(chosen[0]), texts[chosen[0]], chosen[1],
                               ranks[step] or None, top,
                               None if math.isnan(entropy) else entropy))
    return tuple(out)


def _same(a: TokenRecord, b: TokenRecord) -> bool:
    def close(x: float, y: float) -> bool:
        return x == y or abs(x - y) <= RECORD_TOLERANCE

    return (a.id == b.id and close(a.logprob, b.logprob)
            and [t[0] for t in a.top] == [t[0] for t in b.top]
            and all(close(x[2], y[2]) for x, y in zip(a.top, b.top, strict=True)))


def record_difference(old: Sequence[TokenRecord], new: Sequence[TokenRecord], *,
                      partial: bool = False) -> int | None:
    """The first position where the records differ; None when they match.

    They match when the ids (chosen and alternatives) are equal and every
    log-probability is within :data:`RECORD_TOLERANCE`. ``partial``: ``old``
    was cut short, and only has to be the start of ``new``.
    """
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if not _same(a, b):
            return i
    if len(new) < len(old) or (not partial and len(new) != len(old)):
        return min(len(old), len(new))
    return None
