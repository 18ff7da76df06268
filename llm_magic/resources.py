"""Memory and CPU as resources: estimates before loading, budgets per device, threads.

The manager asks this module before every load: how much will the model take
(:func:`estimate`), how much may models use on each device (:func:`budget`),
and which idle models must leave to make room. CPU threads are a resource too:
:func:`set_threads` chooses how many cores a generation uses.

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
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

from . import _rooms, _sysmem
from ._estimate import Estimate, estimate_path
from ._placement import DeviceRoom, Placement, Resident, budget_keyword, plan_placement
from ._rooms import DEFAULT_FRACTIONS, limit_of
from ._rooms import device_free as _device_free
from ._rooms import device_total as _device_total
from ._rooms import devices as _devices
from ._sizes import format_size, parse_limit, text_table
from ._threads import _torch_default_threads as _torch_default_threads
from ._threads import _usable_cores as _usable_cores
from ._threads import apply_default_threads, default_threads, set_threads, threads
from .errors import InvalidOptionError, LLMMagicError

if TYPE_CHECKING:
    from .backends.base import LoadSpec
    from .manager import ModelManager

__all__ = [
    "DEFAULT_FRACTIONS",
    "Budget",
    "DeviceBudget",
    "DeviceRoom",
    "Estimate",
    "Placement",
    "Resident",
    "apply_default_threads",
    "budget",
    "budget_keyword",
    "default_threads",
    "device_key",
    "estimate",
    "estimate_path",
    "estimate_spec",
    "format_size",
    "limit_of",
    "parse_limit",
    "plan_load",
    "plan_placement",
    "residents",
    "rooms",
    "set_threads",
    "threads",
]

log = logging.getLogger("llm_magic.resources")

# -- estimates ---------------------------------------------------------------


def estimate(
    source: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
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
    from . import _sources
    from .backends import backend_class

    kind, path = _sources.classify(source)
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
                         device=resolved_device, trust_remote_code=trust_remote_code)


# -- budgets -----------------------------------------------------------------


def device_key(name: str) -> str:
    """Normalise a budget keyword: ``cuda0``, ``cuda_0``, ``cuda``, ``gpu`` -> ``"cuda:0"``.

    Examples
    --------
    >>> device_key("cuda1"), device_key("CPU"), device_key("gpu")
    ('cuda:1', 'cpu', 'cuda:0')
    """
    key = str(name).strip().lower().replace("_", "").replace(":", "")
    if key in ("cpu", "mps"):
        return key
    for prefix in ("cuda", "gpu"):
        if key.startswith(prefix):
            index = key[len(prefix):] or "0"
            if index.isdigit():
                return f"cuda:{int(index)}"
    raise InvalidOptionError(
        f"Unknown device {name!r} for a budget: use cpu, cuda0, cuda1, ... or mps."
    )


@dataclass(frozen=True)
class DeviceBudget:
    """The budget of one device and how much of it is taken.

    Attributes
    ----------
    device : str
        ``"cpu"``, ``"cuda:0"``, ...
    limit : int
        Bytes that loaded models may take together.
    setting : str
        How the limit was set (``"default: 50% of 24.0 GB"``, ``"8.0 GB"``).
    total : int
        The device's memory.
    used : int
        Bytes taken by loaded models (measured).
    free : int or None
        Bytes the device has free now, other processes included (None: not queried).
    """

    device: str
    limit: int
    setting: str
    total: int
    used: int
    free: int | None

    @property
    def available(self) -> int:
        """Budget left for another model."""
        return self.limit - self.used


class Budget(tuple):  # type: ignore[type-arg]
    """The memory budget of every device, a tuple of :class:`DeviceBudget` that renders as a table.

    Examples
    --------
    >>> import llm_magic as lm
    >>> b = lm.budget()            # doctest: +SKIP
    >>> b["cpu"].limit             # doctest: +SKIP
    12000000000
    """

    columns = ("device", "budget", "set as", "used by models", "left", "device free",
               "device total")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            device = device_key(key)
            for item in self:
                if item.device == device:
                    return item
            raise KeyError(key)
        return super().__getitem__(key)

    def rows(self) -> list[tuple[str, ...]]:
        return [(b.device, format_size(b.limit), b.setting, format_size(b.used),
                 format_size(b.available), format_size(b.free), format_size(b.total))
                for b in self]

    def __str__(self) -> str:
        return text_table(self.columns, self.rows())

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in self.rows()
        )
        return (f"<table class='llm-magic-budget'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")


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
    from .manager import get_manager

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
                             trust_remote_code=spec.trust_remote_code)
    except LLMMagicError as exc:
        log.warning("%s Loading without a budget check.", exc)
        return None
