"""The exact logit lens of a transformers model: what each layer would predict if it were last.

One forward pass with ``output_hidden_states`` gives the embeddings and every
block's output. Each of them goes through the model's own final norm (GPT-2's
``ln_f``, the Llama family's ``norm``) and its output embedding
(``get_output_embeddings()``), with the config's logit scale and soft-capping
where it has them. The last hidden state transformers hands back is already
normed: the last row is the model's own logits (its head over that state, as
its forward computes them), never normed twice.

Everything after the forward pass runs in float32 on the model's device, a
chunk of positions at a time: for each chunk the final row first (the model's
prediction, its distribution and entropy), then every other row, reduced at
once to its top-k, the final prediction's probability and rank, its entropy
and its KL divergence from the final distribution. No ``[layers, tokens,
vocab]`` array ever exists; a chunk's logits take about a quarter of the
output embedding's own bytes, and its reduction one more array of that size.

Every call checks itself before it computes a row: the lens applied to the
last block's raw output (taken with a forward hook) and the model's head over
its final hidden state must both equal the logits of the model's own forward
pass, at the first and last positions. An architecture where they do not (a
norm or a scale this module does not know) is refused in one line; a
plausible but wrong grid is never drawn.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._sizes import format_size
from ..errors import InvalidOptionError, NotAvailableError, PromptTooLongError
from ._logprobs import TokenTexts
from .base import LensCapture

if TYPE_CHECKING:
    import torch

__all__ = ["CHECK_TOLERANCE", "final_norm", "kernel_bytes", "lens", "payload_bytes"]

#: How far the self-check lets the lens of the last block drift from the model's
#: logits, in float32. A half-precision model's own logits are rounded to its
#: dtype, so its check also allows a few units of that rounding (see _tolerance).
CHECK_TOLERANCE = 1e-4
#: Names of the final norm on the base model (or its decoder), most common first.
_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "norm_f", "ln_out")
#: Floor of the bytes one chunk's float32 logits may take.
_CHUNK_FLOOR = 256 * 1024


def kernel_bytes(rows: int, tokens: int, k: int) -> int:
    """Bytes a lens keeps in the kernel: top-k ids and probabilities, four float32 metrics."""
    return rows * tokens * (k * 8 + 16)


def payload_bytes(rows: int, tokens: int, k: int) -> int:
    """Bytes a lens sends to its view: int32 ids, float16 probabilities, float16/int32 metrics."""
    return rows * tokens * (k * 6 + 10)


def _arch(model: Any) -> str:
    return str((getattr(model.config, "architectures", None) or [type(model).__name__])[0])


def _text_config(model: Any) -> Any:
    get = getattr(model.config, "get_text_config", None)
    return get() if callable(get) else model.config


def final_norm(model: Any) -> Any:
    """The model's own final norm module, found by name on the base model or its decoder."""
    import torch

    base = getattr(model, "base_model", model)
    for holder in (base, getattr(base, "decoder", None), getattr(base, "model", None), model):
        for name in _NORMS:
            module = getattr(holder, name, None) if holder is not None else None
            if isinstance(module, torch.nn.Module):
                return module
    raise NotAvailableError(
        f"Cannot find the final norm of {_arch(model)}, so its logit lens cannot be exact; "
        "it is refused rather than drawn without the norm."
    )


def _last_block(model: Any, layers: int) -> Any:
    """The last of the model's ``layers`` blocks: the one module list of that length."""
    import torch

    base = getattr(model, "base_model", model)
    for _name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return module[layers - 1]
    raise NotAvailableError(
        f"Cannot find the {layers} blocks of {_arch(model)}, so its logit lens cannot check "
        "itself against the model's own output; it is refused."
    )


def _float32(norm: Any) -> Any:
    """The norm itself when its parameters are float32, else a float32 copy (hidden-size only)."""
    if all(p.dtype.is_floating_point and p.itemsize == 4 for p in norm.parameters()):
        return norm
    return copy.deepcopy(norm).float()


class _Head:
    """The model's path from a hidden state to float32 logits: output embedding, scale, cap."""

    def __init__(self, model: Any) -> None:
        self.embedding = model.get_output_embeddings()
        if self.embedding is None:
            raise NotAvailableError(
                f"{_arch(model)} has no output embedding, so it has no logit lens."
            )
        self.weight = self.embedding.weight
        config = _text_config(model)
        self.scale = getattr(config, "logit_scale", None)  # Cohere multiplies the logits
        self.division = getattr(config, "logits_scaling", None)  # Granite divides them
        self.cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2 soft-caps them

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.embedding(hidden.to(self.weight.dtype)).float()
        # In place: the product is a fresh array, and a copy would double the chunk's bytes.
        if isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool):
            logits.mul_(self.scale)
        if isinstance(self.division, (int, float)) and self.division not in (0, 1):
            logits.div_(self.division)
        if isinstance(self.cap, (int, float)) and self.cap:
            logits.div_(self.cap).tanh_().mul_(self.cap)
        return logits


def _tolerance(dtype: Any, logits: torch.Tensor) -> float:
    """1e-4 in float32; a half-precision model's logits also carry its dtype's rounding."""
    import torch

    if dtype == torch.float32 or not dtype.is_floating_point:
        return CHECK_TOLERANCE
    eps = float(torch.finfo(dtype).eps)
    return CHECK_TOLERANCE + 4 * eps * max(1.0, float(logits.abs().max()))


def _forward(model: Any, ids: list[int], at: list[int], last: Any) -> tuple[Any, Any, Any]:
    """One forward pass: hidden states, the model's logits at ``at``, the last block's output."""
    import torch

    device = next(model.parameters()).device
    seen: dict[str, Any] = {}

    def keep(_module: Any, _args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        seen["raw"] = hidden[0, at].detach()

    kwargs: dict[str, Any] = {"output_hidden_states": True, "use_cache": False}
    keep_some = "logits_to_keep" in inspect.signature(model.forward).parameters
    if keep_some:  # the model's head over the checked positions only, not T x vocab
        kwargs["logits_to_keep"] = torch.tensor(at, device=device)
    handle = last.register_forward_hook(keep)
    try:
        out = model(input_ids=torch.tensor([ids], device=device), **kwargs)
    finally:
        handle.remove()
    logits = out.logits[0] if keep_some else out.logits[0, at]
    return out.hidden_states, logits.float(), seen.get("raw")


def _check(model: Any, head: _Head, norm: Any, hidden: Any, real: torch.Tensor,
           raw: Any, at: list[int]) -> float:
    """Refuse unless the lens of the last block and the last row both equal the model's logits."""
    if raw is None:
        raise NotAvailableError(
            f"The last block of {_arch(model)} gave no output to check the lens against; "
            "its logit lens is refused."
        )
    device = head.weight.device
    lensed = head(norm(raw.to(device).float()))
    final = head(hidden[-1][0, at].to(device))
    diff = max(float((lensed - real).abs().max()), float((final - real).abs().max()))
    tol = _tolerance(head.weight.dtype, real)
    if not diff <= tol:  # NaN fails too
        raise NotAvailableError(
            f"The logit lens of {_arch(model)} does not reproduce the model's own logits "
            f"(off by {diff:.3g}, more than {tol:.1g}): its final norm or output scaling is not "
            "the one this lens applies, so it is refused rather than drawn wrong."
        )
    return diff


def _reduce(logits: torch.Tensor, k: int, final: torch.Tensor | None,
            p_final: torch.Tensor | None = None) -> tuple[Any, ...]:
    """One row's chunk of float32 logits (c, vocab) to top-k, final prob and rank, entropy, KL.

    ``final`` is the final prediction's id per position and ``p_final`` its
    distribution (both None for the final row itself, whose distribution is
    returned instead of a KL). The logits are shifted in place by their maximum,
    so the sums over the vocabulary add small numbers and the entropy keeps
    float32's precision however large the logits are. Besides the logits, one
    array of the same size is used (two for the final row, whose ``p`` is kept).
    """
    import torch

    values, ids = torch.topk(logits, k, dim=-1)
    at = logits.gather(1, ids[:, :1] if final is None else final)
    p = torch.gt(logits, at, out=torch.empty_like(logits))
    rank = p.sum(-1) + 1
    top1 = values[:, :1]
    shifted = logits.sub_(top1)
    torch.exp(shifted, out=p)
    total = p.sum(-1, keepdim=True)
    log_total = torch.log(total)
    probs = torch.exp(values - top1 - log_total)
    prob = torch.exp(at - top1 - log_total)[:, 0]
    if final is None:
        p.div_(total)
        # H = log_total - sum p * shifted; the product goes into the shifted logits' array.
        entropy = log_total[:, 0] - shifted.mul_(p).sum(-1)
        return ids, probs, prob, rank, entropy, p
    entropy = log_total[:, 0] - p.mul_(shifted).sum(-1) / total[:, 0]
    # KL(final || row) = sum p_f (log p_f - log p_row), log p_row = shifted - log_total.
    assert p_final is not None
    kl = log_total[:, 0] - torch.mul(p_final, shifted, out=p).sum(-1)
    return ids, probs, prob, rank, entropy, kl


def _chunk_size(head_bytes: int, vocab: int) -> int:
    """Positions per chunk: a multiple of 64 (matrix products run at full speed), whose
    float32 logits take about a quarter of the output embedding's bytes (at least 256 KB)."""
    budget = max(_CHUNK_FLOOR, head_bytes // 4)
    return max(64, budget // (4 * vocab) // 64 * 64)


def lens(model: Any, tokenizer: Any, ids: Sequence[int], *, top: int, max_tokens: int,
         context_length: int | None = None, texts: TokenTexts | None = None) -> LensCapture:
    """The exact logit lens of ``ids``: rows = embeddings, each block (the last = the output).

    Examples
    --------
    >>> cap = lens(model, tokenizer, [1, 2, 3], top=5, max_tokens=2048)  # doctest: +SKIP
    >>> cap.top_ids.shape  # rows, positions, k  # doctest: +SKIP
    (5, 3, 5)
    """
    import numpy as np
    import torch

    ids = [int(i) for i in ids]
    n = len(ids)
    if n == 0:
        raise InvalidOptionError("The text encodes to no tokens; write some text.")
    config = _text_config(model)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    head = _Head(model)
    vocab = int(head.weight.shape[0])
    k = min(int(top), vocab)
    rows = layers + 1
    if n > max_tokens:
        raise InvalidOptionError(
            f"The sequence is {n} tokens, past the logit lens cap of {max_tokens}: its lens "
            f"would take {format_size(kernel_bytes(rows, n, k))} in the kernel and "
            f"{format_size(payload_bytes(rows, n, k))} in the view ({rows} rows x {n} positions "
            f"x top {k}). Shorten the text, or pass max_tokens={n} if that is fine."
        )
    if context_length is not None and n > context_length:
        raise PromptTooLongError(
            f"The sequence is {n} tokens, but the model reads at most {context_length}. "
            "Shorten the text."
        )
    norm = _float32(final_norm(model))
    last = _last_block(model, layers)
    at = sorted({0, n - 1})
    device = head.weight.device
    with torch.inference_mode():
        hidden, real, raw = _forward(model, ids, at, last)
        if hidden is None or len(hidden) != rows:
            got = "none" if hidden is None else len(hidden)
            raise NotAvailableError(
                f"{_arch(model)} handed out {got} hidden states, not the embeddings and its "
                f"{layers} blocks, so its logit lens is refused."
            )
        check = _check(model, head, norm, hidden, real, raw, at)
        del real, raw
        out_ids = torch.empty((rows, n, k), dtype=torch.int32, device=device)
        out_probs = torch.empty((rows, n, k), dtype=torch.float32, device=device)
        metrics = torch.zeros((4, rows, n), dtype=torch.float32, device=device)
        chunk = _chunk_size(head.weight.nbytes, vocab)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            _chunk(head, norm, hidden, lo, hi, k, out_ids, out_probs, metrics)
        del hidden
        top_ids = out_ids.cpu().numpy()
        top_probs = out_probs.cpu().numpy()
        final_prob, final_rank, entropy, kl = metrics.cpu().numpy()
    texts = texts or TokenTexts(tokenizer)  # the backend's own keeps each id's text
    vocab_texts = {int(i): texts(int(i)) for i in np.unique(np.concatenate(
        [top_ids.reshape(-1), np.asarray(ids, dtype=np.int32)]))}
    return LensCapture(
        ids=tuple(ids), texts=tuple(vocab_texts[i] for i in ids), top_ids=top_ids,
        top_probs=top_probs, final_prob=final_prob, final_rank=final_rank.astype(np.int32),
        entropy=entropy, kl=np.maximum(kl, 0.0), vocab=vocab_texts, vocab_size=vocab,
        check=check,
    )


def _chunk(head: _Head, norm: Any, hidden: Any, lo: int, hi: int, k: int,
           out_ids: torch.Tensor, out_probs: torch.Tensor, metrics: torch.Tensor) -> None:
    """Every row of positions ``lo:hi``: the final row first, then the others against it."""
    device = head.weight.device
    last = len(hidden) - 1
    # The last hidden state is already normed: the final row is the model's own logits.
    logits = head(hidden[last][0, lo:hi].to(device))
    ids, probs, prob, rank, entropy_final, p_final = _reduce(logits, k, None)
    final = ids[:, :1]
    _store(out_ids, out_probs, metrics, last, lo, hi, ids, probs, prob, rank, entropy_final)
    del logits
    for row in range(last):
        logits = head(norm(hidden[row][0, lo:hi].to(device).float()))
        ids, probs, prob, rank, entropy, kl = _reduce(logits, k, final, p_final)
        del logits
        _store(out_ids, out_probs, metrics, row, lo, hi, ids, probs, prob, rank, entropy,
               kl - entropy_final)


def _store(out_ids: torch.Tensor, out_probs: torch.Tensor, metrics: torch.Tensor, row: int,
           lo: int, hi: int, ids: torch.Tensor, probs: torch.Tensor, prob: torch.Tensor,
           rank: torch.Tensor, entropy: torch.Tensor, kl: torch.Tensor | None = None) -> None:
    out_ids[row, lo:hi] = ids
    out_probs[row, lo:hi] = probs
    metrics[0, row, lo:hi] = prob
    metrics[1, row, lo:hi] = rank
    metrics[2, row, lo:hi] = entropy
    if kl is not None:  # the final row's KL to itself stays 0
        metrics[3, row, lo:hi] = kl
