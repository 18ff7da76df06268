"""Reading one request's messages from a jupyter_client kernel: the loop the kernel tests share.

A kernel's IOPub channel carries every request's messages, in order; a request
is over on IOPub at its ``idle`` status, and its shell reply may come after
replies to earlier requests (``kernel_info``). Both readers skip what belongs
to other requests.
"""

from __future__ import annotations

import time
from typing import Any

TIMEOUT = 120.0


def collect(kc: Any, msg_id: str, timeout: float = TIMEOUT) -> list[tuple[float, dict[str, Any]]]:
    """The IOPub messages of request ``msg_id``, each with the time it arrived, up to idle."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append((time.perf_counter(), msg))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out


def reply_to(kc: Any, msg_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The shell reply to request ``msg_id`` (replies to earlier requests are skipped)."""
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply  # type: ignore[no-any-return]
