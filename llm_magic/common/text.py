"""One boundary check for text that a user hands to llm_magic.

Prompts, scored texts, system prompts, stop strings and history searches all
pass :func:`check_text` where they enter the API, so a wrong type, an empty
text or a character that cannot be encoded is refused in one line that says
where, before it reaches a tokenizer, a server or SQLite.

The only characters a Python ``str`` may hold that UTF-8 cannot encode are
lone surrogates (U+D800 to U+DFFF): they come from bytes decoded with
``errors="surrogateescape"``, from JSON ``"\\ud800"`` escapes, or from the two
halves of a UTF-16 pair kept apart.
"""

from __future__ import annotations

import re

from ..errors import InvalidOptionError

__all__ = ["check_text", "shown"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_AROUND = 12  # characters shown on each side of a bad one


def check_text(value: object, what: str = "The prompt", *, allow_empty: bool = False,
               allow_blank: bool = False, hint: str = "write some text to continue") -> str:
    """Return ``value`` if it is a text llm_magic can use; else raise one clear line.

    Parameters
    ----------
    value : object
        What the user gave.
    what : str
        How the message names it, capitalized as a sentence starts: "The prompt",
        "The text", "Stop string 2".
    allow_empty : bool
        Accept ``""`` (and blank texts): for options where empty means "none".
    allow_blank : bool
        Accept a text of whitespace only (``"\\n\\n"`` is a fine stop string), but
        not ``""``.
    hint : str
        What to do about an empty text, after "is empty: ".

    Returns
    -------
    str
        ``value`` itself.

    Raises
    ------
    InvalidOptionError
        ``value`` is not a ``str``, is empty (or blank) when that is not allowed,
        or holds a lone surrogate, which cannot be encoded as UTF-8.

    Examples
    --------
    >>> check_text("The import statement")
    'The import statement'
    >>> check_text("a \\ud800")
    Traceback (most recent call last):
    ...
    llm_magic.errors.InvalidOptionError: The prompt has a lone surrogate U+D800 at character 2 ...
    """
    if not isinstance(value, str):
        raise InvalidOptionError(f"{what} must be a string, not {type(value).__name__}.")
    if not allow_empty and (value == "" or (not allow_blank and not value.strip())):
        raise InvalidOptionError(f"{what} is empty: {hint}.")
    bad = _SURROGATE.search(value)
    if bad is not None:
        at = bad.start()
        raise InvalidOptionError(
            f"{what} has a lone surrogate U+{ord(value[at]):04X} at character {at} "
            f"({_context(value, at)}): it cannot be encoded as UTF-8. {_fix(value, at)}"
        )
    return value


def _fix(value: str, at: int) -> str:
    if "\ud800" <= value[at] <= "\udbff" and "\udc00" <= value[at + 1:at + 2] <= "\udfff":
        return ("It is half of a UTF-16 pair kept apart: text.encode('utf-16', "
                "'surrogatepass').decode('utf-16') joins the pairs.")
    return ("Remove or replace it: text.encode('utf-8', 'replace').decode() turns each one "
            "into '?'.")


def _context(value: str, at: int) -> str:
    """The text around position ``at`` as a Python literal: control, bidi and surrogate
    characters escaped (``repr`` escapes every character that does not print)."""
    start, end = max(0, at - _AROUND), min(len(value), at + _AROUND + 1)
    shown = repr(value[start:end])
    return ("…" if start else "") + shown + ("…" if end < len(value) else "")


def shown(value: object, width: int = 40) -> str:
    """A short picture of a wrong value for a message: its ``repr``, cut to ``width``.

    Safe for anything a user may pass: an integer past 4,300 digits has no
    ``repr`` (Python refuses to print it), and a ``repr`` may raise or run long.

    Examples
    --------
    >>> shown(2**63), shown(10**5000), shown("x" * 50, width=10)
    ('9223372036854775808', 'an integer of 16610 bits', "'xxxxxxxx…")
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__}"
    return text if len(text) <= width else text[: width - 1] + "…"
