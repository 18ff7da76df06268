"""Synthetic data for the bundled translator: dates written many ways, and their ISO form.

A *format* is a combination of a layout (which fields come in which order, with which words
and punctuation between them) and a style for each field: the day as ``3``, ``03``, ``3rd`` or
``third``; the month as ``March``, ``Mar``, ``3`` or ``03``; the year as ``2021``, ``21`` or
``'21``; and an optional weekday in front. Every format is rendered from the same
:class:`datetime.date`, whose ISO form ``2021-03-03`` is the target, so the year moves from the
end of the source to the front of the target and each target field has one source field to
copy or translate.

Conventions (the model card repeats them): numeric dates are read day first (``3/4/2021`` is
the 3rd of April); two-digit years follow Python's ``%y`` (``69``-``99`` are 1969-1999, ``00``-
``68`` are 2000-2068).

The split is deterministic: one date in :data:`HELD_OUT_EVERY` (:func:`held_out_date`) and the
formats in :func:`held_out_formats` never appear in training, so the held-out set measures
dates and format mixes the model has not seen.

This module imports neither torch nor transformers.

Examples
--------
>>> import datetime
>>> render(datetime.date(2021, 3, 3), Format("the_d_of_m_y", "word", "name", "yyyy", ""))
'the third of March, 2021'
>>> render(datetime.date(2021, 3, 3), Format("dmy_slash", "num", "num", "yyyy", ""))
'3/3/2021'
"""

from __future__ import annotations

import datetime
import itertools
import random
import zlib
from collections.abc import Iterator
from typing import NamedTuple

__all__ = [
    "HELD_OUT_EVERY",
    "Format",
    "all_formats",
    "examples",
    "held_out_date",
    "held_out_formats",
    "render",
    "training_formats",
]

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_UNITS = ("", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
          "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth",
          "sixteenth", "seventeenth", "eighteenth", "nineteenth")

#: One date in this many (by the CRC-32 of its ISO form) is held out.
HELD_OUT_EVERY = 7
#: Four-digit years are drawn from this range (inclusive).
FIRST_YEAR, LAST_YEAR = 1900, 2099
#: Two-digit years can only stand for these (Python's ``%y`` pivot).
SHORT_FIRST_YEAR, SHORT_LAST_YEAR = 1969, 2068

#: Layouts: how the fields are arranged. ``{d}``, ``{m}``, ``{y}`` are the fields.
LAYOUTS: dict[str, str] = {
    "d_m_y": "{d} {m} {y}",
    "d_m_comma_y": "{d} {m}, {y}",
    "m_d_comma_y": "{m} {d}, {y}",
    "m_d_y": "{m} {d} {y}",
    "y_m_d": "{y} {m} {d}",
    "the_d_of_m_y": "the {d} of {m}, {y}",
    "d_of_m_y": "{d} of {m} {y}",
    "m_the_d_y": "{m} the {d}, {y}",
    "d_dash_m_dash_y": "{d}-{m}-{y}",
    "dmy_slash": "{d}/{m}/{y}",
    "dmy_dot": "{d}.{m}.{y}",
    "dmy_dash": "{d}-{m}-{y}",
    "ymd_slash": "{y}/{m}/{d}",
    "ymd_dot": "{y}.{m}.{d}",
}
#: Layouts written with numbers only (numeric day and month, no weekday words in between).
_NUMERIC = {"dmy_slash", "dmy_dot", "dmy_dash", "ymd_slash", "ymd_dot"}
_YEAR_FIRST = {"y_m_d", "ymd_slash", "ymd_dot"}
_DAY_STYLES = ("num", "pad", "suffix", "word")
_MONTH_STYLES = ("name", "abbr", "num", "pad")
_YEAR_STYLES = ("yyyy", "yy", "apostrophe")
_WEEKDAYS = ("", "full", "abbr")


class Format(NamedTuple):
    """How one date is written: a layout name and a style per field.

    Attributes
    ----------
    layout : str
        A key of :data:`LAYOUTS`.
    day, month, year : str
        Field styles (see the module docstring).
    weekday : str
        ``""`` (none), ``"full"`` (``Wednesday, ``) or ``"abbr"`` (``Wed ``).
    """

    layout: str
    day: str
    month: str
    year: str
    weekday: str


def _valid(f: Format) -> bool:
    """Whether a combination is a way people write dates and reads back unambiguously."""
    numeric = f.layout in _NUMERIC
    if numeric != (f.day in ("num", "pad") and f.month in ("num", "pad")):
        return False
    if not numeric and f.month not in ("name", "abbr"):
        return False  # "3rd 4 2021": a number between words reads as anything
    if f.layout == "d_dash_m_dash_y" and (f.month != "abbr" or f.day != "num"):
        return False  # only "3-Mar-21"
    if f.layout in _YEAR_FIRST and f.year != "yyyy":
        return False  # "21 March 3" or "21/3/3" do not read as dates
    if f.year == "apostrophe" and numeric:
        return False
    if f.layout in ("the_d_of_m_y", "d_of_m_y", "m_the_d_y") and f.day not in ("suffix", "word"):
        return False  # "the 3 of March"
    if f.day == "pad" and not numeric:
        return False
    return not (numeric and f.weekday == "abbr")


def all_formats() -> list[Format]:
    """Every valid format, in a fixed order."""
    combos = itertools.product(LAYOUTS, _DAY_STYLES, _MONTH_STYLES, _YEAR_STYLES, _WEEKDAYS)
    return [f for f in (Format(*c) for c in combos) if _valid(f)]


def held_out_formats() -> list[Format]:
    """The formats kept out of training: every fifth one of a seeded shuffle.

    Each field style, layout and weekday style still appears in training in other
    combinations, so a held-out format is a new mix of known parts.
    """
    formats = all_formats()
    random.Random(1234).shuffle(formats)
    held = formats[::5]
    kept = set(formats) - set(held)
    for position, values in enumerate((LAYOUTS, _DAY_STYLES, _MONTH_STYLES, _YEAR_STYLES,
                                       _WEEKDAYS)):
        for value in values:
            if any(f[position] == value for f in formats) and not any(
                    f[position] == value for f in kept):
                raise AssertionError(f"{value!r} is only in held-out formats")  # pragma: no cover
    return sorted(held)


def training_formats() -> list[Format]:
    """The formats the model trains on (all but :func:`held_out_formats`)."""
    held = set(held_out_formats())
    return [f for f in all_formats() if f not in held]


def held_out_date(date: datetime.date) -> bool:
    """Whether ``date`` belongs to the held-out dates (one in :data:`HELD_OUT_EVERY`)."""
    # A hash, not the ordinal itself: ``ordinal % 7`` is the weekday.
    return zlib.crc32(date.isoformat().encode("ascii")) % HELD_OUT_EVERY == 0


def _ordinal_word(n: int) -> str:
    if n < 20:
        return _UNITS[n]
    tens = {2: "twenty", 3: "thirty"}[n // 10]
    return tens[:-1] + "ieth" if n % 10 == 0 else f"{tens}-{_UNITS[n % 10]}"


def _suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def render(date: datetime.date, f: Format) -> str:
    """Write ``date`` in format ``f``.

    Examples
    --------
    >>> render(datetime.date(2021, 3, 3), Format("y_m_d", "num", "name", "yyyy", ""))
    '2021 March 3'
    >>> render(datetime.date(2021, 3, 3), Format("d_m_y", "num", "name", "yyyy", "full"))
    'Wednesday, 3 March 2021'
    """
    day = {"num": str(date.day), "pad": f"{date.day:02d}", "suffix": _suffix(date.day),
           "word": _ordinal_word(date.day)}[f.day]
    month = {"name": MONTHS[date.month - 1], "abbr": MONTHS[date.month - 1][:3],
             "num": str(date.month), "pad": f"{date.month:02d}"}[f.month]
    year = {"yyyy": str(date.year), "yy": f"{date.year % 100:02d}",
            "apostrophe": f"'{date.year % 100:02d}"}[f.year]
    text = LAYOUTS[f.layout].format(d=day, m=month, y=year)
    if f.weekday == "full":
        text = f"{WEEKDAYS[date.weekday()]}, {text}"
    elif f.weekday == "abbr":
        text = f"{WEEKDAYS[date.weekday()][:3]} {text}"
    return text


def _random_date(rng: random.Random, short_year: bool) -> datetime.date:
    first, last = ((SHORT_FIRST_YEAR, SHORT_LAST_YEAR) if short_year
                   else (FIRST_YEAR, LAST_YEAR))
    start = datetime.date(first, 1, 1).toordinal()
    end = datetime.date(last, 12, 31).toordinal()
    return datetime.date.fromordinal(rng.randint(start, end))


def examples(n: int, *, held_out: bool, seed: int) -> Iterator[tuple[str, str]]:
    """``n`` pairs ``(written date, ISO date)`` from the training or the held-out split.

    Parameters
    ----------
    n : int
        How many pairs.
    held_out : bool
        ``False``: training dates in training formats; ``True``: held-out dates in held-out
        formats (neither seen in training).
    seed : int
        Seed of the draw; the same seed gives the same pairs. Each pair picks a layout
        (uniformly), then one of its formats, then a date.

    Yields
    ------
    (str, str)
        The written date and its ISO form (``YYYY-MM-DD``).

    Examples
    --------
    >>> pairs = list(examples(3, held_out=True, seed=0))
    >>> all(held_out_date(datetime.date.fromisoformat(iso)) for _, iso in pairs)
    True
    """
    rng = random.Random(seed)
    by_layout: dict[str, list[Format]] = {}
    for f in held_out_formats() if held_out else training_formats():
        by_layout.setdefault(f.layout, []).append(f)
    # Layouts first, so that the few numeric and year-first formats are drawn as often as
    # the many spelled-out ones.
    layouts = sorted(by_layout)
    made = 0
    while made < n:
        f = rng.choice(by_layout[rng.choice(layouts)])
        date = _random_date(rng, short_year=f.year != "yyyy")
        if held_out_date(date) != held_out:
            continue
        yield render(date, f), date.isoformat()
        made += 1
