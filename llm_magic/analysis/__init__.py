"""What happens inside a prediction, read from the model the manager holds.

One family of analyses, each a Python call with a notebook view:

- :mod:`~llm_magic.analysis.attention`: every head's attention over a sequence;
- :mod:`~llm_magic.analysis.tokens`: each token's probability and its likeliest
  alternatives, for a generation (``logprobs=K``) or a given text (:func:`score`);
- :mod:`~llm_magic.analysis.lens`: the logit lens, what every layer would predict
  if it were the last (:func:`logit_lens`), exact and self-checked;
- :mod:`~llm_magic.analysis.quality`: a (quantized) model's predictions against a
  reference's over a text (:func:`quality`): agreement, KL, perplexities;
- :mod:`~llm_magic.analysis.attribution`: which input tokens drove an output token
  (:func:`attribute`: saliency, input x gradient, integrated gradients, occlusion);
- :mod:`~llm_magic.analysis.patching`: what changes when a part of the computation is
  removed (:func:`ablate`) or swapped between two runs (:func:`patch`), by hooks only.

Examples
--------
>>> import llm_magic as lm
>>> scores = lm.score("The import statement", model="demo")  # doctest: +SKIP
>>> round(scores.perplexity, 1)  # doctest: +SKIP
"""

from __future__ import annotations

from .attention import (
    AttentionMap,
    Seq2SeqAttention,
    attention,
    attention_max_tokens,
    last_attention,
)
from .attribution import Attribution, attribute
from .compare import Comparison, compare
from .lens import LensMap, logit_lens
from .patching import Ablation, Patching, ablate, patch
from .quality import QualityReport, quality
from .tokens import Scores, TokenRecord, score

__all__ = ["Ablation", "AttentionMap", "Attribution", "Comparison", "LensMap", "Patching",
           "QualityReport", "Scores", "Seq2SeqAttention", "TokenRecord", "ablate", "attention",
           "attention_max_tokens", "attribute", "compare", "last_attention", "logit_lens",
           "patch", "quality", "score"]
