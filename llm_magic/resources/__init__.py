"""Memory and CPU as resources, before and while models run.

What this package owns, one module each:

- :mod:`.estimate`: what a load will take, from safetensors headers or the config on the
  meta device, without reading weights;
- :mod:`.placement`: where a model goes and which idle models must leave for it;
- :mod:`.rooms`: each device's budget, total and free memory, as the planner sees them;
- :mod:`.budget`: the :class:`Budget` table and device keywords;
- :mod:`.cpu`: how many CPU threads torch uses;
- :mod:`.sysmem`, :mod:`.nvml`: the host's memory and the GPUs (NVML), read cheaply;
- :mod:`.sampler`: the one background sampler behind the gauges.

None of it knows about loaded models: the manager (:mod:`llm_magic.manager`) applies
budgets to them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .budget import Budget, DeviceBudget, device_key
    from .cpu import default_threads, set_threads, threads
    from .estimate import Estimate, estimate_path
    from .sampler import Sample, Sampler, get_sampler

__all__ = ["Budget", "DeviceBudget", "Estimate", "Sample", "Sampler", "default_threads",
           "device_key", "estimate_path", "get_sampler", "set_threads", "threads"]

# The names import their module on first use. A face that imported its modules at once
# would let two threads (the warm-up's backend import and a cell's own import of one of
# these modules) each hold an import lock the other needs, and Python would hand one of
# them a half-initialised module.
_WHERE = {
    **dict.fromkeys(["Budget", "DeviceBudget", "device_key"], "budget"),
    **dict.fromkeys(["default_threads", "set_threads", "threads"], "cpu"),
    **dict.fromkeys(["Estimate", "estimate_path"], "estimate"),
    **dict.fromkeys(["Sample", "Sampler", "get_sampler"], "sampler"),
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        if name not in _WHERE:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
