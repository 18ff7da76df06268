"""Two loaded models' next-token distributions over one text, position by position.

What ``lm.quality`` reads (a quantized model against its full-precision reference,
or any two models that share a tokenizer): one forward pass each over the same
ids, then the KL divergence from the reference, top-1 agreement and each model's
log-probability of the text's own next token, in float32, a chunk of positions at
a time. An encoder–decoder pair reads the text as the source and compares the
decoder's distributions over a given output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..errors import InvalidOptionError, NotAvailableError, PromptTooLongError
from .base import DivergenceCapture

__all__ = ["divergence"]


def divergence(backend: Any, reference: Any, text: str, *, max_tokens: int,
               target: str | None = None) -> DivergenceCapture:
    """``backend``'s next-token distributions over ``text`` against ``reference``'s.

    Both read the same ids in one forward pass each; the KL, the agreement and
    the log-probabilities are float32 math, a chunk of positions at a time. An
    encoder–decoder pair reads ``text`` as the source and compares the decoder's
    distributions over ``target`` (its start token, then the target's tokens).
    """
    if not hasattr(reference, "_ids") or getattr(reference, "model", None) is None:
        raise NotAvailableError(
            f"{reference.spec.name!r} is served elsewhere: its full distribution is not "
            "available here. Compare with a model loaded in this kernel."
        )
    kinds = {bool(getattr(b, "seq2seq", False)) for b in (backend, reference)}
    if len(kinds) == 2:
        raise InvalidOptionError(f"{backend.spec.name!r} and {reference.spec.name!r} are not "
                                 "both encoder–decoders (or both causal): compare like with like.")
    seq2seq = kinds == {True}
    if seq2seq and target is None:
        raise InvalidOptionError(
            f"{backend.spec.name!r} is an encoder–decoder: its predictions are the output's. "
            "Pass target= (the translation both read, e.g. the reference's own output).")
    if not seq2seq and target is not None:
        raise InvalidOptionError("target= is an encoder–decoder's output; for a causal LM, "
                                 "append it to the text.")
    ids, run = _inputs(backend, text, target)
    if list(_inputs(reference, text, target)[0]) != list(ids):
        raise InvalidOptionError(
            f"{backend.spec.name!r} and {reference.spec.name!r} tokenize the text differently; "
            "their distributions cannot be compared token by token."
        )
    limit = min(max_tokens, backend.context_length or max_tokens,
                reference.context_length or max_tokens)
    if len(ids) > limit:
        what = "target" if seq2seq else "text"
        raise PromptTooLongError(
            f"The {what} is {len(ids)} tokens; compare at most {limit}. Shorten it."
        )
    if len(ids) < 2:
        raise InvalidOptionError("The text is one token: nothing follows it to predict.")
    logits = _logits(backend.model, ids, run)
    ref_logits = _logits(reference.model, ids, run)
    if logits.shape[-1] != ref_logits.shape[-1]:
        raise InvalidOptionError(
            f"{backend.spec.name!r} and {reference.spec.name!r} have vocabularies of "
            f"{logits.shape[-1]} and {ref_logits.shape[-1]} tokens; compare models that share one."
        )
    target_ids = torch.tensor(ids[1:], dtype=torch.long)
    parts = [_compare(a, b, t) for a, b, t in _chunks(logits, ref_logits, target_ids)]
    kl, agree, own, ref = (torch.cat(p).numpy() for p in zip(*parts, strict=True))
    texts = backend._texts()
    return DivergenceCapture(tuple(ids), tuple(texts(i) for i in ids), kl.astype("float64"),
                             agree, own.astype("float64"), ref.astype("float64"))


def _inputs(backend: Any, text: str, target: str | None) -> tuple[list[int], dict[str, Any]]:
    """The ids whose next tokens are compared, and the other inputs of the forward pass (an
    encoder–decoder's source, which its decoder reads through cross-attention)."""
    ids = backend._ids(text, "compare")
    if target is None:
        return ids, {}
    from . import seq2seq as _s2s

    _s2s.check_source(backend.spec.name, len(ids), backend.context_length)
    return _s2s.decoder_ids(backend, target, "compare"), {"input_ids": ids}


def _logits(model: Any, ids: list[int], run: dict[str, Any]) -> torch.Tensor:
    device = next(model.parameters()).device
    as_ids = torch.tensor([ids], device=device)
    with torch.inference_mode():
        if run:
            source = torch.tensor([run["input_ids"]], device=device)
            out = model(input_ids=source, decoder_input_ids=as_ids, use_cache=False)
        else:
            out = model(input_ids=as_ids, use_cache=False)
    return out.logits[0, :-1].to("cpu")


def _chunks(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor,
            size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    for start in range(0, len(t), size):
        yield a[start:start + size], b[start:start + size], t[start:start + size]


def _compare(logits: torch.Tensor, ref_logits: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        lp = torch.log_softmax(logits.float(), dim=-1)
        ref = torch.log_softmax(ref_logits.float(), dim=-1)
        kl = (ref.exp() * (ref - lp)).sum(-1).clamp_min(0.0)
        agree = lp.argmax(-1) == ref.argmax(-1)
        rows = torch.arange(len(target))
        return kl, agree, lp[rows, target], ref[rows, target]
