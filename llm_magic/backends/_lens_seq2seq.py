"""The exact logit lens of an encoder–decoder's decoder (T5, BART, mBART, Marian, Pegasus).

One teacher-forced forward pass, ``model(input_ids=source,
decoder_input_ids=[start] + output)``, with hooks on the decoder's own blocks,
read as ``_lens`` reads a causal model's: row i is the stream entering
decoder block i + 1 (row 0: the decoder's embeddings, as its first block
takes them), and the last row is the decoder's own output, the head's input.

What sits between the decoder's last block and its logits differs by family,
and each is the model's own module or number:

* the decoder's final norm, found by name on the decoder: T5's
  ``final_layer_norm``, mBART's and Pegasus's ``layer_norm``. BART and Marian
  have none (post-LN: each block ends normed), and the last block's output
  goes straight to the head;
* the head, ``get_output_embeddings()``, after T5's ``d_model ** -0.5``
  scaling of its input where the config asks for it (``scale_decoder_outputs``,
  which transformers derives from ``tie_word_embeddings``);
* the model's ``final_logits_bias`` buffer added to the logits (BART, mBART,
  Marian, Pegasus).

The checks are ``_lens``'s: each decoder block ran once, in order, each
handed the whole output and keeping it as handed; then the path above applied
to the last block's output, and the head over the decoder's own output, must
both equal the model's logits at the first and last positions. A decoder
with another norm, scale or bias refuses in one line rather than draw a
plausible wrong grid. The encoder is read once, as the model reads it, and
has no rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidOptionError, NotAvailableError
from ._lens import _arch, _Entered, _float32, _Head, _Pass, _stream, _Trunk, check_size, grid
from .base import LensCapture

__all__ = ["decoder_trunk", "lens", "lens_of"]

#: Names of the decoder's final norm, on the decoder module (none: post-LN, BART and Marian).
_NORMS = ("final_layer_norm", "layer_norm", "norm", "ln_f")


def _decoder(model: Any) -> Any:
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    if decoder is None:
        raise NotAvailableError(f"Cannot find the decoder of {_arch(model)}, so its logit lens "
                                "cannot tell which block each row is; it is refused.")
    return decoder


def decoder_trunk(model: Any) -> _Trunk:
    """The decoder's blocks, and its final norm where it has one (``path`` is empty if not)."""
    import torch

    decoder = _decoder(model)
    config = model.config
    layers = next((int(v) for v in (getattr(config, "num_decoder_layers", None),
                                    getattr(config, "decoder_layers", None)) if isinstance(v, int)),
                  None)
    lists = [c for c in decoder.children()
             if isinstance(c, torch.nn.ModuleList) and len(c) == layers]
    if len(lists) != 1:
        raise NotAvailableError(
            f"Cannot find the {layers} decoder blocks of {_arch(model)}, so its logit lens "
            "cannot tell which block each row is; it is refused.")
    norm = next((m for m in (getattr(decoder, n, None) for n in _NORMS)
                 if isinstance(m, torch.nn.Module)), None)
    return _Trunk(lists[0], () if norm is None else (norm,))


class Head(_Head):
    """The encoder–decoder's path from the decoder's output to float32 logits.

    T5's ``d_model ** -0.5`` scaling of the head's input where its config asks
    for it, the output embedding (with any scale or cap ``_Head`` knows), and
    the ``final_logits_bias`` buffer where the model has one.
    """

    def __init__(self, model: Any) -> None:
        import torch

        super().__init__(model)
        config = model.config
        scaled = getattr(config, "scale_decoder_outputs", None)
        if scaled is None and "t5" in str(getattr(config, "model_type", "")):
            scaled = getattr(config, "tie_word_embeddings", True)  # how older T5 code decided
        width = int(getattr(config, "d_model", 0) or self.weight.shape[-1])
        self.input_scale = width ** -0.5 if scaled is True else None
        bias = getattr(model, "final_logits_bias", None)
        self.bias = None
        if isinstance(bias, torch.Tensor):
            self.bias = bias.detach().reshape(-1).to(self.weight.device, torch.float32)
            if self.bias.shape[0] != self.weight.shape[0]:
                raise NotAvailableError(
                    f"The final_logits_bias of {_arch(model)} does not match its head "
                    "(their sizes differ), so its logit lens cannot be exact; it is refused.")

    def __call__(self, hidden: Any) -> Any:
        if self.input_scale is not None:  # as the model does: the head's input, in its dtype
            hidden = hidden.to(self.weight.dtype) * self.input_scale
        logits = super().__call__(hidden)
        if self.bias is not None:
            logits.add_(self.bias)
        return logits


def _forward(model: Any, source: list[int], decoder: list[int], at: list[int],
             trunk: _Trunk) -> _Pass:
    """One teacher-forced pass with hooks on the decoder's blocks, its last block's output
    (what enters the final norm, or the head) and the decoder's own output."""
    import torch

    n, blocks = len(decoder), len(trunk.blocks)
    device = next(model.parameters()).device
    entered = _Entered(blocks, n, at)
    order = entered.order
    seen: dict[str, Any] = {}

    def first(output: Any) -> Any:
        found = getattr(output, "last_hidden_state", None)
        if found is None and isinstance(output, (tuple, list)) and output:
            found = output[0]
        return found if isinstance(found, torch.Tensor) else output

    def out_of_last(_module: Any, _args: Any, output: Any) -> None:
        order.append(blocks)
        raw = _stream((first(output),), {}, n)
        seen["raw"] = None if raw is None else raw[0, at].clone()

    def out_of_decoder(_module: Any, _args: Any, output: Any) -> None:
        order.append(blocks + 1)
        final = first(output)
        seen["final"] = final if isinstance(final, torch.Tensor) else None

    hooks = entered.install(trunk.blocks)
    hooks.append(trunk.blocks[-1].register_forward_hook(out_of_last))
    hooks.append(_decoder(model).register_forward_hook(out_of_decoder))
    ids = torch.tensor([source], device=device)
    try:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                    decoder_input_ids=torch.tensor([decoder], device=device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    logits = out.logits[0, at].float()
    del out
    final: Any = seen.get("final")
    entered.check(model, final)
    return _Pass(hidden=[h[0] for h in entered.streams] + [final[0]], raw=seen.get("raw"),
                 real=logits)


def lens(model: Any, tokenizer: Any, source: Sequence[int], decoder: Sequence[int], *,
         top: int, max_tokens: int, decoder_limit: int | None = None,
         texts: Any = None) -> LensCapture:
    """The exact logit lens of the decoder reading ``decoder`` (its start token first) for
    ``source``: rows = the decoder's embeddings, each decoder block (the last = the output).

    Examples
    --------
    >>> cap = lens(model, tokenizer, [5, 6, 1], [0, 7, 8], top=5, max_tokens=2048)  # doctest: +SKIP
    >>> cap.top_ids.shape  # rows, decoder positions, k  # doctest: +SKIP
    (3, 3, 5)
    """
    import torch

    source, decoder = [int(i) for i in source], [int(i) for i in decoder]
    trunk = decoder_trunk(model)
    head = Head(model)
    k = min(int(top), int(head.weight.shape[0]))
    check_size(len(decoder), len(trunk.blocks) + 1, k, max_tokens, decoder_limit, "output")
    norm = _float32(trunk.path[0]) if trunk.path else torch.nn.Identity()
    at = sorted({0, len(decoder) - 1})
    with torch.inference_mode():
        run = _forward(model, source, decoder, at, trunk)
        return grid(model, head, norm, run, decoder, at, k=k, tokenizer=tokenizer, texts=texts)


def lens_of(backend: Any, source: str | Sequence[int], target: str | Sequence[int] | None, *,
            top: int, max_tokens: int) -> LensCapture:
    """The decoder's lens for a backend's encoder–decoder: ``target`` (a text, tokenized as
    the model's output, or its ids) after the decoder's start token, for ``source``."""
    from .seq2seq import check_source, decoder_ids

    name = backend.spec.name
    if target is None:
        raise InvalidOptionError(
            f"{name!r} is an encoder–decoder model: its logit lens reads the decoder over an "
            f"output. Give one: lm.logit_lens(source, target=..., model={name!r}), or a "
            "Generation of it.")
    source_ids = backend._ids(source, "translate")
    check_source(name, len(source_ids), backend.context_length)
    decoder = decoder_ids(backend, target, "look at")
    model = backend.model
    return lens(model, backend.tokenizer, source_ids, decoder, top=top, max_tokens=max_tokens,
                texts=backend._texts())
