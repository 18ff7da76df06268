"""Engines behind the manager.

``base`` defines what a backend must offer; ``hf`` runs transformers models
inside the kernel. Only ``hf`` imports torch and transformers, and only when a
model is loaded through it.
"""

from __future__ import annotations

from .base import Backend, GenerationJob, GenerationRequest, LoadSpec

__all__ = ["Backend", "GenerationJob", "GenerationRequest", "LoadSpec"]
