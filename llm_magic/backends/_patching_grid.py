"""Activation patching: the clean run's activations written into the corrupt run, one site
per batch row, many rows per forward.

The hooks are those of :mod:`._patching` (sites found on the model's own modules, nothing
reimplemented). A patching call checks itself before it measures anything: the corrupt
input run with the hooks installed but patching nothing must give the model's own logits
(``torch.equal``), and the clean input with every site rewritten by its own clean value
must give the clean logits exactly. A check that fails refuses the call.

An encoder–decoder's run reads a pair, (source, decoder ids): the clean and the corrupt
runs read two sources and the same decoder ids, and the positions patched are the source's
(the encoder's sites) or the decoder's (its own and its cross-attention's): ``positions``.

Rows per forward are bounded by :data:`BATCH_BYTES` over :func:`row_bytes` (a row's
float32 logits, a few hidden-size streams and one layer's attention weights), and by
:data:`MAX_ROWS`; each row's number is the same as that row run alone (tests check it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError, NotAvailableError
from ._patching import (
    Edit,
    Hook,
    Sites,
    arch,
    batch_of,
    capture,
    check_length,
    head_slice,
    hooks,
    logits,
    rows_of,
    sites,
    text_config,
)

__all__ = ["BATCH_BYTES", "MAX_ROWS", "OVER", "PatchCapture", "logit_difference", "patch",
           "row_bytes"]

#: What :func:`patch` can patch.
OVER = ("resid", "attn", "mlp", "heads")
#: Bytes of activations one batched patching forward may take (rows x row_bytes).
BATCH_BYTES = 256 * 2**20
#: The most patched rows in one forward, whatever the memory allows.
MAX_ROWS = 64


@dataclass(frozen=True, eq=False)
class PatchCapture:
    """A patching grid and how it was checked (numpy arrays, plain numbers).

    ``values`` ``[layers, columns]``: the metric of each patched run; ``grid``: its
    normalised effect (patched - corrupt) / (clean - corrupt), float32. ``columns`` are
    (clean position, corrupt position) pairs, or head indices for ``over="heads"``.
    """

    over: str
    values: Any
    grid: Any
    columns: tuple[Any, ...]
    clean_value: float
    corrupt_value: float
    clean_ids: tuple[int, ...]
    corrupt_ids: tuple[int, ...]
    clean_texts: tuple[str, ...]
    corrupt_texts: tuple[str, ...]
    heads: int
    #: Largest change of any logit when clean is patched into clean (0.0 when exact).
    clean_change: float
    #: Whether the unpatched corrupt run gives the model's own logits bit for bit.
    corrupt_equal: bool
    forwards: int
    rows_per_forward: int
    #: The texts of the default metric's two answer tokens (empty for a callable metric).
    answer_texts: tuple[str, ...] = ()
    #: An encoder–decoder's decoder ids (shared by both runs) and their texts; empty if causal.
    decoder_ids: tuple[int, ...] = ()
    decoder_texts: tuple[str, ...] = ()
    #: Which sequence the columns' positions index: "input" (clean's and corrupt's own) or
    #: "decoder" (the shared decoder ids).
    positions: str = "input"
    #: The encoder–decoder's stack that was patched (None: a causal model).
    part: str | None = None


def row_bytes(model: Any, n: int) -> int:
    """Bytes of activations one batch row of ``n`` tokens takes at its peak (an estimate):
    its float32 logits, a few hidden-size streams, and one layer's attention weights."""
    config = text_config(model)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    size = next(model.parameters()).element_size()
    return n * (4 * vocab + size * (8 * hidden + 2 * inter)) + 4 * heads * n * n


Job = tuple[int, int, int]  # (batch row, layer, column)


def _patch_hooks(s: Sites, over: str, cache: dict[int, Any], jobs: Sequence[Job],
                 pairs: Sequence[tuple[int, int]]) -> list[Hook]:
    """One hook per layer that writes the clean activation into each job's batch row."""
    rows: dict[int, list[tuple[int, int]]] = {}
    for row, layer, column in jobs:
        rows.setdefault(layer, []).append((row, column))
    src = [a for a, _ in pairs]
    dst = [b for _, b in pairs]

    def writer(layer: int, todo: list[tuple[int, int]]) -> Edit:
        clean = cache[layer][0]

        def edit(x: Any) -> Any:
            x = x.clone()
            for row, column in todo:
                if over == "heads":
                    cut = head_slice(x, s.heads, column)
                    x[row, dst, cut] = clean[src][:, cut]
                else:
                    a, b = pairs[column]
                    x[row, b] = clean[a]
            return x
        return edit

    return [(*s.module(over, layer), writer(layer, todo)) for layer, todo in rows.items()]


def _measure(metric: Callable[[Any], Any], out: Any, row: int) -> float:
    import torch

    value = metric(out[row].float())
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidOptionError(f"metric(logits) must return a finite number, not {value!r}.")
    return float(value)


def logit_difference(a: int, b: int) -> Callable[[Any], Any]:
    """logit(a) - logit(b) at the last position of one run's ``[T, vocab]`` logits."""
    def metric(out: Any) -> Any:
        return out[-1, a] - out[-1, b]
    return metric


def _pairs(clean: Sequence[int], corrupt: Sequence[int],
           align: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if align is None:
        if len(clean) != len(corrupt):
            raise InvalidOptionError(
                f"clean is {len(clean)} tokens and corrupt is {len(corrupt)} tokens; patching "
                "needs the same length, or align=[(clean_pos, corrupt_pos), ...] to say which "
                "positions match.")
        return [(p, p) for p in range(len(corrupt))]
    for a, b in align:
        if not (0 <= a < len(clean) and 0 <= b < len(corrupt)):
            raise InvalidOptionError(
                f"align pair ({a}, {b}) is out of range: clean has positions 0 to "
                f"{len(clean) - 1}, corrupt 0 to {len(corrupt) - 1}.")
    return [(int(a), int(b)) for a, b in align]


def patch(model: Any, clean: Sequence[int], corrupt: Sequence[int], *, over: str = "resid",
          metric: Callable[[Any], Any], align: Sequence[tuple[int, int]] | None = None,
          texts: Callable[[int], str] = str, context_length: int | None = None,
          batch_bytes: int = BATCH_BYTES, answer_texts: tuple[str, ...] = (),
          at: Sites | None = None, decoder: Sequence[int] | None = None,
          positions: str = "input") -> PatchCapture:
    """Patch each layer (and position, or head) of the clean run into the corrupt one.

    ``at`` is where the sites are (default: :func:`sites` of the model). An encoder–decoder
    reads ``clean`` or ``corrupt`` as its source and ``decoder`` (its start token first) in
    both runs; ``positions="decoder"`` patches the decoder's positions (``align`` then
    does not apply), ``"input"`` the sources'.

    Examples
    --------
    >>> cap = patch(model, clean_ids, corrupt_ids, metric=logit_difference(5, 9))  # doctest: +SKIP
    >>> cap.grid.shape  # layers, positions  # doctest: +SKIP
    """
    import numpy as np
    import torch

    clean, corrupt = [int(i) for i in clean], [int(i) for i in corrupt]
    for n in (len(clean), len(corrupt)):
        check_length(n, context_length)
    shared = None if decoder is None else [int(i) for i in decoder]
    on_decoder = shared is not None and positions == "decoder"
    # The sequences whose positions are patched: the inputs', or the shared decoder's.
    clean_seq, corrupt_seq = (shared, shared) if shared is not None and on_decoder else (
        clean, corrupt)
    pairs = _pairs(clean_seq, corrupt_seq, align)
    s = sites(model) if at is None else at
    device = next(model.parameters()).device
    clean_t, corrupt_t = ((batch_of(clean, None, device), batch_of(corrupt, None, device))
                          if shared is None else (batch_of(shared, clean, device),
                                                  batch_of(shared, corrupt, device)))
    columns: list[Any] = list(range(s.heads)) if over == "heads" else list(pairs)
    with torch.inference_mode():
        own_clean = logits(model, clean_t)
        own_corrupt = logits(model, corrupt_t)
        _, cache = capture(model, clean_t, [(*s.module(over, la), la) for la in range(s.layers)])
        with hooks(_patch_hooks(s, over, cache, [], pairs)):  # installed, patching nothing
            unpatched = logits(model, corrupt_t)
        corrupt_equal = bool(torch.equal(unpatched, own_corrupt))
        every = [(p, p) for p in range(len(clean_seq))]
        whole = [(0, la, c) for la in range(s.layers)  # clean into clean, every site at once
                 for c in (range(s.heads) if over == "heads" else range(len(clean_seq)))]
        with hooks(_patch_hooks(s, over, cache, whole, every)):
            change = float((logits(model, clean_t).float() - own_clean.float()).abs().max())
        if not corrupt_equal or change != 0.0:
            raise NotAvailableError(
                f"Patching failed its own check on {arch(model)} (clean into clean changed "
                f"a logit by {change:g}; the unpatched corrupt run "
                f"{'equals' if corrupt_equal else 'differs from'} the model's own logits), so "
                "no grid is drawn.")
        clean_value = _measure(metric, own_clean, 0)
        corrupt_value = _measure(metric, own_corrupt, 0)
        if clean_value == corrupt_value:
            raise InvalidOptionError(
                f"The metric is {clean_value:g} on both the clean and the corrupt run, so the "
                "normalised effect (patched - corrupt) / (clean - corrupt) is undefined; pick "
                "answers or a metric that tell the two runs apart.")
        jobs = [(la, c) for la in range(s.layers) for c in range(len(columns))]
        n = len(corrupt) + len(shared or ())
        per = max(1, min(MAX_ROWS, len(jobs), batch_bytes // max(1, row_bytes(model, n))))
        values = np.zeros((s.layers, len(columns)), dtype=np.float64)
        forwards = 0
        for lo in range(0, len(jobs), per):
            chunk = jobs[lo : lo + per]
            batch = rows_of(corrupt_t, len(chunk))
            rows = [(row, la, c) for row, (la, c) in enumerate(chunk)]
            with hooks(_patch_hooks(s, over, cache, rows, pairs)):
                out = logits(model, batch)
            forwards += 1
            for row, (la, c) in enumerate(chunk):
                values[la, c] = _measure(metric, out, row)
    grid = ((values - corrupt_value) / (clean_value - corrupt_value)).astype(np.float32)
    return PatchCapture(
        over=over, values=values, grid=grid, columns=tuple(columns), clean_value=clean_value,
        corrupt_value=corrupt_value, clean_ids=tuple(clean), corrupt_ids=tuple(corrupt),
        clean_texts=tuple(texts(i) for i in clean), corrupt_texts=tuple(texts(i) for i in corrupt),
        heads=s.heads, clean_change=change, corrupt_equal=corrupt_equal, forwards=forwards,
        rows_per_forward=per, answer_texts=answer_texts, decoder_ids=tuple(shared or ()),
        decoder_texts=tuple(texts(i) for i in shared or ()),
        positions="decoder" if on_decoder else "input")
