"""``lm.panel()``: the model manager and the playground in one panel.

Examples
--------
>>> import llm_magic as lm
>>> lm.panel()                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from ..manager import ModelManager
from ..resources.sampler import Sampler
from ._common import with_fallback
from ._subshell import route
from .models import ModelManagerPanel
from .playground import Playground

__all__ = ["Panel", "panel"]


class Panel(w.VBox):  # type: ignore[misc]
    """The models (table, Unload, Pin, load form) above the playground.

    Attributes
    ----------
    models : ModelManagerPanel
    playground : Playground

    Examples
    --------
    >>> from llm_magic.widgets.panel import Panel
    >>> p = Panel()                           # doctest: +SKIP
    >>> p.models.view.models                  # doctest: +SKIP
    """

    def __init__(self, *, manager: ModelManager | None = None,
                 sampler: Sampler | None = None) -> None:
        self.models = ModelManagerPanel(manager=manager, sampler=sampler)
        # The models view says it when clicks wait for the running cell; once is enough.
        self.playground = Playground(manager=self.models.manager, note=False)
        super().__init__([w.HTML("<b>Models</b>"), self.models,
                          w.HTML("<b>Playground</b>"), self.playground])
        self.add_class("llm-magic-panel")
        route(self)

    def stop(self) -> None:
        """Stop following the manager and stop a running generation."""
        self.models.stop()
        self.playground.stop()

    def close(self) -> None:
        for part in ("models", "playground"):  # ipywidgets also closes half-built widgets
            if hasattr(self, part):
                getattr(self, part).close()
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The live panel; the static snapshot shows what it first shows, labelled as live:
        the models table, the load form, and the playground's prompt, settings and buttons."""
        html = (f"<div class='llm-magic-panel-static' style='font-family:sans-serif;"
                f"font-size:13px'><div><b>Models</b></div>{self.models.html()}"
                f"<div style='margin-top:10px'><b>Playground</b></div>{self.playground.html()}"
                "</div>")
        plain = f"Models\n{self.models!r}\nPlayground\n{self.playground!r}"
        return with_fallback(super()._repr_mimebundle_(**kwargs), html, plain)


def panel(*, manager: ModelManager | None = None, sampler: Sampler | None = None) -> Panel:
    """The model manager panel and the playground (display it, or let the cell show it).

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.panel()                    # doctest: +SKIP
    """
    return Panel(manager=manager, sampler=sampler)
