"""The ``%llm`` subcommands: one small function each, dispatched from a table.

Each subcommand is a function ``(magics, args)`` whose arguments are declared
with :mod:`IPython.core.magic_arguments`; its docstring's first line is its


"""

from __future__ import annotations

import contextlib
import logging
import sys
import textwrap
import time
from argparse import Namespace
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments
from IPython.display import display

from .. import history, load, models, rerun, unload, use
from ..errors import LLMMagicError
from ._output import ModelSummary
from ._prompt import text

__all__ = ["COMMANDS", "Command", "Host", "find", "help_lines", "parse", "set_debug",
           "usage_errors"]



class Host(Protocol):
    """What a subcommand may ask of the magics that run it (``LLMMagics``)."""

    shell: Any  # the InteractiveShell the magics are registered with

    def follow_manager(self) -> None: ...


Run = Callable[[Host, Namespace], None]

@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn library errors into IPython's one-line ``UsageError`` (the notebook boundary)."""
    try:
        yield
    except LLMMagicError as exc:
        raise UsageError(" ".join(str(exc).split())) from exc


def parse(parser: MagicArgumentParser, line: str, usage: str) -> Namespace:
    """Parse a magic's options; every mistake is a ``UsageError`` that points at ``usage``."""
    try:
        return parser.parse_argstring(line)
    except ValueError as exc:  # shlex: an unclosed quote
        raise UsageError(f"Cannot split the options ({exc}); close the quote.") from exc
    except UsageError as exc:
        raise UsageError(f"{exc}. See `{usage}` for the options.") from exc


@dataclass(frozen=True)
class Command:
    """One ``%llm`` subcommand.

    Attributes
    ----------
    name : str
        What follows ``%llm``.
    run : callable
        ``run(magics, args)``, declared with ``magic_arguments``.
    synopsis : str
        The arguments in short, for ``%llm help``.
    available : callable
        False while the feature behind it is missing.
    """

    name: str
    run: Run
    synopsis: str = ""
    available: Callable[[], bool] = lambda: True

    @property
    def parser(self) -> MagicArgumentParser:
        return self.run.parser  # type: ignore[attr-defined, no-any-return]

    @property
    def summary(self) -> str:
        return (self.parser.description or "").strip().splitlines()[0]

    @property
    def usage(self) -> str:
        return f"%llm {self.name} {self.synopsis}".rstrip()


# -- load, unload, list, use ----------------------------------------------


@magic_arguments("llm load")
@argument("source", type=text,
          help="'demo', a local model directory, a Hugging Face hub id, or the URL of an "
               "OpenAI-compatible server (http://HOST:PORT/v1)")
@argument("--as", dest="name", type=text, metavar="NAME",
          help="the name to refer to it by (default: the last part of SOURCE)")
@argument("--revision", type=text, help="branch, tag or commit of a hub model")
@argument("--dtype", type=text, default="auto", help="auto, float32, bfloat16 or float16")
@argument("--device", type=text, default="auto", help="auto, cpu, cuda, cuda:N or mps")
@argument("--trust-remote-code", action="store_true",
          help="run code shipped with the model (only for models you trust)")
@argument("--reload", action="store_true",
          help="replace a model of the same name loaded with other settings")
@argument("--pin", action="store_true", help="never evict this model to make room for another")
@argument("--model", type=text, metavar="ID",
          help="a served model's id on the server at SOURCE (one of its /v1/models)")
@argument("--api-key-env", type=text, metavar="VAR",
          help="the environment variable that holds the server's API key (never the key)")
@argument("--quantize", type=text, metavar="SCHEME",
          help="int8 or int4: quantize the linear layers' weights as the model loads (torchao; "
               "the default name becomes SOURCE-SCHEME)")
def _load(magics: Host, args: Namespace) -> None:
    """Load a model (or find it resident) and show its summary."""
    started = time.time()
    with usage_errors():
        info = load(args.source, name=args.name, revision=args.revision, dtype=args.dtype,
                    device=args.device, trust_remote_code=args.trust_remote_code,
                    reload=args.reload, pin=args.pin, model=args.model,
                    api_key_env=args.api_key_env, quantize=args.quantize).info
    display(ModelSummary(info, resident=info.loaded_at < started))


@magic_arguments("llm unload")
@argument("name", nargs="?", type=text, help="the model to unload")
@argument("--all", action="store_true", help="unload every model")
def _unload(magics: Host, args: Namespace) -> None:
    """Unload a model (or --all) and say whether its memory was really freed."""
    if (args.name is None) != args.all:
        raise UsageError("Name the model to unload, or pass --all (not both).")
    with usage_errors():
        reports = unload(all=True) if args.all else [unload(args.name)]
    for report in reports:
        print(report.message)
    if not reports:
        print("No models were loaded.")


@magic_arguments("llm list")
def _list(magics: Host, args: Namespace) -> None:
    """Show the loaded models: device, dtype, parameters, memory, endpoint, last use."""
    display(models())


@magic_arguments("llm use")
@argument("name", type=text, help="a loaded model's name")
def _use(magics: Host, args: Namespace) -> None:
    """Make a loaded model the one that cells without MODEL use."""
    with usage_errors():
        use(args.name)
    magics.follow_manager()
    print(f"Cells without a model now use {args.name!r}.")


@magic_arguments("llm help")
def _help(magics: Host, args: Namespace) -> None:
    """List the subcommands, one line each."""
    print("\n".join(help_lines()))


# -- history and rerun -------------------------------------------------------


@magic_arguments("llm history")
@argument("-n", type=int, default=20, metavar="N", help="how many generations, newest first")
@argument("--search", type=text, metavar="TEXT",
          help="only generations whose prompt, system prompt or output contains TEXT")
@argument("--model", type=text, metavar="NAME", help="only generations of this model")
@argument("--conversation", type=text, metavar="ID|NAME",
          help="only the turns of this conversation, in order: its id, or its name in this kernel")
def _history(magics: Host, args: Namespace) -> None:
    """Show past generations (id, time, model, status, output), newest first."""
    with usage_errors():
        display(history(args.n, search=args.search, model=args.model,
                        conversation=args.conversation))


@magic_arguments("llm rerun")
@argument("id", type=int, help="the generation's id, as `%%llm history` shows it")
def _rerun(magics: Host, args: Namespace) -> None:
    """Run a past generation again (same model, settings, seed) and say if it matches."""
    with usage_errors():
        display(rerun(args.id))  # the new generation is lm.last()


# -- conversations -------------------------------------------------------------


@magic_arguments("llm conversations")
def _conversations(magics: Host, args: Namespace) -> None:
    """Show the kernel's conversations: model, turns, tokens, cache bytes, last use."""
    from ..generation.conversation import conversations

    display(conversations())


@magic_arguments("llm forget")
@argument("name", nargs="?", type=text, help="the conversation to forget")
@argument("--all", action="store_true", help="forget every conversation")
def _forget(magics: Host, args: Namespace) -> None:
    """Forget a conversation (or --all) and free its kept cache."""
    from ..generation.conversation import forget
    from ..manager.info import size

    if (args.name is None) != args.all:
        raise UsageError("Name the conversation to forget, or pass --all (not both).")
    with usage_errors():
        freed = forget(args.name, all=args.all)
    what = "every conversation" if args.all else f"conversation {args.name!r}"
    print(f"Forgot {what}; freed {size(freed)} of kept cache.")


# -- debug ------------------------------------------------------------------


class _CellStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each record, so output lands in the running cell."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[%(name)s] %(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_HANDLER = _CellStderr()
_LOGGER = logging.getLogger("llm_magic")


def set_debug(on: bool) -> None:
    """Show (or stop showing) the ``llm_magic`` logger's DEBUG records in the running cell."""
    if on:
        if _HANDLER not in _LOGGER.handlers:
            _LOGGER.addHandler(_HANDLER)
        _LOGGER.setLevel(logging.DEBUG)
    elif _HANDLER in _LOGGER.handlers:
        _LOGGER.removeHandler(_HANDLER)
        _LOGGER.setLevel(logging.NOTSET)


@magic_arguments("llm debug")
@argument("state", nargs="?", choices=("on", "off"), help="on or off; none shows the state")
def _debug(magics: Host, args: Namespace) -> None:
    """Show what the manager and backends decide, and how long each phase takes."""
    if args.state is not None:
        set_debug(args.state == "on")
    print(f"llm_magic debug logging is {'on' if _HANDLER in _LOGGER.handlers else 'off'}.")


# -- budget -------------------------------------------------------------------


def _limit(item: str) -> tuple[str, str]:
    device, sep, value = item.partition("=")
    if not sep or not device.isidentifier() or not value:
        raise UsageError(f"Write each limit as DEVICE=SIZE (cpu=8GB, cuda0=0.5), not {item!r}.")
    return device, text(value)


@magic_arguments("llm budget")
@argument("limits", nargs="*", type=text, metavar="DEVICE=SIZE",
          help="limits to set, like cpu=8GB cuda0=20GB or a fraction cuda0=0.5; none shows it")
def _budget(magics: Host, args: Namespace) -> None:
    """Show the memory budget per device, or set limits (cpu=8GB cuda0=0.5)."""
    from ..manager import budget

    limits: dict[str, Any] = dict(_limit(item) for item in args.limits)
    with usage_errors():
        display(budget(**limits))


# -- attention ----------------------------------------------------------------


@magic_arguments("llm attention")
def _attention(magics: Host, args: Namespace) -> None:
    """Show the attention of the latest `%%llm --attention` cell (heatmaps, every head)."""
    from ..analysis.attention import last_attention

    amap = last_attention()
    if amap is None:
        raise UsageError(
            "No generation has captured attention yet: run a cell with `%%llm --attention`, "
            "or call lm.attention(text, model=...) for a plain forward pass."
        )
    display(amap)


# -- attribute ----------------------------------------------------------------


@magic_arguments("llm attribute")
@argument("--method", type=text, default="input_x_gradient", metavar="M",
          help="saliency, input_x_gradient (the default), integrated_gradients or occlusion")
@argument("--position", type=int, metavar="N",
          help="only output token N (0 is the first, -1 the last); default: every output token")
def _attribute(magics: Host, args: Namespace) -> None:
    """Show which input tokens drove the output of the latest `%%llm --attribute` cell."""
    from ..analysis.attribution import attribute
    from ..generation import Generation

    gen = getattr(magics, "attributed", None) or magics.shell.user_ns.get("_llm")
    if not isinstance(gen, Generation):
        raise UsageError("Nothing to attribute: run a cell with `%%llm --attribute` first, or "
                         "call lm.attribute(text, model=...).")
    with usage_errors():
        result = attribute(gen, method=args.method, positions=args.position)
    magics.shell.user_ns["_llm_attribution"] = result
    display(result)


# -- monitor, panel (the widgets) ---------------------------------------------


@magic_arguments("llm monitor")
@argument("--cell", nargs="?", const="on", choices=("on", "off"),
          help="instead of the gauges, show each cell's duration, peak GPU memory and RSS "
               "change after it runs (--cell off stops)")
def _monitor(magics: Host, args: Namespace) -> None:
    """Show live GPU, CPU and memory gauges (--cell: figures after each cell)."""
    if args.cell is not None:
        from ..widgets.cells import watch_cells

        watch_cells(magics.shell, on=args.cell == "on")
        state = "on" if args.cell == "on" else "off"
        print(f"Per-cell figures are {state}.")
        return
    from ..widgets.monitor import monitor

    with usage_errors():
        display(monitor())


@magic_arguments("llm panel")
def _panel(magics: Host, args: Namespace) -> None:
    """Show the model manager (load, unload, pin) and the playground."""
    from ..widgets.panel import panel

    with usage_errors():
        display(panel())


# -- the table --------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("load", _load, "SOURCE [--as NAME] [--model ID] [options]"),
        Command("unload", _unload, "NAME | --all"),
        Command("list", _list),
        Command("use", _use, "NAME"),
        Command("budget", _budget, "[DEVICE=SIZE ...]"),
        Command("history", _history,
                "[-n N] [--search TEXT] [--model NAME] [--conversation ID|NAME]"),
        Command("rerun", _rerun, "ID"),
        Command("conversations", _conversations),
        Command("forget", _forget, "NAME | --all"),
        Command("attention", _attention),
        Command("attribute", _attribute, "[--method M] [--position N]"),
        Command("monitor", _monitor, "[--cell [on|off]]"),
        Command("panel", _panel),
        Command("debug", _debug, "[on|off]"),
        Command("help", _help),
    )
}


def find(name: str) -> Command:
    """The subcommand called ``name``; a ``UsageError`` that lists them if there is none."""
    command = COMMANDS.get(name)
    if command is not None and command.available():
        return command
    if command is not None:
        raise UsageError(f"`%llm {name}` is not available yet in this version.")
    known = ", ".join(c.name for c in COMMANDS.values() if c.available())
    raise UsageError(
        f"Unknown subcommand {name!r}; use one of: {known}. A prompt goes in a cell that "
        "starts with `%%llm`."
    )


def help_lines(width: int = 79) -> list[str]:
    """Each magic and available subcommand: its usage, then what it does, indented.

    Lines stay within ``width`` columns, broken between words, so a narrow output area
    never wraps a word in two.
    """
    commands = [c for c in COMMANDS.values() if c.available()]
    rows = [("%%llm [MODEL] [options]", "Generate from the cell's text (`%%llm?` for options).")]
    rows += [(c.usage, c.summary) for c in commands]
    lines = []
    for usage, summary in rows:
        lines.append(usage)
        lines += textwrap.wrap(summary, width, initial_indent="    ", subsequent_indent="    ",
                               break_long_words=False, break_on_hyphens=False)
    return lines + ["Every option of every subcommand: `%llm?`."]
