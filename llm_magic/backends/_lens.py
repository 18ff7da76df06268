"""The exact logit lens of a transformers model: what each layer would predict if it were last.

One forward pass, with hooks on the model's own blocks: the stream entering
each block (the embeddings enter the first), the stream entering the final
norm, and the final norm's output, the head's input. The rows come from the
blocks themselves, never from ``output_hidden_states``, whose layout is not
the same everywhere: Mamba, FalconMamba and RWKV hand out (block 1, ...,
block N, norm(block N)), as long as the usual tuple but with no embeddings,
and RWKV halves its stream between blocks after the block has returned. The
stream entering block i + 1 (or the final norm, after the last block) is what
the model itself goes on with.

Each row's stream goes through the model's own final norm (GPT-2's ``ln_f``,
the Llama family's ``norm``, LFM2's ``embedding_norm``, RecurrentGemma's
``final_norm``; found beside the blocks, so a multimodal model's text norm
too), then a projection after it where there is one (OPT-350m's
``project_out``, where there is no final norm at all), and the output
embedding (``get_output_embeddings()``), with the config's logit scales and
soft-capping where it has them. The last row is the model's own logits: its
head over the final norm's output, never normed twice.

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

Every call checks itself before it computes a row. Each block must have run
once, in order, and the final norm after the last one, with no block changing
what it was handed in place: then row i is the stream that block i + 1 read,
whatever the model's hidden-state tuple says. The lens applied to the stream
entering the final norm, and the model's head over the final norm's output,
must both equal the logits of the model's own forward pass, at the first and
last positions. An architecture where any of this fails (blocks that run
twice, a norm or a scale this module does not know) is refused in one line; a
plausible but wrong grid is never drawn. An encoder–decoder's decoder is read
the same way, its trunk and head found by ``_lens_seq2seq``, through :func:`grid`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..common.sizes import format_size
from ..errors import InvalidOptionError, NotAvailableError, PromptTooLongError
from ._lens_reduce import chunk_size as _chunk_size
from ._lens_reduce import finish as _finish
from ._lens_reduce import reduce_row as _reduce
from ._lens_reduce import topk as _topk  # noqa: F401 (tests/test_lens.py calls it here)
from ._logprobs import TokenTexts
from .base import LensCapture

if TYPE_CHECKING:
    import torch

__all__ = ["CHECK_TOLERANCE", "check_size", "final_norm", "grid", "kernel_bytes", "lens",
           "payload_bytes"]

#: How far the self-check lets the lens of the last block drift from the model's
#: logits, in float32. A half-precision model's own logits are rounded to its
#: dtype, so its check also allows a few units of that rounding (see _tolerance).
CHECK_TOLERANCE = 1e-4
#: Names of the final norm, on the module that holds the blocks, most common first.
#: LFM2 calls its final norm ``embedding_norm``: last, because NeoMME has a norm of
#: that name at the start (and its ``final_norm`` at the end).
_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "norm_f", "ln_out",
          "final_norm", "embedding_norm")
#: Names of a projection between the final norm and the head (OPT-350m's).
_PROJECTIONS = ("project_out",)


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


def _layers(model: Any) -> int:
    return int(getattr(_text_config(model), "num_hidden_layers", 0) or 0)


@dataclass(frozen=True)
class _Trunk:
    """Where the lens reads a model: its blocks, and what runs between them and the head."""

    #: The module list of the model's blocks.
    blocks: Any
    #: The final norm, a projection after it, or both in the order the model applies them.
    path: tuple[Any, ...]


def _named(holder: Any, names: Sequence[str]) -> Any:
    import torch

    for name in names:
        module = getattr(holder, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _trunk(model: Any) -> _Trunk:
    """The module that holds the blocks and the final norm (or projection) side by side.

    The first module, in the model's own order, with a child list of
    ``num_hidden_layers`` blocks and one of :data:`_NORMS` or :data:`_PROJECTIONS`
    beside it: the text model of a multimodal one (Gemma 3's
    ``model.language_model``), never its vision tower's encoder, whose blocks
    have no final norm beside them.
    """
    import torch

    layers = _layers(model)
    blocks_seen = False
    for _name, module in model.named_modules():
        blocks = next((child for child in module.children()
                       if isinstance(child, torch.nn.ModuleList) and len(child) == layers), None)
        if blocks is None or layers == 0:
            continue
        blocks_seen = True
        path = tuple(m for m in (_named(module, _NORMS), _named(module, _PROJECTIONS))
                     if m is not None)
        if path:
            return _Trunk(blocks, path)
    if not blocks_seen:
        raise NotAvailableError(
            f"Cannot find the {layers} blocks of {_arch(model)}, so its logit lens cannot tell "
            "which block each row is; it is refused."
        )
    raise NotAvailableError(
        f"Cannot find the final norm of {_arch(model)} (nor a projection to its head, such "
        "as OPT's project_out) beside its blocks, so its logit lens cannot be exact; it is "
        "refused rather than drawn without the norm."
    )


def final_norm(model: Any) -> Any:
    """What the model applies between its last block and its head, as one module.

    Its final norm, found by name beside its blocks; a projection after it
    where there is one (both in a ``torch.nn.Sequential``); or the projection
    alone for a model with no final norm (OPT-350m, whose blocks end normed).
    """
    import torch

    path = _trunk(model).path
    return path[0] if len(path) == 1 else torch.nn.Sequential(*path)


def _float32(norm: Any) -> Any:
    """The norm itself when its parameters are float32, else a float32 copy (hidden-size only)."""
    if all(p.dtype.is_floating_point and p.itemsize == 4 for p in norm.parameters()):
        return norm
    return copy.deepcopy(norm).float()


def _number(value: Any) -> float | None:
    """A config's scale as a float; None when it is missing or not a plain number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class _Head:
    """The model's path from a hidden state to float32 logits: output embedding, scales, cap."""

    def __init__(self, model: Any) -> None:
        self.embedding = model.get_output_embeddings()
        if self.embedding is None:
            raise NotAvailableError(
                f"{_arch(model)} has no output embedding, so it has no logit lens."
            )
        self.weight = self.embedding.weight
        config = _text_config(model)
        # Multiplied: Cohere's logit_scale, Falcon-H1's lm_head_multiplier.
        self.scales = [s for s in (_number(getattr(config, "logit_scale", None)),
                                   _number(getattr(config, "lm_head_multiplier", None)))
                       if s is not None and s != 1]
        self.division = _number(getattr(config, "logits_scaling", None))  # Granite divides
        # Soft-capped: Gemma 2's final_logit_softcapping, RecurrentGemma's logits_soft_cap.
        self.cap = (_number(getattr(config, "final_logit_softcapping", None))
                    or _number(getattr(config, "logits_soft_cap", None)))

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.embedding(hidden.to(self.weight.dtype)).float()
        # In place: the product is a fresh array, and a copy would double the chunk's bytes.
        for scale in self.scales:
            logits.mul_(scale)
        if self.division not in (None, 0, 1):
            logits.div_(self.division)
        if self.cap:
            logits.div_(self.cap).tanh_().mul_(self.cap)
        return logits


def _tolerance(dtype: Any, logits: torch.Tensor) -> float:
    """1e-4 in float32; a half-precision model's logits also carry its dtype's rounding."""
    import torch

    if dtype == torch.float32 or not dtype.is_floating_point:
        return CHECK_TOLERANCE
    eps = float(torch.finfo(dtype).eps)
    return CHECK_TOLERANCE + 4 * eps * max(1.0, float(logits.abs().max()))


@dataclass
class _Pass:
    """What one forward pass left: a stream per row, and what the self-check compares."""

    #: The stream entering each block (row 0: the embeddings), then the final norm's
    #: output (the last row), each (T, hidden).
    hidden: list[Any]
    #: The stream entering the final norm, at the checked positions.
    raw: Any
    #: The model's own logits at the checked positions, float32.
    real: Any


def _stream(args: Any, kwargs: Any, n: int) -> Any:
    """The (1, n, hidden) stream a block or norm was handed: its first argument, as transformers'
    own hidden-state recorder takes it, or its ``hidden_states`` keyword; else None."""
    import torch

    hidden = args[0] if args else kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 3 and tuple(hidden.shape[:2]) == (1, n):
        return hidden
    return None


class _Entered:
    """What each block was handed in one forward pass, as its pre-hooks (:meth:`hook`) see it.

    ``streams[i]``: the (1, n, hidden) stream entering block i; ``prints[i]``: a copy of it
    at the checked positions, as handed over (:func:`_check_streams` compares the two);
    ``order``: which block ran, in turn, then whatever the caller's other hooks append.
    """

    def __init__(self, blocks: int, n: int, at: list[int]) -> None:
        self.n, self.at = n, at
        self.streams: list[Any] = [None] * blocks
        self.prints: list[Any] = [None] * blocks
        self.order: list[int] = []

    def hook(self, i: int) -> Any:
        def entering(_module: Any, args: Any, kwargs: Any) -> None:
            self.order.append(i)
            stream = self.streams[i] = _stream(args, kwargs, self.n)
            if stream is not None:
                self.prints[i] = stream[0, self.at].clone()
        return entering

    def install(self, blocks: Sequence[Any]) -> list[Any]:
        """A pre-hook on each block; the handles, to remove."""
        return [block.register_forward_pre_hook(self.hook(i), with_kwargs=True)
                for i, block in enumerate(blocks)]

    def check(self, model: Any, final: Any) -> None:
        """:func:`_check_streams` over what was seen, ``final`` the stream to the head."""
        _check_streams(model, self.order, self.streams, self.prints, final, self.at, self.n)


def _forward(model: Any, ids: list[int], at: list[int], trunk: _Trunk) -> _Pass:
    """One forward pass with hooks on the blocks and the final norm (see the module's doc)."""
    import torch

    n, blocks = len(ids), len(trunk.blocks)
    device = next(model.parameters()).device
    entered = _Entered(blocks, n, at)
    order = entered.order  # then ``blocks``: into the final norm, and ``blocks + 1``: out of it
    # (or of the projection after it), to the head
    seen: dict[str, Any] = {}

    def into_norm(_module: Any, args: Any, kwargs: Any) -> None:
        order.append(blocks)
        raw = _stream(args, kwargs, n)
        seen["raw"] = None if raw is None else raw[0, at].clone()

    def out_of_path(_module: Any, _args: Any, output: Any) -> None:
        order.append(blocks + 1)
        final = output[0] if isinstance(output, (tuple, list)) else output
        seen["final"] = final if isinstance(final, torch.Tensor) else None

    kwargs: dict[str, Any] = {"use_cache": False}
    keep_some = "logits_to_keep" in inspect.signature(model.forward).parameters
    if keep_some:  # the model's head over the checked positions only, not T x vocab
        kwargs["logits_to_keep"] = torch.tensor(at, device=device)
    hooks = entered.install(trunk.blocks)
    hooks.append(trunk.path[0].register_forward_pre_hook(into_norm, with_kwargs=True))
    hooks.append(trunk.path[-1].register_forward_hook(out_of_path))
    try:
        out = model(input_ids=torch.tensor([ids], device=device), **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    logits = out.logits[0] if keep_some else out.logits[0, at]
    del out
    final: Any = seen.get("final")
    entered.check(model, final)
    return _Pass(hidden=[h[0] for h in entered.streams] + [final[0]], raw=seen.get("raw"),
                 real=logits.float())


def _check_streams(model: Any, order: list[int], entered: list[Any], prints: list[Any],
                   final: Any, at: list[int], n: int) -> None:
    """Refuse unless row i is the stream block i + 1 read: each block ran once, in order, the
    final norm once after them, each was handed the whole sequence and kept it as handed."""
    import torch

    blocks = len(entered)
    if order != [*range(blocks), blocks, blocks + 1]:
        raise NotAvailableError(
            f"The {blocks} blocks of {_arch(model)} did not run once each, in order, before its "
            "final norm, so its logit lens cannot tell which block each row is; it is refused."
        )
    if any(h is None for h in entered) or final is None or tuple(final.shape[:2]) != (1, n):
        raise NotAvailableError(
            f"The blocks or the final norm of {_arch(model)} were not each handed the whole "
            "sequence as one stream, so its logit lens cannot read them; it is refused."
        )
    for i, (stream, handed) in enumerate(zip(entered, prints, strict=True)):
        if not torch.equal(stream[0, at], handed):
            raise NotAvailableError(
                f"The stream entering block {i + 1} of {_arch(model)} was changed in place "
                "later in the forward pass, so its logit lens cannot read what that block read; "
                "it is refused."
            )


def _check(model: Any, head: _Head, norm: Any, run: _Pass, at: list[int]) -> float:
    """Refuse unless the lens of the stream entering the final norm, and the last row, both
    equal the model's own logits."""
    real = run.real
    if run.raw is None:
        raise NotAvailableError(
            f"The final norm of {_arch(model)} was handed no stream to check the lens against; "
            "its logit lens is refused."
        )
    device = head.weight.device
    normed = norm(run.raw.to(device).float())
    width = int(head.weight.shape[-1])
    if normed.shape[-1] != width or run.hidden[-1].shape[-1] != width:
        raise NotAvailableError(
            f"The final norm of {_arch(model)} does not lead to its head (their widths "
            "differ): something this lens does not know sits between them, so it is refused."
        )
    lensed = head(normed)
    final = head(run.hidden[-1][at].to(device))
    diff = max(float((lensed - real).abs().max()), float((final - real).abs().max()))
    tol = _tolerance(head.weight.dtype, real)
    if not diff <= tol:  # NaN fails too
        raise NotAvailableError(
            f"The logit lens of {_arch(model)} does not reproduce the model's own logits "
            f"(off by {diff:.3g}, more than {tol:.1g}): its final norm or output scaling is not "
            "the one this lens applies, so it is refused rather than drawn wrong."
        )
    return diff


def check_size(n: int, rows: int, k: int, max_tokens: int, context_length: int | None,
               what: str = "sequence") -> None:
    """Refuse an empty sequence, one past the lens's cap, or one past what the model reads."""
    if n == 0:
        raise InvalidOptionError("The text encodes to no tokens; write some text.")
    if n > max_tokens:
        raise InvalidOptionError(
            f"The {what} is {n} tokens, past the logit lens cap of {max_tokens}: its lens "
            f"would take {format_size(kernel_bytes(rows, n, k))} in the kernel and "
            f"{format_size(payload_bytes(rows, n, k))} in the view ({rows} rows x {n} positions "
            f"x top {k}). Shorten the text, or pass max_tokens={n} if that is fine."
        )
    if context_length is not None and n > context_length:
        raise PromptTooLongError(
            f"The {what} is {n} tokens, but the model reads at most {context_length}. "
            "Shorten the text."
        )


def lens(model: Any, tokenizer: Any, ids: Sequence[int], *, top: int, max_tokens: int,
         context_length: int | None = None, texts: TokenTexts | None = None) -> LensCapture:
    """The exact logit lens of ``ids``: rows = embeddings, each block (the last = the output).

    Examples
    --------
    >>> cap = lens(model, tokenizer, [1, 2, 3], top=5, max_tokens=2048)  # doctest: +SKIP
    >>> cap.top_ids.shape  # rows, positions, k  # doctest: +SKIP
    (5, 3, 5)
    """
    import torch

    ids = [int(i) for i in ids]
    head = _Head(model)
    k = min(int(top), int(head.weight.shape[0]))
    check_size(len(ids), _layers(model) + 1, k, max_tokens, context_length)
    trunk = _trunk(model)
    norm = _float32(final_norm(model))
    at = sorted({0, len(ids) - 1})
    with torch.inference_mode():
        run = _forward(model, ids, at, trunk)
        return grid(model, head, norm, run, ids, at, k=k, tokenizer=tokenizer, texts=texts)


def grid(model: Any, head: _Head, norm: Any, run: _Pass, ids: list[int], at: list[int], *,
         k: int, tokenizer: Any, texts: TokenTexts | None) -> LensCapture:
    """Check one pass (:func:`_check`), then reduce every row of it to the capture."""
    import numpy as np
    import torch

    check = _check(model, head, norm, run, at)
    hidden = run.hidden
    del run
    rows, n, vocab = len(hidden), len(ids), int(head.weight.shape[0])
    device = head.weight.device
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
    logits = head(hidden[last][lo:hi].to(device))
    p_final = torch.empty_like(logits)
    _reduce(logits, p_final, k, None, None, out_ids[last, lo:hi], out_probs[last, lo:hi],
            metrics[:, last, lo:hi])
    final = out_ids[last, lo:hi, :1].long()
    p = logits  # its array, reused as every other row's work array
    del logits
    for row in range(last):
        logits = head(norm(hidden[row][lo:hi].to(device).float()))
        _reduce(logits, p, k, final, p_final, out_ids[row, lo:hi], out_probs[row, lo:hi],
                metrics[:, row, lo:hi])
        del logits
