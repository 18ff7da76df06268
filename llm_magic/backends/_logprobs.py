"""Token probabilities inside transformers' own generation loop, and teacher-forced scoring.

A generation with ``logprobs=K`` records, at every step and on the model's
device, the top K of the distribution, the chosen token's log-probability,
its rank and the entropy. Only those few numbers per step ever leave the
device, once, when the generation ends: no vocabulary-sized array is copied to
the CPU, and there is no second forward pass.

Where the distribution is read:

- ``raw`` (the default): a forward hook on the model takes the logits of the
  last position, exactly what generation selects from before any processor.
- ``sampled``: a logits processor, which transformers runs after its default
  processors, applies the same temperature, top-k and top-p warpers that
  sampling then applies, and records that distribution.

The chosen token is known once it is appended: a stopping criterion (called
right after each step) reads it from ``input_ids`` and completes the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._sizes import format_size
from ..errors import InvalidOptionError, PromptTooLongError
from ._attention import _BYTES, _is_byte_level
from .base import ScoreCapture, TokenRecord

if TYPE_CHECKING:
    import torch

__all__ = ["Recorder", "TokenTexts", "score", "warpers"]

#: Positions whose logits are reduced at once when scoring (bounds the float32 copy).
_CHUNK = 256


class TokenTexts:
    """Each id's text on its own, computed once per id.

    A byte-level token that is part of a multi-byte character shows its bytes
    (``\\xe2\\x80``); SentencePiece's ``▁`` is a space; special tokens stay as
    they are. Whitespace stays real: views make it visible.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.byte_level = _is_byte_level(tokenizer)
        self.specials = set(getattr(tokenizer, "all_special_tokens", None) or ())
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self._text(token_id)
        return text

    def _text(self, token_id: int) -> str:
        token = self.tokenizer.convert_ids_to_tokens(int(token_id))
        token = "" if token is None else str(token)
        if token in self.specials:
            return token
        if self.byte_level and all(ch in _BYTES for ch in token):
            raw = bytes(_BYTES[ch] for ch in token)
            return raw.decode("utf-8", errors="backslashreplace")
        if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            return f"\\x{token[3:5].lower()}"  # SentencePiece's byte fallback
        return token.replace("▁", " ")


def warpers(temperature: float, top_k: int | None, top_p: float | None) -> list[Any]:
    """The warpers transformers' sampling applies for these settings, in its order."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if temperature > 0 and temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        out.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return out


def _summary(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor]:
    """Per row of float32 logits (rows, vocab): log-normaliser, top-k values and ids, entropy."""
    import torch

    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    values, ids = torch.topk(logits, k, dim=-1)
    p = torch.softmax(logits, dim=-1)
    # Entropy = lse - sum(p * logits); -inf logits (filtered tokens) have p = 0 and add nothing.
    finite = torch.where(p > 0, logits, torch.zeros_like(logits))
    entropy = lse.squeeze(-1) - (p * finite).sum(dim=-1)
    return lse, values - lse, ids, entropy


class Recorder:
    """Collects the records of one generation (a batch of rows) while transformers runs it.

    Use :meth:`hook` as a forward hook of the model (raw mode) or the object
    itself as a logits processor (sampled mode), and :meth:`criteria` as a
    stopping criterion. Every array stays on the model's device until
    :meth:`records`.
    """

    def __init__(self, k: int, mode: str, texts: TokenTexts,
                 sampling: Sequence[Any] = ()) -> None:
        self.k = k
        self.mode = mode
        self.texts = texts
        self.sampling = list(sampling)
        self._pending: tuple[Any, ...] | None = None
        self._steps: list[tuple[Any, Any]] = []

    # -- where the distribution comes from -----------------------------------

    def hook(self, _module: Any, _args: Any, output: Any) -> None:
        """Forward hook (raw mode): the last position's logits of each forward call."""
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, tuple):
            logits = output[0]
        if logits is not None:
            self._observe(logits[:, -1, :].float())

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Logits processor (sampled mode): record what sampling will draw from; change nothing."""
        warped = scores
        for warper in self.sampling:
            warped = warper(input_ids, warped)
        self._observe(warped.float())
        return scores

    def _observe(self, logits: torch.Tensor) -> None:
        k = min(self.k, int(logits.shape[-1]))
        lse, top_lp, top_ids, entropy = _summary(logits, k)
        self._pending = (logits, lse, top_lp, top_ids, entropy)

    # -- the chosen token ------------------------------------------------------

    def criteria(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """Stopping criterion that never stops: completes the step with the appended token."""
        import torch

        pending, self._pending = self._pending, None
        if pending is not None:
            logits, lse, top_lp, top_ids, entropy = pending
            chosen = input_ids[:, -1:]
            at = logits.gather(1, chosen)
            rank = (logits > at).sum(dim=1, keepdim=True) + 1
            numbers = torch.cat([at - lse, entropy[:, None], rank.to(logits.dtype), top_lp], 1)
            self._steps.append((torch.cat([chosen, top_ids], 1), numbers))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    # -- results --------------------------------------------------------------

    def records(self, lengths: Sequence[int]) -> list[tuple[TokenRecord, ...]]:
        """Each row's records, cut to that row's number of new tokens."""
        import torch

        if not self._steps:
            return [() for _ in lengths]
        ids = torch.stack([s[0] for s in self._steps], 1).cpu().tolist()  # rows, steps, 1+k
        numbers = torch.stack([s[1] for s in self._steps], 1).cpu().tolist()
        self._steps = []
        return [tuple(_record(self.texts, i, n)
                      for i, n in zip(row_ids[:length], row_numbers[:length], strict=True))
                for row_ids, row_numbers, length in zip(ids, numbers, lengths, strict=True)]


def _record(text: TokenTexts, ids: list[int], numbers: list[float]) -> TokenRecord:
    """A record from one packed step: [chosen, top ids...], [logprob, entropy, rank, top...]."""
    chosen, *top_ids = ids
    logprob, entropy, rank, *top_lp = numbers
    top = tuple((int(i), text(i), float(lp)) for i, lp in zip(top_ids, top_lp, strict=True))
    return TokenRecord(int(chosen), text(chosen), float(logprob), int(rank), top,
                       float(entropy) if math.isfinite(entropy) else None)


def score(model: Any, tokenizer: Any, ids: Sequence[int], *, k: int, start: int = 1,
          max_tokens: int, context_length: int | None) -> ScoreCapture:
    """One forward pass over ``ids``; a record for each token from ``start`` on.

    The logits at position t predict token t + 1. They are reduced to records a
    chunk of positions at a time, in float32 on the model's device.
    """
    import torch

    ids = [int(i) for i in ids]
    n = len(ids)
    if n < 2:
        raise InvalidOptionError(
            "Scoring needs at least two tokens: the first is only read, every later one is "
            f"scored. This text is {n} token{'s' if n != 1 else ''}; write a longer text."
        )
    if n > max_tokens:
        vocab = int(getattr(model.config, "vocab_size", 0) or 0)
        raise InvalidOptionError(
            f"The text is {n} tokens, past the scoring cap of {max_tokens}; its logits would "
            f"take {format_size(n * vocab * 4)} in float32. Shorten it, or pass "
            f"max_tokens={n} if the memory is there."
        )
    if context_length is not None and n > context_length:
        raise PromptTooLongError(
            f"The text is {n} tokens, but the model reads at most {context_length}. Shorten it."
        )
    texts = TokenTexts(tokenizer)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]
        target = torch.tensor(ids, device=device)
        rows: list[Any] = []
        numbers: list[Any] = []
        for lo in range(max(start, 1), n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            chunk = logits[lo - 1 : hi - 1].float()
            lse, top_lp, top_ids, entropy = _summary(chunk, min(k, int(chunk.shape[-1])))
            at = chunk.gather(1, target[lo:hi, None])
            rank = (chunk > at).sum(dim=1, keepdim=True) + 1
            rows.append(torch.cat([target[lo:hi, None], top_ids], 1))
            numbers.append(torch.cat([at - lse, entropy[:, None], rank.float(), top_lp], 1))
        del logits
        all_ids = torch.cat(rows).cpu().tolist()
        all_numbers = torch.cat(numbers).cpu().tolist()
    records = tuple(_record(texts, i, x) for i, x in zip(all_ids, all_numbers, strict=True))
    return ScoreCapture(tuple(ids), tuple(texts(i) for i in ids), records)
