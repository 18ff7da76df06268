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


def _summary(logits: torch.Tensor, k: int, filtered: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of float32 logits (rows, vocab): log-probabilities, top-k of them, entropy.

    Few operations on purpose: each costs a dispatch at every generated token.
    Tokens a warper removed have log-probability -inf and p = 0; clamping the
    log-probability to the float32 minimum keeps their p * log p at 0, not NaN.
    """
    import torch

    lp = torch.log_softmax(logits, dim=-1)
    values, ids = torch.topk(lp, k, dim=-1)
    finite = lp if filtered is False else lp.clamp(min=torch.finfo(lp.dtype).min)
    entropy = (lp.exp() * finite).sum(dim=-1).neg_()
    return lp, values, ids, entropy


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
        self._steps: list[tuple[Any, ...]] = []

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
        # Raw logits are finite; warped ones (sampled mode) have -inf where a warper cut.
        self._pending = _summary(logits, min(self.k, int(logits.shape[-1])),
                                 filtered=self.mode != "raw")

    # -- the chosen token ------------------------------------------------------

    def criteria(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """Stopping criterion that never stops: completes the step with the appended token."""
        pending, self._pending = self._pending, None
        if pending is not None:
            lp, top_lp, top_ids, entropy = pending
            chosen = input_ids[:, -1:]
            at = lp.gather(1, chosen)
            # Packed once at the end: a step only appends its small tensors.
            self._steps.append((chosen, top_ids, at, entropy, (lp > at).sum(dim=1), top_lp))
        return self._never(input_ids)

    def _never(self, input_ids: torch.Tensor) -> torch.Tensor:
        never = getattr(self, "_no", None)
        if never is None or never.shape[0] != input_ids.shape[0]:
            import torch

            never = self._no = torch.zeros(input_ids.shape[0], dtype=torch.bool,
                                           device=input_ids.device)
        return never

    # -- results --------------------------------------------------------------

    def records(self, lengths: Sequence[int]) -> list[tuple[TokenRecord, ...]]:
        """Each row's records, cut to that row's number of new tokens."""
        import torch

        if not self._steps:
            return [() for _ in lengths]
        chosen, top_ids, at, entropy, above, top_lp = (list(x) for x in zip(*self._steps,
                                                                             strict=True))
        self._steps = []
        packed_ids = torch.stack([torch.cat(step, 1)
                                  for step in zip(chosen, top_ids, strict=True)], 1)
        packed = torch.stack([
            torch.cat([a, e[:, None], (r[:, None] + 1).to(a.dtype), t], 1)
            for a, e, r, t in zip(at, entropy, above, top_lp, strict=True)], 1)
        # rows x steps x (1 + k) ids, and rows x steps x (3 + k) numbers
        ids, numbers = packed_ids.cpu().tolist(), packed.cpu().tolist()
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
            lp, top_lp, top_ids, entropy = _summary(chunk, min(k, int(chunk.shape[-1])),
                                                    filtered=False)
            at = lp.gather(1, target[lo:hi, None])
            rank = (lp > at).sum(dim=1, keepdim=True) + 1
            rows.append(torch.cat([target[lo:hi, None], top_ids], 1))
            numbers.append(torch.cat([at, entropy[:, None], rank.float(), top_lp], 1))
        del logits
        all_ids = torch.cat(rows).cpu().tolist()
        all_numbers = torch.cat(numbers).cpu().tolist()
    records = tuple(_record(texts, i, x) for i, x in zip(all_ids, all_numbers, strict=True))
    return ScoreCapture(tuple(ids), tuple(texts(i) for i in ids), records)
