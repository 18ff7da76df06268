"""``llm_magic.attention`` stays importable; attention lives in :mod:`llm_magic.analysis.attention`.

Examples
--------
>>> from llm_magic.attention import AttentionMap  # the same class as lm.AttentionMap
"""

from __future__ import annotations

from .analysis.attention import (
    AttentionMap,
    attention,
    attention_max_tokens,
    capture,
    last_attention,
)

__all__ = ["AttentionMap", "attention", "attention_max_tokens", "capture", "last_attention"]
