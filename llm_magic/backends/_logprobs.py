"""Token probabilities inside transformers' own generation loop, and teacher-forced scoring.

A generation with ``logprobs=K`` records, for every step and on the model's
device, the top K of the distribution, the chosen token's log-probability,
its rank and the entropy. A step copies its logits into a buffer on the
device; a few dozen steps at a time are reduced together, so the reduction
costs a handful of tensor operations per batch of steps rather than per
token. Only those few numbers per step ever leave the device, once, when the
generation ends: no vocabulary-sized array is copied to the CPU, and there is
no second forward pass.

Where the distribution is read:

- ``raw`` (the default): a forward hook on the model takes the logits of the
  last position, exactly what generation selects from before any processor.
- ``sampled``: a logits processor, which transformers runs after its default
  processors, applies the warpers that sampling then applies (built by
  ``backends/_sampling``), and records that distribution. In a seeded sampling
  it runs after those warpers, on the scores drawn from.

The chosen token is known once it is appended: a stopping criterion (called
right after each step) reads it from ``input_ids`` and completes the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..common.sizes import format_size
from ..errors import InvalidOptionError, PromptTooLongError
from ._attention import _BYTES, _is_byte_level
from .base import ScoreCapture, TokenRecord

if TYPE_CHECKING:
    import torch

__all__ = ["Recorder", "TokenTexts", "score"]

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


def _summary(logits: torch.Tensor, k: int, filtered: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of float32 logits (rows, vocab): log-probabilities, top-k of them, entropy.

    Tokens a warper removed have log-probability -inf and p = 0; clamping the
    log-probability to the float32 minimum keeps their p * log p at 0, not NaN.
    """
    import torch

    lp = torch.log_softmax(logits, dim=-1)
    values, ids = torch.topk(lp, k, dim=-1)
    finite = lp if filtered is False else lp.clamp(min=torch.finfo(lp.dtype).min)
    entropy = (lp.exp() * finite).sum(dim=-1).neg_()
    return lp, values, ids, entropy


def _reduce(logits: torch.Tensor, chosen: torch.Tensor, k: int, filtered: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of logits (n, vocab) and the token each row chose (n, 1), packed for records.

    Returns ids (n, 1 + k): [chosen, top ids...], and numbers (n, 3 + k):
    [logprob, entropy, rank, top logprobs...], still on the logits' device.
    """
    import torch

    lp, top_lp, top_ids, entropy = _summary(logits.float(), min(k, int(logits.shape[-1])),
                                            filtered=filtered)
    at = lp.gather(1, chosen)
    rank = (lp > at).sum(dim=1, keepdim=True) + 1
    return (torch.cat([chosen, top_ids], 1),
            torch.cat([at, entropy[:, None], rank.to(at.dtype), top_lp], 1))


#: Steps whose logits the buffer holds before they are reduced together:
#: at most this many, and at most _KEEP_BYTES of float32 logits.
_KEEP_STEPS = 64
_KEEP_BYTES = 32 * 2**20


class Recorder:
    """Collects the records of one generation (a batch of rows) while transformers runs it.

    Use :meth:`hook` as a forward hook of the model (raw mode) or the object
    itself as a logits processor (sampled mode), and :meth:`criteria` as a
    stopping criterion. A step copies its last-position logits into a buffer
    on the model's device, allocated once per generation, and notes its chosen
    token; a few dozen steps at a time are reduced to records in a handful of
    tensor operations, so the cost per generated token stays a small part of a
    forward pass. Copying, rather than keeping each step's own logits alive,
    leaves the memory of generation's loop as it would be without records.
    Every array stays on the model's device until :meth:`records`.
    """

    def __init__(self, k: int, mode: str, texts: TokenTexts,
                 sampling: Sequence[Any] = ()) -> None:
        self.k = k
        self.mode = mode
        self.texts = texts
        self.sampling = list(sampling)
        self._logits: Any = None  # (steps kept, rows, vocab) float32, allocated at step one
        self._chosen: Any = None  # (steps kept, rows) ids
        self._steps = 0  # steps in the buffers, not yet reduced
        self._pending = False  # this step's logits are in the buffer, its token not yet known
        self._packed: list[tuple[Any, Any]] = []  # reduced: (rows, steps, ...) ids, numbers

    # -- where the distribution comes from -----------------------------------

    def hook(self, _module: Any, _args: Any, output: Any) -> None:
        """Forward hook (raw mode): the last position's logits of each forward call."""
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, tuple):
            logits = output[0]
        if logits is not None:
            self._keep_step(logits[:, -1, :])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Logits processor (sampled mode): record what sampling will draw from; change nothing.

        ``sampling`` (the warpers) is empty where the scores come already warped.
        """
        warped = scores
        for warper in self.sampling:
            warped = warper(input_ids, warped)
        self._keep_step(warped)  # copied now: later processors may work in place on scores
        return scores

    def _keep_step(self, logits: torch.Tensor) -> None:
        if self._logits is None:
            import torch

            rows, vocab = logits.shape
            keep = max(1, min(_KEEP_STEPS, _KEEP_BYTES // (4 * rows * vocab)))
            self._logits = torch.empty((keep, rows, vocab), dtype=torch.float32,
                                       device=logits.device)
            self._chosen = torch.empty((keep, rows), dtype=torch.long, device=logits.device)
        self._logits[self._steps].copy_(logits)
        self._pending = True

    # -- the chosen token ------------------------------------------------------

    def criteria(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        """Stopping criterion that never stops: completes the step with the appended token."""
        if self._pending:
            self._pending = False
            self._chosen[self._steps].copy_(input_ids[:, -1])
            self._steps += 1
            if self._steps == self._logits.shape[0]:
                self._reduce()
        return self._never(input_ids)

    def _reduce(self) -> None:
        steps = self._steps
        if not steps:
            return
        self._steps = 0
        _, rows, vocab = self._logits.shape
        # Raw logits are finite; warped ones (sampled mode) have -inf where a warper cut.
        ids, numbers = _reduce(self._logits[:steps].reshape(steps * rows, vocab),
                               self._chosen[:steps].reshape(-1, 1), self.k,
                               filtered=self.mode != "raw")
        self._packed.append((ids.reshape(steps, rows, -1).transpose(0, 1),
                             numbers.reshape(steps, rows, -1).transpose(0, 1)))

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

        self._reduce()
        packed, self._packed = self._packed, []
        if not packed:
            return [() for _ in lengths]
        # rows x steps x (1 + k) ids, and rows x steps x (3 + k) numbers
        ids = torch.cat([i for i, _ in packed], 1).cpu().tolist()
        numbers = torch.cat([n for _, n in packed], 1).cpu().tolist()
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
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]
        return _capture(logits, ids, tokenizer, k=k, start=start)


def score_seq2seq(model: Any, tokenizer: Any, source: Sequence[int], decoder: Sequence[int], *,
                  k: int) -> ScoreCapture:
    """An encoder–decoder's output teacher-forced: ``decoder`` (its start token first) for
    ``source``, in one forward pass; a record for each decoder token after the start."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(source)], device=device),
                       decoder_input_ids=torch.tensor([list(decoder)], device=device),
                       use_cache=False).logits[0]
        return _capture(logits, [int(i) for i in decoder], tokenizer, k=k, start=1)


def _capture(logits: Any, ids: list[int], tokenizer: Any, *, k: int, start: int) -> ScoreCapture:
    """Records of ``ids`` from ``start`` on, read from the logits that predict each."""
    import torch

    texts = TokenTexts(tokenizer)
    n = len(ids)
    target = torch.tensor(ids, device=logits.device)
    rows: list[Any] = []
    numbers: list[Any] = []
    for lo in range(max(start, 1), n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        chunk_ids, chunk_numbers = _reduce(logits[lo - 1 : hi - 1], target[lo:hi, None],
                                           k, filtered=False)
        rows.append(chunk_ids)
        numbers.append(chunk_numbers)
    del logits
    all_ids = torch.cat(rows).cpu().tolist()
    all_numbers = torch.cat(numbers).cpu().tolist()
    records = tuple(_record(texts, i, x) for i, x in zip(all_ids, all_numbers, strict=True))
    return ScoreCapture(tuple(ids), tuple(texts(i) for i in ids), records)
