"""Attention maps: what each token looked at, layer by layer and head by head.

:func:`attention` runs one plain forward pass; ``lm.generate(...,
attention=True)`` captures the whole sequence of a generation (prompt and new
tokens). Either way the backend does one separate, exact forward pass with
eager attention and hands back every head in float16, and an
:class:`AttentionMap` keeps it in the kernel. The interactive view asks for one
head at a time, so what reaches the notebook stays small whatever the length.

Examples
--------
>>> import llm_magic as lm
>>> amap = lm.attention("The import statement", model="demo")  # doctest: +SKIP
>>> amap.shape  # doctest: +SKIP
(4, 4, 4, 4)
>>> amap  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..common.attention_map import AttentionMap, attention_max_tokens
from ..common.attention_map import max_tokens as max_tokens_or_cap
from ..common.attention_seq2seq import Seq2SeqAttention
from ..common.text import check_text
from ..errors import InvalidOptionError, NotAvailableError
from ..manager import ModelManager, get_manager
from ._resolve import resolve

if TYPE_CHECKING:

    from ..backends.base import Backend

__all__ = ["AttentionMap", "Seq2SeqAttention", "attention", "attention_max_tokens",
           "last_attention"]


def capture(backend: Backend, source: str | Sequence[int], model: str, *,
            max_tokens: int | None = None, prompt_tokens: int | None = None,
            target: str | Sequence[int] | None = None) -> AttentionMap | Seq2SeqAttention:
    """Capture with a checked-out backend (the model's lock held by the caller)."""
    limit = max_tokens_or_cap(max_tokens)
    if target is not None or getattr(backend, "seq2seq", False):
        if not getattr(backend, "seq2seq", False):
            raise InvalidOptionError(
                f"{model!r} is not an encoder–decoder model: target= applies only to one (T5, "
                f"BART, Marian). Look at the whole text with lm.attention(text, model={model!r}).")
        return Seq2SeqAttention.from_capture(
            backend.capture_attention(source, max_tokens=limit, target=target), model)
    captured = backend.capture_attention(source, max_tokens=limit)
    return AttentionMap.from_capture(captured, model, prompt_tokens)


def _check_target(target: Any) -> None:
    """A text or a list of token ids; anything else refused here, not deep in the model."""
    if target is None or isinstance(target, str):
        return
    if not isinstance(target, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in target):
        raise InvalidOptionError(f"target must be a text or a list of token ids, not "
                                 f"{type(target).__name__} {str(target)[:40]!r}.")


def _from_generation(gen: Any) -> tuple[list[int], list[int], int, str | None]:
    """A generation's source (prompt) ids, output ids, prompt length and forced language."""
    if gen.prompt_ids is None or gen.tokens is None or any(r.id is None for r in gen.tokens):
        raise NotAvailableError(
            "This generation did not keep its token ids: generate with logprobs=1 (its "
            "token records), or with attention=True (then gen.attention is the capture).")
    lang = (getattr(gen, "params", None) or {}).get("target_lang")
    return list(gen.prompt_ids), [int(r.id) for r in gen.tokens], len(gen.prompt_ids), lang


def attention(text: Any, model: str | None = None, *,
              target: str | Sequence[int] | None = None, max_tokens: int | None = None,
              manager: ModelManager | None = None) -> AttentionMap | Seq2SeqAttention:
    """The attention of one plain forward pass over ``text`` (or a generation, or a source
    and its ``target`` on an encoder–decoder model).

    Parameters
    ----------
    text : str or Generation
        The text, tokenized as the model's tokenizer does by default (special
        tokens such as ``[CLS]`` and ``[SEP]`` included); the source of an
        encoder–decoder. A :class:`~llm_magic.Generation` (with its token
        records, ``logprobs=K``) is looked at whole: its prompt and output ids
        (an encoder–decoder's source, and its output after the decoder's start
        token and the language code ``target_lang=`` forced, if any); its model
        unless ``model`` names another.
    model : str, optional
        A loaded model's name, or a source to load (a directory, a cached hub id,
        ``"demo"``): causal LMs and encoders (BERT-style) alike. The default
        model when omitted.
    target : str or sequence of int, optional
        An encoder–decoder's output: a text, or the ids after the decoder's
        start token. Required there (or a Generation); refused on other models.
    max_tokens : int, optional
        Refuse longer sequences (default :func:`attention_max_tokens`): the
        weights take layers x heads x T^2 x 2 bytes in the kernel.

    Returns
    -------
    AttentionMap or Seq2SeqAttention
        A :class:`Seq2SeqAttention` (``.encoder``, ``.decoder``, ``.cross``) for an
        encoder–decoder model.

    Raises
    ------
    InvalidOptionError
        An empty text, or one longer than ``max_tokens`` (the message says what it
        would take).

    Examples
    --------
    >>> import llm_magic as lm
    >>> amap = lm.attention("The import statement", model="demo")  # doctest: +SKIP
    >>> amap.mean(layer=0).shape  # doctest: +SKIP
    (4, 4)
    """
    manager = manager or get_manager()
    limit = max_tokens_or_cap(max_tokens)
    _check_target(target)
    source: str | list[int] = text
    prompt_tokens, lang = None, None
    if hasattr(text, "prompt_ids") and hasattr(text, "tokens"):
        if target is not None:
            raise InvalidOptionError("A generation brings its own output: drop target=.")
        model = model or text.model
        if text.attention is not None and model == text.model and max_tokens is None:
            return text.attention  # type: ignore[no-any-return]
        ids, output, prompt_tokens, lang = _from_generation(text)
        source, target = ids, output
    else:
        check_text(text, "The text", hint="write some text to look at")
    name = resolve(manager, model)
    with manager.checkout(name) as backend:
        if prompt_tokens is not None and not getattr(backend, "seq2seq", False):
            source, target = [*source, *(target or [])], None
        elif lang is not None:  # the decoder read the forced code after its start token
            target = [backend.language_id(lang), *(target or [])]
        return capture(backend, source, name, max_tokens=limit, target=target,
                       prompt_tokens=prompt_tokens)


def last_attention(manager: ModelManager | None = None) -> AttentionMap | None:
    """The attention of the latest generation that captured it (``attention=True``)."""
    manager = manager or get_manager()
    return getattr(manager, "last_attention", None)
