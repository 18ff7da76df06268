"""The llm_magic error family.

Every error raised on purpose by the library is an :class:`LLMMagicError`
whose message says what happened and what to do next. The magics convert
these to IPython's ``UsageError`` at the notebook boundary only.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BudgetExceededError",
    "ConversationBusyError",
    "InvalidOptionError",
    "LLMMagicError",
    "LLMMagicWarning",
    "MissingDependencyError",
    "ModelConflictError",
    "ModelNotFoundError",
    "ModelNotLoadedError",
    "NotAvailableError",
    "PromptTooLongError",
    "ServerError",
]


class LLMMagicError(Exception):
    """Base class of every error llm_magic raises on purpose."""


class ModelNotFoundError(LLMMagicError):
    """A model source could not be found locally (and may not be fetched)."""


class ModelNotLoadedError(LLMMagicError, KeyError):
    """A model name refers to no loaded model."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelConflictError(LLMMagicError):
    """A load asks for a name that is taken by a model with other settings."""


class MissingDependencyError(LLMMagicError, ImportError):
    """An optional package needed for this call is not installed."""


class InvalidOptionError(LLMMagicError, ValueError):
    """An option value is out of range or of the wrong kind."""


class PromptTooLongError(InvalidOptionError):
    """The prompt does not fit in the model's context window."""


class BudgetExceededError(LLMMagicError):
    """A load would not fit in the memory budget even after eviction."""


class ConversationBusyError(LLMMagicError):
    """A conversation is answering a turn; another turn (or an edit) must wait for it."""


class NotAvailableError(LLMMagicError):
    """A feature that this version or this machine does not offer."""


class BackendError(LLMMagicError):
    """A backend failed while loading or generating."""


class ServerError(BackendError):
    """A model server could not be reached, refused a request, or broke a stream."""


class LLMMagicWarning(UserWarning):
    """Warnings from llm_magic (errors under the project's own tests)."""


def outside_stacklevel() -> int:  # not in __all__: the family's one helper, for warnings
    """The ``stacklevel`` that points a warning at the first caller outside llm_magic.

    Pass it to :func:`warnings.warn` from anywhere in the package: the warning then names
    the user's line (a cell, a script), not llm_magic's own.
    """
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__))  # llm_magic/ itself
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level
