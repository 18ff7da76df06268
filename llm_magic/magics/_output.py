"""How ``%%llm`` results reach the cell: streamed in place, then rendered by ``--format``.

In a notebook (a ZMQ kernel) the text streams into one output area, a display
handle updated at most every ``throttle`` seconds, and the final render replaces
it. Anywhere else (terminal IPython, a plain ``InteractiveShell``) text is
written to stdout as it arrives, so the output is plain and complete.

Every HTML or Markdown view escapes model and user text.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

from IPython.display import display

from ..common.sizes import format_size

if TYPE_CHECKING:
    from ..generation import Generation
    from ..manager import ModelInfo

__all__ = ["FORMATS", "CellOutput", "ModelSummary", "in_notebook", "open_output", "safe_markdown"]

FORMATS = ("text", "markdown", "code")

_PRE = "<pre class='llm-magic-output' style='white-space:pre-wrap;margin:0'>{}</pre>"
_CODE = "<pre class='llm-magic-output'><code>{}</code></pre>"
_FOOTER = "<small style='opacity:.7'>{}</small>"
# Only fences at the margin count: an indented one may belong to a list item that a
# less indented line closes, which would leave unescaped text inside a "fence".
_FENCE = re.compile(r"(`{3,}(?=[^`]*$)|~{3,})")
_CLOSE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*$")
_TAG = re.compile(r"<(?=[A-Za-z/!?])")
# A code span on one line, opened by a whole backtick run that no backslash escapes.
_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)([^\n]+?)(?<!`)\1(?!`)")


def in_notebook(shell: Any) -> bool:
    """True in a Jupyter kernel, where display updates reach a front end."""
    return type(shell).__name__ == "ZMQInteractiveShell"


def safe_markdown(text: str) -> str:
    """Markdown that cannot carry raw HTML: a ``<`` that could open a tag is escaped.

    Fenced code blocks at the margin and one-line code spans are left as they are
    (Markdown shows them literally); elsewhere ``<`` before a letter, ``/``, ``!`` or ``?`` becomes
    ``&lt;``, which renders as ``<``. Comparisons such as ``a < b`` are untouched.

    Examples
    --------
    >>> safe_markdown("**bold** <script>x</script> `a<b` and a < b")
    '**bold** &lt;script>x&lt;/script> `a<b` and a < b'
    """
    out: list[str] = []
    prose: list[str] = []
    fence = ""
    for line in text.splitlines(keepends=True):
        if fence:
            out.append(line)
            closing = _CLOSE.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                fence = ""
        elif opening := _FENCE.match(line):
            out.append(_escape_prose("".join(prose)))
            prose = []
            out.append(line)
            fence = opening.group(1)
        else:
            prose.append(line)
    out.append(_escape_prose("".join(prose)))
    return "".join(out)


def _escape_prose(text: str) -> str:
    out, pos = [], 0
    for span in _SPAN.finditer(text):
        out.append(_TAG.sub("&lt;", text[pos : span.start()]))
        out.append(span.group(0))
        pos = span.end()
    out.append(_TAG.sub("&lt;", text[pos:]))
    return "".join(out)


def _footer(gen: Generation) -> str:
    return _FOOTER.format(escape(f"{gen.model}: {gen.stats}"))


def render(gen: Generation, fmt: str) -> dict[str, str]:
    """The final MIME bundle of one generation in ``fmt`` ("text", "markdown" or "code")."""
    if fmt == "markdown":
        return {"text/plain": gen.text, "text/markdown": f"{safe_markdown(gen.text)}\n\n"
                f"{_footer(gen)}"}
    html = (_CODE if fmt == "code" else _PRE).format(escape(gen.text))
    return {"text/plain": gen.text, "text/html": html + _footer(gen)}


def _heading(number: int, prompt: str) -> str:
    first = prompt.strip().splitlines()[0] if prompt.strip() else ""
    return f"[{number}] {first[:60]}{'…' if len(first) > 60 else ''}"


def plain_batch(gens: list[Generation]) -> str:
    """A batch as plain text: a heading per prompt, then its output."""
    return "\n\n".join(f"{_heading(i, g.prompt)}\n{g.text}" for i, g in enumerate(gens, 1))


def render_batch(gens: list[Generation], fmt: str) -> dict[str, str]:
    """The MIME bundle of a batch: one section per prompt, each rendered by ``fmt``."""
    parts = []
    for number, gen in enumerate(gens, 1):
        body = render(gen, fmt)
        inner = body.get("text/html") or ""
        if fmt == "markdown":
            inner = _PRE.format(escape(gen.text)) + _footer(gen)
        parts.append(f"<div><b>{escape(_heading(number, gen.prompt))}</b>{inner}</div>")
    return {"text/plain": plain_batch(gens), "text/html": "".join(parts)}


class CellOutput:
    """Where one cell's output goes: ``write`` while streaming, ``finish`` at the end."""

    def write(self, piece: str) -> None:
        """Show a new piece of streamed text."""

    def finish(self, result: Generation | list[Generation]) -> None:
        """Show the final result."""


def _quiet_updater(shell: Any) -> Callable[[dict[str, str], str], None] | None:
    """A sender of ``update_display_data`` that skips the flush of stdout and stderr.

    ipykernel's display path flushes both streams before every message, and each
    flush waits for a round trip through the kernel's IOPub thread. While a model
    generates in another thread that holds the GIL, that costs about 2 ms of
    generation per update. Streaming updates do without it; the first display and
    the final render still take the full path, so printed text stays in order.
    None where the publisher is not ipykernel's or something intercepts displays.
    """
    pub: Any = getattr(shell, "display_pub", None)
    session = getattr(pub, "session", None)
    socket = getattr(pub, "pub_socket", None)
    hooks = getattr(pub, "_hooks", None)
    if type(pub).__name__ != "ZMQDisplayPublisher" or session is None or socket is None:
        return None
    if hooks is None or len(hooks):
        return None

    def send(bundle: dict[str, str], display_id: str) -> None:
        content = {"data": bundle, "metadata": {}, "transient": {"display_id": display_id}}
        session.send(socket, "update_display_data", content, parent=pub.parent_header,
                     ident=pub.topic)

    return send


class _LiveOutput(CellOutput):
    """One output area in a notebook, updated in place and throttled."""

    def __init__(self, fmt: str, throttle: float,
                 quiet: Callable[[dict[str, str], str], None] | None = None) -> None:
        self.fmt = fmt
        self.throttle = throttle
        self.quiet = quiet
        self.parts: list[str] = []
        self.handle: Any = None
        self.shown = -float("inf")
        self.updates = 0

    def write(self, piece: str) -> None:
        self.parts.append(piece)
        now = time.monotonic()
        if now - self.shown >= self.throttle:
            self.shown = now
            text = "".join(self.parts)
            self._show({"text/plain": text, "text/html": _PRE.format(escape(text))}, live=True)

    def _show(self, bundle: dict[str, str], live: bool = False) -> None:
        self.updates += 1
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        elif live and self.quiet is not None:
            self.quiet(bundle, self.handle.display_id)
        else:
            self.handle.update(bundle, raw=True)

    def finish(self, result: Generation | list[Generation]) -> None:
        if isinstance(result, list):
            self._show(render_batch(result, self.fmt))
        else:
            self._show(render(result, self.fmt))


class _PlainOutput(CellOutput):
    """Plain text on stdout as it arrives: terminals, scripts and plain shells."""

    def __init__(self) -> None:
        self.last = ""

    def write(self, piece: str) -> None:
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
            self.last = piece

    def finish(self, result: Generation | list[Generation]) -> None:
        if isinstance(result, list):
            sys.stdout.write(plain_batch(result) + "\n")
        elif not self.last:
            sys.stdout.write(result.text + "\n")
        elif not self.last.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()


def open_output(shell: Any, *, fmt: str, throttle: float) -> CellOutput:
    """The output of one cell: live in a notebook, plain text elsewhere."""
    if in_notebook(shell):
        return _LiveOutput(fmt, throttle, _quiet_updater(shell))
    return _PlainOutput()


def _quantized_rows(i: ModelInfo) -> list[tuple[str, str]]:
    """A quantized model's scheme, what it saved, and the call that measures what it cost."""
    if not i.quantization:
        return []
    return [("quantized", f"{i.quantization} weights, {format_size(i.saved)} saved"),
            ("quality", f"lm.quality({i.name!r}, against={i.source!r}, text=...)")]


@dataclass(frozen=True)
class ModelSummary:
    """What ``%llm load`` shows: the facts of one loaded model.

    Attributes
    ----------
    info : ModelInfo
        The model's facts after the load.
    resident : bool
        True when the model was already loaded with these settings.
    """

    info: ModelInfo
    resident: bool = False

    def rows(self) -> list[tuple[str, str]]:
        i = self.info
        if i.endpoint:
            return [
                ("endpoint", i.endpoint),
                ("served model", i.architecture),
                ("memory here", "none: the server holds the model (budgets leave it alone)"),
                ("connect time", f"{i.load_seconds:.2f} s"),
                ("pinned", "yes" if i.pinned else "no"),
            ]
        context = f"{i.context_length:,} tokens" if i.context_length else "-"
        return [
            ("source", i.source),
            ("architecture", i.architecture or i.backend),
            ("parameters", f"{i.parameters:,}"),
            ("memory", format_size(i.memory)),
            ("estimate", format_size(i.estimate)),
            ("device", i.device),
            ("dtype", i.dtype),
            *_quantized_rows(i),
            ("load time", f"{i.load_seconds:.2f} s"),
            ("revision", i.revision or "-"),
            ("commit", i.commit or "-"),
            ("context", context),
            ("chat template", "yes" if i.chat else "no"),
            ("pinned", "yes" if i.pinned else "no"),
        ]

    @property
    def title(self) -> str:
        if self.resident:
            return f"{self.info.name!r} is already loaded"
        return f"Loaded {self.info.name!r}"

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join([self.title, *(f"  {k.ljust(width)}  {v}" for k, v in self.rows())])

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td>"
                       "</tr>" for k, v in self.rows())
        return f"<b>{escape(self.title)}</b><table class='llm-magic-load'>{rows}</table>"
