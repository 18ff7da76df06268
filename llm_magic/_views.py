"""Notebook views of API objects, found by kind through a small registry.

The API never imports the notebook face: an object that has a view (an
attention map) asks this registry for the view's class, whose module is
imported by name only then, the way ``backends`` finds a backend. That keeps
``import llm_magic`` free of anywidget and the layers pointing one way.

Examples
--------
>>> from llm_magic import _views
>>> _views.register("attention", "llm_magic.widgets.attention:AttentionWidget")
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from .errors import InvalidOptionError

__all__ = ["register", "view_class"]

# kind -> "module:Class", imported on first use.
_REGISTRY: dict[str, str] = {
    "attention": "llm_magic.widgets.attention:AttentionWidget",
}
_loaded: dict[str, Any] = {}
_lock = threading.Lock()


def register(kind: str, target: str) -> None:
    """Show objects of ``kind`` with the class at ``target`` (``"module:Class"``)."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name.isidentifier():
        raise InvalidOptionError(f"Write a view as 'module:Class', not {target!r}.")
    with _lock:
        _REGISTRY[kind] = target
        _loaded.pop(kind, None)


def view_class(kind: str) -> Any:
    """The view class for ``kind``, its module imported now if it was not."""
    with _lock:
        cls = _loaded.get(kind)
        if cls is None:
            target = _REGISTRY.get(kind)
            if target is None:
                raise InvalidOptionError(f"No view is registered for {kind!r}.")
            module, _, name = target.partition(":")
            cls = getattr(importlib.import_module(module), name)
            _loaded[kind] = cls
        return cls
