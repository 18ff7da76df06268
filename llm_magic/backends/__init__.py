"""Engines behind the manager, found by the kind of source through a small registry.

``base`` defines what a backend must offer. :func:`backend_class` maps a
source's kind ("demo", "local", "hub", "url") to its backend class and imports
that backend's module only then: ``hf`` (transformers models inside the
kernel, the only one that imports torch and transformers) or ``openai``
(a model served over an OpenAI-compatible API).

Examples
--------
>>> from llm_magic.backends import backend_class
>>> backend_class("demo").kind  # doctest: +SKIP
'hf'
"""

from __future__ import annotations

from .._registry import LazyRegistry
from .base import Backend, GenerationJob, GenerationRequest, LoadSpec

__all__ = ["Backend", "GenerationJob", "GenerationRequest", "LoadSpec", "backend_class",
           "kinds", "register"]

# kind -> "module:Class", imported on first use so that `import llm_magic` stays cheap.
_BACKENDS = LazyRegistry("backend", {
    "demo": "llm_magic.backends.hf:HFBackend",
    "local": "llm_magic.backends.hf:HFBackend",
    "hub": "llm_magic.backends.hf:HFBackend",
    "url": "llm_magic.backends.openai:OpenAIBackend",
}, base=Backend)


def register(kind: str, target: str) -> None:
    """Serve sources of ``kind`` with the backend class at ``target`` (``"module:Class"``).

    Examples
    --------
    >>> register("demo", "llm_magic.backends.hf:HFBackend")
    """
    _BACKENDS.register(kind, target)


def kinds() -> list[str]:
    """The kinds of source that have a backend.

    Examples
    --------
    >>> "local" in kinds()
    True
    """
    return _BACKENDS.kinds()


def backend_class(kind: str) -> type[Backend]:
    """The backend class for sources of ``kind``, its module imported now if it was not."""
    return _BACKENDS.get(kind)  # type: ignore[no-any-return]
