"""The resource sampler: the real machine for the CPU side, a fake NVML for GPU branches."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from llm_magic.errors import InvalidOptionError
from llm_magic.resources import nvml as _nvml
from llm_magic.resources import sampler as monitor
from llm_magic.resources.sampler import GPUSample, Sample, Sampler, get_sampler

HEAVY = ("torch", "transformers", "pynvml", "anywidget")


def _wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _nvidia_gpu_here() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


# --------------------------------------------------------------------------- real machine


def test_import_is_cheap():
    probe = (f"import llm_magic.resources.sampler, sys\n"
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_cpu_side_is_plausible():
    sampler = Sampler(model_memory=lambda: {"tiny": 1234})
    try:
        before = time.time()
        s = sampler.sample_now()
    finally:
        sampler.close()
    assert isinstance(s, Sample)
    assert before - 1 <= s.time <= time.time() + 1
    assert s.ram_total == psutil.virtual_memory().total
    assert 0 < s.ram_used <= s.ram_total
    assert s.process_rss > 0
    assert 0.0 <= s.cpu_percent <= 100.0
    assert s.process_cpu_percent >= 0.0
    assert s.models == (("tiny", 1234),)
    if not _nvidia_gpu_here():
        assert s.gpus == ()
        assert isinstance(s.gpu_error, str) and s.gpu_error
    else:
        assert s.gpus or s.gpu_error


def test_cpu_percent_sees_a_busy_process():
    sampler = Sampler()
    sampler.sample_now()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    s = sampler.sample_now()
    assert s.process_cpu_percent > 10  # one busy thread is ~100 (less on a crowded machine)
    assert s.cpu_percent > 0


def test_bad_options_are_rejected():
    assert Sampler(interval=0.01).interval == monitor.MIN_INTERVAL
    for bad in (0, -1, float("nan"), float("inf"), "soon"):
        with pytest.raises(InvalidOptionError):
            Sampler(interval=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError):
        Sampler(history=0)
    with pytest.raises(InvalidOptionError):
        Sampler().subscribe("not callable")  # type: ignore[arg-type]


def test_thread_starts_with_first_consumer_and_stops_with_last():
    sampler = Sampler(interval=0.2)
    threads: set[threading.Thread] = set()
    assert not sampler.is_running
    unsubscribe = sampler.subscribe(lambda s: threads.add(threading.current_thread()))
    assert sampler.is_running
    assert _wait_for(lambda: threads)
    (thread,) = threads
    assert thread is not threading.main_thread() and thread.daemon
    with sampler.running():
        unsubscribe()
        unsubscribe()  # idempotent
        assert sampler.is_running and thread.is_alive()
    t0 = time.monotonic()
    assert not sampler.is_running
    assert not thread.is_alive()  # joined, not just asked to stop
    assert time.monotonic() - t0 < 0.5
    # and it starts again
    with sampler.running():
        assert sampler.is_running
    assert not sampler.is_running


def test_stop_is_prompt_with_a_long_interval():
    sampler = Sampler(interval=30)
    seen: list[Sample] = []
    unsubscribe = sampler.subscribe(seen.append)
    assert _wait_for(lambda: seen)
    t0 = time.monotonic()
    unsubscribe()
    assert time.monotonic() - t0 < 0.3


def test_callbacks_get_samples_and_history_fills():
    sampler = Sampler(interval=0.2)
    seen: list[Sample] = []
    unsubscribe = sampler.subscribe(seen.append)
    try:
        assert _wait_for(lambda: len(seen) >= 3)
    finally:
        unsubscribe()
    assert all(isinstance(s, Sample) for s in seen)
    assert [s.time for s in seen] == sorted(s.time for s in seen)
    assert seen[1].time - seen[0].time == pytest.approx(0.2, abs=0.15)
    assert sampler.history()[: len(seen)] == tuple(seen)
    assert sampler.latest() is sampler.history()[-1]


def test_unsubscribe_from_inside_the_callback():
    sampler = Sampler(interval=0.2)
    threads: list[threading.Thread] = []

    def once(sample: Sample) -> None:
        threads.append(threading.current_thread())
        unsubscribe()

    unsubscribe = sampler.subscribe(once)
    assert _wait_for(lambda: threads and not threads[0].is_alive())  # no deadlock, thread ends
    assert not sampler.is_running and len(threads) == 1


def test_failing_callback_is_logged_and_does_not_kill_the_thread(caplog):
    sampler = Sampler(interval=0.2)
    seen: list[Sample] = []

    def broken(sample: Sample) -> None:
        raise RuntimeError("widget is gone")

    stop_broken = sampler.subscribe(broken)
    stop_seen = sampler.subscribe(seen.append)
    with caplog.at_level(logging.DEBUG, logger="llm_magic.resources"):
        try:
            assert _wait_for(lambda: len(seen) >= 3)
            assert sampler.is_running
        finally:
            stop_broken()
            stop_seen()
    errors = [r for r in caplog.records if r.name == "llm_magic.resources"
              and r.levelno == logging.ERROR]
    assert len(errors) == 1 and "widget is gone" in caplog.text  # logged once, not per sample


def test_failing_provider_gives_no_models_and_a_warning(caplog):
    def provider() -> dict[str, int]:
        raise RuntimeError("registry locked")

    sampler = Sampler(interval=0.2, model_memory=provider)
    seen: list[Sample] = []
    with caplog.at_level(logging.WARNING, logger="llm_magic.resources"):
        unsubscribe = sampler.subscribe(seen.append)
        try:
            assert _wait_for(lambda: len(seen) >= 2)
            assert seen[-1].models == ()
            sampler.set_model_memory_provider(lambda: {"demo": 10, "big": 2**33})
            n = len(seen)
            assert _wait_for(lambda: len(seen) > n + 1)
        finally:
            unsubscribe()
    assert dict(seen[-1].models) == {"demo": 10, "big": 2**33}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "registry locked" in caplog.text


def test_history_is_a_bounded_ring():
    sampler = Sampler(history=3)
    taken = [sampler.sample_now() for _ in range(5)]
    assert sampler.history() == tuple(taken[-3:])
    assert sampler.latest() is taken[-1]


def test_sample_now_while_the_thread_runs_keeps_history_in_order():
    sampler = Sampler(interval=0.2, history=500)
    with sampler.running():
        workers = [threading.Thread(target=lambda: [sampler.sample_now() for _ in range(15)])
                   for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
    times = [s.time for s in sampler.history()]
    assert len(times) >= 30 and times == sorted(times)


def test_provider_may_wait_for_a_lock_held_around_sample_now():
    # The manager holds its registry lock while asking for a sample (budget decisions),
    # and its provider takes that lock on the sampler thread: this must not deadlock.
    registry = threading.RLock()

    def provider() -> dict[str, int]:
        with registry:
            return {"m": 1}

    sampler = Sampler(interval=0.2, model_memory=provider)
    results: list[Sample] = []

    def manager_work() -> None:
        for _ in range(6):
            with registry:
                results.append(sampler.sample_now())
            time.sleep(0.05)

    with sampler.running():
        worker = threading.Thread(target=manager_work, daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive()
    assert [s.models for s in results] == [(("m", 1),)] * 6


def test_get_sampler_is_one_per_process():
    assert get_sampler() is get_sampler()
    assert isinstance(get_sampler(), Sampler)


# --------------------------------------------------------------------------- fake NVML


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's names
    pass


class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801
    pass


@dataclass
class FakeGPU:
    uuid: str
    name: str = "NVIDIA Fake 80GB"
    bus_id: str = "00000000:3B:00.0"
    total: int = 80 * 2**30
    used: int = 10 * 2**30
    reserved: int = 2**29
    utilization: int = 42
    temperature: int = 55
    power_mw: int = 250_000
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    not_supported: set[str] = field(default_factory=set)
    migs: list[FakeGPU] = field(default_factory=list)


class FakeNVML:
    """Just enough of pynvml for the sampler, put in sys.modules["pynvml"]."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVML_TEMPERATURE_GPU = 0
    nvmlMemory_v2 = 0x02000028

    def __init__(self, gpus: list[FakeGPU], *, v2: bool = True) -> None:
        self.gpus, self.v2 = gpus, v2
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _check(self, gpu: FakeGPU, what: str) -> None:
        if what in gpu.not_supported:
            raise NVMLError_NotSupported("Not Supported")

    def nvmlInit(self) -> None:
        self._count("init")

    def nvmlShutdown(self) -> None:
        self._count("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGPU:
        return self.gpus[i]

    def nvmlDeviceGetName(self, h: FakeGPU) -> str:
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeGPU) -> str:
        return h.uuid

    def nvmlDeviceGetPciInfo(self, h: FakeGPU) -> Any:
        return SimpleNamespace(busId=h.bus_id.encode())  # old bindings give bytes

    def nvmlDeviceGetMigMode(self, h: FakeGPU) -> list[int]:
        if not h.migs:
            raise NVMLError_NotSupported("Not Supported")
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeGPU) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeGPU, j: int) -> FakeGPU:
        if j >= len(h.migs):
            raise NVMLError("Not Found")
        return h.migs[j]

    def nvmlDeviceGetMemoryInfo(self, h: FakeGPU, version: int | None = None) -> Any:
        if version:
            self._count("memory_v2")
            if not self.v2:
                raise NVMLError_FunctionNotFound("Function Not Found")
            return SimpleNamespace(total=h.total, reserved=h.reserved,
                                   used=h.used, free=h.total - h.used - h.reserved)
        self._count("memory_v1")  # v1 counts the reserved memory as used
        return SimpleNamespace(total=h.total, used=h.used + h.reserved,
                               free=h.total - h.used - h.reserved)

    def nvmlDeviceGetUtilizationRates(self, h: FakeGPU) -> Any:
        self._check(h, "utilization")
        return SimpleNamespace(gpu=h.utilization, memory=3)

    def nvmlDeviceGetTemperature(self, h: FakeGPU, sensor: int) -> int:
        self._check(h, "temperature")
        return h.temperature

    def nvmlDeviceGetPowerUsage(self, h: FakeGPU) -> int:
        self._check(h, "power")
        return h.power_mw

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: FakeGPU) -> list[Any]:
        self._check(h, "processes")
        return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in h.processes]


@pytest.fixture
def fake_nvml(monkeypatch):
    """Install a fake pynvml with the given GPUs; torch is kept out of the picture."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setattr(_nvml, "_torch_cuda", lambda: None)

    def install(gpus: list[FakeGPU], **kwargs: Any) -> FakeNVML:
        fake = FakeNVML(gpus, **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


def _one_sample(**kwargs: Any) -> Sample:
    sampler = Sampler(**kwargs)
    try:
        return sampler.sample_now()
    finally:
        sampler.close()


def test_not_supported_fields_are_none_and_the_rest_present(fake_nvml):
    me = os.getpid()
    fake_nvml([FakeGPU("GPU-aaaa-1111", not_supported={"utilization", "temperature", "power"},
                       processes=[(1, 5 * 2**30), (me, 3 * 2**30)])])
    s = _one_sample()
    assert s.gpu_error is None
    (g,) = s.gpus
    assert isinstance(g, GPUSample)
    assert (g.utilization, g.temperature, g.power) == (None, None, None)
    assert (g.index, g.nvml_index, g.uuid, g.name) == (0, 0, "GPU-aaaa-1111", "NVIDIA Fake 80GB")
    assert g.pci_bus_id == "00000000:3B:00.0"
    assert (g.memory_used, g.memory_total, g.memory_reserved) == (10 * 2**30, 80 * 2**30, 2**29)
    assert g.process_memory == 3 * 2**30
    assert (g.torch_allocated, g.torch_reserved) == (None, None)  # torch not in use
    assert s.ram_total > 0  # the CPU side is unaffected


def test_supported_fields_and_units(fake_nvml):
    fake_nvml([FakeGPU("GPU-aaaa", processes=[(1, 2**30)])])
    (g,) = _one_sample().gpus
    assert (g.utilization, g.temperature, g.power) == (42, 55, 250.0)
    assert g.process_memory == 0  # NVML lists other processes, not this one


def test_every_gpu_field_can_fail_without_raising(fake_nvml):
    fake = fake_nvml([FakeGPU("GPU-aaaa")])

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise NVMLError("Unknown Error")

    for name in ("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates",
                 "nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage",
                 "nvmlDeviceGetComputeRunningProcesses_v3"):
        setattr(fake, name, broken)
    (g,) = _one_sample().gpus
    assert g.uuid == "GPU-aaaa"
    assert all(getattr(g, f) is None for f in (
        "utilization", "memory_used", "memory_total", "memory_reserved", "temperature",
        "power", "process_memory"))


def test_zero_gpus(fake_nvml):
    fake = fake_nvml([])
    s = _one_sample()
    assert s.gpus == () and s.gpu_error == "no NVIDIA GPU"
    assert fake.calls == {"init": 1, "shutdown": 1}


def test_nvml_init_failure_is_explained(fake_nvml):
    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
        pass

    fake = fake_nvml([FakeGPU("GPU-aaaa")])
    fake.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound  # type: ignore[attr-defined]

    def init() -> None:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    fake.nvmlInit = init  # type: ignore[method-assign]
    s = _one_sample()
    assert s.gpus == () and s.gpu_error == "NVML library not found"


def test_memory_falls_back_to_v1_once(fake_nvml):
    fake = fake_nvml([FakeGPU("GPU-aaaa")], v2=False)
    sampler = Sampler()
    try:
        samples = [sampler.sample_now() for _ in range(3)]
    finally:
        sampler.close()
    g = samples[-1].gpus[0]
    assert g.memory_used == 10 * 2**30 + 2**29  # v1: reserved counted as used
    assert g.memory_total == 80 * 2**30 and g.memory_reserved is None
    assert fake.calls["memory_v2"] == 1 and fake.calls["memory_v1"] == 3  # v2 not retried


def test_old_process_call_is_used_when_v3_is_missing(fake_nvml):
    me = os.getpid()
    fake = fake_nvml([FakeGPU("GPU-aaaa", processes=[(me, 7)])])

    def v3(h: Any) -> Any:
        raise NVMLError_FunctionNotFound("Function Not Found")

    fake.nvmlDeviceGetComputeRunningProcesses_v3 = v3  # type: ignore[method-assign]
    fake.nvmlDeviceGetComputeRunningProcesses_v2 = (  # type: ignore[attr-defined]
        lambda h: [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.processes])
    assert _one_sample().gpus[0].process_memory == 7


def test_nvml_is_initialised_once_and_shut_down_on_stop(fake_nvml):
    fake = fake_nvml([FakeGPU("GPU-aaaa")])
    sampler = Sampler(interval=0.2)
    seen: list[Sample] = []
    unsubscribe = sampler.subscribe(seen.append)
    try:
        assert _wait_for(lambda: len(seen) >= 3)
        assert fake.calls["init"] == 1 and fake.calls["memory_v2"] >= 3
        assert "shutdown" not in fake.calls
    finally:
        unsubscribe()
    assert fake.calls["shutdown"] == 1
    assert seen[-1].gpus[0].utilization == 42


PHYSICAL = [
    FakeGPU("GPU-aaaaaaaa-0000-0000-0000-000000000000", bus_id="00000000:1A:00.0"),
    FakeGPU("GPU-bbbbbbbb-1111-1111-1111-111111111111", bus_id="00000000:3B:00.0", used=2**30),
]


@pytest.mark.parametrize("visible", ["GPU-bbbbbbbb", "GPU-bbbbbbbb-1111-1111-1111-111111111111",
                                     "1", " 1 ,7"])
def test_cuda_visible_devices_shows_only_the_visible_gpu(fake_nvml, monkeypatch, visible):
    fake_nvml(PHYSICAL)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    (g,) = _one_sample().gpus
    assert (g.index, g.nvml_index) == (0, 1)  # physical GPU 1 is this process's cuda:0
    assert g.uuid == PHYSICAL[1].uuid and g.memory_used == 2**30


def test_cuda_visible_devices_order_and_hiding(fake_nvml, monkeypatch):
    fake_nvml(PHYSICAL)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert [(g.index, g.nvml_index) for g in _one_sample().gpus] == [(0, 1), (1, 0)]
    for hidden in ("", "-1", "GPU-ffff", "GPU-"):  # "GPU-" is ambiguous: CUDA stops there
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        s = _one_sample()
        assert s.gpus == () and "no visible NVIDIA GPU" in (s.gpu_error or "")


def test_unknown_device_order_leaves_index_unset(fake_nvml):
    fake_nvml([FakeGPU("GPU-aaaa", name="NVIDIA A"), FakeGPU("GPU-bbbb", name="NVIDIA B")])
    assert [(g.index, g.nvml_index) for g in _one_sample().gpus] == [(None, 0), (None, 1)]


class FakeCuda:
    """torch.cuda after initialisation, with CUDA_VISIBLE_DEVICES hiding physical GPU 0."""

    def __init__(self, props: list[Any]) -> None:
        self.props = props

    def device_count(self) -> int:
        return len(self.props)

    def get_device_properties(self, i: int) -> Any:
        return self.props[i]

    def memory_allocated(self, i: int) -> int:
        return 100 + i

    def memory_reserved(self, i: int) -> int:
        return 200 + i


@pytest.mark.parametrize("props", [
    SimpleNamespace(uuid="bbbbbbbb-1111-1111-1111-111111111111"),  # torch prints no "GPU-"
    SimpleNamespace(pci_domain_id=0, pci_bus_id=0x3B, pci_device_id=0),  # torch without uuid
], ids=["uuid", "pci"])
def test_torch_cuda_index_is_mapped_to_nvml(fake_nvml, monkeypatch, props):
    fake_nvml(PHYSICAL)
    monkeypatch.setattr(_nvml, "_torch_cuda", lambda: FakeCuda([props]))
    (g,) = _one_sample().gpus
    assert (g.index, g.nvml_index, g.uuid) == (0, 1, PHYSICAL[1].uuid)
    assert (g.torch_allocated, g.torch_reserved) == (100, 200)
    assert g.process_memory is None  # torch holds memory, but NVML does not list this PID


def test_torch_cuda_is_read_only_when_already_initialised(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert _nvml._torch_cuda() is None
    cuda = SimpleNamespace(is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    assert _nvml._torch_cuda() is None
    cuda.is_initialized = lambda: True
    assert _nvml._torch_cuda() is cuda


def test_a_mig_slice_is_found_by_uuid(fake_nvml, monkeypatch):
    mig = FakeGPU("MIG-cccccccc-2222-2222-2222-222222222222", name="NVIDIA Fake MIG 1g.10gb",
                  total=10 * 2**30, used=2**20, not_supported={"utilization", "power"})
    fake_nvml([PHYSICAL[0], FakeGPU("GPU-dddd", bus_id="00000000:3B:00.0", migs=[mig])])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-cccccccc")
    (g,) = _one_sample().gpus
    assert (g.index, g.nvml_index, g.uuid) == (0, 1, mig.uuid)
    assert (g.memory_total, g.utilization, g.power) == (10 * 2**30, None, None)
    monkeypatch.setattr(_nvml, "_torch_cuda", lambda: FakeCuda(
        [SimpleNamespace(uuid="cccccccc-2222-2222-2222-222222222222")]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (g,) = _one_sample().gpus
    assert (g.index, g.uuid, g.torch_reserved) == (0, mig.uuid, 200)
