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

from typing import Any

from .registry import LazyRegistry

__all__ = ["register", "view_class"]

_VIEWS = LazyRegistry("view", {
    "attention": "llm_magic.widgets.attention:AttentionWidget",
    "tokens": "llm_magic.widgets.tokens:TokensWidget",
    "compare": "llm_magic.widgets.compare:CompareWidget",
    "lens": "llm_magic.widgets.lens:LensWidget",
})


def register(kind: str, target: str) -> None:
    """Show objects of ``kind`` with the class at ``target`` (``"module:Class"``)."""
    _VIEWS.register(kind, target)


def view_class(kind: str) -> Any:
    """The view class for ``kind``, its module imported now if it was not."""
    return _VIEWS.get(kind)
