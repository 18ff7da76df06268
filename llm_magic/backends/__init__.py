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

import importlib
import threading

from ..errors import InvalidOptionError
from .base import Backend, GenerationJob, GenerationRequest, LoadSpec

__all__ = ["Backend", "GenerationJob", "GenerationRequest", "LoadSpec", "backend_class",
           "kinds", "register"]

# kind -> "module:Class", imported on first use so that `import llm_magic` stays cheap.
_REGISTRY: dict[str, str] = {
    "demo": "llm_magic.backends.hf:HFBackend",
    "local": "llm_magic.backends.hf:HFBackend",
    "hub": "llm_magic.backends.hf:HFBackend",
    "url": "llm_magic.backends.openai:OpenAIBackend",
}
_loaded: dict[str, type[Backend]] = {}
_lock = threading.Lock()


def register(kind: str, target: str) -> None:
    """Serve sources of ``kind`` with the backend class at ``target`` (``"module:Class"``).

    Examples
    --------
    >>> register("demo", "llm_magic.backends.hf:HFBackend")
    """
    module, sep, name = target.partition(":")
    if not sep or not module or not name.isidentifier():
        raise InvalidOptionError(f"Write a backend as 'module:Class', not {target!r}.")
    with _lock:
        _REGISTRY[kind] = target
        _loaded.pop(kind, None)


def kinds() -> list[str]:
    """The kinds of source that have a backend.

    Examples
    --------
    >>> "local" in kinds()
    True
    """
    return sorted(_REGISTRY)


def backend_class(kind: str) -> type[Backend]:
    """The backend class for sources of ``kind``, its module imported now if it was not."""
    with _lock:
        cls = _loaded.get(kind)
        if cls is not None:
            return cls
        target = _REGISTRY.get(kind)
        if target is None:
            known = ", ".join(sorted(_REGISTRY))
            raise InvalidOptionError(
                f"No backend serves sources of kind {kind!r} (known: {known})."
            )
        module, _, name = target.partition(":")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"{target} is not a Backend subclass.")
        _loaded[kind] = cls
        return cls
