"""Encoder–decoder models (T5, BART, mBART, Marian, Pegasus) in the transformers backend.

The encoder reads the source once; the decoder writes the output token by token,
looking at the source through cross-attention. Everything a causal model does
applies to the decoder's side: streaming, interrupt, stops, seeds, sampling,
batches, token records and branches. What differs is here, as functions of the
backend (``hf.HFBackend`` calls them when its model is an encoder–decoder):
the source and the output are two sequences (a job's prompt ids are the
source's; its new ids follow the decoder's start token), chat templates and
system prompts do not apply, a target language may be forced
(``target_lang=``), and the encoder's and the decoder's limits are checked
before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidOptionError, PromptTooLongError
from ._devices import torch_module as _torch
from .base import GenerationRequest, ScoreCapture

__all__ = ["REREAD", "batch_ids", "check_source", "decoder_limit", "decoder_start", "inputs",
           "refuse_causal_only", "score_target"]


#: A conversation's footer on an encoder–decoder: why no token is reused.
REREAD = ("an encoder–decoder reads the whole conversation again each turn (its encoder "
          "reads both ways, so no cache can be kept)")


def refuse_causal_only(name: str, request: GenerationRequest) -> None:
    """Refuse what only a causal model takes: a chat template, a system text outside a
    conversation (a conversation's transcript is the source: ``_kept.transcript``)."""
    if request.chat:
        raise InvalidOptionError(
            f"Chat templates do not apply to {name!r}, an encoder–decoder model: it reads "
            "the source as given. Drop chat=True (`--chat`).")
    if request.system and request.messages is None:
        raise InvalidOptionError(
            f"A system prompt does not apply to {name!r}, an encoder–decoder model: put any "
            "instruction (a T5 task prefix, say) in the text itself.")


def decoder_start(model: Any, pad_id: int | None) -> int:
    """The decoder's first id (what every output starts from)."""
    for holder in (model.config, getattr(model, "generation_config", None)):
        start = getattr(holder, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    return int(pad_id or 0)


def decoder_limit(config: Any) -> int | None:
    """The most positions the decoder reads (None: no fixed limit, as T5's)."""
    for attr in ("max_target_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_source(name: str, n: int, limit: int | None) -> None:
    if n == 0:
        raise InvalidOptionError("The source encodes to no tokens; write some text.")
    if limit is not None and n > limit:
        raise PromptTooLongError(
            f"The source is {n} tokens, but the encoder of {name!r} reads at most {limit}. "
            "Shorten it, or split it into parts.")


def output_ids(backend: Any, target: str | Sequence[int], purpose: str) -> list[int]:
    """An output's ids: a text tokenized as the model's output (``text_target``), or ids
    checked against the vocabulary; an empty one is refused."""
    if isinstance(target, str):
        if not target.strip():
            raise InvalidOptionError(f"The target is empty: write the output to {purpose}.")
        found = list(backend.tokenizer(text_target=target, verbose=False)["input_ids"])
    else:
        found = backend._ids(target, purpose)
    if not found:
        raise InvalidOptionError(f"The target is empty (no tokens): write the output to {purpose}.")
    return found


def decoder_ids(backend: Any, target: str | Sequence[int], purpose: str) -> list[int]:
    """The decoder's input for ``target``: its start token, then the output's ids, refused
    past the decoder's limit (with the number and the limit)."""
    found = output_ids(backend, target, purpose)
    decoder = [decoder_start(backend.model, backend.pad_id), *found]
    limit = decoder_limit(backend.model.config)
    if limit is not None and len(decoder) > limit:
        raise PromptTooLongError(
            f"The output is {len(found)} tokens, but the decoder of {backend.spec.name!r} "
            f"writes at most {limit - 1} after its start token. Shorten it.")
    return decoder


#: The tokenizer's named special tokens: never a language code, whatever their text.
_NAMED = ("bos", "eos", "unk", "pad", "sep", "cls", "mask")


def _target_lang(tokenizer: Any, name: str, lang: str) -> int:
    """The id that starts the output in ``lang`` (mBART, NLLB, M2M: a forced first token).

    A code is one of the tokenizer's language codes (``lang_code_to_id``) or a token it
    added whole (mBART's ``fr_XX``, NLLB's ``fra_Latn``, M2M100's ``__fr__`` for ``fr``);
    never a piece of ordinary text (``de`` is one in most vocabularies) nor the start, end,
    padding or unknown token.
    """
    codes = getattr(tokenizer, "lang_code_to_id", None)
    if isinstance(codes, dict) and lang in codes:
        return int(codes[lang])
    added: dict[str, int] = getattr(tokenizer, "get_added_vocab", dict)()
    whole = set(added) | set(getattr(tokenizer, "all_special_tokens", ()))
    named = {getattr(tokenizer, f"{n}_token_id", None) for n in _NAMED}
    for candidate in (lang, f"__{lang}__"):
        found = tokenizer.convert_tokens_to_ids(candidate) if candidate in whole else None
        if isinstance(found, int) and found not in named:
            return found
    raise InvalidOptionError(
        f"{lang!r} is not a language code of {name!r}: its tokenizer has no such token "
        "(mBART writes codes like 'fr_XX', NLLB like 'fra_Latn', M2M100 like 'fr'); a model "
        "that translates one pair takes no target_lang.")


def inputs(backend: Any, request: GenerationRequest, source: list[int]
           ) -> tuple[dict[str, Any], list[int], int]:
    """The encoder's and the decoder's inputs of one request: (inputs, decoder prefix, room).

    The prefix is the start token, the forced language token if any, then a
    branch's output so far; room is how many new tokens the decoder may write.
    """
    torch = _torch()
    device = backend.model.device
    ids = torch.tensor([source], device=device)
    prefix = [decoder_start(backend.model, backend.pad_id)]
    if request.target_lang is not None:
        prefix.append(_target_lang(backend.tokenizer, backend.spec.name, request.target_lang))
    prefix += list(request.lead_ids)
    found = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "decoder_input_ids": torch.tensor([prefix], device=device)}
    limit = decoder_limit(backend.model.config)
    room = request.max_new_tokens if limit is None else min(
        request.max_new_tokens, max(0, limit - len(prefix)))
    return found, prefix, room


def score_target(backend: Any, source: str | Sequence[int], target: str | Sequence[int], *,
                 logprobs: int) -> ScoreCapture:
    """Teacher-force ``target`` (a text, or output ids) as the output for ``source``: one record
    per target token."""
    from . import _logprobs

    source_ids = backend._ids(source, "translate")
    check_source(backend.spec.name, len(source_ids), backend.context_length)
    decoder = decoder_ids(backend, target, "score")
    return _logprobs.score_seq2seq(backend.model, backend.tokenizer, source_ids, decoder,
                                   k=logprobs)


def batch_ids(backend: Any, requests: Sequence[GenerationRequest]) -> list[int]:
    """The decoder prefix every row of a batch starts from: the start token, then the
    forced language token if any (one for the batch, which shares its options). What a
    batch on an encoder–decoder cannot take is refused here, before anything runs."""
    name = backend.spec.name
    langs = {request.target_lang for request in requests}
    if len(langs) > 1:
        raise InvalidOptionError("The prompts of a batch share their options: give one "
                                 "target_lang, or generate each language as its own batch.")
    for request in requests:
        refuse_causal_only(name, request)
        check_source(name, len(backend._ids(request.prompt, "translate")), backend.context_length)
    prefix = [decoder_start(backend.model, backend.pad_id)]
    lang = requests[0].target_lang
    if lang is not None:
        prefix.append(_target_lang(backend.tokenizer, name, lang))
    return prefix
