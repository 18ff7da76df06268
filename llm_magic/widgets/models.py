"""The model manager panel: the loaded models with Unload and Pin, and a load form.

:class:`ModelsView` (an anywidget table) mirrors the manager: it listens to the
manager's events (a load, an unload or an eviction by any cell, call or panel
shows at once) and to the sampler's ticks (pins, last use, load progress).
:class:`ModelManagerPanel` adds the load form, built of standard ipywidgets:
the estimate shows before loading, the load runs on a worker thread, and any
error is one line in the panel.

Clicks and edits arrive on llm_magic's kernel subshell (see ``_subshell``), so
they act while a cell runs, on another thread than the cells: the view's state
changes under its one lock (:class:`~._common.Updates`), loads and unloads go
through the manager's locks, and a handler never prints.

Examples
--------
>>> from llm_magic.widgets.models import ModelManagerPanel
>>> ModelManagerPanel()           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from html import escape
from typing import Any

import anywidget
import ipywidgets as w
import traitlets as t

from .. import estimate
from ..errors import LLMMagicError
from ..events import Event
from ..manager import ModelInfo, ModelManager, get_manager
from ..manager.info import quantized
from ..resources.sampler import Sample, Sampler, get_sampler
from ._common import (
    Updates,
    button_html,
    control_html,
    css,
    esm,
    one_line,
    size,
    stop_running,
    stop_with_comm,
    with_fallback,
)
from ._subshell import route

__all__ = ["DTYPES", "ModelManagerPanel", "ModelsView"]

log = logging.getLogger("llm_magic.widgets")

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE = ("none", "int8", "int4")
_EVENTS = ("loading", "loaded", "load_failed", "unloaded", "evicted", "generation_start",
           "generation_end", "default_changed")


def _row(info: ModelInfo, default: str | None) -> dict[str, Any]:
    return {
        "name": info.name, "source": info.source,
        "revision": (info.commit or "")[:10] or info.revision or "",
        "device": info.device, "dtype": info.dtype, "quantized": quantized(info),
        "estimate": size(info.estimate) if info.estimate is not None else "-",
        "memory": size(info.memory), "cache": size(info.cache) if info.cache else "",
        "last_used": info.last_used or info.loaded_at,
        "pinned": info.pinned, "generating": info.generating, "default": info.name == default,
    }


# The live table's columns (models.js), as the static snapshot shows them.
_COLUMNS = (("name", "name"), ("source", "source"), ("revision", "revision"),
            ("device", "device"), ("dtype", "dtype"), ("quantized", "quantized"),
            ("estimate", "estimated"),
            ("memory", "measured"), ("last_used", "last used"))


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "name" and row.get("pinned"):
        return f"{row['name']} (pinned)"
    if key == "last_used":
        used = row.get("last_used")
        return time.strftime("%H:%M:%S", time.localtime(used)) if used else "never"
    if key == "memory":
        return _memory(row)
    return str(row.get(key, ""))


def _memory(row: dict[str, Any]) -> str:
    """The measured memory and, beside it, the kept conversation caches (as ``%llm list``)."""
    cache = row.get("cache")
    return f"{row['memory']} + {cache} cache" if cache else str(row["memory"])


class ModelsView(anywidget.AnyWidget):  # type: ignore[misc]
    """The loaded models as a live table, with an Unload and a Pin button per row.

    Parameters
    ----------
    manager : ModelManager, optional
        The kernel's manager by default.
    sampler : Sampler, optional
        Ticks that refresh pins, last use and load progress; the shared sampler by default.

    Examples
    --------
    >>> from llm_magic.widgets.models import ModelsView
    >>> [row["name"] for row in ModelsView().models]   # doctest: +SKIP
    ['demo']
    """

    _esm = esm("models.js")
    _css = css()

    models = t.List(t.Dict()).tag(sync=True)
    loading = t.Dict().tag(sync=True)  # {} when nothing loads
    error = t.Unicode("").tag(sync=True)
    notice = t.Unicode("").tag(sync=True)
    #: One line when clicks wait for the running cell (no kernel subshell); else empty.
    wait_note = t.Unicode("").tag(sync=True)

    def __init__(self, *, manager: ModelManager | None = None,
                 sampler: Sampler | None = None) -> None:
        super().__init__()
        self._manager = manager or get_manager()
        self._sampler = sampler or get_sampler()
        self._updates = Updates()
        self._loading_rss: int | None = None
        self.refresh()
        self._subscriptions = [
            self._manager.events.subscribe(self._on_event, kinds=_EVENTS),
            self._sampler.subscribe(self._on_sample),
        ]
        self.on_msg(self._on_message)
        stop_with_comm(self, self.stop)
        self.wait_note = route(self)

    def refresh(self) -> None:
        """Show the manager's models as they are now."""
        ticket = self._updates.ticket()
        default = self._manager.default
        rows = [_row(info, default) for info in self._manager.models()]
        with self._updates.apply(self, ticket) as fresh:
            if fresh:
                self.models = rows

    def stop(self) -> None:
        """Stop following the manager (the panel stays as it is)."""
        subscriptions, self._subscriptions = getattr(self, "_subscriptions", []), []
        for unsubscribe in subscriptions:
            unsubscribe()

    def close(self) -> None:
        self.stop()
        super().close()

    # -- what happens elsewhere

    def _on_event(self, event: Event) -> None:
        if event.kind == "loading":
            estimated = event.data.get("estimate")
            latest = self._sampler.latest()
            self._loading_rss = latest.process_rss if latest is not None else None
            with self._updates.apply(self):
                self.error = ""
                self.loading = {"name": event.model or "", "source": event.data.get("source", ""),
                                "estimate": size(estimated) if estimated else "-",
                                "estimate_bytes": estimated or 0, "progress": None,
                                "started": time.time()}
        elif event.kind in ("loaded", "load_failed"):
            with self._updates.apply(self):
                self.loading = {}
                if event.kind == "load_failed":
                    self.error = one_line(f"Loading {event.model!r} failed: "
                                          f"{event.data.get('error', '')}")
        elif event.kind == "evicted":
            with self._updates.apply(self):
                self.notice = one_line(f"Evicted {event.model!r} {event.data.get('reason', '')}")
        self.refresh()

    def _on_sample(self, sample: Sample) -> None:
        loading = dict(self.loading)
        if loading and loading.get("estimate_bytes") and self._loading_rss is not None:
            grown = max(0, sample.process_rss - self._loading_rss)
            loading["progress"] = min(0.99, grown / loading["estimate_bytes"])
            with self._updates.apply(self):
                if self.loading:  # not finished meanwhile
                    self.loading = loading
        self.refresh()

    # -- the buttons

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        action, name = content.get("action"), content.get("name")
        if not isinstance(name, str):
            return
        try:
            if action == "unload":
                self._unload(name)
            elif action == "pin":
                self._manager.pin(name, bool(content.get("pinned", True)))
                self.refresh()
            elif action == "stop":
                self.stop_generation(name)
        except Exception as exc:
            self.show_error(exc)

    def stop_generation(self, name: str) -> bool:
        """Stop the generation running on ``name`` (a ``%%llm`` cell's or the playground's).

        It ends as a stopped generation ends: the text so far is kept (the cell
        shows it and keeps it in ``_llm``, ``lm.last()`` returns it) and the model
        stays usable. Returns False, with one line in the panel saying why, when
        nothing that this panel can stop runs there.
        """
        if stop_running(self._manager.events, name):
            self.show(f"Stopped the generation on {name!r}; its text so far is kept.")
            return True
        try:
            busy = self._manager.info(name).generating
        except LLMMagicError:  # not loaded (any more)
            busy = False
        self.show_error(
            f"Model {name!r} is busy with work this panel cannot stop (a Python call without a "
            "stop_event, a --compare cell or an analysis): interrupt the kernel to stop it."
            if busy else f"Nothing runs on {name!r} now: its generation has ended.")
        return False

    def _unload(self, name: str) -> None:
        """Unload ``name``; its row goes as soon as the manager has let the model go.

        Returning the memory and checking that it came back (a garbage
        collection, under the manager's lock) can take seconds on a busy
        machine. The unload runs on a worker meanwhile, and this waits for it
        (no thread is left behind): the table drops the row once the model is
        out of the manager, and the notice says what was freed at the end.
        """
        done = threading.Event()

        def work() -> None:
            try:
                self.show(self._manager.unload(name)[0].message)
            except Exception as exc:
                self.show_error(exc)
            finally:
                done.set()

        worker = threading.Thread(target=work, name="llm_magic-unload", daemon=True)
        worker.start()
        while not done.wait(0.01):
            if not self._manager.is_loaded(name):  # no lock: the manager holds it meanwhile
                ticket = self._updates.ticket()
                with self._updates.apply(self, ticket) as fresh:
                    if fresh:
                        self.models = [row for row in self.models if row["name"] != name]
                break
        worker.join()

    def show(self, notice: str) -> None:
        """A one-line notice under the table (clears the error line)."""
        with self._updates.apply(self):
            self.error = ""
            self.notice = one_line(notice)

    def show_error(self, exc: BaseException | str) -> None:
        """An error as one line in the panel, not a traceback in the log."""
        if isinstance(exc, Exception) and not isinstance(exc, LLMMagicError):
            log.debug("error shown in the panel", exc_info=exc)
        with self._updates.apply(self):
            self.error = one_line(exc)

    # -- static fallback

    def lines(self) -> list[str]:
        if not self.models:
            out = ["No models loaded."]
        else:
            out = [f"{m['name']}{' (pinned)' if m['pinned'] else ''}: {m['source']}, "
                   f"{m['device']}, {m['dtype']}, {_memory(m)} (estimated {m['estimate']})"
                   for m in self.models]
        if self.loading:
            out.append(f"loading {self.loading['name']} from {self.loading['source']}")
        out += [line for line in (self.notice, self.error) if line]
        return out

    def html(self) -> str:
        """The table as escaped HTML (the static fallback), with the live table's columns."""
        if not self.models:
            table = "<div>No models loaded.</div>"
        else:
            head = "".join(f"<th style='text-align:left;padding:2px 8px'>{label}</th>"
                           for _, label in _COLUMNS)
            body = "".join("<tr>" + "".join(
                f"<td style='text-align:left;padding:2px 8px'>{escape(_cell(m, key))}</td>"
                for key, _ in _COLUMNS)
                + "</tr>" for m in self.models)
            table = (f"<table class='llm-magic-models' style='border-collapse:collapse'>"
                     f"<tr>{head}</tr>{body}</table>")
        # lines() after the models (or after "No models loaded."): loading, notice, error
        extra = "".join(f"<div>{escape(x)}</div>" for x in self.lines()[max(1, len(self.models)):])
        return table + extra

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_fallback(super()._repr_mimebundle_(**kwargs), self.html())


class ModelManagerPanel(w.VBox):  # type: ignore[misc]
    """The models table and a load form (source, dtype, device; estimate first).

    Examples
    --------
    >>> from llm_magic.widgets.models import ModelManagerPanel
    >>> panel = ModelManagerPanel()            # doctest: +SKIP
    >>> panel.source.value = "demo"            # doctest: +SKIP
    >>> panel.load()                           # doctest: +SKIP
    """

    def __init__(self, *, manager: ModelManager | None = None,
                 sampler: Sampler | None = None) -> None:
        self.manager = manager or get_manager()
        self.view = ModelsView(manager=self.manager, sampler=sampler)
        self.source = w.Text(placeholder="demo, a model folder or a hub id",
                             description="source", continuous_update=False,
                             layout=w.Layout(width="360px"))  # the whole hint shows
        self.dtype = w.Dropdown(options=DTYPES, value="auto", description="dtype")
        self.quantize = w.Dropdown(options=QUANTIZE, value="none", description="quantize")
        self.device = w.Combobox(value="auto", options=["auto", "cpu", "cuda", "mps"],
                                 description="device", ensure_option=False)
        self.load_button = w.Button(description="Load", button_style="primary",
                                    tooltip="Load the model in this kernel")
        self.estimate = w.Label(value="")
        form = w.HBox([self.source, self.dtype, self.quantize, self.device, self.load_button],
                      layout=w.Layout(flex_flow="row wrap"))  # a narrow output area: wrap
        super().__init__([self.view, form, self.estimate])
        self.add_class("llm-magic-manager")
        self._busy = threading.Lock()
        self._estimating = 0
        self._estimate_lock = threading.Lock()  # the form's latest estimate wins
        self.load_button.on_click(lambda _button: self._guarded(self.load))
        for field in (self.source, self.dtype, self.quantize, self.device):
            field.observe(lambda _change: self._guarded(self.update_estimate), names="value")
        route(self)

    def _guarded(self, action: Any) -> None:
        """Run a click's or an edit's action; an error is the panel's one line, never printed."""
        try:
            action()
        except Exception as exc:
            self.view.show_error(exc)

    def _settings(self) -> tuple[str, str, str, str | None]:
        return (self.source.value.strip(), self.dtype.value,
                (self.device.value.strip() or "auto"),
                None if self.quantize.value == "none" else self.quantize.value)

    def update_estimate(self, wait: bool = False) -> threading.Thread | None:
        """Show what loading the form's model would take (computed on a worker thread)."""
        source, dtype, device, quantize = self._settings()
        if not source:
            self.estimate.value = ""
            return None
        with self._estimate_lock:
            self._estimating += 1
            mine = self._estimating
            self.estimate.value = f"Estimating {source}…"

        def work() -> None:
            try:
                found = estimate(source, dtype=dtype, device=device, quantize=quantize)
                text = f"Estimate: {found}"
            except Exception as exc:
                text = f"No estimate: {one_line(exc)}"
            with self._estimate_lock:
                if mine == self._estimating:  # the form has not changed meanwhile
                    self.estimate.value = text

        thread = threading.Thread(target=work, name="llm_magic-estimate", daemon=True)
        thread.start()
        if wait:
            thread.join()
        return thread

    def load(self, wait: bool = False) -> threading.Thread | None:
        """Load the form's model on a worker thread, so other cells can run meanwhile."""
        source, dtype, device, quantize = self._settings()
        if not source:
            self.view.show_error("Write a source to load: 'demo', a model folder or a hub id.")
            return None
        if not self._busy.acquire(blocking=False):
            self.view.show_error("A load from this panel is already running; wait for it.")
            return None
        self.load_button.disabled = True

        def work() -> None:
            try:
                handle = self.manager.load(source, dtype=dtype, device=device,
                                           quantize=quantize)
                self.view.show(f"Loaded {handle.name!r}.")
            except Exception as exc:
                self.view.show_error(exc)
            finally:
                self.load_button.disabled = False
                self._busy.release()
                self.view.refresh()

        thread = threading.Thread(target=work, name="llm_magic-load", daemon=True)
        thread.start()
        if wait:
            thread.join()
        return thread

    def stop(self) -> None:
        self.view.stop()

    def close(self) -> None:
        if hasattr(self, "view"):  # ipywidgets also closes half-built widgets
            self.view.close()
        super().close()

    # -- static fallback

    def form(self) -> list[tuple[str, str, str]]:
        """The load form as the snapshot shows it: (label, value, hint when empty)."""
        return [("source", self.source.value.strip(), self.source.placeholder),
                ("dtype", str(self.dtype.value), ""), ("device", str(self.device.value), "")]

    def lines(self) -> list[str]:
        """The table, then the load form and its estimate, as lines of text."""
        form = ", ".join(f"{label}: {value or f'({hint})'}" for label, value, hint in self.form())
        load = "Load (disabled)" if self.load_button.disabled else "Load"
        return [*self.view.lines(), f"load a model: {form} [{load}]",
                *([self.estimate.value] if self.estimate.value else [])]

    def html(self) -> str:
        """The table, the load form and its estimate as escaped HTML, labelled as live."""
        controls = "".join(control_html(*field) for field in self.form())
        estimate = f"<div>{escape(self.estimate.value)}</div>" if self.estimate.value else ""
        return (f"{self.view.html()}<div style='margin:6px 0'>{controls}"
                f"{button_html('Load', self.load_button.disabled)}</div>{estimate}")

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_fallback(super()._repr_mimebundle_(**kwargs), self.html(), repr(self))
