"""The manager's side of resources: estimates of a source, the budget of the loaded models.

The manager asks this module before every load: how much will the model take
(:func:`estimate`), how much may models use on each device (:func:`budget`),
and which idle models must leave to make room.

Examples
--------
>>> import llm_magic as lm
>>> lm.estimate("demo")                       # doctest: +SKIP
Estimate: about 4.9 MB for 'demo' (1.2M parameters, float32 on cpu; from the config)
>>> lm.budget(cpu="8GB")                      # doctest: +SKIP
>>> lm.budget(cpu=0.5)                        # half of this machine's memory  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from ..common.sizes import parse_limit
from ..errors import InvalidOptionError, LLMMagicError
from ..resources import rooms as _rooms
from ..resources import sysmem as _sysmem
from ..resources.budget import Budget, DeviceBudget, device_key
from ..resources.estimate import Estimate, estimate_path
from ..resources.placement import DeviceRoom, Placement, Resident
from ..resources.rooms import device_free as _device_free
from ..resources.rooms import device_total as _device_total
from ..resources.rooms import devices as _devices
from ..resources.rooms import limit_of

if TYPE_CHECKING:
    from ..backends.base import LoadSpec
    from .core import ModelManager

__all__ = ["budget", "estimate", "estimate_spec", "plan_load", "residents", "rooms"]

log = logging.getLogger("llm_magic.resources")

# -- estimates ---------------------------------------------------------------


def estimate(
    source: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantize: str | None = None,
) -> Estimate:
    """Estimate the memory loading ``source`` would take, without loading it.

    Parameters
    ----------
    source : str
        ``"demo"``, a local model directory, or a hub id in the local cache
        (with a network, only its ``config.json`` is fetched).
    dtype, device : str
        As for :func:`llm_magic.load`; ``"auto"`` resolves the same way.
    revision : str, optional
        Branch, tag or commit of a hub model.
    trust_remote_code : bool
        Needed only to build models that ship their own code; without it such
        models are estimated from their weight files.
    quantize : {None, "int8", "int4"}
        Count the linear layers as ``lm.load(..., quantize=...)`` quantizes them.

    Returns
    -------
    Estimate

    Examples
    --------
    >>> import llm_magic as lm
    >>> e = lm.estimate("demo", dtype="bfloat16")   # doctest: +SKIP
    >>> e.memory                                    # doctest: +SKIP
    2453504
    """
    from ..backends import backend_class
    from ..resources.estimate import check_quantize
    from . import sources as _sources

    kind, path = _sources.classify(source)
    quantize = check_quantize(quantize)
    if kind == "url":
        raise InvalidOptionError(
            "A model behind a URL runs on its server; there is nothing to estimate here."
        )
    backend = backend_class(kind)
    resolved_device = backend.resolve_device(device)
    resolved_dtype = backend.resolve_dtype(dtype, resolved_device)
    path, _ = backend.locate(source.strip(), kind, path, revision, config_only=True)
    assert path is not None
    return estimate_path(path, source=source.strip(), dtype=resolved_dtype,
                         device=resolved_device, trust_remote_code=trust_remote_code,
                         quantize=quantize)


# -- budgets -----------------------------------------------------------------


def budget(*, manager: ModelManager | None = None, **limits: Any) -> Budget:
    """Set or show the memory budget per device.

    Parameters
    ----------
    manager : ModelManager, optional
        Defaults to the kernel's manager.
    **limits
        One keyword per device: ``cpu``, ``cuda0``, ``cuda1``, ... (``cuda`` and
        ``gpu`` mean ``cuda0``) or ``mps``. A value is a size (``"8GB"``,
        ``"512MiB"``, a number of bytes), a fraction of the device's memory
        (``0.5``, ``"50%"``; numbers up to 1 are fractions), or ``None`` /
        ``"default"`` for the default (:data:`DEFAULT_FRACTIONS`).

    Returns
    -------
    Budget
        The budget of every device after the change: limit, how it was set, what
        loaded models use, what is left, and the device's free and total memory.

    Notes
    -----
    A load that would pass the budget first evicts idle models, least recently
    used first (never a pinned or generating one), and fails with
    :class:`~llm_magic.errors.BudgetExceededError` when even that is not enough.
    Lowering a budget evicts nothing by itself; the next load makes room.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.budget(cpu="8GB", cuda0=0.5)   # doctest: +SKIP
    >>> lm.budget(cpu=None)               # back to the default   # doctest: +SKIP
    >>> print(lm.budget())                # doctest: +SKIP
    """
    from .core import get_manager

    manager = manager or get_manager()
    parsed: dict[str, int | float | None] = {}
    for key, value in limits.items():
        device = device_key(key)
        if device.startswith("cuda") and device not in _devices({}):
            raise InvalidOptionError(
                f"There is no {device} on this machine (CUDA devices: "
                f"{', '.join(_sysmem.cuda_devices()) or 'none'})."
            )
        if device == "mps" and not sys.platform == "darwin":
            raise InvalidOptionError("There is no Apple MPS device on this machine.")
        is_default = value is None or (isinstance(value, str)
                                       and value.strip().lower() in ("default", "auto", "none"))
        parsed[device] = None if is_default else parse_limit(value)
    settings = manager.limits
    for device, value in parsed.items():
        if value is None:
            settings.pop(device, None)
        else:
            settings[device] = value
    if parsed:
        log.info("budget set: %s", {d: settings.get(d, "default") for d in parsed})
    used = _used_by_device(manager)
    rows = []
    for device in _devices(settings):
        limit, setting = limit_of(settings, device)
        rows.append(DeviceBudget(device, limit, setting, _device_total(device),
                                 used.get(device, 0), _device_free(device, probe_gpu=False)))
    return Budget(rows)


def _used_by_device(manager: ModelManager) -> dict[str, int]:
    used: dict[str, int] = {}
    for resident in residents(manager):
        for device, n in resident.memory:
            used[device] = used.get(device, 0) + n
    return used


def residents(manager: ModelManager) -> list[Resident]:
    """The manager's models that hold memory here, as the planner sees them."""
    return _rooms.residents(manager.models())


def rooms(manager: ModelManager, devices: list[str]) -> list[DeviceRoom]:
    """Budget and free memory of ``devices`` for a load that is about to use them."""
    return _rooms.rooms(manager.limits, devices)


def plan_load(manager: ModelManager, spec: LoadSpec, requested_device: str,
              estimate: Estimate) -> Placement:
    """Where ``spec`` goes and which models must leave (see :func:`plan_placement`)."""
    return _rooms.plan_load(manager.limits, manager.models(), device=spec.device,
                            requested_device=requested_device, source=spec.source,
                            dtype=spec.dtype, memory=estimate.memory,
                            largest_block=estimate.largest_block)


def estimate_spec(spec: LoadSpec) -> Estimate | None:
    """The manager's estimate for a load; None (and a log line) when none is possible."""
    assert spec.path is not None
    try:
        return estimate_path(spec.path, source=spec.source, dtype=spec.dtype, device=spec.device,
                             trust_remote_code=spec.trust_remote_code, quantize=spec.quantize)
    except LLMMagicError as exc:
        log.warning("%s Loading without a budget check.", exc)
        return None
