"""Attention with a generation: refused before generating when it cannot be done,
captured after it in one extra, exact forward pass over the whole sequence."""

from __future__ import annotations

from typing import Any

from ..backends.base import Backend, GenerationRequest
from ..common.attention_map import AttentionMap, attention_max_tokens
from ..common.attention_map import max_tokens as attention_cap
from ..common.attention_seq2seq import Seq2SeqAttention
from ..errors import InvalidOptionError, NotAvailableError

__all__ = ["capture", "check_attention"]


def check_attention(backend: Any, name: str, prompt_tokens: int,
                     request: GenerationRequest) -> None:
    """Refuse a capture that cannot be done before generating, not after."""
    if type(backend).capture_attention is Backend.capture_attention:
        endpoint = backend.describe().get("endpoint")
        if endpoint:
            raise NotAvailableError(
                f"Model {name!r} is served at {endpoint}; attention capture needs the model's "
                "weights in this kernel. Load the model here (a local directory or hub id) to "
                "see its attention."
            )
        raise NotAvailableError(
            f"Model {name!r} runs on the {backend.kind!r} backend, which cannot capture "
            "attention; generate without attention=True (--attention)."
        )
    cap = attention_max_tokens()
    if getattr(backend, "seq2seq", False):  # two sequences: the source, the output
        output = 1 + request.max_new_tokens
        if max(prompt_tokens, output) > cap:
            raise InvalidOptionError(
                f"The source ({prompt_tokens} tokens) or the output (the start token and up to "
                f"{request.max_new_tokens} new tokens) passes the attention cap of {cap} tokens; "
                "ask for fewer tokens or a shorter source, or raise the cap with "
                f"lm.attention_max_tokens({max(prompt_tokens, output)}) if the memory is there.")
        return
    longest = prompt_tokens + (request.max_new_tokens if request.explicit_length else 0)
    if longest > cap:
        raise InvalidOptionError(
            f"The prompt ({prompt_tokens} tokens) and up to {longest - prompt_tokens} new "
            f"tokens pass the attention cap of {cap} tokens; ask for fewer tokens, or raise "
            f"the cap with lm.attention_max_tokens({longest}) if the memory is there (the "
            "weights take layers x heads x T^2 x 2 bytes)."
        )


def capture(backend: Any, job: Any, name: str) -> AttentionMap | Seq2SeqAttention:
    """The attention of the generation's prompt and new tokens (the model's lock held); an
    encoder–decoder's three kinds over its source and its output as the decoder read it."""
    decoder = getattr(job, "decoder_ids", lambda: None)()
    if decoder is not None:
        captured = backend.capture_attention(job.prompt_ids(), max_tokens=attention_cap(None),
                                             target=decoder[1:])
        return Seq2SeqAttention.from_capture(captured, name)
    ids = job.sequence_ids()
    if ids is None:
        raise NotAvailableError(f"Model {name!r} does not report the tokens it generated, so "
                                "their attention cannot be captured.")
    captured = backend.capture_attention(ids, max_tokens=attention_cap(None))
    return AttentionMap.from_capture(captured, name, job.prompt_tokens)
