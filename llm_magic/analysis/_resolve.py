"""Which loaded model an analysis reads: a loaded name, or a source to load.

An analysis takes ``model=`` as a loaded model's name or a source to load, and
a generation names its model by the name it was loaded under. Once that model
is unloaded, its name is no source: a directory loaded as ``name="mine"`` would
be looked up as the hub id ``mine``, and the user told to download it. A name
the manager has unloaded is therefore refused with how it was loaded and how
to load it again, unless loading the name itself loads the same model (``"demo"``,
a hub id loaded under its own name).
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelNotLoadedError
from ..manager import ModelManager

__all__ = ["resolve"]


def resolve(manager: ModelManager, model: str | None, *, of: Any = None) -> str:
    """The name of the loaded model an analysis reads, loading a source if need be.

    Parameters
    ----------
    manager : ModelManager
    model : str or None
        A loaded model's name, or a source to load; None: ``of``'s model (a
        ``Generation``), else the default model.
    of : Generation, optional
        What the analysis reads, when it names its model.

    Raises
    ------
    ModelNotLoadedError
        ``model`` (or ``of``'s model) was loaded under that name from another
        source and has been unloaded since: the message says from where, and the
        ``lm.load`` call that loads it again.

    Examples
    --------
    >>> resolve(manager, None, of=generation)  # doctest: +SKIP
    'mine'
    """
    whose = model is None and of is not None
    if whose:
        model = getattr(of, "model", None)
    if model is not None and not manager.is_loaded(model):
        _refuse_unloaded(manager, model, of if whose else None)
        model = manager.load(model).name
    return manager.resolve(model)


def _refuse_unloaded(manager: ModelManager, name: str, of: Any) -> None:
    """Refuse ``name`` when the manager (or ``of``, a history row) knows it came from elsewhere."""
    import shlex

    info = manager.unloaded.get(name)
    source = info.source if info is not None else getattr(of, "source", None)
    revision = info.revision if info is not None else getattr(of, "revision", None)
    if not isinstance(source, str) or (source.strip() == name and not revision):
        return  # loading the name itself loads that model again
    at = f", revision={revision!r}" if revision else ""
    magic = f"%llm load {shlex.quote(source)} --as {name}" + (
        f" --revision {revision}" if revision else "")
    gen = getattr(of, "id", None)
    what = (f"Model {name!r} is not loaded" if of is None else
            f"{'The generation' if gen is None else f'Generation {gen}'} ran on {name!r}, "
            "which is not loaded")
    raise ModelNotLoadedError(
        f"{what}: it was loaded from {source!r}{f' at revision {revision!r}' if revision else ''}"
        f" and has been unloaded since. Load it again with lm.load({source!r}, name={name!r}"
        f"{at}) or `{magic}`, then try again."
    )
