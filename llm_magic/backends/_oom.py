"""Out-of-memory errors: recognise them, drop what they hold, say what to do."""

from __future__ import annotations

import contextlib
import errno
import sys
import traceback
from collections.abc import Iterator

from ..errors import BackendError
from ._memory import release_memory

__all__ = ["forget", "is_out_of_memory", "out_of_memory_guard"]


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "cannot allocate memory", "out of memory")
    )


def forget(exc: BaseException) -> str:
    """Clear the frames of a failed call so the tensors they hold die; keep a one-line reason.

    A traceback keeps every frame's locals alive: after an out-of-memory error
    those are the half-built model or the KV cache, and IPython would keep
    them for good in ``sys.last_traceback``.
    """
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    traceback.clear_frames(exc.__traceback__)
    return text[:300]


@contextlib.contextmanager
def out_of_memory_guard(what: str, device: str) -> Iterator[None]:
    """Turn an out-of-memory error during generation into a BackendError, memory returned."""
    reason = None
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        reason = forget(exc)
    if reason is not None:
        release_memory()
        raise BackendError(
            f"Out of memory on {device} while generating with {what} ({reason}). The generation "
            "was dropped and its memory returned; the model stays loaded. Ask for fewer new "
            "tokens or a shorter prompt, or unload other models."
        )
