"""Per-cell figures: after each cell, its duration, peak GPU memory and RSS change.

``%llm monitor --cell`` (or :func:`watch_cells`) hooks IPython's
``pre_run_cell`` and ``post_run_cell`` events: the first notes the time and
the process's RSS and resets torch's CUDA peak counters, the second reads
them again and shows one line under the cell. Nothing runs in between: no
thread, no polling.

Examples
--------
>>> from IPython.core.interactiveshell import InteractiveShell
>>> from llm_magic.widgets.cells import watch_cells
>>> watcher = watch_cells(InteractiveShell.instance())   # doctest: +SKIP
>>> watcher.stop()                                      # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from IPython.display import display

from ._common import html_lines, size

__all__ = ["CellFigures", "CellWatcher", "watch_cells"]


@dataclass(frozen=True)
class CellFigures:
    """What one cell took.

    Attributes
    ----------
    seconds : float
        Wall time from the cell's start to its end.
    rss_before, rss_after : int
        This process's resident memory at both ends, bytes.
    gpu_peaks : tuple of (str, int)
        Peak bytes allocated by torch per CUDA device during the cell; empty
        where torch drives no GPU.

    Examples
    --------
    >>> print(CellFigures(1.5, 100_000_000, 150_000_000))
    cell: 1.50 s, RSS +50.0 MB (now 150.0 MB), no GPU in use
    """

    seconds: float
    rss_before: int
    rss_after: int
    gpu_peaks: tuple[tuple[str, int], ...] = ()

    @property
    def rss_change(self) -> int:
        return self.rss_after - self.rss_before

    def __str__(self) -> str:
        change = self.rss_change
        sign = "+" if change >= 0 else "-"
        rss = f"RSS {sign}{size(abs(change))} (now {size(self.rss_after)})"
        if self.gpu_peaks:
            gpu = ", ".join(f"peak {device} {size(n)}" for device, n in self.gpu_peaks)
        else:
            gpu = "no GPU in use"
        return f"cell: {self.seconds:.2f} s, {rss}, {gpu}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        return html_lines("llm-magic-cell", [str(self)])


def _cuda() -> Any | None:
    """``torch.cuda`` when something already imported torch and initialised CUDA."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except Exception:
        return None


class CellWatcher:
    """Shows :class:`CellFigures` under every cell while it is started.

    Parameters
    ----------
    shell : InteractiveShell
        The shell whose cells are measured.

    Examples
    --------
    >>> from IPython.core.interactiveshell import InteractiveShell
    >>> watcher = CellWatcher(InteractiveShell.instance())  # doctest: +SKIP
    >>> watcher.start()                                     # doctest: +SKIP
    """

    def __init__(self, shell: Any) -> None:
        import psutil

        self.shell = shell
        self._process = psutil.Process(os.getpid())
        self._started: tuple[float, int] | None = None
        self.last: CellFigures | None = None
        self.active = False

    def start(self) -> None:
        if not self.active:
            self.shell.events.register("pre_run_cell", self._pre)
            self.shell.events.register("post_run_cell", self._post)
            self.active = True

    def stop(self) -> None:
        if self.active:
            self.shell.events.unregister("pre_run_cell", self._pre)
            self.shell.events.unregister("post_run_cell", self._post)
            self.active = False
        self._started = None

    def _pre(self, info: Any = None) -> None:
        cuda = _cuda()
        if cuda is not None:
            for i in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(i)
        self._started = (time.perf_counter(), int(self._process.memory_info().rss))

    def _post(self, result: Any = None) -> None:
        if self._started is None:  # the cell that turned the figures on
            return
        t0, rss0 = self._started
        self._started = None
        seconds = time.perf_counter() - t0
        cuda = _cuda()
        peaks: tuple[tuple[str, int], ...] = ()
        if cuda is not None:
            peaks = tuple((f"cuda:{i}", int(cuda.max_memory_allocated(i)))
                          for i in range(cuda.device_count()))
        self.last = CellFigures(seconds, rss0, int(self._process.memory_info().rss), peaks)
        display(self.last)


_watchers: dict[int, CellWatcher] = {}


def watch_cells(shell: Any, on: bool = True) -> CellWatcher:
    """Turn the per-cell figures on (or off) for ``shell``; returns its watcher.

    Examples
    --------
    >>> from IPython.core.interactiveshell import InteractiveShell
    >>> watch_cells(InteractiveShell.instance()).active     # doctest: +SKIP
    True
    """
    watcher = _watchers.get(id(shell))
    if watcher is None or watcher.shell is not shell:
        watcher = _watchers[id(shell)] = CellWatcher(shell)
    if on:
        watcher.start()
    else:
        watcher.stop()
    return watcher
