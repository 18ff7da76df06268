"""Exact attention capture for transformers models.

One separate forward pass over the final sequence with eager attention (the
only implementation that computes the softmax weights explicitly), so that
generation keeps its fast kernel. A forward hook on each attention module
turns that layer's float32 weights into float16 on the spot, so the pass never
holds more than one layer in float32: 24 layers x 16 heads x 2,048^2 floats
would be 6 GB, one layer in float16 is 130 MB.

float16 keeps every weight within 5e-4 of the float32 value (weights lie in
[0, 1], where float16's spacing is at most 2^-10), inside the 1e-3 that the
tests allow; a uint8 code with a per-head scale would not be (up to 2e-3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..common.sizes import format_size
from ..common.visible import visible
from ..errors import InvalidOptionError, NotAvailableError, PromptTooLongError
from .base import AttentionCapture

__all__ = ["POOLED", "attention_modules", "capture", "readable_tokens"]

#: Side of the pooled overview of each head (thumbnails), in blocks.
POOLED = 32


def attention_modules(model: Any) -> list[tuple[Any, int]]:
    """The model's self-attention modules in layer order, each with the index of its weights.

    transformers declares them for its own ``output_attentions`` in
    ``_can_record_outputs``; models without that declaration are searched by
    class name.
    """
    record = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    found: list[tuple[Any, int]] = []
    if record is not None:
        cls = getattr(record, "target_class", record)
        index = int(getattr(record, "index", 1) or 1)
        suffix = getattr(record, "layer_name", None)
        for name, module in model.named_modules():
            if isinstance(module, cls) and (suffix is None or name.endswith(suffix)):
                found.append((module, index))
    if not found:
        for _name, module in model.named_modules():
            kind = type(module).__name__
            if kind.endswith(("Attention", "SelfAttention")) and "Cross" not in kind:
                found.append((module, 1))
        # An outer attention block may wrap an inner one (BERT's BertAttention.self).
        chosen = {id(m) for m, _ in found}
        found = [(m, i) for m, i in found
                 if not any(id(c) in chosen for c in m.modules() if c is not m)]
    if not found:
        arch = type(model).__name__
        raise NotAvailableError(
            f"Cannot find the attention layers of {arch}, so its attention cannot be captured."
        )
    return found


@contextlib.contextmanager
def _eager(model: Any) -> Iterator[None]:
    """Switch the model to eager attention for one pass, then back to its own kernel."""
    before = getattr(model.config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if before == "eager":
        yield
        return
    if callable(setter):
        setter("eager")
    else:  # pragma: no cover - older transformers read the config at each forward
        model.config._attn_implementation = "eager"
    try:
        yield
    finally:
        if callable(setter) and before is not None:
            setter(before)
        else:  # pragma: no cover
            model.config._attn_implementation = before


def capture(model: Any, tokenizer: Any, ids: Sequence[int], *, causal: bool,
            max_tokens: int, context_length: int | None = None) -> AttentionCapture:
    """Run one eager forward pass over ``ids`` and keep every head's weights in float16.

    Examples
    --------
    >>> cap = capture(model, tokenizer, [1, 2, 3], causal=True, max_tokens=1024)  # doctest: +SKIP
    >>> cap.layers[0].shape  # doctest: +SKIP
    (4, 3, 3)
    """
    import numpy as np
    import torch

    ids = [int(i) for i in ids]
    n = len(ids)
    if n == 0:
        raise InvalidOptionError("The text encodes to no tokens; write some text.")
    modules = attention_modules(model)
    layers = len(modules)
    heads = int(getattr(model.config, "num_attention_heads", 0) or
                getattr(model.config, "n_head", 0) or 0)
    if n > max_tokens:
        need = layers * max(heads, 1) * n * n * 2
        raise InvalidOptionError(
            f"The sequence is {n} tokens; its attention would take {layers} layers x "
            f"{heads or '?'} heads x {n}^2 weights in float16 = {format_size(need)} in the "
            f"kernel, past the cap of {max_tokens} tokens. Shorten the text, or raise the cap "
            f"(lm.attention(..., max_tokens={n}), or lm.attention_max_tokens({n}) for every "
            "capture) if the memory is there."
        )
    if context_length is not None and n > context_length:
        raise PromptTooLongError(
            f"The sequence is {n} tokens, but the model reads at most {context_length}. "
            "Shorten the text."
        )
    slots: list[Any] = [None] * layers
    pooled: list[Any] = [None] * layers
    side = min(n, POOLED)
    position = {id(module): i for i, (module, _) in enumerate(modules)}

    def keep(module: Any, _args: Any, output: Any) -> None:
        index = next(i for m, i in modules if m is module)
        weights = output[index] if isinstance(output, tuple) and len(output) > index else None
        if weights is None:
            return
        # One layer at a time: float16 on the model's device, then to the CPU.
        at = position[id(module)]
        slots[at] = weights[0].to(torch.float16).cpu().numpy()
        pooled[at] = torch.nn.functional.adaptive_avg_pool2d(
            weights[0].float(), side).cpu().numpy()

    device = next(model.parameters()).device
    # One unpadded sequence: no attention mask, so the model builds none (only the causal one).
    inputs = {"input_ids": torch.tensor([ids], device=device)}
    handles = [module.register_forward_hook(keep) for module, _ in modules]
    try:
        with _eager(model), torch.inference_mode():
            # The base model only: an LM head over every position would cost T x vocab floats.
            base = getattr(model, "base_model", model)
            base(**inputs, use_cache=False) if causal else base(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    if any(s is None for s in slots):
        raise NotAvailableError(
            f"{type(model).__name__} did not hand out its attention weights in eager mode, "
            "so its attention cannot be captured."
        )
    for layer in slots:
        if layer.ndim != 3 or layer.shape[1:] != (n, n):
            raise NotAvailableError(
                f"{type(model).__name__} gave attention weights of shape {layer.shape}, not "
                f"(heads, {n}, {n}); its attention cannot be captured."
            )
    tokens = tuple(tokenizer.convert_ids_to_tokens(ids))
    return AttentionCapture(
        ids=tuple(ids), tokens=tokens, labels=tuple(readable_tokens(tokenizer, tokens)),
        layers=tuple(np.ascontiguousarray(s) for s in slots), causal=causal,
        pooled=np.stack(pooled).astype(np.float32),
    )


def _byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable stand-ins of byte-level BPE back to bytes."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


_BYTES = _byte_decoder()
def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in type(decoder).__name__ + repr(decoder)


def readable_tokens(tokenizer: Any, tokens: Sequence[str | None]) -> list[str]:
    """Tokens as a reader sees them: byte-level ``Ġthe`` is `` the``, ``Ċ`` is ``↵``.

    A byte-level token that holds part of a multi-byte character shows its
    bytes (``\\xe2``); SentencePiece's ``▁`` becomes a space; special tokens
    stay as they are.

    Examples
    --------
    >>> readable_tokens(None, ["[CLS]", "hello", "##ing"])
    ['[CLS]', 'hello', '##ing']
    """
    byte_level = tokenizer is not None and _is_byte_level(tokenizer)
    specials = set(getattr(tokenizer, "all_special_tokens", None) or ())
    out = []
    for token in tokens:
        token = "" if token is None else str(token)
        if token in specials:
            out.append(token)
        elif byte_level and all(ch in _BYTES for ch in token):
            raw = bytes(_BYTES[ch] for ch in token)
            out.append(visible(raw.decode("utf-8", errors="backslashreplace")))
        else:
            out.append(visible(token.replace("▁", " ")))
    return out
