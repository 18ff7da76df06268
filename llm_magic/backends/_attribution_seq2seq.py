"""Attribution on an encoder–decoder: the source and the decoder's input as one sequence.

The encoder reads the source; the decoder reads its start token (a forced
language token next, if any), then the output. Joined, ``[source ; decoder
input]`` has the shape :mod:`._attribution` reads: the prediction at decoder
position t depends on every source token and on the decoder tokens up to t,
never on a later one. :class:`Joined` presents the model that way: one
embedding per joined token (the encoder's for the source, the decoder's for
the rest, each scaled as the model scales it) and the decoder's logits at the
decoder's positions (zeros at the source's, which no row reads). The passes,
methods, batching and checks of :mod:`._attribution` then apply unchanged,
the causality check included.

Before anything is attributed, the joined forward on embeddings is checked
against the model's own forward on ids; a model whose logits differ is
refused rather than attributed wrongly.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch

from ..errors import InvalidOptionError, NotAvailableError, PromptTooLongError
from . import seq2seq as _s2s
from ._attribution import AttributionCapture
from ._attribution import attribute as _attribute

__all__ = ["Joined", "attribute"]


class _Embedding(torch.nn.Module):
    """Joined ids to embeddings: the encoder's for the first ``split``, the decoder's after."""

    def __init__(self, encoder: Any, decoder: Any, split: int, scale: float) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.split, self.scale = split, scale

    @property
    def weight(self) -> Any:
        return self.encoder.weight

    def forward(self, ids: Any) -> Any:
        source = self.encoder(ids[..., : self.split])
        if self.scale != 1.0:
            source = source * self.scale
        return torch.cat([source, self.decoder(ids[..., self.split:])], dim=-2)


class Joined(torch.nn.Module):
    """An encoder–decoder seen as one causal sequence, ``[source ; decoder input]``.

    ``forward(inputs_embeds=...)`` splits the embeddings at ``split`` into the
    encoder's and the decoder's and returns ``logits`` over every joined
    position: zeros over the source, the decoder's own logits after it.
    """

    def __init__(self, model: Any, split: int, scale: float = 1.0) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self.split = split
        self.embedding = _Embedding(model.get_encoder().get_input_embeddings(),
                                    model.get_decoder().get_input_embeddings(), split, scale)
        self.training = self.embedding.training = model.training  # the model's mode, kept

    def get_input_embeddings(self) -> Any:
        return self.embedding

    def get_output_embeddings(self) -> Any:
        return self.inner.get_output_embeddings()

    def forward(self, inputs_embeds: Any, use_cache: bool = False) -> Any:
        if inputs_embeds.shape[1] <= self.split:
            raise InvalidOptionError("An encoder–decoder attribution reads at least the "
                                     "decoder's start token after the source.")
        logits = self.inner(inputs_embeds=inputs_embeds[:, : self.split],
                            decoder_inputs_embeds=inputs_embeds[:, self.split:],
                            use_cache=False).logits
        pad = logits.new_zeros(logits.shape[0], self.split, logits.shape[2])
        return SimpleNamespace(logits=torch.cat([pad, logits], dim=1))


def _encoder_scale(model: Any) -> list[float]:
    """The scales to try for source embeddings: none, then the encoder's ``embed_scale``
    (Marian and Pegasus apply it only to ids they embed themselves)."""
    found = getattr(model.get_encoder(), "embed_scale", None)
    return [1.0] + ([float(found)] if isinstance(found, (int, float)) and found != 1.0 else [])


def joined(model: Any, source: Sequence[int], decoder: Sequence[int], name: str) -> Joined:
    """The :class:`Joined` view of ``model`` whose logits equal the model's own on these ids.

    Raises
    ------
    NotAvailableError
        No scale of the source embeddings reproduces the model's logits.
    """
    ids = torch.tensor([[*source, *decoder]], device=model.device)
    split = len(source)
    worst = float("inf")
    with torch.no_grad():
        own = model(input_ids=ids[:, :split], decoder_input_ids=ids[:, split:],
                    use_cache=False).logits.float()
        for scale in _encoder_scale(model):
            view = Joined(model, split, scale)
            got = view(inputs_embeds=view.get_input_embeddings()(ids)).logits[:, split:].float()
            worst = float((got - own).abs().max())
            if worst <= 1e-5 * max(1.0, float(own.abs().max())):
                return view
    raise NotAvailableError(
        f"{name!r} does not give the same logits on embeddings as on ids (they differ by "
        f"{worst:.3g}), so its tokens cannot be attributed exactly.")


def attribute(backend: Any, source: str | Sequence[int], *, rows: Sequence[tuple[Any, Any, Any]],
              output: str | Sequence[int] | None, target_lang: str | None, method: str,
              steps: int, baseline: Any, max_tokens: int) -> AttributionCapture:
    """Attribute output tokens of an encoder–decoder to the source and the decoder's input.

    ``rows`` are (output index or None, target, contrast): index k is the k-th
    token of ``output`` (teacher-forced), None the token after it (the greedy
    next one unless a target is given). The capture's columns are the source's
    tokens, then the decoder's start (and forced language) token, then the output's.
    """
    from ._attribution import rows_after, rows_of

    name = backend.spec.name
    source_ids = backend._ids(source, "attribute")
    _s2s.check_source(name, len(source_ids), backend.context_length)
    found = [] if output is None else _s2s.output_ids(backend, output, "attribute")
    prefix = [_s2s.decoder_start(backend.model, backend.pad_id)]
    if target_lang is not None:
        prefix.append(_s2s._target_lang(backend.tokenizer, name, target_lang))
    decoder = [*prefix, *found]
    limit = _s2s.decoder_limit(backend.model.config)
    if limit is not None and len(decoder) > limit:
        raise PromptTooLongError(f"The output is {len(found)} tokens, but the decoder of "
                                 f"{name!r} writes at most {limit - len(prefix)}. Shorten it.")
    before = len(source_ids) + len(prefix)
    if found:
        rows = rows_after(rows, before, len(found))
    elif any(p is not None for p, _, _ in rows):
        raise InvalidOptionError("Without an output only the first output token can be "
                                 "attributed; pass output= (or a Generation) for the others.")
    wanted = rows_of(rows, before + len(found), backend.token_id)
    view = joined(backend.model, source_ids, decoder, name)
    cap = _attribute(view, [*source_ids, *decoder], wanted, method=method, steps=steps,
                     baseline=baseline, max_tokens=max_tokens, texts=backend._texts(),
                     pad_id=backend.pad_id,
                     quantized=getattr(backend.quantized, "scheme", None))
    return _with_counts(cap, len(source_ids), before)


def _with_counts(cap: AttributionCapture, source: int, before: int) -> AttributionCapture:
    from dataclasses import replace

    notes = (*cap.notes, f"The columns are the {source} source tokens (through the encoder), "
             "then the decoder's input: its start token, any forced language token, and the "
             "output tokens before each row's.")
    return replace(cap, notes=notes, source_tokens=source, prompt_tokens=before)
