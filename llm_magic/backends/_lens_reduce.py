"""The logit lens's arithmetic: each row's logits reduced to what the view shows, in place.

:func:`reduce_row` turns one row's chunk of float32 logits into its top-k, the
final prediction's probability and rank, and the sums that make the entropy
and the KL divergence from the final distribution; :func:`finish` makes rank,
entropy and KL of them for the whole grid at once. :func:`topk` is
``torch.topk``, faster on a CPU for a large vocabulary; :func:`chunk_size`
how many positions one chunk of logits may hold. ``backends/_lens`` runs the
model and calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["chunk_size", "finish", "reduce_row", "topk"]

#: Floor of the bytes one chunk's float32 logits may take.
_CHUNK_FLOOR = 256 * 1024
#: From this many logits per row, top-k runs in two stages (see topk), over groups of
#: _GROUP columns. Measured on one CPU thread, top 5: 1.1x faster at 1,536 columns,
#: 2.3x to 2.7x at 2,048 and 4,096, 2.9x at 50,257; at 512, 1.1x to 1.7x slower.
_TWO_STAGE = 1536
_GROUP = 64


def topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def reduce_row(logits: torch.Tensor, p: torch.Tensor, k: int, final: torch.Tensor | None,
            p_final: torch.Tensor | None, out_ids: torch.Tensor, out_probs: torch.Tensor,
            metrics: torch.Tensor) -> None:
    """One row's chunk of float32 logits (c, vocab), reduced into the result's buffers.

    ``out_ids`` and ``out_probs`` are the row's (c, k) cells, ``metrics`` its
    (4, c) ones; ``p`` is an array of the logits' size to work in. Written here:
    the top-k ids and probabilities; the final prediction's probability and the
    count of logits above it (its rank less one); sum q * shifted, with q the
    row's distribution (the entropy's part); and sum p_final * shifted (the KL's
    part, against the final distribution ``p_final``). ``finish`` makes rank,
    entropy and KL of them for every cell at once. For the final row itself
    (``final`` is None) its distribution is left in ``p``.

    The logits are shifted in place by their maximum before the softmax, so the
    sums over the vocabulary add small numbers and keep float32's precision
    however large the logits are. Besides the logits, ``p`` is the one array of
    their size used (and ``p_final``, kept for the chunk).
    """
    import torch

    values, ids = topk(logits, k)
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


def chunk_size(head_bytes: int, vocab: int) -> int:
    """Positions per chunk: a multiple of 64 (matrix products run at full speed), whose
    float32 logits take about a quarter of the output embedding's bytes (at least 256 KB)."""
    budget = max(_CHUNK_FLOOR, head_bytes // 4)
    return max(64, budget // (4 * vocab) // 64 * 64)


def finish(out_probs: torch.Tensor, metrics: torch.Tensor) -> None:
    """The sums ``reduce_row`` left made rank, entropy and KL, for every cell at once, in place.

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
