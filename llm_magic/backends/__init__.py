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

import logging

from ..common.registry import LazyRegistry
from .base import Backend, GenerationJob, GenerationRequest, LoadSpec

__all__ = ["Backend", "GenerationJob", "GenerationRequest", "LoadSpec", "backend_class",
           "kinds", "register", "wait_for_warm_up", "warm_up", "warming"]

# kind -> "module:Class", imported on first use so that `import llm_magic` stays cheap.
_BACKENDS = LazyRegistry("backend", {
    "demo": "llm_magic.backends.hf:HFBackend",
    "local": "llm_magic.backends.hf:HFBackend",
    "hub": "llm_magic.backends.hf:HFBackend",
    "url": "llm_magic.backends.openai:OpenAIBackend",
}, base=Backend)


def _quiet_torchao() -> None:
    """Keep torchao's import chatter off a cell's stderr.

    Where torchao (the ``quant`` extra) is installed, transformers imports it at
    every first load, quantized or not. On a CPU build of torch it then warns that
    its CUDA extensions do not load, through no handler of its own (so Python's
    last-resort handler prints it), and torch's pytree registry warns that torchao
    registers enums the old way. Neither concerns a user: the first gets a
    ``NullHandler`` (logging the user configures still receives it), the second is
    filtered by its message.
    """
    logging.getLogger("torchao").addHandler(logging.NullHandler())
    logging.getLogger("torch.utils._pytree").addFilter(
        lambda record: "is an Enum subclass" not in record.getMessage()
    )


_quiet_torchao()


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
    """The backend class for sources of ``kind``, its module imported now if it was not.

    While that backend's engine warms up on another thread (:func:`warm_up`),
    this waits for it, so the load that follows imports nothing at the same time.
    """
    if _warmed and _BACKENDS.target(kind) in _warmed:
        from . import _warm_up

        _warm_up.wait()
    return _BACKENDS.get(kind)  # type: ignore[no-any-return]


# The "module:Class" targets whose engine was warmed up (their loads wait for it).
_warmed: set[str] = set()


def warm_up(kind: str = "demo", *, delay: float = 0.0, then: tuple[str, ...] = ()) -> bool:
    """Import, on a background thread, what a first load of a ``kind`` source imports.

    ``%load_ext llm_magic`` calls this so that torch and transformers import
    while the first cell is typed. Only modules are imported: no model is read
    and nothing is put on a GPU. Returns False, starting nothing, when
    ``LLM_MAGIC_WARM_UP=0`` or when a warm-up already started in this process.
    In a kernel without the backend's engine (no torch) it ends at once, quietly.
    The imports begin after ``delay`` seconds, or at once when a load waits for them.
    The modules in ``then`` (what the caller's first use imports) follow the backend's.

    Examples
    --------
    >>> warm_up("demo")  # doctest: +SKIP
    True
    """
    from . import _warm_up

    target = _BACKENDS.target(kind)
    if not _warm_up.enabled() or target is None or _warm_up.started():
        return False
    _warmed.add(target)
    return _warm_up.start(lambda: (*_BACKENDS.get(kind).warm_up_modules(), *then), delay=delay)


def warming() -> bool:
    """Whether the warm-up is importing now."""
    from . import _warm_up

    return _warm_up.running()


def wait_for_warm_up() -> None:
    """Wait until the warm-up has imported everything (at once when none runs).

    A kernel interrupt stops the wait; the warm-up goes on.
    """
    from . import _warm_up

    _warm_up.wait()
