"""What happens inside a prediction, read from the model the manager holds.

One family of analyses, each a Python call with a notebook view:

- :mod:`~llm_magic.analysis.attention`: every head's attention over a sequence;
- :mod:`~llm_magic.analysis.tokens`: each token's probability and its likeliest
  alternatives, for a generation (``logprobs=K``) or a given text (:func:`score`).

Examples
--------
>>> import llm_magic as lm
>>> scores = lm.score("The import statement", model="demo")  # doctest: +SKIP
>>> round(scores.perplexity, 1)  # doctest: +SKIP
"""

from __future__ import annotations

from .attention import AttentionMap, attention, attention_max_tokens, last_attention
from .tokens import Scores, TokenRecord, score

__all__ = ["AttentionMap", "Scores", "TokenRecord", "attention", "attention_max_tokens",
           "last_attention", "score"]
