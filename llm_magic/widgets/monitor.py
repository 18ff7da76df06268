"""Live resource gauges: :class:`Monitor`, what ``lm.monitor()`` and ``%llm monitor`` show.

A monitor subscribes to the kernel's one sampler (:func:`llm_magic.monitor.get_sampler`)
and turns every sample into traits: formatted text for each figure (the view
puts it in the DOM as text) and a binary buffer of the last two minutes for
the sparklines (one byte per figure and second). The sampler calls back on its
own thread, so the gauges move while a cell is busy; they change traits and
never print.

Examples
--------
>>> import llm_magic as lm
>>> m = lm.monitor()              # doctest: +SKIP
>>> m                             # doctest: +SKIP
>>> m.stop()                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import sys
import time
from array import array
from collections import deque
from typing import Any

import anywidget
import traitlets as t

from ..manager import ModelInfo, ModelManager, get_manager
from ..resources.sampler import GPUSample, Sample, Sampler, get_sampler
from ._common import (
    NA,
    Updates,
    css,
    esm,
    html_lines,
    one_line,
    percent,
    size,
    stop_with_comm,
    with_fallback,
)
from ._subshell import route

__all__ = ["Monitor", "gpu_note", "gpu_reason", "monitor"]

log = logging.getLogger("llm_magic.widgets")

SPAN = 120.0  # seconds of history in the sparklines


CPU_ONLY = "CPU only"


def gpu_note(gpus: int) -> str:
    """The monitor's first line on a machine without GPU figures: a fact, not an error.

    Examples
    --------
    >>> gpu_note(0)
    'CPU only'
    >>> gpu_note(1)
    ''
    """
    return "" if gpus else CPU_ONLY


def gpu_reason(error: str | None) -> str:
    """Why there are no GPU figures, in a line (shown small beside "CPU only", and on hover).

    Examples
    --------
    >>> gpu_reason("NVML library not found")
    'no NVIDIA GPU is visible: NVML library not found'
    """
    reason = _REASONS.get(error or "") or one_line(error or "").rstrip(".") or "none was found"
    return f"no NVIDIA GPU is visible: {reason}"


_REASONS = {"no NVIDIA GPU": "NVML found no device"}


def _device_shares(infos: list[ModelInfo]) -> dict[str, list[tuple[str, int, str]]]:
    """Bytes per model per device (``"cpu"``, ``"cuda:0"``...), from the manager, with a
    note of what quantization saved."""
    shares: dict[str, list[tuple[str, int, str]]] = {}
    for info in infos:
        placement = info.placement or ((info.device, info.memory),)
        note = f"{info.quantization}, saved {size(info.saved)}" if info.quantization else ""
        for device, nbytes in placement:
            key = "cpu" if str(device) in ("cpu", "disk") else str(device)
            shares.setdefault(key, []).append((info.name, int(nbytes), note))
    return shares


def _models_text(models: list[tuple[str, int, str]]) -> str:
    return "; ".join(f"{name} {size(n)}" + (f" ({note})" if note else "")
                     for name, n, note in models)


def _gpu(g: GPUSample, models: list[tuple[str, int, str]]) -> dict[str, Any]:
    where = f"cuda:{g.index}" if g.index is not None else f"GPU {g.nvml_index}"
    used, total = g.memory_used, g.memory_total
    memory = NA if used is None or total is None else f"{size(used)} / {size(total)}"
    return {
        "label": f"{where} {g.name or ''}".strip(),
        "util": g.utilization,
        "util_text": percent(g.utilization),
        "mem_used": used,
        "mem_total": total,
        "mem_text": memory,
        "process": g.process_memory,
        "process_text": size(g.process_memory),
        "models": [[name, n] for name, n, _ in models],
        "models_text": _models_text(models),
        "temp_text": NA if g.temperature is None else f"{g.temperature} °C",
        "power_text": NA if g.power is None else f"{g.power:.0f} W",
    }


def _host(s: Sample, models: list[tuple[str, int, str]]) -> dict[str, Any]:
    return {
        "cpu": s.cpu_percent,
        "cpu_text": percent(s.cpu_percent, 1),
        "ram_used": s.ram_used,
        "ram_total": s.ram_total,
        "ram_text": f"{size(s.ram_used)} / {size(s.ram_total)}",
        "rss": s.process_rss,
        "rss_text": size(s.process_rss),
        "process_cpu_text": percent(s.process_cpu_percent, 1),
        "models": [[name, n] for name, n, _ in models],
        "models_text": _models_text(models),
    }


def _fraction(part: int | None, whole: int | None) -> float:
    if part is None or not whole:
        return math.nan
    return 100.0 * part / whole


UNKNOWN = 255


def _byte(percent: float) -> int:
    """A percentage as the sparklines receive it: half-percent steps in one byte."""
    if math.isnan(percent):
        return UNKNOWN
    return int(round(2 * min(100.0, max(0.0, percent))))


def _row(s: Sample) -> tuple[list[str], list[float]]:
    """The sparkline series of one sample: names and values in percent (NaN: unknown)."""
    names, values = ["CPU", "RAM"], [s.cpu_percent, _fraction(s.ram_used, s.ram_total)]
    for g in s.gpus:
        where = f"cuda:{g.index}" if g.index is not None else f"GPU {g.nvml_index}"
        names += [f"{where} util", f"{where} memory"]
        util = math.nan if g.utilization is None else float(g.utilization)
        values += [util, _fraction(g.memory_used, g.memory_total)]
    return names, values


class Monitor(anywidget.AnyWidget):  # type: ignore[misc]
    """Live gauges of the GPUs, the host and this process, updated about once a second.

    Parameters
    ----------
    sampler : Sampler, optional
        Where samples come from; the kernel's shared sampler by default.
    manager : ModelManager, optional
        Whose models are shown as shares of each device's memory.

    Notes
    -----
    :meth:`stop` (or :meth:`close`, or the view's close button) ends the
    updates; when the last monitor stops, the shared sampler stops too.

    Examples
    --------
    >>> from llm_magic.widgets.monitor import Monitor
    >>> m = Monitor()                 # doctest: +SKIP
    >>> m.host["cpu_text"]            # doctest: +SKIP
    '12.5 %'
    >>> m.stop()                      # doctest: +SKIP
    """

    _esm = esm("monitor.js")
    _css = css()

    host = t.Dict().tag(sync=True)
    gpus = t.List(t.Dict()).tag(sync=True)
    #: "CPU only" when there are no GPU figures (else empty); ``gpu_reason`` says why.
    gpu_note = t.Unicode("").tag(sync=True)
    gpu_reason = t.Unicode("").tag(sync=True)
    series_names = t.List(t.Unicode()).tag(sync=True)
    # one row of len(series_names) bytes per sample: half-percents 0..200, 255 unknown
    series = t.Bytes(b"").tag(sync=True)
    # each row's age in seconds before the newest sample: little-endian float32, oldest first
    series_ages = t.Bytes(b"").tag(sync=True)
    updated = t.Float(0.0).tag(sync=True)
    running = t.Bool(False).tag(sync=True)

    def __init__(self, *, sampler: Sampler | None = None,
                 manager: ModelManager | None = None) -> None:
        super().__init__()
        self._sampler = sampler or get_sampler()
        self._manager = manager or get_manager()
        self._updates = Updates()
        self._ring: deque[tuple[float, ...]] = deque()
        self._unsubscribe: Any = None
        self.on_msg(self._on_message)
        stop_with_comm(self, self.stop)
        now = time.time()
        recent = [s for s in self._sampler.history() if s.time >= now - SPAN]
        for sample in recent[:-1]:
            self._remember(sample)
        latest = recent[-1] if recent else self._sampler.sample_now()
        self._on_sample(latest)  # the static snapshot has figures from the start
        self.start()
        route(self)  # the close button acts while a cell runs

    # -- life cycle

    def start(self) -> None:
        """Start (or resume) the updates."""
        with self._updates.apply(self):
            if self._unsubscribe is None:
                self._unsubscribe = self._sampler.subscribe(self._on_sample)
            self.running = True

    def stop(self) -> None:
        """Stop the updates; the last monitor to stop also stops the shared sampler."""
        if not hasattr(self, "_updates"):  # ipywidgets also closes half-built widgets
            return
        with self._updates.apply(self):
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            self.running = False
        if unsubscribe is not None:
            unsubscribe()  # outside the lock: it joins the sampler thread when last

    def close(self) -> None:
        """Stop the updates and close the widget."""
        self.stop()
        super().close()

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("action") == "stop":
            self.stop()

    # -- samples

    def _remember(self, sample: Sample) -> list[str]:
        names, values = _row(sample)
        if names != list(self.series_names):
            self._ring.clear()
        self._ring.append((sample.time, *values))
        while self._ring and self._ring[0][0] < sample.time - SPAN:
            self._ring.popleft()
        return names

    def _on_sample(self, sample: Sample) -> None:
        ticket = self._updates.ticket()
        try:  # outside the lock: the manager's lock may be held by whoever emits
            shares = _device_shares(list(self._manager.models()))
        except Exception:
            log.debug("model shares unavailable", exc_info=True)
            shares = {}
        gpus = []
        for g in sample.gpus:
            gpus.append(_gpu(g, shares.get(f"cuda:{g.index}", []) if g.index is not None else []))
        host = _host(sample, shares.get("cpu", []))
        with self._updates.apply(self, ticket) as fresh:
            if not fresh:
                return
            names = self._remember(sample)
            flat = array("B", [_byte(v) for row in self._ring for v in row[1:]])
            ages = array("f", [sample.time - row[0] for row in self._ring])
            if sys.byteorder == "big":
                ages.byteswap()
            self.series_names = names
            self.series = flat.tobytes()
            self.series_ages = ages.tobytes()
            self.host = host
            self.gpus = gpus
            self.gpu_note = gpu_note(len(sample.gpus))
            self.gpu_reason = "" if sample.gpus else gpu_reason(sample.gpu_error)
            self.updated = sample.time

    # -- static fallback

    def lines(self) -> list[str]:
        """The figures as lines of text (the static fallback and ``text/plain``)."""
        h = self.host
        state = "live" if self.running else "stopped"
        at = time.strftime("%H:%M:%S", time.localtime(self.updated)) if self.updated else "-"
        out = [f"llm_magic monitor ({state}, {at})"]
        for g in self.gpus:
            share = f"this process {g['process_text']}"
            if g["models_text"]:
                share += f"; {g['models_text']}"
            out.append(f"{g['label']}: utilization {g['util_text']}, memory {g['mem_text']} "
                       f"({share}), {g['temp_text']}, {g['power_text']}")
        if self.gpu_note:
            out.append(f"{self.gpu_note} ({self.gpu_reason})" if self.gpu_reason
                       else self.gpu_note)
        if h:
            rss = f"this process {h['rss_text']}"
            if h["models_text"]:
                rss += f"; {h['models_text']}"
            out.append(f"CPU {h['cpu_text']} (this process {h['process_cpu_text']}), "
                       f"RAM {h['ram_text']} ({rss})")
        return out

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_fallback(super()._repr_mimebundle_(**kwargs),
                             html_lines("llm-magic-monitor-static", self.lines()))


def monitor(*, sampler: Sampler | None = None, manager: ModelManager | None = None) -> Monitor:
    """Open live resource gauges (display the result, or let the cell show it).

    Many monitors share the kernel's one sampler; ``.stop()`` ends one.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.monitor()                  # doctest: +SKIP
    """
    return Monitor(sampler=sampler, manager=manager)
