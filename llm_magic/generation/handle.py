"""What ``lm.load`` returns: a model by name, with its generation at hand.

A handle does not keep the model alive: the manager holds the only strong
reference, so ``unload`` really frees the memory whoever kept a handle.
"""

from __future__ import annotations

from typing import Any

from ..manager import ModelRef
from .core import Generation, generate

__all__ = ["ModelHandle"]


class ModelHandle(ModelRef):
    """A reference to a loaded model by name (it does not keep the model alive).

    Examples
    --------
    >>> import llm_magic as lm
    >>> demo = lm.load("demo")            # doctest: +SKIP
    >>> demo.generate("The import statement", max_new_tokens=8).text  # doctest: +SKIP
    """

    __slots__ = ()

    def generate(self, prompt: str, **kwargs: Any) -> Generation:
        """``lm.generate(prompt, model=self.name, **kwargs)``."""
        return generate(prompt, model=self.name, manager=self._manager, **kwargs)
