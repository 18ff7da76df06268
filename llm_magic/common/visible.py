"""A token's text as every view shows it: whitespace and control characters made visible.

Bidirectional controls (embeddings, overrides, isolates and the three marks)
are written out too: a U+202E in a prompt or a token would otherwise reverse
the layout of everything after it. ``widgets/static/_shared.js`` has the same
rule in JavaScript (``visible``); tests/test_visible.py runs both on the same
texts.

Examples
--------
>>> visible(" a\\tb\\n")
' a⇥b↵'
>>> visible("x\\ny", breaks=True)
'x↵\\ny'
>>> visible("\\x17")
'\\\\x17'
>>> visible("abc\\u202edef")
'abc\\\\u202edef'
"""

from __future__ import annotations

__all__ = ["BIDI_CONTROLS", "visible"]

_SHOWN = {"\n": "↵", "\r": "␍", "\t": "⇥"}
#: Characters that change the order text is laid out in: LRE, RLE, PDF, LRO, RLO (U+202A to
#: U+202E), LRI, RLI, FSI, PDI (U+2066 to U+2069), LRM, RLM and the Arabic letter mark.
BIDI_CONTROLS = frozenset([*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A)),
                           "\u200e", "\u200f", "\u061c"])


def visible(text: str, *, breaks: bool = False) -> str:
    """``text`` with ``↵``, ``⇥``, ``␍``, ``\\xNN`` for control characters, ``\\uNNNN`` for bidi.

    ``breaks`` keeps the line break after ``↵``, for views of running text.
    """
    out = []
    for ch in text:
        if ch in _SHOWN:
            out.append(_SHOWN[ch] + ("\n" if breaks and ch == "\n" else ""))
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        elif ch in BIDI_CONTROLS:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)
