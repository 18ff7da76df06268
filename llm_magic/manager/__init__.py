"""The kernel-resident model manager: one per kernel, the only owner of every model.

- :mod:`.core`: :class:`ModelManager` (load, unload, pin, eviction, locks, events);
- :mod:`.sources`: what a source string names (demo, folder, hub id, server URL);
- :mod:`.info`: :class:`ModelInfo`, the loaded-models table and unload reports;
- :mod:`.holders`: who still holds a model that should be gone;
- :mod:`.room`: making room: the budget of the loaded models, estimates of a source
  (``lm.budget``, ``lm.estimate``).

Handles, generations and widgets refer to a model by name, so ``unload`` really
returns the memory.
"""

from __future__ import annotations

from .core import ModelManager, ModelRef, get_manager
from .info import ModelInfo, ModelTable, UnloadReport
from .room import budget, estimate

__all__ = ["ModelInfo", "ModelManager", "ModelRef", "ModelTable", "UnloadReport", "budget",
           "estimate", "get_manager"]
