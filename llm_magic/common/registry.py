"""Name a class by a ``"module:Class"`` string and import its module only when it is asked for.

The backends (``backends/__init__.py``) and the notebook views of API objects
(``_views.py``) are both found this way, so ``import llm_magic`` stays cheap and
no layer has to import the one above it.

Examples
--------
>>> registry = LazyRegistry("view", {"table": "collections:OrderedDict"})
>>> registry.get("table").__name__
'OrderedDict'
>>> registry.kinds()
['table']
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from ..errors import InvalidOptionError

__all__ = ["LazyRegistry"]


class LazyRegistry:
    """A thread-safe map of kind to ``"module:Class"``, imported on first use.

    Parameters
    ----------
    what : str
        What the classes are ("backend", "view"), for messages.
    entries : dict
        The kinds known from the start.
    base : type, optional
        A class every entry must subclass.
    """

    def __init__(self, what: str, entries: dict[str, str], base: type | None = None) -> None:
        self.what = what
        self.base = base
        self._targets = dict(entries)
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def register(self, kind: str, target: str) -> None:
        """Serve ``kind`` with the class at ``target`` (``"module:Class"``)."""
        module, sep, name = target.partition(":")
        if not sep or not module or not name.isidentifier():
            raise InvalidOptionError(f"Write a {self.what} as 'module:Class', not {target!r}.")
        with self._lock:
            self._targets[kind] = target
            self._loaded.pop(kind, None)

    def kinds(self) -> list[str]:
        return sorted(self._targets)

    def target(self, kind: str) -> str | None:
        """The ``"module:Class"`` registered for ``kind`` (None when there is none)."""
        return self._targets.get(kind)  # no lock: get() holds it while a module imports

    def get(self, kind: str) -> Any:
        """The class for ``kind``, its module imported now if it was not."""
        with self._lock:
            cls = self._loaded.get(kind)
            if cls is not None:
                return cls
            target = self._targets.get(kind)
            if target is None:
                known = ", ".join(sorted(self._targets))
                raise InvalidOptionError(f"No {self.what} is registered for {kind!r} "
                                         f"(known: {known}).")
            module, _, name = target.partition(":")
            cls = getattr(importlib.import_module(module), name)
            if self.base is not None and not (isinstance(cls, type)
                                              and issubclass(cls, self.base)):
                raise TypeError(f"{target} is not a {self.base.__name__} subclass.")
            self._loaded[kind] = cls
            return cls
