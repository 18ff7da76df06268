"""Resource sampling for the gauges, ``%llm list`` and memory budgets.

One :class:`Sampler` per kernel (:func:`get_sampler`) measures the host (CPU,
RAM), this process (RSS, CPU) and every visible NVIDIA GPU (through NVML, plus
torch's own counters when torch already drives CUDA) on a daemon thread. The
thread runs only while somebody consumes samples: a subscriber
(:meth:`Sampler.subscribe`) or a ``with sampler.running():`` block.

Importing this module is cheap: pynvml loads with the first sample, and torch
is only read when something else has imported it and initialised CUDA.

Examples
--------
>>> from llm_magic.monitor import get_sampler
>>> sample = get_sampler().sample_now()
>>> sample.ram_total > 0 and sample.process_rss > 0
True
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError
from .nvml import GPUSample, _Gpus

__all__ = [
    "MIN_INTERVAL",
    "GPUSample",
    "ModelMemoryProvider",
    "Sample",
    "SampleCallback",
    "Sampler",
    "get_sampler",
]

log = logging.getLogger("llm_magic.resources")

#: NVML refreshes utilisation only a few times a second; faster sampling adds cost, not data.
MIN_INTERVAL = 0.2
_CPU_MIN_SPAN = 0.1  # a CPU percentage over a shorter span is noise (psutil's advice)
_JOIN_TIMEOUT = 2.0


@dataclass(frozen=True)
class Sample:
    """The machine and this process at one moment.

    Attributes
    ----------
    time : float
        Epoch seconds.
    cpu_percent : float
        Host CPU busy, 0 to 100, since the previous sample.
    ram_used, ram_total : int
        Host memory in bytes; ``ram_used`` is total minus available.
    process_rss : int
        Resident memory of this process, bytes.
    process_cpu_percent : float
        This process since the previous sample; 100 is one full core.
    gpus : tuple of GPUSample
        The GPUs this process can see, in ``cuda:N`` order when known.
    models : tuple of (str, int)
        Memory per loaded model, from the provider; empty without one.
    gpu_error : str or None
        Why there are no GPU numbers (``"NVML library not found"``, ``"no NVIDIA GPU"``...).

    Examples
    --------
    >>> s = Sample(time=0.0, cpu_percent=12.5, ram_used=2**30, ram_total=2**34,
    ...            process_rss=2**28, process_cpu_percent=3.0, gpu_error="no NVIDIA GPU")
    >>> s.gpus, dict(s.models)
    ((), {})
    """

    time: float
    cpu_percent: float
    ram_used: int
    ram_total: int
    process_rss: int
    process_cpu_percent: float
    gpus: tuple[GPUSample, ...] = ()
    models: tuple[tuple[str, int], ...] = ()
    gpu_error: str | None = None


ModelMemoryProvider = Callable[[], Mapping[str, int]]
SampleCallback = Callable[[Sample], None]


# ---------------------------------------------------------------------------- CPU side


class _CpuMeter:
    """Host and process CPU percentages over the span since the previous read.

    Kept per sampler rather than using ``psutil.cpu_percent(interval=None)``'s
    per-thread state, so ``sample_now`` from any thread continues the same series.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._pid = os.getpid()
        self._proc = psutil.Process()
        self._last: tuple[float, Any, float] | None = None
        self.host = 0.0
        self.process = 0.0

    def _now(self) -> tuple[float, Any, float]:
        return time.monotonic(), self._psutil.cpu_times(), time.process_time()

    def prime(self) -> None:
        self._last = self._now()

    @property
    def primed(self) -> bool:
        return self._last is not None

    def read(self) -> tuple[float, float]:
        now, last = self._now(), self._last
        if last is None or now[0] - last[0] < _CPU_MIN_SPAN / 2:
            if last is None:
                self._last = now
            return self.host, self.process
        deltas = {
            name: max(0.0, new - old)
            for name, new, old in zip(now[1]._fields, now[1], last[1], strict=True)
        }
        # psutil's formula: guest time is already in user time; iowait is idle
        total = sum(deltas.values()) - deltas.get("guest", 0.0) - deltas.get("guest_nice", 0.0)
        busy = total - deltas.get("idle", 0.0) - deltas.get("iowait", 0.0)
        self.host = round(min(100.0, max(0.0, 100.0 * busy / total)), 1) if total > 0 else 0.0
        self.process = round(100.0 * max(0.0, now[2] - last[2]) / (now[0] - last[0]), 1)
        self._last = now
        return self.host, self.process

    def memory(self) -> tuple[int, int, int]:
        """(ram_used, ram_total, process_rss) in bytes."""
        if os.getpid() != self._pid:  # forked
            self._pid, self._proc = os.getpid(), self._psutil.Process()
        vm = self._psutil.virtual_memory()
        return int(vm.total - vm.available), int(vm.total), int(self._proc.memory_info().rss)





# ---------------------------------------------------------------------------- the sampler


class _Subscription:
    __slots__ = ("callback", "active", "failures")

    def __init__(self, callback: SampleCallback) -> None:
        self.callback = callback
        self.active = True
        self.failures = 0


class Sampler:
    """Samples CPU, memory and GPUs on a background thread while anyone listens.

    Parameters
    ----------
    interval : float
        Seconds between samples; at least :data:`MIN_INTERVAL` (smaller is raised to it).
    history : int
        How many recent samples :meth:`history` keeps.
    model_memory : callable, optional
        ``() -> {name: bytes}``, memory per loaded model; see
        :meth:`set_model_memory_provider`.

    Notes
    -----
    The thread starts with the first consumer and stops (and shuts NVML down)
    when the last one leaves. Callbacks run on the sampler thread: keep them
    short, and hand UI work to the UI's own machinery.

    Examples
    --------
    >>> sampler = Sampler(interval=0.5)
    >>> seen = []
    >>> unsubscribe = sampler.subscribe(seen.append)
    >>> sampler.is_running
    True
    >>> unsubscribe()
    >>> sampler.is_running
    False
    >>> with sampler.running():
    ...     sampler.is_running
    True
    """

    def __init__(self, interval: float = 1.0, history: int = 120,
                 model_memory: ModelMemoryProvider | None = None) -> None:
        self._interval = _check_interval(interval)
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise InvalidOptionError(f"history must be a positive integer, not {history!r}.")
        self._history: deque[Sample] = deque(maxlen=history)
        self._model_memory = model_memory
        self._provider_failing = False
        self._lock = threading.Lock()  # consumers, thread, history
        self._sample_lock = threading.Lock()  # the meters and the NVML session
        self._subscribers: list[_Subscription] = []
        self._consumers: set[object] = set()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._cpu: _CpuMeter | None = None
        self._gpus = _Gpus()

    def __repr__(self) -> str:
        return (f"<Sampler interval={self._interval}s running={self.is_running} "
                f"consumers={len(self._consumers)}>")

    @property
    def interval(self) -> float:
        """Seconds between samples; settable, also while running."""
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        self._interval = _check_interval(value)

    @property
    def is_running(self) -> bool:
        """Whether the sampler thread is running."""
        with self._lock:
            return self._thread is not None

    def set_model_memory_provider(self, provider: ModelMemoryProvider | None) -> None:
        """Report per-model memory from ``provider() -> {name: bytes}`` (None: no models).

        The provider is called from the sampler thread and from :meth:`sample_now`'s
        caller; if it raises, the sample has no models and a warning is logged.

        Examples
        --------
        >>> sampler = Sampler()
        >>> sampler.set_model_memory_provider(lambda: {"demo": 12_345_678})
        >>> sampler.sample_now().models
        (('demo', 12345678),)
        """
        self._model_memory = provider

    # -- consumers

    def subscribe(self, callback: SampleCallback) -> Callable[[], None]:
        """Call ``callback(sample)`` after every sample; returns the unsubscriber.

        The first consumer starts the thread and the last one to leave stops it.
        An exception in a callback is logged and the callback stays subscribed.
        Unsubscribing is idempotent and may happen from any thread, including
        the callback itself.

        Examples
        --------
        >>> sampler = Sampler()
        >>> samples = []
        >>> unsubscribe = sampler.subscribe(samples.append)
        >>> unsubscribe()
        """
        if not callable(callback):
            raise InvalidOptionError(f"callback must be callable, not {callback!r}.")
        sub = _Subscription(callback)
        with self._lock:
            self._subscribers.append(sub)
            self._add_consumer(sub)

        def unsubscribe() -> None:
            sub.active = False
            with self._lock:
                if sub in self._subscribers:
                    self._subscribers.remove(sub)
                thread = self._remove_consumer(sub)
            self._join(thread)

        return unsubscribe

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        """Keep the thread running for the block, as a consumer without a callback.

        Examples
        --------
        >>> sampler = Sampler()
        >>> with sampler.running():
        ...     latest = sampler.latest()  # None until the first sample lands
        """
        token = object()
        with self._lock:
            self._add_consumer(token)
        try:
            yield self
        finally:
            with self._lock:
                thread = self._remove_consumer(token)
            self._join(thread)

    def close(self) -> None:
        """Drop every consumer, stop the thread and shut NVML down.

        The sampler stays usable: a new consumer starts it again.
        """
        with self._lock:
            for sub in self._subscribers:
                sub.active = False
            self._subscribers.clear()
            self._consumers.clear()
            thread = self._detach_thread()
        self._join(thread)
        with self._sample_lock:
            self._close_gpus()

    def _close_gpus(self) -> None:  # holding self._sample_lock
        self._gpus.close()
        self._gpus = _Gpus()

    def _add_consumer(self, token: object) -> None:  # holding self._lock
        self._consumers.add(token)
        if self._thread is None:
            stop = threading.Event()
            self._stop = stop
            self._thread = threading.Thread(target=self._run, args=(stop,),
                                            name="llm_magic-monitor", daemon=True)
            try:
                self._thread.start()
            except BaseException:
                self._consumers.discard(token)
                self._thread = self._stop = None
                raise

    def _remove_consumer(self, token: object) -> threading.Thread | None:  # holding self._lock
        self._consumers.discard(token)
        return None if self._consumers else self._detach_thread()

    def _detach_thread(self) -> threading.Thread | None:  # holding self._lock
        thread, stop = self._thread, self._stop
        self._thread = self._stop = None
        if stop is not None:
            stop.set()
        return thread

    @staticmethod
    def _join(thread: threading.Thread | None) -> None:
        if thread is None or thread is threading.current_thread():
            return  # stopping from a callback: the thread ends after this round
        thread.join(_JOIN_TIMEOUT)
        if thread.is_alive():
            log.warning("The monitor thread did not stop within %.0f s; "
                        "a callback may be blocking.", _JOIN_TIMEOUT)

    # -- samples

    def latest(self) -> Sample | None:
        """The most recent sample, or None before the first.

        Examples
        --------
        >>> sampler = Sampler()
        >>> sampler.latest() is None
        True
        """
        with self._lock:
            return self._history[-1] if self._history else None

    def history(self) -> tuple[Sample, ...]:
        """The last ``history`` samples, oldest first.

        Examples
        --------
        >>> sampler = Sampler(history=2)
        >>> for _ in range(3):
        ...     _ = sampler.sample_now()
        >>> len(sampler.history())
        2
        """
        with self._lock:
            return tuple(self._history)

    def sample_now(self) -> Sample:
        """Take one sample now, in this thread (with or without the sampler thread).

        CPU percentages cover the time since the previous sample; the first call
        on a fresh sampler waits 0.1 s to have a span to measure. The sample goes
        into :meth:`history` but not to subscribers.

        Examples
        --------
        >>> sample = Sampler().sample_now()
        >>> 0 <= sample.cpu_percent <= 100
        True
        """
        return self._take()

    def _take(self) -> Sample:
        with self._sample_lock:
            if self._cpu is None:
                self._cpu = _CpuMeter()
            if not self._cpu.primed:
                self._cpu.prime()
                time.sleep(_CPU_MIN_SPAN)
            now = time.time()
            cpu, process_cpu = self._cpu.read()
            ram_used, ram_total, rss = self._cpu.memory()
            if not self._gpus.opened:
                self._gpus.open()
            gpus, gpu_error = self._gpus.read(os.getpid())
        # outside the lock: the provider may wait on the manager, which may be sampling
        sample = Sample(time=now, cpu_percent=cpu, ram_used=ram_used,
                        ram_total=ram_total, process_rss=rss, process_cpu_percent=process_cpu,
                        gpus=gpus, models=self._models(), gpu_error=gpu_error)
        with self._lock:
            ring = self._history
            if ring and ring[-1].time > sample.time:  # a concurrent sample_now finished first
                ordered = sorted([*ring, sample], key=lambda s: s.time)
                ring.clear()
                ring.extend(ordered)
            else:
                ring.append(sample)
        return sample

    def _models(self) -> tuple[tuple[str, int], ...]:
        provider = self._model_memory
        if provider is None:
            return ()
        try:
            models = tuple((str(name), int(size)) for name, size in dict(provider()).items())
        except Exception:
            if not self._provider_failing:  # once per failing streak, not every second
                log.warning("The model memory provider %r failed; samples show no models.",
                            provider, exc_info=True)
            self._provider_failing = True
            return ()
        self._provider_failing = False
        return models

    def _run(self, stop: threading.Event) -> None:
        try:
            with self._sample_lock:
                if self._cpu is None:
                    self._cpu = _CpuMeter()
                self._cpu.prime()
            if stop.wait(_CPU_MIN_SPAN):  # so the first CPU figure spans something
                return
            deadline, failing = time.monotonic(), False
            while not stop.is_set():
                try:
                    self._deliver(self._take())
                    failing = False
                except Exception:
                    if not failing:
                        log.exception("Taking a resource sample failed")
                    failing = True
                deadline = max(deadline + self._interval, time.monotonic())  # skip missed ticks
                if stop.wait(deadline - time.monotonic()):
                    break
        except Exception:
            log.exception("The monitor thread failed")
        finally:
            with self._sample_lock, self._lock:
                if self._thread is threading.current_thread():  # died on its own
                    self._thread = self._stop = None
                if self._thread is None:
                    self._close_gpus()

    def _deliver(self, sample: Sample) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            if not sub.active:
                continue
            try:
                sub.callback(sample)
            except Exception:
                sub.failures += 1
                if sub.failures == 1:
                    log.exception("Monitor callback %r failed (it stays subscribed)",
                                  sub.callback)
                else:
                    log.debug("Monitor callback %r failed again (%d times)",
                              sub.callback, sub.failures)


def _check_interval(value: float) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidOptionError(f"interval must be a positive number of seconds, not {value!r}.")
    return max(seconds, MIN_INTERVAL)


_sampler: Sampler | None = None
_sampler_lock = threading.Lock()


def get_sampler() -> Sampler:
    """The kernel's one sampler, created on first use.

    Examples
    --------
    >>> from llm_magic.monitor import get_sampler
    >>> get_sampler() is get_sampler()
    True
    """
    global _sampler
    with _sampler_lock:
        if _sampler is None:
            _sampler = Sampler()
            atexit.register(_sampler.close)
        return _sampler


def _after_fork_in_child() -> None:
    # The thread and the NVML session belong to the parent; the child starts afresh.
    global _sampler, _sampler_lock
    if _sampler is not None:
        atexit.unregister(_sampler.close)
    _sampler, _sampler_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
