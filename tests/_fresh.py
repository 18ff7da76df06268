"""A fork server for fresh llm_magic processes: ``python _fresh.py`` reads one JSON line per
request (Python source) on stdin and answers one JSON line per request on stdout.

It imports the heavy third-party libraries once (torch, transformers, IPython, ipywidgets),
never llm_magic, and forks a child for each request: the child imports llm_magic from
nothing, runs the code and exits. A child is as fresh as a new interpreter for llm_magic's
own import order (what a documented first call depends on), at a fraction of the cost of
importing torch again for every call.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def _warm() -> None:
    import anywidget  # noqa: F401
    import IPython  # noqa: F401
    import ipywidgets  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    assert not [m for m in sys.modules if m == "llm_magic" or m.startswith("llm_magic.")]


def _child(code: str, out: str) -> None:
    fd = os.open(out, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    status = 0
    try:
        exec(compile(code, "<fresh>", "exec"), {"__name__": "__main__"})
    except BaseException:  # noqa: BLE001 - reported to the test, whatever it is
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    _warm()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        code = json.loads(line)["code"]
        with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as log:
            out = log.name
        pid = os.fork()
        if pid == 0:
            _child(code, out)
        _, status = os.waitpid(pid, 0)
        with open(out, encoding="utf-8", errors="replace") as f:
            text = f.read()
        os.unlink(out)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status), "output": text}),
              flush=True)


if __name__ == "__main__":
    main()
