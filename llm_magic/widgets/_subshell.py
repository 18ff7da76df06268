"""Widget messages on a kernel subshell, so a view's clicks act while a cell runs.

A click in a widget is a comm message on the kernel's shell channel. On the
main shell it waits behind the running cell, however long that cell takes.
ipykernel 7 has subshells (JEP 91): more shell threads, each with its own
queue. ipykernel 7.4 routes a comm's incoming messages by asking the comm
(``_reply_subshell_for``); llm_magic answers for its own widgets' comms with a
subshell it creates for them, once per kernel. Their clicks and edits then run
on that thread whatever the front end does (JupyterLab and Notebook 7 with
``commsOverSubshells`` at its default or disabled, any other front end).

A subshell reports each message it handles as busy then idle, and front ends
show the last status they saw. So that a click does not make a busy kernel
look idle, the main shell's busy status is sent again after each idle of this
subshell while a cell runs.

Where something of this is missing (another kernel, an older ipykernel, or
``LLM_MAGIC_SUBSHELL=off`` in the kernel's environment) nothing is changed:
clicks wait for the running cell, and :func:`route` returns the one line a
panel shows to say so.

Examples
--------
>>> import ipywidgets
>>> from llm_magic.widgets._subshell import route
>>> route(ipywidgets.Button())       # outside a kernel: nothing to route, nothing to say
''
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["ENV", "Router", "missing", "route", "router"]

ENV = "LLM_MAGIC_SUBSHELL"  # "off" (or "0", "no", "false") keeps widget messages on the main shell
NEEDS = "ipykernel 7.4 or later"
_CREATE_TIMEOUT = 10.0  # seconds for the shell channel thread to start the subshell


def _kernel() -> Any | None:
    """The ipykernel kernel of this process, if it runs in one (ipykernel is not imported here)."""
    base = sys.modules.get("ipykernel.kernelbase")
    kernel_class = getattr(base, "Kernel", None)
    if kernel_class is None or not kernel_class.initialized():
        return None
    return kernel_class.instance()


def missing(kernel: Any, comm: Any = None) -> str | None:
    """Why widget messages cannot go to a subshell of ``kernel``; None when they can.

    Examples
    --------
    >>> missing(object())
    'this kernel has no subshells (they need ipykernel 7.4 or later)'
    """
    if os.environ.get(ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return f"widget subshells are turned off ({ENV}={os.environ[ENV]})"
    channel = getattr(kernel, "shell_channel_thread", None)
    if not getattr(kernel, "_supports_kernel_subshells", False) or channel is None:
        return f"this kernel has no subshells (they need {NEEDS})"
    manager = getattr(channel, "_manager", None)
    comm_class = type(comm) if comm is not None else _comm_class()
    if (manager is None or not hasattr(manager, "_create_subshell")
            or not callable(getattr(kernel, "_publish_status", None))
            or not hasattr(comm_class, "_reply_subshell_for")):
        version = getattr(sys.modules.get("ipykernel"), "__version__", "?")
        return f"ipykernel {version} cannot route widget messages (this needs {NEEDS})"
    return None


def _comm_class() -> Any:
    comm_module = sys.modules.get("ipykernel.comm.comm")
    return getattr(comm_module, "BaseComm", None)


class Router:
    """One subshell for llm_magic's widget messages in one kernel, and the status they send.

    Parameters
    ----------
    kernel : ipykernel.kernelbase.Kernel
        A kernel for which :func:`missing` says nothing.
    """

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        channel = kernel.shell_channel_thread
        self._main_thread = channel.parent_thread
        self.subshell_id = _create_subshell(channel)
        self.thread_name = f"subshell-{self.subshell_id}"
        self._status_lock = threading.Lock()
        self._main: tuple[str, Any] = ("idle", None)  # the main shell's last status, its parent
        self._publish = kernel._publish_status
        kernel._publish_status = self._publish_status

    def route(self, comm: Any) -> None:
        """Send ``comm``'s incoming messages to this router's subshell from now on."""
        comm._reply_subshell_for = self._subshell_for

    def _subshell_for(self, _data: Any, _default: str | None) -> str:
        return self.subshell_id

    def _publish_status(self, status: str, channel: str, parent: Any = None) -> None:
        """The kernel's own status publisher, plus the main shell's busy after our idle.

        Under one lock, so a busy sent again cannot overtake the main shell's
        own idle at the end of its cell.
        """
        thread = threading.current_thread()
        with self._status_lock:
            if thread is self._main_thread and channel == "shell":
                self._main = (status, parent or self.kernel.get_parent("shell"))
            self._publish(status, channel, parent)
            if (thread.name == self.thread_name and status == "idle"
                    and self._main[0] == "busy"):
                self._publish("busy", "shell", self._main[1])

    @property
    def main_busy(self) -> bool:
        """Whether the main shell is handling a request (a cell runs) right now."""
        return self._main[0] == "busy"


def _create_subshell(channel: Any) -> str:
    """Start a subshell from the shell channel thread (where ipykernel starts them) and wait."""
    done = threading.Event()
    made: dict[str, Any] = {}

    def create() -> None:
        try:
            made["id"] = channel.manager._create_subshell()
        except BaseException as exc:  # handed back to the waiting thread
            made["error"] = exc
        finally:
            done.set()

    channel.io_loop.add_callback(create)
    if not done.wait(_CREATE_TIMEOUT):
        raise RuntimeError(f"the kernel did not start a subshell within {_CREATE_TIMEOUT:.0f} s")
    if "error" in made:
        raise RuntimeError(f"the kernel could not start a subshell: {made['error']}")
    return str(made["id"])


_router: Router | None = None
_failed: str | None = None
_lock = threading.Lock()


def router() -> Router | None:
    """This kernel's router, made on first use; None outside a kernel or where it cannot be."""
    return _get()[0]


def _get() -> tuple[Router | None, str]:
    """The router, or the reason there is none ("" outside a kernel)."""
    global _router, _failed
    kernel = _kernel()
    if kernel is None:
        return None, ""
    reason = missing(kernel)
    if reason is not None:
        return None, reason
    with _lock:
        if _router is not None and _router.kernel is kernel:
            return _router, ""
        if _failed is not None:
            return None, _failed
        try:
            _router = Router(kernel)
        except Exception as exc:
            _failed = f"the kernel's subshell could not start ({exc})"
            return None, _failed
        return _router, ""


def _widgets(root: Any) -> Iterator[Any]:
    """``root`` and every widget it holds in its synced traits (children, layout, style...)."""
    from ipywidgets import Widget

    seen: set[int] = set()
    stack = [root]
    while stack:
        widget = stack.pop()
        if id(widget) in seen:
            continue
        seen.add(id(widget))
        yield widget
        for name in getattr(widget, "keys", ()):
            value = getattr(widget, name, None)
            values = value if isinstance(value, (list, tuple)) else (value,)
            stack.extend(v for v in values if isinstance(v, Widget))


def route(widget: Any) -> str:
    """Route the comms of ``widget`` and every widget inside it to llm_magic's subshell.

    Returns
    -------
    str
        ``""`` when its clicks now act while a cell runs (or there is no
        kernel, hence no page); otherwise the one line a panel shows: clicks
        wait for the running cell, and why.

    Examples
    --------
    >>> import ipywidgets
    >>> route(ipywidgets.VBox([ipywidgets.Button()]))
    ''
    """
    found, reason = _get()
    if found is None:
        return f"Clicks here wait for the running cell: {reason}." if reason else ""
    for each in _widgets(widget):
        comm = getattr(each, "comm", None)
        if comm is not None:
            if missing(found.kernel, comm) is not None:  # not ipykernel's comm
                return f"Clicks here wait for the running cell: {missing(found.kernel, comm)}."
            found.route(comm)
    return ""
