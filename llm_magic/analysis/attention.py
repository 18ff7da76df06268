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
from typing import TYPE_CHECKING

from ..common.attention_map import AttentionMap, attention_max_tokens
from ..common.attention_map import max_tokens as max_tokens_or_cap
from ..common.text import check_text
from ..manager import ModelManager, get_manager
from ._resolve import resolve

if TYPE_CHECKING:

    from ..backends.base import Backend

__all__ = ["AttentionMap", "attention", "attention_max_tokens", "last_attention"]

def capture(backend: Backend, source: str | Sequence[int], model: str, *,
            max_tokens: int | None = None, prompt_tokens: int | None = None) -> AttentionMap:
    """Capture with a checked-out backend (the model's lock held by the caller)."""
    captured = backend.capture_attention(source, max_tokens=max_tokens_or_cap(max_tokens))
    return AttentionMap.from_capture(captured, model, prompt_tokens)


def attention(text: str, model: str | None = None, *, max_tokens: int | None = None,
              manager: ModelManager | None = None) -> AttentionMap:
    """The attention of one plain forward pass over ``text``.

    Parameters
    ----------
    text : str
        The text, tokenized as the model's tokenizer does by default (special
        tokens such as ``[CLS]`` and ``[SEP]`` included).
    model : str, optional
        A loaded model's name, or a source to load (a directory, a cached hub id,
        ``"demo"``): causal LMs and encoders (BERT-style) alike. The default
        model when omitted.
    max_tokens : int, optional
        Refuse longer sequences (default :func:`attention_max_tokens`): the
        weights take layers x heads x T^2 x 2 bytes in the kernel.

    Returns
    -------
    AttentionMap

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
    check_text(text, "The text", hint="write some text to look at")
    limit = max_tokens_or_cap(max_tokens)
    name = resolve(manager, model)
    with manager.checkout(name) as backend:
        return capture(backend, text, name, max_tokens=limit)


def last_attention(manager: ModelManager | None = None) -> AttentionMap | None:
    """The attention of the latest generation that captured it (``attention=True``)."""
    manager = manager or get_manager()
    return getattr(manager, "last_attention", None)
