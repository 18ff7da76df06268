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
import os
import sys
import warnings
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

from . import _sysmem
from ._placement import DeviceRoom, Placement, Resident, budget_keyword, plan_placement
from ._sizes import format_size, parse_limit, text_table
from .errors import InvalidOptionError, LLMMagicError, LLMMagicWarning

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

#: The share of each kind of device that models may use unless ``lm.budget`` says otherwise:
#: half the RAM (the kernel, the browser and the rest of the machine need the other half)
#: and 90% of a GPU (its CUDA context, activations and the KV cache need the rest).
DEFAULT_FRACTIONS: dict[str, float] = {"cpu": 0.5, "cuda": 0.9, "mps": 0.5}


# -- estimates ---------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """The memory a load will take, known before any weight is read.

    Attributes
    ----------
    source : str
        What was estimated.
    memory : int
        Bytes of weights and buffers once loaded, in ``dtype``.
    parameters : int
        Number of parameters.
    dtype, device : str
        The resolved dtype and device.
    method : str
        ``"meta"`` (built from the config with empty weights), ``"safetensors"``
        (the files' headers) or ``"file sizes"``.
    largest_block : int
        The largest piece accelerate will not split across devices (bytes).
    """

    source: str
    memory: int
    parameters: int
    dtype: str
    device: str
    method: str
    largest_block: int = 0

    _METHODS = {"meta": "from the config", "safetensors": "from the safetensors headers",
                "file sizes": "from the weight files' sizes"}

    def __str__(self) -> str:
        from .manager import _count

        how = self._METHODS.get(self.method, self.method)
        return (f"about {format_size(self.memory)} for {self.source!r} "
                f"({_count(self.parameters)} parameters, {self.dtype} on {self.device}; {how})")

    def __int__(self) -> int:
        return self.memory

    def __repr__(self) -> str:
        return f"Estimate: {self}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        return f"<p class='llm-magic-estimate'>Estimate: {escape(str(self))}</p>"


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
    from .backends import hf

    kind, path = _sources.classify(source)
    if kind == "url":
        raise InvalidOptionError(
            "A model behind a URL runs on its server; there is nothing to estimate here."
        )
    resolved_device = hf.resolve_device(device)
    resolved_dtype = hf.resolve_dtype(dtype, resolved_device)
    if kind == "hub":
        path = _hub_config_dir(source.strip(), revision)
    assert path is not None
    return estimate_path(path, source=source.strip(), dtype=resolved_dtype,
                         device=resolved_device, trust_remote_code=trust_remote_code)


def _hub_config_dir(repo_id: str, revision: str | None) -> str:
    """The cached snapshot of a hub model, or a folder with just its config."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from .errors import ModelNotFoundError

    try:
        return str(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    try:
        return os.path.dirname(hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception as exc:
        raise ModelNotFoundError(
            f"Cannot estimate {repo_id!r}: it is not in the local Hugging Face cache and its "
            f"config cannot be fetched ({type(exc).__name__}). Download it first, or pass a "
            "local directory."
        ) from exc


def estimate_path(path: str, *, source: str, dtype: str, device: str,
                  trust_remote_code: bool = False) -> Estimate:
    """Estimate a model directory for an already resolved dtype and device.

    Raises
    ------
    LLMMagicError
        When neither the config nor the weight files say how big the model is.
    """
    from ._estimate import count_model

    found = count_model(path, dtype, trust_remote_code)
    if found is None:
        raise LLMMagicError(
            f"Cannot estimate {source!r}: its config does not build a causal LM here and the "
            "folder has no weight files (.safetensors, .bin) to measure."
        )
    return Estimate(source, found.memory, found.parameters, dtype, device, found.method,
                    found.largest_block)


def estimate_spec(spec: LoadSpec) -> Estimate | None:
    """The manager's estimate for a load; None (and a log line) when none is possible."""
    assert spec.path is not None
    try:
        return estimate_path(spec.path, source=spec.source, dtype=spec.dtype, device=spec.device,
                             trust_remote_code=spec.trust_remote_code)
    except LLMMagicError as exc:
        log.warning("%s Loading without a budget check.", exc)
        return None


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


def _device_total(device: str) -> int:
    if device.startswith("cuda:"):
        return _sysmem.cuda_total(int(device[5:]))
    return _sysmem.cpu_total()  # mps shares the machine's memory


def _device_free(device: str, *, probe_gpu: bool) -> int | None:
    if device.startswith("cuda:"):
        torch = sys.modules.get("torch")
        initialized = torch is not None and torch.cuda.is_initialized()
        return _sysmem.cuda_free(int(device[5:])) if (probe_gpu or initialized) else None
    return _sysmem.cpu_free()


def _may_have_cuda() -> bool:
    """Cheap: is there an NVIDIA driver at all? (Avoids importing torch on machines without.)"""
    return "torch" in sys.modules or sys.platform == "win32" or os.path.exists("/dev/nvidiactl")


def _devices(settings: dict[str, int | float]) -> list[str]:
    devices = ["cpu"]
    if _may_have_cuda():
        devices += _sysmem.cuda_devices()
    devices += [d for d in settings if d not in devices]
    return devices


def limit_of(settings: dict[str, int | float], device: str) -> tuple[int, str]:
    """The budget in bytes for ``device`` and how it was set (for display)."""
    total = _device_total(device)
    value = settings.get(device)
    if value is None:
        fraction = DEFAULT_FRACTIONS[device.split(":")[0]]
        return int(total * fraction), f"default: {fraction:.0%} of {format_size(total)}"
    if isinstance(value, float):
        return int(total * value), f"{value:.0%} of {format_size(total)}"
    return int(value), format_size(value)


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
    """The manager's models as the planner sees them."""
    out = []
    for info in manager.models():
        memory = info.placement or ((info.device, info.memory),)
        out.append(Resident(info.name, tuple(memory), info.last_used or info.loaded_at,
                            evictable=not (info.pinned or info.generating), pinned=info.pinned))
    return out


def rooms(manager: ModelManager, devices: list[str]) -> list[DeviceRoom]:
    """Budget and free memory of ``devices`` for a load that is about to use them."""
    return [DeviceRoom(d, limit_of(manager.limits, d)[0], _device_free(d, probe_gpu=True))
            for d in devices]


def plan_load(manager: ModelManager, spec: LoadSpec, requested_device: str,
              estimate: Estimate) -> Placement:
    """Where ``spec`` goes and which models must leave (see :func:`plan_placement`)."""
    auto = (requested_device or "auto").strip().lower() == "auto"
    if auto and spec.device.startswith("cuda"):
        target = "auto"
        devices = [*_sysmem.cuda_devices(), "cpu"]
    else:
        target = spec.device
        devices = [spec.device]
    return plan_placement(
        estimate.memory, target, rooms(manager, devices), residents(manager),
        chunk=estimate.largest_block, source=repr(spec.source), dtype=spec.dtype,
    )


# -- threads -----------------------------------------------------------------

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
    """The intra-op thread count torch uses now (or will use, before torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return default_threads()
    return int(torch.get_num_threads())


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
    if any(os.environ.get(v, "").strip() for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        log.debug("threads left to OMP_NUM_THREADS/MKL_NUM_THREADS")
        return None
    current = int(torch.get_num_threads())
    if current != _torch_default_threads():
        log.debug("torch threads were set to %d by the user; leaving them", current)
        return None
    n = max(1, _usable_cores() - 1)
    if n != current:
        torch.set_num_threads(n)
        log.info("CPU threads: %d of %d cores (lm.set_threads(n) to change)", n, current)
    return n

