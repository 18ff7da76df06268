"""Room for a conversation's next turn: its cache grows, and it counts in the budget.

Before a turn runs, the bytes its cache will need (prompt and new tokens, at the
model's per-token size) are weighed against the device's budget. Idle caches of
other conversations leave first, least recently used first; when even that is
not enough, the turn is refused with the numbers and what to do.
"""

from __future__ import annotations

from typing import Any

from ..errors import BudgetExceededError
from ..manager import ModelManager
from ..manager.info import size
from ..manager.room import budget

__all__ = ["make_room"]


def make_room(manager: ModelManager, name: str, backend: Any, key: str, tokens: int) -> None:
    """Make room on ``name``'s device for ``key``'s cache of ``tokens`` tokens, or refuse."""
    need = backend.cache_bytes_for(tokens) - backend.kept_bytes(key)
    if need <= 0:
        return
    device = manager.info(name).device
    try:
        row = budget(manager=manager)[device]
    except (KeyError, IndexError):
        return
    short = need - (row.limit - row.used)
    if short <= 0:
        return
    freed = manager.drop_caches(short, device=device, keep=key,
                                reason=f"to make room for a turn on {name!r}")
    if freed >= short:
        return
    raise BudgetExceededError(
        f"This turn's cache needs {size(need)} more ({tokens:,} tokens on {name!r}), but the "
        f"{device} budget has {size(max(0, row.limit - row.used + freed))} left beside the "
        f"models. Raise it (lm.budget({device.replace(':', '')}=...)), undo turns, or start a "
        "new conversation.")
