"""A token's text as every view shows it: whitespace and control characters made visible.

Examples
--------
>>> visible(" a\\tb\\n")
' a⇥b↵'
>>> visible("x\\ny", breaks=True)
'x↵\\ny'
>>> visible("\\x17")
'\\\\x17'
"""

from __future__ import annotations

__all__ = ["visible"]

_SHOWN = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def visible(text: str, *, breaks: bool = False) -> str:
    """``text`` with ``↵``, ``⇥``, ``␍`` and ``\\xNN`` for control characters.

    ``breaks`` keeps the line break after ``↵``, for views of running text.
    """
    out = []
    for ch in text:
        if ch in _SHOWN:
            out.append(_SHOWN[ch] + ("\n" if breaks and ch == "\n" else ""))
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)
