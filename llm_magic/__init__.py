"""llm_magic: language models inside Jupyter.

``%load_ext llm_magic`` adds the ``%%llm`` and ``%llm`` magics; ``import
llm_magic as lm`` gives the same features as Python calls. Models load once
and stay resident in the kernel, shared by every cell, widget and call.

Importing this package is cheap: torch and transformers load with the first
model.

Examples
--------
>>> import llm_magic as lm
>>> demo = lm.load("demo")                                  # doctest: +SKIP
>>> print(lm.generate("The import statement", max_new_tokens=30))  # doctest: +SKIP
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from . import monitor as _sampler_module
from .analysis.attention import AttentionMap, attention, attention_max_tokens
from .analysis.compare import Comparison, compare
from .analysis.lens import LensMap, logit_lens
from .analysis.tokens import Scores, TokenRecord, score
from .errors import (
    BudgetExceededError,
    InvalidOptionError,
    LLMMagicError,
    LLMMagicWarning,
    MissingDependencyError,
    ModelConflictError,
    ModelNotFoundError,
    ModelNotLoadedError,
    NotAvailableError,
    PromptTooLongError,
    ServerError,
)
from .generation import Generation, GenerationStats, generate, generate_batch
from .history import HistoryRow, HistoryTable, RerunResult, history, rerun
from .manager import ModelHandle, ModelInfo, ModelTable, UnloadReport, get_manager
from .resources import Budget, Estimate, budget, estimate, set_threads, threads

#: The installed distribution's version: pyproject.toml is its one source. Read on first
#: use (see ``__getattr__`` below), since importlib.metadata costs more than this import.
__version__: str

__all__ = [
    "AttentionMap",
    "Budget",
    "BudgetExceededError",
    "Comparison",
    "Estimate",
    "Generation",
    "GenerationStats",
    "HistoryRow",
    "HistoryTable",
    "InvalidOptionError",
    "LLMMagicError",
    "LLMMagicWarning",
    "LensMap",
    "MissingDependencyError",
    "ModelConflictError",
    "ModelHandle",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelNotLoadedError",
    "ModelTable",
    "NotAvailableError",
    "PromptTooLongError",
    "RerunResult",
    "Scores",
    "ServerError",
    "TokenRecord",
    "UnloadReport",
    "__version__",
    "attention",
    "attention_max_tokens",
    "budget",
    "compare",
    "estimate",
    "generate",
    "generate_batch",
    "get_manager",
    "history",
    "last",
    "load",
    "load_ipython_extension",
    "logit_lens",
    "models",
    "monitor",
    "panel",
    "pin",
    "rerun",
    "score",
    "set_threads",
    "threads",
    "unload",
    "unload_ipython_extension",
    "use",
]


def load(
    source: str,
    *,
    name: str | None = None,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    reload: bool = False,
    pin: bool = False,
    model: str | None = None,
    api_key_env: str | None = None,
) -> ModelHandle:
    """Load a model (or return the resident one); see :meth:`ModelManager.load`.

    ``source`` may be an OpenAI-compatible server's URL: then ``model`` is the
    served model's id and ``api_key_env`` names the environment variable that
    holds its key (never the key itself).

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.load("demo")  # doctest: +SKIP
    <model 'demo': GPT2LMHeadModel, ...>
    >>> lm.load("http://127.0.0.1:8000/v1", name="big", model="Qwen/Qwen3-32B",
    ...         api_key_env="VLLM_API_KEY")  # doctest: +SKIP
    <model 'big': Qwen/Qwen3-32B served at http://127.0.0.1:8000/v1>
    """
    return get_manager().load(
        source, name=name, revision=revision, dtype=dtype, device=device,
        trust_remote_code=trust_remote_code, reload=reload, pin=pin, model=model,
        api_key_env=api_key_env,
    )


def unload(name: str | None = None, *, all: bool = False) -> Any:
    """Unload ``name`` (returns an :class:`UnloadReport`) or every model (a list of them).

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.unload("demo").freed  # doctest: +SKIP
    True
    """
    reports = get_manager().unload(name, all=all)
    return reports if all else reports[0]


def models() -> ModelTable:
    """The loaded models; renders as a table in a notebook.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.models()  # doctest: +SKIP
    """
    return get_manager().models()


def use(name: str) -> ModelHandle:
    """Make ``name`` the default model for calls and cells that name none."""
    return get_manager().use(name)


def pin(name: str, pinned: bool = True) -> ModelInfo:
    """Pin a loaded model so that no load evicts it (``pinned=False`` unpins it).

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.pin("demo").pinned  # doctest: +SKIP
    True
    """
    return get_manager().pin(name, pinned)


def last() -> Generation | None:
    """The latest generation, including one cut short by an interrupt."""
    return get_manager().last_generation


def panel(**kwargs: Any) -> Any:
    """The model manager panel and the playground, as a widget.

    Loaded models (with Unload and Pin), a load form that shows the estimate
    first, and a playground whose generations are ``Generation`` results like
    any other (the latest is :func:`last`). Keyword arguments go to
    :class:`llm_magic.widgets.panel.Panel`.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.panel()  # doctest: +SKIP
    """
    from .widgets.panel import panel as _panel

    return _panel(**kwargs)


def _open_monitor(**kwargs: Any) -> Any:
    """Live resource gauges, as a widget (``lm.monitor()``); see ``llm_magic.widgets.monitor``.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.monitor()  # doctest: +SKIP
    """
    from .widgets.monitor import monitor as _monitor

    return _monitor(**kwargs)


class _CallableModule(types.ModuleType):
    """``llm_magic.monitor`` stays the sampler's module and ``lm.monitor()`` opens the gauges."""

    def __call__(self, **kwargs: Any) -> Any:
        return _open_monitor(**kwargs)


_sampler_module.__class__ = _CallableModule
monitor = _sampler_module


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext llm_magic``: register the magics (imports nothing heavy)."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext llm_magic``."""
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)


if not TYPE_CHECKING:  # mypy sees ``__version__: str`` above, and no catch-all attribute

    def __getattr__(name: str) -> str:
        """``llm_magic.__version__``, from the installed package's metadata, once."""
        if name != "__version__":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import metadata

        try:
            version = metadata.version("llm_magic")
        except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
            version = "0+unknown"
        globals()["__version__"] = version
        return version
