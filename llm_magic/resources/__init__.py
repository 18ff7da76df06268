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

from .budget import Budget, DeviceBudget, device_key
from .cpu import default_threads, set_threads, threads
from .estimate import Estimate, estimate_path
from .sampler import Sample, Sampler, get_sampler

__all__ = ["Budget", "DeviceBudget", "Estimate", "Sample", "Sampler", "default_threads",
           "device_key", "estimate_path", "get_sampler", "set_threads", "threads"]
