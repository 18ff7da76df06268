"""Run the teaching notebooks in clean kernels and store them with their outputs.

Each notebook in ``notebooks/`` runs top to bottom in a fresh kernel of this
Python, in its own folder, as nbval runs it: offline (``HF_HUB_OFFLINE=1``), with a
temporary history (``LLM_MAGIC_HISTORY``) and IPython profile, and torch's threads
left to llm_magic's default, as a reader's kernel has them. The notebook is then
written back with its outputs, minus what changes from run to run or only bloats
the file:

- execution timestamps in cell metadata and the Python version in the notebook's;
- stored widget state, and with it the ``widget-view`` entries of outputs: a view
  whose state is not stored cannot be drawn anywhere (JupyterLab shows "model not
  found" in its place), whereas the view's static fallback beside it (the
  attention PNG, the escaped HTML tables and snapshots) is what GitHub, nbconvert
  and a kernel-less JupyterLab show. Running the notebook brings the live views back.
  A widget with no fallback but its repr (a progress bar) is left out.

A notebook whose cells changed on disk while it ran is not overwritten. Each
stored notebook should stay under about 500 KB; a larger one is reported and the
command fails.

Usage: ``python tools/run_notebooks.py [NOTEBOOK ...]`` (default: every notebook),
or ``make notebooks``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
MAX_BYTES = 500_000
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# What a notebook's metadata keeps: the kernel it runs on and the language, not its version.
LANGUAGE_INFO_KEYS = ("name", "pygments_lexer", "codemirror_mode", "file_extension", "mimetype",
                      "nbconvert_exporter")


def kernel_env(scratch: Path) -> dict[str, str]:
    """The environment of a clean, offline kernel whose history and profile live in ``scratch``."""
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LLM_MAGIC_HISTORY": str(scratch / "history.sqlite"),
        "IPYTHONDIR": str(scratch / "ipython"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    })
    return env


def clean(nb: Any) -> Any:
    """The executed notebook without volatile metadata, widget state or widget-view entries."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    info = nb.metadata.get("language_info")
    if info:
        nb.metadata["language_info"] = {k: info[k] for k in LANGUAGE_INFO_KEYS if k in info}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("collapsed", None)
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            data = output.get("data")
            if data is not None and WIDGET_VIEW in data:
                del data[WIDGET_VIEW]
                if set(data) <= {"text/plain"}:
                    continue  # a widget with no static fallback (a progress bar): only its repr
            outputs.append(output)
        cell.outputs = outputs
    return nb


def sources(nb: Any) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def run(path: Path, timeout: int) -> tuple[bool, str]:
    """Execute ``path`` and store it; returns (stored, a line saying what happened)."""
    before = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="llm_magic_notebooks_") as scratch:
        client = NotebookClient(
            before, timeout=timeout, startup_timeout=120,
            kernel_name=before.metadata.get("kernelspec", {}).get("name", "python3"),
            resources={"metadata": {"path": str(path.parent)}},
            record_timing=False, store_widget_state=False,
        )
        start = time.monotonic()
        executed = client.execute(env=kernel_env(Path(scratch)))
        seconds = time.monotonic() - start
    now = nbformat.read(path, as_version=4)
    if sources(now) != sources(before):
        return False, f"{path.name}: its cells changed on disk while it ran; not stored"
    stored = clean(executed)
    nbformat.validate(stored)
    nbformat.write(stored, path)
    size = path.stat().st_size
    note = f"{path.name}: ran in {seconds:.0f} s, stored {size / 1000:.0f} KB"
    if size > MAX_BYTES:
        return False, f"{note}, over the {MAX_BYTES // 1000} KB a notebook should stay under"
    return True, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every notebook in notebooks/)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("*.ipynb"))
    failed = []
    for path in paths:
        try:
            ok, note = run(path, args.timeout)
        except Exception as exc:  # a failing cell: report it and go on with the others
            ok, note = False, f"{path.name}: failed, not stored ({type(exc).__name__}: " \
                              f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})"
        print(note, flush=True)
        if not ok:
            failed.append(path.name)
    if failed:
        print(f"not stored or too large: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
