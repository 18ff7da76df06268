"""NVML and torch.cuda readings for the resource sampler.

Private to :mod:`llm_magic.monitor`. NVML numbers devices physically and
ignores ``CUDA_VISIBLE_DEVICES``, so devices are mapped to torch's ``cuda:N``
by UUID or PCI bus id; every field is read on its own so that one "Not
Supported" field leaves the others intact.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GPUSample"]

log = logging.getLogger("llm_magic.resources")

_PROCESS_FNS = (  # newest first; older drivers lack the newer entry points
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)


@dataclass(frozen=True)
class GPUSample:
    """One GPU at one moment. Any number may be None: not supported there, or it failed.

    Attributes
    ----------
    index : int or None
        The ``cuda:N`` index this GPU has in this process; None when unknown.
    nvml_index : int
        NVML's index: physical order, blind to ``CUDA_VISIBLE_DEVICES``.
    name, uuid, pci_bus_id : str or None
        As NVML reports them (``uuid`` is ``"GPU-..."`` or ``"MIG-..."``).
    utilization : int or None
        Percent of time a kernel ran over NVML's last window.
    memory_used, memory_total, memory_reserved : int or None
        Bytes. ``memory_reserved`` (driver and firmware) comes from NVML's v2
        memory call and is then excluded from ``memory_used``.
    temperature : int or None
        Degrees Celsius.
    power : float or None
        Watts.
    process_memory : int or None
        Bytes held on this GPU by this process, as NVML sees it.
    torch_allocated, torch_reserved : int or None
        torch's caching allocator: bytes in tensors, and bytes it holds.

    Examples
    --------
    >>> g = GPUSample(index=0, nvml_index=1, name="NVIDIA H200", uuid="GPU-1234",
    ...               pci_bus_id="00000000:3B:00.0", memory_used=2**30)
    >>> g.memory_used, g.temperature
    (1073741824, None)
    """

    index: int | None
    nvml_index: int
    name: str | None
    uuid: str | None
    pci_bus_id: str | None
    utilization: int | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    memory_reserved: int | None = None
    temperature: int | None = None
    power: float | None = None
    process_memory: int | None = None
    torch_allocated: int | None = None
    torch_reserved: int | None = None



def _torch_cuda() -> Any | None:
    """``torch.cuda`` when torch is imported *and* CUDA initialised; never imports torch.

    Not initialised means nothing was allocated through torch, and asking for
    device properties then would create a CUDA context (hundreds of MB per GPU).
    """
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is None:
        return None
    try:
        return cuda if cuda.is_initialized() else None
    except Exception:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _norm_uuid(value: Any) -> str | None:
    """NVML's ``GPU-<hex>``/``MIG-<hex>`` and torch's bare ``<hex>`` compare equal."""
    text = (_text(value) or "").strip().lower()
    if text.startswith(("gpu-", "mig-")):
        text = text[4:]
    return text or None


def _parse_bus_id(bus_id: str | None) -> tuple[int, int, int] | None:
    """``"00000000:3B:00.0"`` -> (domain, bus, device)."""
    try:
        domain, bus, rest = (bus_id or "").split(":")
        return int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)
    except ValueError:
        return None


@dataclass(eq=False)
class _Device:
    handle: Any
    nvml_index: int
    name: str | None
    uuid: str | None
    pci_bus_id: str | None
    unsupported: set[str] = field(default_factory=set)
    v1_memory: bool = False


_Visible = list[tuple[int | None, _Device]]


class _Gpus:
    """One NVML session: the devices, which ones this process sees, and their numbers."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.opened = False
        self.error: str | None = None
        self.devices: list[_Device] = []
        self.migs: list[_Device] = []
        self._torch_map: _Visible | None = None
        self._env: str | None = None
        self._env_map: _Visible | None = None
        self._process_fns: list[Callable[[Any], Any]] | None = None
        self._logged: set[tuple[int, str]] = set()

    # -- lifecycle

    def open(self) -> None:
        self.opened = True
        try:
            import pynvml
        except ImportError:
            self.error = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self.error = _init_error(pynvml, exc)
            log.debug("NVML unavailable: %s", self.error)
            return
        self.nvml = pynvml
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception as exc:
            self.error = f"NVML could not count the GPUs: {exc}"
            return
        for i in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            except Exception as exc:
                log.debug("NVML device %d cannot be opened: %s", i, exc)
                continue
            device = self._describe(handle, i)
            self.devices.append(device)
            self.migs.extend(self._mig_children(device))
        if count == 0:
            self.error = "no NVIDIA GPU"
        elif not self.devices:
            self.error = "no NVIDIA GPU could be opened"

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        self.nvml, self.devices, self.migs = None, [], []

    def _describe(self, handle: Any, nvml_index: int) -> _Device:
        nvml = self.nvml

        def get(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception:
                return None

        pci = get(lambda: nvml.nvmlDeviceGetPciInfo(handle))
        return _Device(handle, nvml_index,
                       name=_text(get(lambda: nvml.nvmlDeviceGetName(handle))),
                       uuid=_text(get(lambda: nvml.nvmlDeviceGetUUID(handle))),
                       pci_bus_id=_text(getattr(pci, "busId", None)))

    def _mig_children(self, parent: _Device) -> list[_Device]:
        """MIG slices, so a ``MIG-...`` device in torch or the environment can be found."""
        nvml = self.nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(parent.handle)
            if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
                return []
            slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(parent.handle))
        except Exception:
            return []
        children = []
        for j in range(slots):
            try:
                handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent.handle, j)
            except Exception:
                continue  # empty slot
            children.append(self._describe(handle, parent.nvml_index))
        return children

    # -- which devices this process sees, as cuda:N

    def _visible(self, cuda: Any | None) -> tuple[_Visible, bool]:
        if cuda is not None:
            if self._torch_map is None:
                self._torch_map = self._map_torch(cuda)
            if self._torch_map:
                return self._torch_map, True
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if self._env_map is None or env != self._env:
            self._env, self._env_map = env, self._map_env(env)
        return self._env_map, False

    def _map_torch(self, cuda: Any) -> _Visible:
        try:
            props = [cuda.get_device_properties(i) for i in range(int(cuda.device_count()))]
        except Exception as exc:
            log.debug("torch.cuda device properties unavailable: %s", exc)
            return []
        mapped: _Visible = []
        for i, p in enumerate(props):
            uuid = _norm_uuid(getattr(p, "uuid", None))
            device = next((d for d in self.devices + self.migs
                           if uuid and _norm_uuid(d.uuid) == uuid), None)
            if device is None:  # older torch has no uuid: fall back to the PCI address
                pci = tuple(getattr(p, a, None)
                            for a in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
                device = next((d for d in self.devices
                               if None not in pci and _parse_bus_id(d.pci_bus_id) == pci), None)
            if device is not None:
                mapped.append((i, device))
        return mapped

    def _map_env(self, env: str | None) -> _Visible:
        """CUDA's own reading of ``CUDA_VISIBLE_DEVICES``: indices or UUID prefixes, in
        the listed order, up to the first entry that names no device."""
        # Integers count in CUDA's order, which is NVML's (PCI) order when asked for or
        # when all GPUs are alike; otherwise the cuda:N index is left unknown.
        names = {d.name for d in self.devices}
        order_known = os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID" or len(names) <= 1
        if env is None:
            return [(d.nvml_index if order_known else None, d) for d in self.devices]
        chosen: list[_Device] = []
        for token in (t.strip() for t in env.split(",")):
            found: _Device | None = None
            if re.fullmatch(r"\d+", token):
                found = next((d for d in self.devices if d.nvml_index == int(token)), None)
            elif token.lower().startswith(("gpu-", "mig-")):
                pool = self.migs if token.lower().startswith("mig-") else self.devices
                hits = [d for d in pool if (d.uuid or "").lower().startswith(token.lower())]
                found = hits[0] if len(hits) == 1 else None
            if found is None:
                break
            if found not in chosen:
                chosen.append(found)
        uuid_only = all(not re.fullmatch(r"\d+", t.strip()) for t in env.split(","))
        return [(i if order_known or uuid_only else None, d) for i, d in enumerate(chosen)]

    # -- the numbers

    def read(self, pid: int) -> tuple[tuple[GPUSample, ...], str | None]:
        if not self.devices:
            return (), self.error
        cuda = _torch_cuda()
        visible, from_torch = self._visible(cuda)
        if not visible:
            env = os.environ.get("CUDA_VISIBLE_DEVICES")
            return (), f"no visible NVIDIA GPU (CUDA_VISIBLE_DEVICES={env!r})"
        return tuple(self._read(d, i, cuda if from_torch else None, pid) for i, d in visible), None

    def _read(self, dev: _Device, index: int | None, cuda: Any, pid: int) -> GPUSample:
        nvml = self.nvml
        used, total, reserved = self._memory(dev)
        allocated = held = None
        if cuda is not None and index is not None:
            allocated = self._call(dev, "torch_allocated", lambda _: cuda.memory_allocated(index))
            held = self._call(dev, "torch_reserved", lambda _: cuda.memory_reserved(index))
        power = self._call(dev, "power", lambda h: nvml.nvmlDeviceGetPowerUsage(h))
        return GPUSample(
            index=index, nvml_index=dev.nvml_index, name=dev.name, uuid=dev.uuid,
            pci_bus_id=dev.pci_bus_id,
            utilization=_int(self._call(
                dev, "utilization", lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu)),
            memory_used=used, memory_total=total, memory_reserved=reserved,
            temperature=_int(self._call(
                dev, "temperature",
                lambda h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))),
            power=None if power is None else float(power) / 1000.0,  # NVML gives milliwatts
            process_memory=self._process_memory(dev, pid, _int(held)),
            torch_allocated=_int(allocated), torch_reserved=_int(held),
        )

    def _call(self, dev: _Device, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(handle)``, or None; a field that is "Not Supported" is not asked again."""
        if what in dev.unsupported:
            return None
        try:
            return fn(dev.handle)
        except Exception as exc:
            if self._is(exc, "NVMLError_NotSupported"):
                dev.unsupported.add(what)
            elif (dev.nvml_index, what) not in self._logged:
                self._logged.add((dev.nvml_index, what))
                log.debug("GPU %d: reading %s failed: %r", dev.nvml_index, what, exc)
            return None

    def _memory(self, dev: _Device) -> tuple[int | None, int | None, int | None]:
        # v1 counts memory reserved by the driver as used (GBs on recent drivers).
        nvml = self.nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None and not dev.v1_memory:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(dev.handle, version=version)
                return _int(info.used), _int(info.total), _int(getattr(info, "reserved", None))
            except Exception as exc:
                if self._is_missing(exc) or self._is(exc, "NVMLError_NotSupported"):
                    dev.v1_memory = True
                    log.debug("GPU %d: memory info v2 unavailable (%r), using v1",
                              dev.nvml_index, exc)
        info = self._call(dev, "memory", lambda h: nvml.nvmlDeviceGetMemoryInfo(h))
        if info is None:
            return None, None, None
        return _int(info.used), _int(info.total), None

    def _process_memory(self, dev: _Device, pid: int, torch_reserved: int | None) -> int | None:
        if "process_memory" in dev.unsupported:
            return None
        if self._process_fns is None:
            self._process_fns = [getattr(self.nvml, n) for n in _PROCESS_FNS
                                 if callable(getattr(self.nvml, n, None))]
        procs = None
        while self._process_fns and procs is None:
            try:
                procs = self._process_fns[0](dev.handle)
            except Exception as exc:
                if self._is_missing(exc):
                    self._process_fns.pop(0)
                    continue
                return self._call(dev, "process_memory", _raiser(exc))
        if procs is None:
            return None
        mine = [p.usedGpuMemory for p in procs if getattr(p, "pid", None) == pid]
        if not mine:
            # Absent: no context here, or NVML sees other PIDs (a container's namespace).
            return None if torch_reserved else 0
        known = [int(m) for m in mine if m is not None]  # None: WDDM cannot tell
        return sum(known) if known else None

    def _is(self, exc: BaseException, *names: str) -> bool:
        classes = tuple(c for c in (getattr(self.nvml, n, None) for n in names)
                        if isinstance(c, type))
        return bool(classes) and isinstance(exc, classes)

    def _is_missing(self, exc: BaseException) -> bool:
        """The call does not exist in this driver or binding (as opposed to failing)."""
        return isinstance(exc, (AttributeError, TypeError, NotImplementedError)) or self._is(
            exc, "NVMLError_FunctionNotFound", "NVMLLibraryMismatchError",
            "NVMLError_ArgumentVersionMismatch")


def _raiser(exc: BaseException) -> Callable[[Any], Any]:
    def fn(_handle: Any) -> Any:
        raise exc

    return fn


def _init_error(nvml: Any, exc: BaseException) -> str:
    for name, message in (
        ("NVMLError_LibraryNotFound", "NVML library not found"),
        ("NVMLError_DriverNotLoaded", "NVIDIA driver not loaded"),
        ("NVMLError_NoPermission", "no permission to use NVML"),
        ("NVMLError_LibRmVersionMismatch", "NVIDIA driver and library versions differ"),
    ):
        cls = getattr(nvml, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return message
    return f"NVML failed to start: {exc}"
