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

from typing import TYPE_CHECKING, Any

from .errors import (
    BudgetExceededError,
    ConversationBusyError,
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

# History records every generation from the moment llm_magic is imported (it listens to
# every manager's events), so it is the one part of the API imported here.
from .history import HistoryRow, HistoryTable, RerunResult, history, rerun

if TYPE_CHECKING:
    from .analysis.attention import (
        AttentionMap,
        Seq2SeqAttention,
        attention,
        attention_max_tokens,
    )
    from .analysis.attribution import Attribution, attribute
    from .analysis.compare import Comparison, compare
    from .analysis.lens import LensMap, logit_lens
    from .analysis.patching import Ablation, Patching, ablate, patch
    from .analysis.quality import QualityReport, quality
    from .analysis.tokens import Scores, TokenRecord, score
    from .generation import Generation, GenerationStats, generate, generate_batch
    from .generation.conversation import Conversation, ConversationTable, conversations
    from .generation.handle import ModelHandle
    from .history.conversations import chat
    from .manager import ModelInfo, ModelTable, UnloadReport, budget, estimate, get_manager
    from .resources import Budget, Estimate, set_threads, threads

# The rest of the API imports on first use (``__getattr__`` below): ``%load_ext
# llm_magic`` then compiles and runs a few modules instead of forty.
_LAZY = {
    **dict.fromkeys(["AttentionMap", "Seq2SeqAttention", "attention", "attention_max_tokens"],
                    "analysis.attention"),
    **dict.fromkeys(["Attribution", "attribute"], "analysis.attribution"),
    **dict.fromkeys(["Comparison", "compare"], "analysis.compare"),
    **dict.fromkeys(["LensMap", "logit_lens"], "analysis.lens"),
    **dict.fromkeys(["Ablation", "Patching", "ablate", "patch"], "analysis.patching"),
    **dict.fromkeys(["QualityReport", "quality"], "analysis.quality"),
    **dict.fromkeys(["Scores", "TokenRecord", "score"], "analysis.tokens"),
    **dict.fromkeys(["Generation", "GenerationStats", "generate", "generate_batch"],
                    "generation"),
    "ModelHandle": "generation.handle",
    **dict.fromkeys(["Conversation", "ConversationTable", "conversations"],
                    "generation.conversation"),
    "chat": "history.conversations",
    **dict.fromkeys(["ModelInfo", "ModelTable", "UnloadReport", "get_manager", "budget",
                     "estimate"], "manager"),
    **dict.fromkeys(["Budget", "Estimate", "set_threads", "threads"], "resources"),
}

#: The installed distribution's version: pyproject.toml is its one source. Read on first
#: use (see ``__getattr__`` below), since importlib.metadata costs more than this import.
__version__: str

__all__ = [
    "Ablation",
    "AttentionMap",
    "Attribution",
    "Budget",
    "BudgetExceededError",
    "Comparison",
    "Conversation",
    "ConversationBusyError",
    "ConversationTable",
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
    "Patching",
    "PromptTooLongError",
    "QualityReport",
    "RerunResult",
    "Scores",
    "Seq2SeqAttention",
    "ServerError",
    "TokenRecord",
    "UnloadReport",
    "__version__",
    "ablate",
    "attention",
    "attention_max_tokens",
    "attribute",
    "budget",
    "chat",
    "compare",
    "conversations",
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
    "patch",
    "pin",
    "quality",
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
    quantize: str | None = None,
) -> ModelHandle:
    """Load a model (or return the resident one); see :meth:`ModelManager.load`.

    ``source`` may be an OpenAI-compatible server's URL: then ``model`` is the
    served model's id and ``api_key_env`` names the environment variable that
    holds its key (never the key itself). ``quantize="int8"`` or ``"int4"``
    quantizes the linear layers' weights as the model loads (needs torchao:
    ``pip install 'llm_magic[quant]'``); :func:`quality` measures what it cost.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.load("demo")  # doctest: +SKIP
    <model 'demo': GPT2LMHeadModel, ...>
    >>> lm.load("http://127.0.0.1:8000/v1", name="big", model="Qwen/Qwen3-32B",
    ...         api_key_env="VLLM_API_KEY")  # doctest: +SKIP
    <model 'big': Qwen/Qwen3-32B served at http://127.0.0.1:8000/v1>
    >>> lm.load("demo", quantize="int8")  # doctest: +SKIP
    <model 'demo-int8': GPT2LMHeadModel, 1.2M params, cpu, int8 weights, float32, 4.6 MB ...>
    """
    from .generation.handle import ModelHandle

    manager = _manager()
    info = manager.load(
        source, name=name, revision=revision, dtype=dtype, device=device,
        trust_remote_code=trust_remote_code, reload=reload, pin=pin, model=model,
        api_key_env=api_key_env, quantize=quantize,
    )
    return ModelHandle(info.name, manager)


def unload(name: str | None = None, *, all: bool = False) -> Any:
    """Unload ``name`` (returns an :class:`UnloadReport`) or every model (a list of them).

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.unload("demo").freed  # doctest: +SKIP
    True
    """
    reports = _manager().unload(name, all=all)
    return reports if all else reports[0]


def models() -> ModelTable:
    """The loaded models; renders as a table in a notebook.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.models()  # doctest: +SKIP
    """
    return _manager().models()


def use(name: str) -> ModelHandle:
    """Make ``name`` the default model for calls and cells that name none."""
    from .generation.handle import ModelHandle

    manager = _manager()
    return ModelHandle(manager.use(name).name, manager)


def pin(name: str, pinned: bool = True) -> ModelInfo:
    """Pin a loaded model so that no load evicts it (``pinned=False`` unpins it).

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.pin("demo").pinned  # doctest: +SKIP
    True
    """
    return _manager().pin(name, pinned)


def last() -> Generation | None:
    """The latest generation, including one cut short by an interrupt."""
    return _manager().last_generation


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


def monitor(**kwargs: Any) -> Any:
    """Live resource gauges, as a widget; see :mod:`llm_magic.widgets.monitor`.

    The sampler behind them is :func:`llm_magic.resources.get_sampler`.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.monitor()  # doctest: +SKIP
    """
    from .widgets.monitor import monitor as _monitor

    return _monitor(**kwargs)


def _manager() -> Any:
    from .manager import get_manager

    return get_manager()


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext llm_magic``: register the magics (imports nothing heavy)."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext llm_magic``."""
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)


if not TYPE_CHECKING:  # mypy sees the imports above, and no catch-all attribute

    def __getattr__(name: str) -> Any:
        """The rest of the API on first use, and ``__version__`` from the installed metadata."""
        if name in _LAZY:
            from importlib import import_module

            value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        elif name == "__version__":
            from importlib import metadata

            try:
                value = metadata.version("llm_magic")
            except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
                value = "0+unknown"
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
