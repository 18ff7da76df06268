"""When the warm-up of ``%load_ext`` starts, and why cells wait for it while it runs.

Two threads importing different parts of one package can each hold an import
lock that the other needs; Python then breaks the deadlock by giving one of
them a half-initialised module (``cannot import name 'GPT2Config' from
'transformers'``). A cell may import torch or transformers itself, or through
any library, so nothing in a cell runs beside the warm-up:

- ``%load_ext`` inside a cell starts the warm-up when that cell ends, so the
  rest of the cell runs alone;
- a cell that starts while the warm-up runs waits for it first, as a statement
  of its own, so that a kernel interrupt fails that cell like any other.

The warm-up takes a few seconds, which a person spends typing the next cell.
"""

from __future__ import annotations

import ast
from typing import Any

from ..backends import warm_up, warming

__all__ = ["WaitForWarmUp", "schedule", "uninstall"]

# Seconds for the kernel to answer the cell before the imports take the GIL; the
# next cell, if it comes sooner (Run All), starts them at once by waiting.
_AFTER_REPLY = 0.2
_WAIT = "__import__('llm_magic.backends', fromlist=['_']).wait_for_warm_up()"
# What a first `%%llm` cell imports of llm_magic itself (the magics import it on first use).
# The backend's own modules come with it; these package faces import their modules at
# once, so they are imported by the cell, never beside a cell's own imports.
_API: tuple[str, ...] = ()


class WaitForWarmUp(ast.NodeTransformer):
    """An IPython AST transformer: while the warm-up runs, a cell waits for it first."""

    def visit_Module(self, node: ast.Module) -> ast.Module:
        if warming():
            node.body[:0] = ast.parse(_WAIT).body
            ast.fix_missing_locations(node)
        return node


def schedule(shell: Any, kind: str = "demo") -> None:
    """Start the warm-up of ``kind``'s backend now, or when the running cell ends."""
    if not any(isinstance(t, WaitForWarmUp) for t in shell.ast_transformers):
        shell.ast_transformers.append(WaitForWarmUp())
    if getattr(shell.displayhook, "exec_result", None) is None:  # not inside a cell
        warm_up(kind, then=_API)
        return

    def after_the_cell(result: Any) -> None:
        shell.events.unregister("post_run_cell", after_the_cell)
        warm_up(kind, delay=_AFTER_REPLY, then=_API)

    shell.events.register("post_run_cell", after_the_cell)


def uninstall(shell: Any) -> None:
    """Drop the transformer (a warm-up already running goes on and ends by itself)."""
    shell.ast_transformers[:] = [t for t in shell.ast_transformers
                                 if not isinstance(t, WaitForWarmUp)]
