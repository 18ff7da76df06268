"""Each device's memory budget and free memory, and the plan for one load.

The manager asks :func:`plan_load` before reading any weights; ``lm.budget``
shows the same numbers. Resident models come in as the manager describes them
(``ModelInfo``); served models use no memory here and never count.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from ..common.sizes import format_size
from . import sysmem as _sysmem
from .placement import DeviceRoom, Placement, Resident, plan_placement

__all__ = ["DEFAULT_FRACTIONS", "device_free", "device_total", "devices", "limit_of",
           "plan_load", "residents", "rooms"]

#: The share of each kind of device that models may use unless ``lm.budget`` says otherwise:
#: half the RAM (the kernel, the browser and the rest of the machine need the other half)
#: and 90% of a GPU (its CUDA context, activations and the KV cache need the rest).
DEFAULT_FRACTIONS: dict[str, float] = {"cpu": 0.5, "cuda": 0.9, "mps": 0.5}


def device_total(device: str) -> int:
    if device.startswith("cuda:"):
        return _sysmem.cuda_total(int(device[5:]))
    return _sysmem.cpu_total()  # mps shares the machine's memory


def device_free(device: str, *, probe_gpu: bool) -> int | None:
    if device.startswith("cuda:"):
        torch = sys.modules.get("torch")
        initialized = torch is not None and torch.cuda.is_initialized()
        return _sysmem.cuda_free(int(device[5:])) if (probe_gpu or initialized) else None
    return _sysmem.cpu_free()


def may_have_cuda() -> bool:
    """Cheap: is there an NVIDIA driver at all? (Avoids importing torch on machines without.)"""
    return "torch" in sys.modules or sys.platform == "win32" or os.path.exists("/dev/nvidiactl")


def devices(settings: dict[str, int | float]) -> list[str]:
    """The devices a budget covers: the CPU, every visible GPU, and any with a setting."""
    found = ["cpu"]
    if may_have_cuda():
        found += _sysmem.cuda_devices()
    found += [d for d in settings if d not in found]
    return found


def limit_of(settings: dict[str, int | float], device: str) -> tuple[int, str]:
    """The budget in bytes for ``device`` and how it was set (for display)."""
    total = device_total(device)
    value = settings.get(device)
    if value is None:
        fraction = DEFAULT_FRACTIONS[device.split(":")[0]]
        return int(total * fraction), f"default: {fraction:.0%} of {format_size(total)}"
    if isinstance(value, float):
        return int(total * value), f"{value:.0%} of {format_size(total)}"
    return int(value), format_size(value)


def residents(infos: Iterable[Any]) -> list[Resident]:
    """The models that hold memory here (``ModelInfo`` objects), as the planner sees them."""
    out = []
    for info in infos:
        if getattr(info, "endpoint", None):  # served elsewhere: no memory here
            continue
        memory = info.placement or ((info.device, info.memory),)
        cache = int(getattr(info, "cache", 0) or 0)
        if cache:  # a model's kept conversation caches live on its first device
            memory = ((memory[0][0], memory[0][1] + cache), *memory[1:])
        out.append(Resident(info.name, tuple(memory), info.last_used or info.loaded_at,
                            evictable=not (info.pinned or info.generating), pinned=info.pinned))
    return out


def rooms(settings: dict[str, int | float], names: list[str]) -> list[DeviceRoom]:
    """Budget and free memory of the devices ``names`` for a load that is about to use them."""
    return [DeviceRoom(d, limit_of(settings, d)[0], device_free(d, probe_gpu=True))
            for d in names]


def plan_load(settings: dict[str, int | float], infos: Iterable[Any], *, device: str,
              requested_device: str, source: str, dtype: str, memory: int,
              largest_block: int = 0) -> Placement:
    """Where a load of ``memory`` bytes goes and which models must leave (:func:`plan_placement`).

    ``device`` is the resolved device; ``requested_device="auto"`` on a GPU lets
    the model spread over every GPU and the CPU.
    """
    auto = (requested_device or "auto").strip().lower() == "auto"
    if auto and device.startswith("cuda"):
        target = "auto"
        names = [*_sysmem.cuda_devices(), "cpu"]
    else:
        target = device
        names = [device]
    return plan_placement(
        memory, target, rooms(settings, names), residents(infos),
        chunk=largest_block, source=repr(source), dtype=dtype,
    )
