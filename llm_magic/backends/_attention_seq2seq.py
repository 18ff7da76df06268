"""Exact attention capture for encoder–decoder models (T5, BART, Marian): three kinds.

One teacher-forced forward pass, eager attention, over a source and an output
(the decoder's start token, then the output ids): the encoder's self-attention
(source x source), the decoder's self-attention (output x output) and the
cross-attention (output x source), what bertviz shows. As for causal models
(``_attention``), a forward hook on each attention module turns that layer's
float32 weights into float16 on the spot, so the pass never holds more than one
layer in float32; generation keeps its own kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..common.sizes import format_size
from ..errors import InvalidOptionError, NotAvailableError, PromptTooLongError
from ._attention import POOLED, _eager, readable_tokens
from .base import AttentionCapture

__all__ = ["Seq2SeqCapture", "capture", "capture_for"]


@dataclass(frozen=True, eq=False)
class Seq2SeqCapture:
    """The three kinds of attention of one teacher-forced pass, each an AttentionCapture.

    ``cross`` has the output's ids, tokens and labels (its rows); its columns are
    the source's, as in ``encoder``.
    """

    encoder: AttentionCapture
    decoder: AttentionCapture
    cross: AttentionCapture


def _modules(stack: Any, key: str) -> list[tuple[Any, int]]:
    """The modules of ``stack`` that transformers records for ``key`` (its output_attentions)."""
    record = (getattr(stack, "_can_record_outputs", None) or {}).get(key)
    if record is None:
        return []
    cls = getattr(record, "target_class", record)
    index = int(getattr(record, "index", 1) or 1)
    suffix = getattr(record, "layer_name", None)
    return [(module, index) for name, module in stack.named_modules()
            if isinstance(module, cls) and (suffix is None or name.endswith(suffix))]


def _check(name: str, model: Any, n_source: int, n_output: int, max_tokens: int,
           context_length: int | None, decoder_limit: int | None, layers: tuple[int, int],
           heads: int) -> None:
    """Refuse before running, with the numbers."""
    if n_source == 0:
        raise InvalidOptionError("The source encodes to no tokens; write some text.")
    if n_output < 2:
        raise InvalidOptionError("The target is empty: give the output to look at (a text, or "
                                 "its token ids after the decoder's start token).")
    longest = max(n_source, n_output)
    if longest > max_tokens:
        enc, dec = layers
        need = 2 * heads * (enc * n_source ** 2 + dec * n_output ** 2 + dec * n_output * n_source)
        raise InvalidOptionError(
            f"The source is {n_source} tokens and the output {n_output}; their attention would "
            f"take {enc} encoder layers x {heads} heads x {n_source}^2 + {dec} decoder layers x "
            f"{heads} heads x ({n_output}^2 + {n_output} x {n_source}) weights in float16 = "
            f"{format_size(need)} in the kernel, past the cap of {max_tokens} tokens. Shorten "
            f"them, or raise the cap (max_tokens={longest}, or "
            f"lm.attention_max_tokens({longest}) for every capture) if the memory is there.")
    if context_length is not None and n_source > context_length:
        raise PromptTooLongError(f"The source is {n_source} tokens, but the encoder of {name!r} "
                                 f"reads at most {context_length}. Shorten it.")
    if decoder_limit is not None and n_output > decoder_limit:
        raise PromptTooLongError(
            f"The output is {n_output - 1} tokens after the start token, but the decoder of "
            f"{name!r} writes at most {decoder_limit - 1}. Shorten it.")


def capture(model: Any, tokenizer: Any, source: Sequence[int], output: Sequence[int], *,
            name: str, max_tokens: int, context_length: int | None = None,
            decoder_limit: int | None = None) -> Seq2SeqCapture:
    """One eager teacher-forced pass: every head of the three kinds, in float16.

    ``output`` is the decoder's whole input: its start token, then the output ids.

    Examples
    --------
    >>> cap = capture(model, tok, [5, 6, 1], [0, 7], name="t5", max_tokens=64)  # doctest: +SKIP
    >>> cap.cross.layers[0].shape  # doctest: +SKIP
    (4, 2, 3)
    """
    import numpy as np
    import torch

    source, output = [int(i) for i in source], [int(i) for i in output]
    encoder, decoder = model.get_encoder(), model.get_decoder()
    groups = {"encoder": _modules(encoder, "attentions"),
              "decoder": _modules(decoder, "attentions"),
              "cross": _modules(decoder, "cross_attentions")}
    config = model.config
    heads = int(getattr(config, "num_heads", 0) or getattr(config, "encoder_attention_heads", 0)
                or 0)
    _check(name, model, len(source), len(output), max_tokens, context_length, decoder_limit,
           (len(groups["encoder"]), len(groups["decoder"])), heads)
    if not all(groups.values()):
        raise NotAvailableError(f"Cannot find the attention layers of {type(model).__name__}, so "
                                "its attention cannot be captured.")
    shapes = {"encoder": (len(source), len(source)), "decoder": (len(output), len(output)),
              "cross": (len(output), len(source))}
    slots: dict[str, list[Any]] = {k: [None] * len(v) for k, v in groups.items()}
    pooled: dict[str, list[Any]] = {k: [None] * len(v) for k, v in groups.items()}
    where = {id(m): (k, i, index) for k, v in groups.items() for i, (m, index) in enumerate(v)}

    def keep(module: Any, _args: Any, out: Any) -> None:
        kind, at, index = where[id(module)]
        weights = out[index] if isinstance(out, tuple) and len(out) > abs(index) else None
        if weights is None:
            return
        rows, cols = shapes[kind]
        side = min(max(rows, cols), POOLED)
        slots[kind][at] = weights[0].to(torch.float16).cpu().numpy()
        pooled[kind][at] = torch.nn.functional.adaptive_avg_pool2d(
            weights[0].float(), (side, side)).cpu().numpy()

    device = next(model.parameters()).device
    handles = [m.register_forward_hook(keep) for v in groups.values() for m, _ in v]
    try:
        with _eager(model), torch.inference_mode():
            # The two stacks only: the LM head over every output position is not needed.
            states = encoder(input_ids=torch.tensor([source], device=device)).last_hidden_state
            decoder(input_ids=torch.tensor([output], device=device),
                    encoder_hidden_states=states, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    for kind, layers in slots.items():
        for layer in layers:
            if layer is None or layer.ndim != 3 or layer.shape[1:] != shapes[kind]:
                raise NotAvailableError(
                    f"{type(model).__name__} did not hand out its {kind} attention weights as "
                    f"(heads, {shapes[kind][0]}, {shapes[kind][1]}) in eager mode, so its "
                    "attention cannot be captured.")

    def part(kind: str, ids: list[int], causal: bool) -> AttentionCapture:
        tokens = tuple(tokenizer.convert_ids_to_tokens(ids))
        return AttentionCapture(
            ids=tuple(ids), tokens=tokens, labels=tuple(readable_tokens(tokenizer, tokens)),
            layers=tuple(np.ascontiguousarray(s) for s in slots[kind]), causal=causal,
            pooled=np.stack(pooled[kind]).astype(np.float32))

    return Seq2SeqCapture(encoder=part("encoder", source, False),
                          decoder=part("decoder", output, True),
                          cross=part("cross", output, False))


def capture_for(backend: Any, source: str | Sequence[int], target: str | Sequence[int] | None,
                *, max_tokens: int) -> Seq2SeqCapture:
    """The backend's capture: ``source`` a text or ids, ``target`` the output as a text or as
    the ids after the decoder's start token (a forced language token first, if any)."""
    from . import seq2seq as _s2s

    name = backend.spec.name
    if not backend.seq2seq:
        raise InvalidOptionError(
            f"{name!r} is not an encoder–decoder model: a target applies only to one (T5, BART, "
            f"Marian). Look at the whole text with lm.attention(text, model={name!r}).")
    if target is None:
        raise InvalidOptionError(
            f"{name!r} is an encoder–decoder model: its attention needs the output too. Pass "
            f"target= (lm.attention(source, model={name!r}, target=output)), or a Generation "
            "(lm.attention(gen)).")
    source_ids = backend._ids(source, "look at")
    target_ids = _s2s.output_ids(backend, target, "look at")
    start = _s2s.decoder_start(backend.model, backend.pad_id)
    return capture(backend.model, backend.tokenizer, source_ids, [start, *target_ids], name=name,
                   max_tokens=max_tokens, context_length=backend.context_length,
                   decoder_limit=_s2s.decoder_limit(backend.model.config))
