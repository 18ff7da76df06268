"""Import a backend's engine on a background thread while the person is still typing.

``%load_ext llm_magic`` starts the warm-up (:func:`llm_magic.backends.warm_up`);
the first load, and a cell that starts while it runs, wait for it (:func:`wait`)
rather than import the same packages at the same time. Only modules are
imported: nothing is put on a GPU (torch does not initialise CUDA on import)
and no model is read.

Python's import lock makes two threads importing one module safe, but two
threads importing *different* parts of a package with circular imports inside
(transformers has them) can each hold a lock the other needs; Python then
breaks the deadlock by handing one of them a half-initialised module. Waiting
for the warm-up thread first avoids that.

Examples
--------
>>> wait()      # at once when no warm-up runs
True
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["HF_MODULES", "enabled", "import_modules", "running", "start", "started", "wait"]

log = logging.getLogger("llm_magic.warm_up")

#: What a first load of the demo or of a local causal LM imports, in import order.
#: ``modeling_utils`` pulls in generation, masking and ``torch.distributed.tensor``;
#: the demo is a GPT-2, and the Auto classes are what a load of any causal LM uses.
HF_MODULES = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.generation.utils",
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.tokenization_utils_fast",
    "transformers.models.gpt2.modeling_gpt2",
    "safetensors.torch",
)

_lock = threading.Lock()
_thread: threading.Thread | None = None
_go = threading.Event()  # set: begin the imports now


def enabled() -> bool:
    """False when ``LLM_MAGIC_WARM_UP`` turns the warm-up off (``0``, ``false``, ``no``, ``off``).

    Examples
    --------
    >>> import os
    >>> os.environ["LLM_MAGIC_WARM_UP"] = "0"
    >>> enabled()
    False
    >>> del os.environ["LLM_MAGIC_WARM_UP"]
    """
    value = os.environ.get("LLM_MAGIC_WARM_UP", "").strip().lower()
    return value not in ("0", "false", "no", "off")


def import_modules(names: Iterable[str]) -> None:
    """Import ``names`` in order on this thread; stop quietly at the first that is missing."""
    for name in names:
        t = time.perf_counter()
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.debug("warm-up stops at %s: %s", name, exc)
            return
        log.debug("warm-up imported %s in %.3fs", name, time.perf_counter() - t)


def _run(names: Callable[[], Iterable[str]], delay: float) -> None:
    # Loading a C extension (libtorch) holds the GIL for a while: let the kernel
    # send the answer to the cell that started the warm-up first. A wait() starts it now.
    _go.wait(delay)
    t = time.perf_counter()
    try:
        import_modules(names())
    except Exception as exc:  # a failed warm-up only means that the first load imports instead
        log.debug("warm-up failed: %r", exc)
    log.debug("warm-up done in %.3fs", time.perf_counter() - t)


def start(names: Callable[[], Iterable[str]], *, delay: float = 0.0,
          name: str = "llm_magic-warm-up") -> bool:
    """Import the modules that ``names()`` gives, in order, once, on a daemon thread.

    ``names`` is called on that thread; the imports begin after ``delay`` seconds,
    or as soon as something waits for them. Returns False, starting nothing, when
    a warm-up already ran in this process. A module that is not installed (no
    torch in a kernel for served models) ends the warm-up quietly.
    """
    global _thread
    with _lock:
        if _thread is not None:
            return False
        _thread = threading.Thread(target=_run, args=(names, delay), name=name, daemon=True)
        _thread.start()
    return True


def started() -> bool:
    """Whether a warm-up was started in this process (it may be over)."""
    return _thread is not None


def running() -> bool:
    """Whether the warm-up thread is still importing."""
    thread = _thread
    return thread is not None and thread.is_alive()


def wait(timeout: float | None = None) -> bool:
    """Block until the warm-up is done (at once without one); False if ``timeout`` ran out.

    A no-op on the warm-up thread itself. The wait is a loop of short joins, so a
    kernel interrupt stops it at once; the warm-up goes on, and the next cell waits
    for the rest.
    """
    thread = _thread
    if thread is None or thread is threading.current_thread():
        return True
    _go.set()
    deadline = None if timeout is None else time.monotonic() + timeout
    while thread.is_alive():
        left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
        if left <= 0:
            return False
        thread.join(left)
    return True
