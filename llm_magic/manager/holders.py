"""Say who still holds an object that should have been freed."""

from __future__ import annotations

import gc
import sys
from typing import Any

__all__ = ["find_holders"]


def _refers_to(value: Any, obj: Any) -> bool:
    if value is obj:
        return True
    try:
        return any(r is obj for r in gc.get_referents(value)) or any(
            r is obj for v in gc.get_referents(value) if isinstance(v, dict)
            for r in v.values()
        )
    except Exception:
        return False


def _user_namespace() -> dict[str, Any] | None:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    return None if shell is None else shell.user_ns


def _traceback_holds(obj: Any) -> bool:
    tb = getattr(sys, "last_traceback", None)
    while tb is not None:
        frame = tb.tb_frame
        if any(_refers_to(v, obj) for v in list(frame.f_locals.values())):
            return True
        tb = tb.tb_next
    return False


def find_holders(obj: Any) -> list[str]:
    """Describe the references to ``obj`` a notebook user can clear.

    Looks at the user's namespace (variables and objects holding it, such as a
    pipeline), IPython's ``Out`` history and the last traceback; anything else
    is described by the type of the object that refers to it.
    """
    found: list[str] = []
    ns = _user_namespace()
    out_cache: dict[Any, Any] = {}
    if ns is not None:
        out = ns.get("Out")
        if isinstance(out, dict):
            out_cache = out
        for key, value in list(ns.items()):
            history = key in {"_", "__", "___", "Out", "_oh"} or key[1:].isdigit()
            if history:
                continue
            if _refers_to(value, obj):
                found.append(f"the variable `{key}` (run `del {key}`)")
        for n, value in list(out_cache.items()):
            if _refers_to(value, obj):
                found.append(f"IPython's output history Out[{n}] (run `%reset -f out`)")
        for key in ("_", "__", "___"):
            if key in ns and _refers_to(ns[key], obj):
                found.append(f"IPython's `{key}` (run `%reset -f out`)")
                break
    if _traceback_holds(obj):
        found.append("the last error's traceback (run `import sys; sys.last_traceback = None`)")
    if not found:
        kinds = sorted({type(r).__name__ for r in gc.get_referrers(obj)} - {"frame", "list"})
        found.append("an object outside llm_magic" + (f" ({', '.join(kinds)})" if kinds else ""))
    return found
