"""Ablation and activation patching on an encoder–decoder (T5, BART, mBART, Marian), hooks only.

Such a model has three stacks, each a ``part``:

- ``"encoder"``: the encoder's blocks, their self-attention and MLPs, over the source's
  positions;
- ``"decoder"``: the decoder's blocks, their (causal) self-attention and MLPs, over the
  decoder's positions (its start token, then the target, teacher-forced);
- ``"cross"``: the decoder's cross-attention (its output, or its heads), over the decoder's
  positions.

The sites are the model's own modules, found by family: a T5 block's
``layer[0].SelfAttention``, ``layer[1].EncDecAttention`` (each with its output projection
``o``) and ``layer[-1].DenseReluDense`` (its output is ``wo``'s); not ``T5LayerSelfAttention``
or ``T5LayerFF``, whose outputs include the residual add. A BART, mBART, Marian or Pegasus
layer's ``self_attn`` and ``encoder_attn`` (output projection ``out_proj``) and ``fc2``, whose
output is the MLP's (``fc1`` and ``fc2`` sit in the layer with no module around them). The
residual stream is what enters each block. Everything else, the hooks, the ablation and the
self-checked patching grid, is :mod:`._patching`'s and :mod:`._patching_grid`'s, run on a
pair of batches (source, decoder ids): patching's two runs read two sources and the same
decoder ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidOptionError, NotAvailableError
from . import _patching, _patching_grid
from ._patching import AblationCapture, Sites
from ._patching_grid import PatchCapture
from .seq2seq import check_source, decoder_ids, decoder_start, output_ids

__all__ = ["PARTS", "ablate", "answer_ids", "decoder_input", "depth", "patch",
           "refuse_causal", "sites"]

#: The stacks of an encoder–decoder that ablation and patching reach.
PARTS = ("encoder", "decoder", "cross")
#: What each part is called in a message.
_STACK = {"encoder": "encoder", "decoder": "decoder", "cross": "decoder's cross-attention"}
#: The config's numbers of layers and of heads of each stack: T5's name, then BART's.
_DEPTH = {"encoder": ("num_layers", "encoder_layers"),
          "decoder": ("num_decoder_layers", "decoder_layers")}
_HEADS = {"encoder": ("num_heads", "encoder_attention_heads"),
          "decoder": ("num_heads", "decoder_attention_heads")}


def refuse_causal(name: str, target: Any, part: Any) -> None:
    """Refuse ``target=`` and ``part=`` on a causal model: they are an encoder–decoder's."""
    if target is not None:
        raise InvalidOptionError(
            f"target= is an encoder–decoder's output; {name!r} is a causal LM: append the "
            "output to the text instead.")
    if part is not None:
        raise InvalidOptionError(
            f"part= picks an encoder–decoder's stack (encoder, decoder or cross); {name!r} is "
            "a causal LM with one stack: drop part=.")


def _config_int(config: Any, names: Sequence[str]) -> int:
    for attr in names:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def depth(model: Any, part: str) -> int:
    """The number of layers of ``part``'s stack (T5 may have more decoder than encoder layers)."""
    return _config_int(model.config, _DEPTH["encoder" if part == "encoder" else "decoder"])


def _stack(model: Any, part: str) -> Any:
    name = "encoder" if part == "encoder" else "decoder"
    get = getattr(model, f"get_{name}", None)
    stack = get() if callable(get) else None
    if stack is None:
        raise NotAvailableError(f"Cannot find the {name} of {_patching.arch(model)}, so it "
                                "cannot be ablated or patched.")
    return stack


def _find(block: Any, part: str) -> tuple[Any, Any, Any]:
    """(attention, its output projection, MLP output module) of one block, by family."""
    layer = getattr(block, "layer", None)
    if layer is not None:  # T5: [self-attention, (cross-attention,) feed-forward]
        wrapper = layer[1] if part == "cross" and len(layer) > 2 else layer[0]
        attn = getattr(wrapper, "EncDecAttention" if part == "cross" else "SelfAttention", None)
        return attn, getattr(attn, "o", None), getattr(layer[-1], "DenseReluDense", None)
    attn = getattr(block, "encoder_attn" if part == "cross" else "self_attn", None)
    return attn, getattr(attn, "out_proj", None), getattr(block, "fc2", None)


def sites(model: Any, part: str) -> Sites:
    """The blocks of ``part``'s stack and, in each, the attention (self or cross), its output
    projection and the MLP's output module (none for ``"cross"``).

    Raises
    ------
    NotAvailableError
        One line naming what was not found.
    """
    import torch

    name, stack = _patching.arch(model), _stack(model, part)
    layers = depth(model, part)
    key = "encoder" if part == "encoder" else "decoder"
    heads = _config_int(model.config, _HEADS[key])
    blocks = next((c for c in stack.children()
                   if isinstance(c, torch.nn.ModuleList) and len(c) == layers), None)
    if not layers or blocks is None or heads < 1:
        raise NotAvailableError(
            f"Cannot find the {key} blocks of {name} (a list of {layers} modules, "
            f"{heads} heads each), so it cannot be ablated or patched.")
    found: list[tuple[Any, Any, Any]] = []
    for i, block in enumerate(blocks):
        attn, proj, mlp = _find(block, part)
        wanted = [("cross-attention" if part == "cross" else "self-attention", attn),
                  ("attention output projection (o, out_proj)", proj)]
        if part != "cross":
            wanted.append(("MLP (DenseReluDense, fc2)", mlp))
        missing = [what for what, module in wanted if module is None]
        if missing:
            raise NotAvailableError(
                f"Cannot find the {missing[0]} in {key} block {i} of {name} "
                f"({type(block).__name__}), so it cannot be ablated or patched.")
        found.append((attn, proj, mlp))
    return Sites(tuple(blocks), tuple(a for a, _, _ in found), tuple(p for _, p, _ in found),
                 () if part == "cross" else tuple(m for _, _, m in found), heads,
                 stack=_STACK[part])


# -- inputs ---------------------------------------------------------------------------------


def decoder_input(backend: Any, target: str | Sequence[int] | None, purpose: str) -> list[int]:
    """The decoder's ids: its start token, then ``target`` (a text tokenized as the model's
    output, without the end token the tokenizer adds, so the last position predicts what
    follows the text; or output ids, as given)."""
    if target is None:
        return [decoder_start(backend.model, backend.pad_id)]
    if isinstance(target, str):
        found = output_ids(backend, target, purpose)
        if found and found[-1] in backend.eos_ids:
            found = found[:-1]
        if not found:
            raise InvalidOptionError(f"The target is only an end token: write the output to "
                                     f"{purpose}.")
        target = found
    return decoder_ids(backend, target, purpose)


def answer_ids(backend: Any, answers: Sequence[str | int]) -> list[int]:
    """Answer tokens as the model writes them: a text is tokenized as its output (one token),
    an id is checked against the output vocabulary."""
    ids = []
    for answer in answers:
        if isinstance(answer, int):
            ids.append(answer)
            continue
        found = backend.tokenizer(text_target=answer, add_special_tokens=False,
                                  verbose=False)["input_ids"]
        if len(found) != 1:
            shown = [backend._texts()(i) for i in found]
            raise InvalidOptionError(
                f"{answer!r} is {len(found)} output tokens for {backend.spec.name!r} "
                f"({shown!r}), not one; pass a single token's text or its id.")
        ids.append(int(found[0]))
    return _patching.answer_ids(backend.model, ids)


def _source(backend: Any, source: str | Sequence[int], purpose: str) -> list[int]:
    ids = backend._ids(source, purpose)
    check_source(backend.spec.name, len(ids), backend.context_length)
    return list(ids)


def _part(part: str | None, default: str) -> str:
    if part is None:
        return default
    if part not in PARTS:
        raise InvalidOptionError(f"part must be one of {', '.join(PARTS)}, not {part!r}.")
    return part


# -- the calls ------------------------------------------------------------------------------


def ablate(backend: Any, source: str | Sequence[int], *, target: str | Sequence[int] | None,
           part: str | None, heads: Sequence[tuple[int, int]], layers: Sequence[int],
           mlp: Sequence[int], mode: str, answers: Sequence[str | int] | None
           ) -> AblationCapture:
    """Ablate heads, attention blocks or MLPs of one stack (default: the decoder); compare at
    the decoder's positions (its start token, then ``target``)."""
    part = _part(part, "decoder")
    if part == "cross" and mlp:
        raise InvalidOptionError(
            "mlp= names MLPs, and the cross-attention has none: use part='decoder' for the "
            "decoder's MLPs, or heads=/layers= for the cross-attention.")
    source_ids = _source(backend, source, "ablate")
    decoder = decoder_input(backend, target, "ablate")
    chosen = None if answers is None else answer_ids(backend, answers)
    texts = backend._texts()
    cap = _patching.ablate(backend.model, decoder, heads=heads, layers=layers, mlp=mlp,
                           mode=mode, answers=chosen, texts=texts,
                           at=sites(backend.model, part), source=source_ids)
    return dataclasses.replace(cap, part=part, source_texts=tuple(texts(i) for i in source_ids))


def patch(backend: Any, clean: str | Sequence[int], corrupt: str | Sequence[int], *,
          target: str | Sequence[int] | None, part: str | None, over: str,
          answers: Sequence[str | int], metric: Any, align: Any) -> PatchCapture:
    """Patch the clean source's run into the corrupt source's, one stack's sites at a time
    (default: the encoder's); both runs read the same decoder ids."""
    part = _part(part, "encoder")
    if part == "cross" and over not in ("attn", "heads"):
        raise InvalidOptionError(
            f"over={over!r} does not apply to part='cross': patch the cross-attention's "
            "output (over='attn') or its heads (over='heads').")
    if part != "encoder" and align is not None:
        raise InvalidOptionError(
            f"align= pairs source positions (part='encoder'); with part={part!r} both runs "
            "read the same decoder positions: drop align=.")
    clean_ids = _source(backend, clean, "patch from")
    corrupt_ids = _source(backend, corrupt, "patch into")
    decoder = decoder_input(backend, target, "patch")
    texts = backend._texts()
    answer_texts: tuple[str, ...] = ()
    if metric is None:
        a, b = answer_ids(backend, answers)
        metric, answer_texts = _patching_grid.logit_difference(a, b), (texts(a), texts(b))
    cap = _patching_grid.patch(
        backend.model, clean_ids, corrupt_ids, over=over, metric=metric, align=align,
        texts=texts, answer_texts=answer_texts, at=sites(backend.model, part), decoder=decoder,
        positions="input" if part == "encoder" else "decoder")
    return dataclasses.replace(cap, part=part)
