"""Ablation and activation patching on an unmodified transformers model, with hooks only.

Nothing here reimplements a model: every intervention is a torch forward hook
or forward pre-hook on the model's own modules, found by :func:`sites`:

- ``resid``: the residual stream entering each decoder block (TransformerLens's
  ``resid_pre``), a pre-hook on the block that rewrites its ``hidden_states``;
- ``attn``: the attention block's output (what it adds to the stream), a hook
  on the attention module that rewrites the first element of its output;
- ``mlp``: the MLP's output (a sparse MoE block's, for an MoE model), likewise;
- ``heads``: each head's slice of the attention output *before* the output
  projection (``o_proj`` / ``c_proj``, whose input is ``[batch, seq, heads *
  head_dim]``), a pre-hook on that projection. The query heads are counted, so
  grouped-query attention needs nothing special, and the slice is the same
  whichever attention kernel (eager, sdpa) made it.

Patching (:mod:`._patching_grid`) uses the same sites and hooks. An encoder–decoder's
three stacks (encoder, decoder, the decoder's cross-attention) have their own
:class:`Sites` (:mod:`._patching_seq2seq`); a run of such a model takes a pair of batches,
(encoder ids, decoder ids), and :func:`logits` feeds both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError, NotAvailableError, PromptTooLongError

__all__ = ["MODES", "AblationCapture", "Edit", "Hook", "Sites", "ablate", "ablation_hooks",
           "answer_ids", "arch", "batch_of", "capture", "check_length", "check_parts",
           "head_slice", "hooks", "logits", "rows_of", "sites", "text_config"]

#: How :func:`ablate` removes a part.
MODES = ("zero", "mean")
_ATTENTION = ("self_attn", "attn", "attention", "self_attention")
_PROJECTIONS = ("o_proj", "c_proj", "out_proj", "dense", "wo")
_MLPS = ("mlp", "feed_forward", "block_sparse_moe", "moe", "ffn")


def arch(model: Any) -> str:
    return str((getattr(model.config, "architectures", None) or [type(model).__name__])[0])


def text_config(model: Any) -> Any:
    get = getattr(model.config, "get_text_config", None)
    return get() if callable(get) else model.config


@dataclass(frozen=True)
class Sites:
    """Where the hooks go: each block, its attention module, output projection and MLP."""

    blocks: tuple[Any, ...]
    attention: tuple[Any, ...]
    projections: tuple[Any, ...]
    mlps: tuple[Any, ...]
    #: Query heads per layer.
    heads: int
    #: Which stack these are, as errors name it ("model"; an encoder–decoder's "encoder",
    #: "decoder" or "decoder's cross-attention").
    stack: str = "model"

    @property
    def layers(self) -> int:
        return len(self.blocks)

    def module(self, over: str, layer: int) -> tuple[Any, bool]:
        """The module patched for ``over`` at ``layer``, and whether its hook is a pre-hook."""
        modules, pre = {"resid": (self.blocks, True), "attn": (self.attention, False),
                        "mlp": (self.mlps, False), "heads": (self.projections, True)}[over]
        return modules[layer], pre


def _child(module: Any, names: Sequence[str]) -> Any:
    import torch

    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, torch.nn.Module):
            return child
    return None


def sites(model: Any) -> Sites:
    """Find the decoder blocks and, in each, the attention, its output projection and the MLP.

    Raises
    ------
    NotAvailableError
        One line naming what was not found.
    """
    import torch

    config, name = text_config(model), arch(model)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    blocks = None
    for _name, module in model.named_modules():
        blocks = next((c for c in module.children()
                       if isinstance(c, torch.nn.ModuleList) and len(c) == layers), None)
        if blocks is not None:
            break
    if not layers or blocks is None:
        raise NotAvailableError(
            f"Cannot find the decoder blocks of {name} (a list of num_hidden_layers = {layers} "
            "modules), so it cannot be ablated or patched."
        )
    found: dict[str, list[Any]] = {"attention": [], "projections": [], "mlps": []}
    for i, block in enumerate(blocks):
        attn = _child(block, _ATTENTION)
        proj = None if attn is None else _child(attn, _PROJECTIONS)
        mlp = _child(block, _MLPS)
        for what, names, module in (("an attention module", _ATTENTION, attn),
                                    ("an attention output projection", _PROJECTIONS, proj),
                                    ("an MLP", _MLPS, mlp)):
            if module is None:
                raise NotAvailableError(
                    f"Cannot find {what} ({', '.join(names)}) in block {i} of {name} "
                    f"({type(block).__name__}), so it cannot be ablated or patched."
                )
        found["attention"].append(attn)
        found["projections"].append(proj)
        found["mlps"].append(mlp)
    if heads < 1:
        raise NotAvailableError(f"{name} does not say how many attention heads it has "
                                "(num_attention_heads), so its heads cannot be found.")
    return Sites(tuple(blocks), tuple(found["attention"]), tuple(found["projections"]),
                 tuple(found["mlps"]), heads)


# -- hooks ----------------------------------------------------------------------------------

Edit = Callable[[Any], Any]


def _pre(edit: Edit) -> Callable[..., Any]:
    """A forward pre-hook handing the module's first input (``hidden_states``) to ``edit``."""
    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            new = edit(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = edit(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})
    return hook


def _post(edit: Edit) -> Callable[..., Any]:
    """A forward hook handing the module's output (the first element of a tuple) to ``edit``."""
    def hook(_module: Any, _args: Any, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        new = edit(first)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return hook


Hook = tuple[Any, bool, Edit]


@contextlib.contextmanager
def hooks(hooks: Sequence[Hook]) -> Iterator[None]:
    handles = []
    try:
        for module, pre, edit in hooks:
            handles.append(module.register_forward_pre_hook(_pre(edit), with_kwargs=True) if pre
                           else module.register_forward_hook(_post(edit)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def head_slice(x: Any, heads: int, head: int) -> slice:
    width = int(x.shape[-1])
    if width % heads:
        raise NotAvailableError(f"The attention output has {width} features, not a multiple of "
                                f"its {heads} heads, so its heads cannot be told apart.")
    d = width // heads
    return slice(head * d, (head + 1) * d)


def logits(model: Any, ids: Any) -> Any:
    """The model's own forward pass over a batch of ids (no cache): its logits.

    ``ids`` is a ``[batch, T]`` tensor, or for an encoder–decoder a pair of them, (encoder
    ids, decoder ids): the logits are then the decoder's, ``[batch, decoder T, vocab]``.
    """
    if isinstance(ids, tuple):
        import torch

        source, decoder = ids
        return model(input_ids=source, attention_mask=torch.ones_like(source),
                     decoder_input_ids=decoder, use_cache=False).logits
    return model(input_ids=ids, use_cache=False).logits


def batch_of(ids: Sequence[int], source: Sequence[int] | None, device: Any) -> Any:
    """One run's batch: ``[1, T]`` ids, or (``[1, S]`` source, ``[1, T]`` decoder ids)."""
    import torch

    one = torch.tensor([list(ids)], device=device)
    return one if source is None else (torch.tensor([list(source)], device=device), one)


def rows_of(batch: Any, n: int) -> Any:
    """``batch`` (one row) repeated ``n`` times; both halves of an encoder–decoder's pair."""
    if isinstance(batch, tuple):
        return tuple(t.expand(n, -1).contiguous() for t in batch)
    return batch.expand(n, -1).contiguous()


def capture(model: Any, batch: Any,
            reads: Sequence[tuple[Any, bool, int]]) -> tuple[Any, dict[int, Any]]:
    """One read-only run: the logits and a copy of each (module, pre, key)'s activation."""
    kept: dict[int, Any] = {}

    def keeper(key: int) -> Edit:
        def keep(x: Any) -> None:
            kept[key] = x.detach().clone()
        return keep

    with hooks([(m, pre, keeper(key)) for m, pre, key in reads]):
        out = logits(model, batch)
    return out, kept


# -- ablation -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AblationCapture:
    """One ablated run against the unablated one, per position (numpy arrays).

    ``top_ids``/``top_logprobs`` ``[T, k]`` of the ablated run and ``base_top_*`` of the
    unablated one; ``answer_ids`` ``[T, A]``; ``answer_logprob``/``base_answer_logprob``
    ``[T, A]`` in nats; ``kl`` ``[T]``: KL(unablated || ablated) in nats.
    """

    ids: tuple[int, ...]
    texts: tuple[str, ...]
    top_ids: Any
    top_logprobs: Any
    base_top_ids: Any
    base_top_logprobs: Any
    answer_ids: Any
    answer_logprob: Any
    base_answer_logprob: Any
    kl: Any
    vocab: dict[int, str]
    #: An encoder–decoder's stack that was ablated (None: a causal model) and its source.
    part: str | None = None
    source_texts: tuple[str, ...] = ()


def ablation_hooks(s: Sites, *, heads: Sequence[tuple[int, int]] = (),
                   layers: Sequence[int] = (), mlp: Sequence[int] = (),
                   means: dict[int, Any] | None = None) -> list[Hook]:
    """The hooks that zero (or, given ``means``, mean-replace) heads, attention blocks, MLPs.

    ``means`` maps the keys of :func:`_mean_keys` to that activation's mean over positions.
    """
    hooks: list[Hook] = []
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def heads_edit(layer: int, chosen: list[int]) -> Edit:
        def edit(x: Any) -> Any:
            x = x.clone()
            for head in chosen:
                cut = head_slice(x, s.heads, head)
                x[..., cut] = 0 if means is None else means[3 * layer][..., cut]
            return x
        return edit

    def whole(key: int) -> Edit:
        def edit(x: Any) -> Any:
            import torch

            return torch.zeros_like(x) if means is None else means[key].expand_as(x).clone()
        return edit

    for layer, chosen in sorted(by_layer.items()):
        hooks.append((s.projections[layer], True, heads_edit(layer, chosen)))
    hooks += [(s.attention[layer], False, whole(3 * layer + 1)) for layer in sorted(set(layers))]
    hooks += [(s.mlps[layer], False, whole(3 * layer + 2)) for layer in sorted(set(mlp))]
    return hooks


def _mean_keys(s: Sites, heads: Sequence[tuple[int, int]], layers: Sequence[int],
               mlp: Sequence[int]) -> list[tuple[Any, bool, int]]:
    return ([(s.projections[la], True, 3 * la) for la in sorted({la for la, _ in heads})]
            + [(s.attention[la], False, 3 * la + 1) for la in sorted(set(layers))]
            + [(s.mlps[la], False, 3 * la + 2) for la in sorted(set(mlp))])


def check_parts(s: Sites, heads: Sequence[tuple[int, int]], layers: Sequence[int],
                mlp: Sequence[int]) -> None:
    """Refuse a layer or head the model (or the stack of :class:`Sites`) does not have."""
    for what, values in (("layers", layers), ("mlp", mlp),
                         ("heads' layer", [la for la, _ in heads])):
        bad = [v for v in values if not 0 <= v < s.layers]
        if bad:
            raise InvalidOptionError(f"{what} {bad[0]} is out of range: the {s.stack} has "
                                     f"{s.layers} layers (0 to {s.layers - 1}).")
    bad = [h for _, h in heads if not 0 <= h < s.heads]
    if bad:
        where = "" if s.stack == "model" else f" of the {s.stack}"
        raise InvalidOptionError(f"head {bad[0]} is out of range: each layer{where} has "
                                 f"{s.heads} heads (0 to {s.heads - 1}).")


def check_length(n: int, context_length: int | None) -> None:
    if n == 0:
        raise InvalidOptionError("The text encodes to no tokens; write some text.")
    if context_length is not None and n > context_length:
        raise PromptTooLongError(f"The sequence is {n} tokens, but the model reads at most "
                                 f"{context_length}. Shorten the text.")


def answer_ids(model: Any, answers: Sequence[int]) -> list[int]:
    """Check token ids against the output vocabulary."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    bad = [a for a in answers if not 0 <= a < vocab]
    if bad:
        raise InvalidOptionError(f"Token id {bad[0]} is not in the vocabulary (ids 0 to "
                                 f"{vocab - 1}).")
    return list(answers)


def ablate(model: Any, ids: Sequence[int], *, heads: Sequence[tuple[int, int]] = (),
           layers: Sequence[int] = (), mlp: Sequence[int] = (), mode: str = "zero",
           answers: Sequence[int] | None = None, texts: Callable[[int], str] = str,
           top: int = 5, context_length: int | None = None, at: Sites | None = None,
           source: Sequence[int] | None = None) -> AblationCapture:
    """Run ``ids`` unablated and ablated; compare them at every position.

    ``at`` is where the parts are (default: :func:`sites` of the model). An encoder–decoder
    reads ``source`` with its encoder, and ``ids`` (its start token first) with its decoder:
    the positions compared are the decoder's, and a mean is over the positions of the stack
    ``at`` holds (the source's for the encoder).

    Examples
    --------
    >>> cap = ablate(model, [1, 2, 3], heads=[(0, 1)])  # doctest: +SKIP
    >>> cap.answer_logprob - cap.base_answer_logprob  # nats  # doctest: +SKIP
    """
    import numpy as np
    import torch

    ids = [int(i) for i in ids]
    check_length(len(ids), context_length)
    s = sites(model) if at is None else at
    check_parts(s, heads, layers, mlp)
    chosen = None if answers is None else answer_ids(model, answers)
    batch = batch_of(ids, source, next(model.parameters()).device)
    with torch.inference_mode():
        base, kept = capture(model, batch, _mean_keys(s, heads, layers, mlp)
                              if mode == "mean" else [])
        means = {k: v.mean(dim=1, keepdim=True) for k, v in kept.items()}
        with hooks(ablation_hooks(s, heads=heads, layers=layers, mlp=mlp,
                                   means=means if mode == "mean" else None)):
            new = logits(model, batch)
        base_lp = torch.log_softmax(base[0].float(), dim=-1)
        new_lp = torch.log_softmax(new[0].float(), dim=-1)
        k = min(top, base_lp.shape[-1])
        want = (base_lp.argmax(-1, keepdim=True) if chosen is None else
                torch.tensor(chosen, device=base_lp.device).expand(len(ids), -1))
        kl = (base_lp.exp() * (base_lp - new_lp)).sum(-1).clamp_min(0)
        out = [t.cpu().numpy() for t in (*new_lp.topk(k, -1), *base_lp.topk(k, -1), want,
                                         new_lp.gather(-1, want), base_lp.gather(-1, want), kl)]
    top_lp, top_ids, base_top_lp, base_top_ids, want_np, new_a, base_a, kl_np = out
    every = np.unique(np.concatenate([top_ids.ravel(), base_top_ids.ravel(), want_np.ravel(),
                                      np.asarray(ids)]))
    return AblationCapture(
        ids=tuple(ids), texts=tuple(texts(i) for i in ids), top_ids=top_ids.astype(np.int32),
        top_logprobs=top_lp, base_top_ids=base_top_ids.astype(np.int32),
        base_top_logprobs=base_top_lp, answer_ids=want_np.astype(np.int32),
        answer_logprob=new_a, base_answer_logprob=base_a, kl=kl_np,
        vocab={int(i): texts(int(i)) for i in every},
    )
