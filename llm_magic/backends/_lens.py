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
prediction and its distribution), then every other row. Each row's logits are
reduced at once, in a few passes over the vocabulary (top-k, a count, a
softmax, two sums), to its top-k and their probabilities, the final
prediction's probability and the count of logits above it, and the sums that
make its entropy and its KL divergence from the final distribution; rank,
entropy and KL are then made of those for the whole grid in one step. No
``[layers, tokens, vocab]`` array ever exists; a chunk's logits take about a
quarter of the output embedding's own bytes, and its reduction two more arrays
of that size (one of them the final distribution, kept for the chunk).

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

from ..common.sizes import format_size
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
#: From this many logits per row, top-k runs in two stages (see _topk), over groups of
#: _GROUP columns. Measured on one CPU thread, top 5: 1.1x faster at 1,536 columns,
#: 2.3x to 2.7x at 2,048 and 4,096, 2.9x at 50,257; at 512, 1.1x to 1.7x slower.
_TWO_STAGE = 1536
_GROUP = 64


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


def _topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` of (n, vocab) float32 logits along the vocabulary, the same values and ids.

    From ``_TWO_STAGE`` columns on, in two stages, because CPU top-k copies and
    compares every element one by one while a maximum is vectorised: the maximum of
    each group of ``_GROUP`` columns, the k groups with the largest, then the top-k
    among their k * ``_GROUP`` columns (and the columns past the last whole group).
    Exact: each of the k largest logits lies in a group whose maximum is among the
    k largest maxima. Tied logits may come in another order than ``torch.topk``'s.
    """
    import torch

    n, vocab = logits.shape
    groups = vocab // _GROUP
    if vocab < _TWO_STAGE or groups < k or not logits.is_contiguous():
        return torch.topk(logits, k, dim=-1)
    width = groups * _GROUP
    blocks = logits[:, :width].view(n, groups, _GROUP)
    best = torch.topk(blocks.amax(-1), k, dim=-1).indices
    if width == vocab:  # whole rows of a flat view: a copy of contiguous blocks
        flat = best + torch.arange(0, n * groups, groups, device=logits.device).unsqueeze(1)
        candidates = logits.view(n * groups, _GROUP).index_select(0, flat.view(-1))
    else:
        rows = torch.arange(n, device=logits.device).unsqueeze(1)
        candidates = torch.cat([blocks[rows, best].view(n, k * _GROUP), logits[:, width:]], 1)
    values, at = torch.topk(candidates.view(n, -1), k, dim=-1)
    group = at.div(_GROUP, rounding_mode="floor")
    ids = best.gather(1, group.clamp_(max=k - 1)).mul_(_GROUP).add_(at.remainder(_GROUP))
    if width < vocab:  # a candidate past the k groups is a column past the last whole group
        ids = torch.where(at < k * _GROUP, ids, at + (width - k * _GROUP))
    return values, ids


def _reduce(logits: torch.Tensor, p: torch.Tensor, k: int, final: torch.Tensor | None,
            p_final: torch.Tensor | None, out_ids: torch.Tensor, out_probs: torch.Tensor,
            metrics: torch.Tensor) -> None:
    """One row's chunk of float32 logits (c, vocab), reduced into the result's buffers.

    ``out_ids`` and ``out_probs`` are the row's (c, k) cells, ``metrics`` its
    (4, c) ones; ``p`` is an array of the logits' size to work in. Written here:
    the top-k ids and probabilities; the final prediction's probability and the
    count of logits above it (its rank less one); sum q * shifted, with q the
    row's distribution (the entropy's part); and sum p_final * shifted (the KL's
    part, against the final distribution ``p_final``). ``_finish`` makes rank,
    entropy and KL of them for every cell at once. For the final row itself
    (``final`` is None) its distribution is left in ``p``.

    The logits are shifted in place by their maximum before the softmax, so the
    sums over the vocabulary add small numbers and keep float32's precision
    however large the logits are. Besides the logits, ``p`` is the one array of
    their size used (and ``p_final``, kept for the chunk).
    """
    import torch

    values, ids = _topk(logits, k)
    out_ids.copy_(ids)
    if final is not None:
        at = logits.gather(1, final)
        torch.sum(torch.gt(logits, at, out=p), -1, out=metrics[1])
    logits.sub_(values[:, :1])
    torch.softmax(logits, -1, out=p)
    torch.gather(p, 1, ids, out=out_probs)
    if final is None:  # the final prediction is the top-1 itself, above no logit
        metrics[0].copy_(out_probs[:, 0])
        torch.sum(torch.mul(p, logits, out=logits), -1, out=metrics[2])
        return
    torch.gather(p, 1, final, out=metrics[0].unsqueeze(-1))
    torch.sum(p.mul_(logits), -1, out=metrics[2])
    torch.sum(torch.mul(logits, p_final, out=p), -1, out=metrics[3])


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
        _finish(out_probs, metrics)
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
    import torch

    device = head.weight.device
    last = len(hidden) - 1
    # The last hidden state is already normed: the final row is the model's own logits.
    logits = head(hidden[last][0, lo:hi].to(device))
    p_final = torch.empty_like(logits)
    _reduce(logits, p_final, k, None, None, out_ids[last, lo:hi], out_probs[last, lo:hi],
            metrics[:, last, lo:hi])
    final = out_ids[last, lo:hi, :1].long()
    p = logits  # its array, reused as every other row's work array
    del logits
    for row in range(last):
        logits = head(norm(hidden[row][0, lo:hi].to(device).float()))
        _reduce(logits, p, k, final, p_final, out_ids[row, lo:hi], out_probs[row, lo:hi],
                metrics[:, row, lo:hi])
        del logits


def _finish(out_probs: torch.Tensor, metrics: torch.Tensor) -> None:
    """The sums ``_reduce`` left made rank, entropy and KL, for every cell at once, in place.

    With q = softmax(shifted): log Z = -log q(top-1), H = log Z - sum q * shifted,
    and KL(final || row) = sum p_final (log p_final - log q)
    = log Z - sum p_final * shifted - H_final. The final row's KL to itself stays 0.
    """
    import torch

    last = metrics.shape[1] - 1
    log_total = out_probs[..., 0].log().neg_()
    metrics[1].add_(1)
    torch.sub(log_total, metrics[2], out=metrics[2])
    torch.sub(log_total, metrics[3], out=metrics[3]).sub_(metrics[2, last])
    metrics[3, last] = 0
