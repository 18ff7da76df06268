"""The notebook face of llm_magic: the ``%%llm`` and ``%llm`` magics.

``%load_ext llm_magic`` registers :class:`LLMMagics`. This package imports
IPython's magic machinery and the cheap parts of llm_magic only: torch and
transformers import on a background thread once the magics are registered.

Examples
--------
In a notebook::

    %load_ext llm_magic
    %llm load demo

    %%llm -n 40 --seed 1
    The import statement
"""

from __future__ import annotations

from typing import Any

from . import _warm_up
from ._commands import set_debug
from ._magics import CellJob, LLMMagics
from ._prompt import interpolate

__all__ = ["CellJob", "LLMMagics", "interpolate", "load_ipython_extension",
           "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%llm`` and ``%llm`` (and their ``%config LLMMagics`` settings).

    Returns at once. Unless ``LLMMagics.warm_up`` is False (or
    ``LLM_MAGIC_WARM_UP=0``), torch and transformers then import on a background
    thread, from the end of this cell, while the next one is typed; a cell that
    starts before they are done waits for them.
    """
    magics = LLMMagics(shell=ipython)
    ipython.register_magics(magics)
    if magics.warm_up:
        _warm_up.schedule(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and their settings object; stop debug logging."""
    magics = ipython.magics_manager.registry.pop("LLMMagics", None)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("llm", None)
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)
    _warm_up.uninstall(ipython)
    set_debug(False)
