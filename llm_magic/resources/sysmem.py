"""What the machine has: memory per device and what is free.

Nothing here imports torch unless CUDA is asked about, and then only when the
caller already decided to use it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = [
    "cpu_free",
    "cpu_total",
    "cuda_devices",
    "cuda_free",
    "cuda_total",
    "env_int",
    "process_rss",
]

log = logging.getLogger("llm_magic.resources")

def process_rss() -> int:
    """Resident memory of this process, in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (a container), if one is set."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def _cgroup_usage() -> int | None:
    for path in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
        try:
            with open(path) as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            continue
    return None


def cpu_total() -> int:
    """The memory this process may use: physical memory, or a container's lower limit."""
    import psutil

    total = int(psutil.virtual_memory().total)
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def cpu_free() -> int:
    """Memory available for a new model now (page cache counts as available)."""
    import psutil

    free = int(psutil.virtual_memory().available)
    limit, usage = _cgroup_limit(), _cgroup_usage()
    if limit and usage is not None:
        free = min(free, max(limit - usage, 0))
    return free


def _torch_cuda() -> Any | None:
    """``torch.cuda`` when torch is importable and sees a GPU, else None."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return torch.cuda if torch.cuda.is_available() else None


def cuda_devices() -> list[str]:
    """``["cuda:0", ...]`` for every GPU torch sees (empty without CUDA)."""
    cuda = _torch_cuda()
    return [] if cuda is None else [f"cuda:{i}" for i in range(cuda.device_count())]


def cuda_total(index: int) -> int:
    """Total memory of GPU ``index`` in bytes."""
    cuda = _torch_cuda()
    assert cuda is not None
    return int(cuda.get_device_properties(index).total_memory)


def cuda_free(index: int) -> int | None:
    """Free memory of GPU ``index`` as the driver sees it (other processes included).

    Only asked when a load is about to use that GPU: the query creates a CUDA
    context there.
    """
    cuda = _torch_cuda()
    if cuda is None:
        return None
    try:
        free, _total = cuda.mem_get_info(index)
    except RuntimeError as exc:  # pragma: no cover - a GPU in a bad state
        log.warning("cannot query free memory of cuda:%d: %s", index, exc)
        return None
    return int(free)


def env_int(name: str) -> int | None:
    """An environment variable as a positive int, or None when unset or invalid."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None
