"""Turn a ``%%llm`` cell into prompts: safe ``{name}`` interpolation, batches, option text.

Interpolation is deliberately narrow so that prompts full of code survive:

- ``{name}`` is replaced by ``format(value)`` when ``name`` is a plain Python
  identifier bound in the user's namespace. Nothing is evaluated: ``{x.y}``,
  ``{x[0]}``, ``{0}``, ``{x!r}``, ``{x:>4}`` and ``{ x }`` stay as written.
- A field that touches another brace is not a field: ``{{name}}``, ``{{`` and
  ``}}`` stay exactly as written (so Jinja, Handlebars and f-string escapes pass
  through). ``{{name}}`` is *not* an escape that yields ``{name}``; to keep a
  literal ``{name}`` whose name is bound, turn interpolation off
  (``--no-interpolate``).
- Unbound names, keywords and everything else stay literal.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any

from IPython.core.error import UsageError

__all__ = ["check_variable", "interpolate", "split_batch", "stop_text", "text"]

# One field: "{" identifier "}" with no brace on either side.
_FIELD = re.compile(r"(?<!\{)\{([^\W\d]\w*)\}(?!\})")
_SEPARATOR = re.compile(r"^[ \t]*---[ \t]*$", re.MULTILINE)
_ESCAPES = re.compile(r"\\([nt\\])")


def interpolate(prompt: str, namespace: Mapping[str, Any]) -> str:
    """Replace ``{name}`` fields by the values of names bound in ``namespace``.

    Parameters
    ----------
    prompt : str
        The cell's text.
    namespace : mapping
        Where names are looked up (the user's namespace).

    Returns
    -------
    str
        The prompt, with only the fields of bound identifiers replaced.

    Raises
    ------
    UsageError
        When a bound value cannot be turned into text.

    Examples
    --------
    >>> interpolate("Say {word}, not {missing} or {{word}} or {'a': 1}", {"word": "hi"})
    "Say hi, not {missing} or {{word}} or {'a': 1}"
    """

    def field(match: re.Match[str]) -> str:
        name = match.group(1)
        if keyword.iskeyword(name) or name not in namespace:
            return match.group(0)
        try:
            return format(namespace[name])
        except Exception as exc:
            raise UsageError(
                f"Cannot put {{{name}}} into the prompt: {type(exc).__name__}: {exc}. "
                "Fix the value, or keep the text literal with --no-interpolate."
            ) from exc

    return _FIELD.sub(field, prompt)


def split_batch(body: str) -> list[str]:
    """Split a ``--batch`` cell into prompts at lines that hold only ``---``.

    Examples
    --------
    >>> split_batch("A list\\n---\\nA dict\\n")
    ['A list', 'A dict']
    """
    prompts = [part.strip("\n") for part in _SEPARATOR.split(body)]
    for number, prompt in enumerate(prompts, 1):
        if not prompt.strip():
            raise UsageError(
                f"Prompt {number} of the batch is empty: write text between the `---` lines."
            )
    return prompts


def text(value: str) -> str:
    """An option's text without one pair of enclosing quotes (IPython keeps them).

    Examples
    --------
    >>> text('"two words"'), text("plain")
    ('two words', 'plain')
    """
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def stop_text(value: str) -> str:
    r"""A ``--stop`` string: unquoted, with ``\n``, ``\t`` and ``\\`` read as escapes.

    Examples
    --------
    >>> stop_text(r'"\n\n"')
    '\n\n'
    """
    return _ESCAPES.sub(lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text(value))


def check_variable(name: str, hidden: Mapping[str, Any]) -> str:
    """Check an ``--out`` target: an identifier that IPython does not reserve."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"--out {name!r} is not a Python identifier; write e.g. --out result.")
    if name in hidden:
        raise UsageError(f"--out {name!r} would replace IPython's own {name!r}; pick another name.")
    return name
