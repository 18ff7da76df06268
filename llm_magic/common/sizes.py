"""Byte sizes as people write them (``"8GB"``, ``"512 MiB"``, ``0.5``), and text tables."""

from __future__ import annotations

import re

from ..errors import InvalidOptionError

__all__ = ["format_count", "format_size", "parse_limit", "text_table"]

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?([a-z]*)$")


def format_count(n: int) -> str:
    """A parameter count in short: ``1.2M``, ``7.0B``.

    Examples
    --------
    >>> format_count(1_234_567), format_count(512)
    ('1.2M', '512')
    """
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def format_size(n: int | None) -> str:
    """Bytes in decimal units, as ``lm.models()`` shows them.

    Examples
    --------
    >>> format_size(58_012_345), format_size(None)
    ('58.0 MB', '-')
    """
    if n is None:
        return "-"
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{sign}{value:.0f} B" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def parse_limit(value: object) -> int | float:
    """A budget as bytes (an int) or as a fraction of the device (a float in (0, 1]).

    Numbers up to 1 are fractions; larger ones are bytes. Strings take units
    (KB, MB, GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024) or
    a percent sign.

    Examples
    --------
    >>> parse_limit("8GB"), parse_limit("512 MiB"), parse_limit(0.5), parse_limit("25%")
    (8000000000, 536870912, 0.5, 0.25)
    """
    if isinstance(value, bool):
        raise InvalidOptionError(f"A memory budget must be a size or a fraction, not {value!r}.")
    if isinstance(value, (int, float)):
        number = float(value)
        unit_given = False
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "").replace("_", "")
        percent = text.endswith("%")
        match = _SIZE.match(text[:-1] if percent else text)
        if match is None or (percent and match.group(3)):
            raise InvalidOptionError(
                f"Cannot read {value!r} as a memory budget: write a size like '8GB' or "
                "'512MiB', a fraction like 0.5, or a percentage like '50%'."
            )
        digits, exponent, unit = match.groups()
        if unit not in _UNITS:
            raise InvalidOptionError(
                f"Unknown unit {unit!r} in {value!r}: use KB, MB, GB, TB or KiB, MiB, GiB, TiB."
            )
        number = float(digits) * 10 ** int(exponent or 0)
        if percent:
            number /= 100
        unit_given = bool(unit) or percent
        if unit and not percent:
            number *= _UNITS[unit]
            return _positive_bytes(number, value)
    else:
        raise InvalidOptionError(
            f"A memory budget must be a size or a fraction, not {type(value).__name__}."
        )
    if not number > 0 or number != number or number == float("inf"):
        raise InvalidOptionError(f"A memory budget must be more than zero; got {value!r}.")
    if number <= 1:
        return float(number)
    if unit_given:  # "150%"
        raise InvalidOptionError(f"A budget can be at most 100% of a device; got {value!r}.")
    return _positive_bytes(number, value)


def _positive_bytes(number: float, value: object) -> int:
    n = int(number)
    if n < 1:
        raise InvalidOptionError(f"A memory budget must be at least one byte; got {value!r}.")
    return n


def text_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns under a dashed rule, for terminals and ``print``."""
    rows = [columns, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
