"""Memory budgets per device: the limits models may use, and how they read.

:func:`device_key` normalises a device keyword; a :class:`Budget` is the table
``lm.budget()`` returns. The manager applies budgets (``llm_magic.manager.room``).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from ..common.sizes import format_size, text_table
from ..errors import InvalidOptionError

__all__ = ["Budget", "DeviceBudget", "device_key"]


def device_key(name: str) -> str:
    """Normalise a budget keyword: ``cuda0``, ``cuda_0``, ``cuda``, ``gpu`` -> ``"cuda:0"``.

    Examples
    --------
    >>> device_key("cuda1"), device_key("CPU"), device_key("gpu")
    ('cuda:1', 'cpu', 'cuda:0')
    """
    key = str(name).strip().lower().replace("_", "").replace(":", "")
    if key in ("cpu", "mps"):
        return key
    for prefix in ("cuda", "gpu"):
        if key.startswith(prefix):
            index = key[len(prefix):] or "0"
            if index.isdigit():
                return f"cuda:{int(index)}"
    raise InvalidOptionError(
        f"Unknown device {name!r} for a budget: use cpu, cuda0, cuda1, ... or mps."
    )


@dataclass(frozen=True)
class DeviceBudget:
    """The budget of one device and how much of it is taken.

    Attributes
    ----------
    device : str
        ``"cpu"``, ``"cuda:0"``, ...
    limit : int
        Bytes that loaded models may take together.
    setting : str
        How the limit was set (``"default: 50% of 24.0 GB"``, ``"8.0 GB"``).
    total : int
        The device's memory.
    used : int
        Bytes taken by loaded models (measured).
    free : int or None
        Bytes the device has free now, other processes included (None: not queried).
    """

    device: str
    limit: int
    setting: str
    total: int
    used: int
    free: int | None

    @property
    def available(self) -> int:
        """Budget left for another model."""
        return self.limit - self.used


class Budget(tuple):  # type: ignore[type-arg]
    """The memory budget of every device, a tuple of :class:`DeviceBudget` that renders as a table.

    Examples
    --------
    >>> import llm_magic as lm
    >>> b = lm.budget()            # doctest: +SKIP
    >>> b["cpu"].limit             # doctest: +SKIP
    12000000000
    """

    columns = ("device", "budget", "set as", "used by models", "left", "device free",
               "device total")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            device = device_key(key)
            for item in self:
                if item.device == device:
                    return item
            raise KeyError(key)
        return super().__getitem__(key)

    def rows(self) -> list[tuple[str, ...]]:
        return [(b.device, format_size(b.limit), b.setting, format_size(b.used),
                 format_size(b.available), format_size(b.free), format_size(b.total))
                for b in self]

    def __str__(self) -> str:
        return text_table(self.columns, self.rows())

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in self.rows()
        )
        return (f"<table class='llm-magic-budget'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")
