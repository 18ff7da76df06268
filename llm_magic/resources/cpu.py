"""CPU threads as a resource: how many cores a generation uses.

Torch's intra-op thread count applies to every model in the process. The
default leaves one core for the kernel, the sampler and the browser; it is
applied once, when the first in-kernel model loads, unless the user chose.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from ..errors import InvalidOptionError, LLMMagicWarning
from . import sysmem as _sysmem

__all__ = ["apply_default_threads", "default_threads", "set_threads", "threads"]

log = logging.getLogger("llm_magic.resources")


_threads_settled = False


def _usable_cores() -> int:
    """Physical cores this process may use: affinity and a container's CPU quota count."""
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_threads() -> int:
    """The intra-op thread count a notebook gets: ``LLM_MAGIC_THREADS``, else all cores but one.

    One core stays free for the kernel's own thread, the resource sampler, the
    browser and whatever else runs beside the notebook. Measured through
    ``lm.generate`` on 2 cores (``benchmarks/resources.py``): on a quiet machine
    2 threads gained at most 1.5x (a 43M-parameter GPT-2: 54-68 vs 42-46
    tokens/s; a tiny one: none); beside one busy process they lost 5-7x (8 vs
    44 tokens/s), and on a shared machine 5-23x (a 3.9M-parameter GPT-2: 6.6 vs
    153 tokens/s).

    Examples
    --------
    >>> default_threads() >= 1
    True
    """
    chosen = _sysmem.env_int("LLM_MAGIC_THREADS")
    if chosen is not None:
        return chosen
    return max(1, _usable_cores() - 1)


def threads() -> int:
    """The intra-op thread count torch uses now (or will use once the first model loads).

    torch may be imported before any model loads (the warm-up of ``%load_ext``
    does it): until the default is applied, this is the count it will apply.
    """
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return default_threads()  # not imported, or still importing on another thread
    current = int(torch.get_num_threads())
    if _threads_settled or (_sysmem.env_int("LLM_MAGIC_THREADS") is None
                            and _user_chose_threads(current)):
        return current
    return default_threads()


def _user_chose_threads(current: int) -> bool:
    """Whether torch's threads were set outside llm_magic (environment, or through torch)."""
    if any(os.environ.get(v, "").strip() for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return True
    return current != _torch_default_threads()


def set_threads(n: int | None = None) -> int:
    """Set how many CPU threads a generation uses (``None``: the default); returns it.

    Applies to every model in this kernel. ``LLM_MAGIC_THREADS`` sets it from
    the environment; without either, the default applies when the first model
    loads unless you set torch's threads yourself (``torch.set_num_threads``,
    ``OMP_NUM_THREADS``).

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.set_threads(1)
    1
    """
    global _threads_settled
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidOptionError(f"The thread count must be a whole number >= 1, not {n!r}.")
    import torch

    torch.set_num_threads(n)
    _threads_settled = True
    log.info("CPU threads set to %d", n)
    return n


def _torch_default_threads() -> int:
    """What torch picks by itself: OMP/MKL settings, else the physical cores."""
    import psutil

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        n = _sysmem.env_int(var)
        if n is not None:
            return n
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def apply_default_threads() -> int | None:
    """Apply the default thread count once, when the first model loads; returns it.

    Leaves torch alone (returns None) when :func:`set_threads` already ran, or
    when the user chose threads through torch or ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``.
    """
    global _threads_settled
    if _threads_settled:
        return None
    _threads_settled = True
    import torch

    raw = os.environ.get("LLM_MAGIC_THREADS", "").strip()
    if raw and _sysmem.env_int("LLM_MAGIC_THREADS") is None:
        warnings.warn(f"LLM_MAGIC_THREADS={raw!r} is not a whole number >= 1; ignoring it.",
                      LLMMagicWarning, stacklevel=2)
    elif raw:
        return set_threads(default_threads())
    current = int(torch.get_num_threads())
    if _user_chose_threads(current):
        log.debug("torch threads left as the user chose (%d)", current)
        return None
    n = max(1, _usable_cores() - 1)
    if n != current:
        torch.set_num_threads(n)
        log.info("CPU threads: %d of %d cores (lm.set_threads(n) to change)", n, current)
    return n

