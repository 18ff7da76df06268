"""Generation: one prompt (or a batch) through a loaded model, streamed and interruptible.

``lm.generate`` resolves the model, builds a checked request, runs the backend's job on a
worker thread that the calling thread drains, and records the result as a
:class:`Generation`.
"""

from __future__ import annotations

from .batch import generate_batch
from .core import (
    MAX_LOGPROBS,
    Generation,
    GenerationStats,
    PendingGeneration,
    Sink,
    branch,
    generate,
    make_request,
)

__all__ = ["MAX_LOGPROBS", "Generation", "GenerationStats", "PendingGeneration", "Sink",
           "branch", "generate", "generate_batch", "make_request"]
