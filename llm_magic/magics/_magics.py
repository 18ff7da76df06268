"""The :class:`LLMMagics` class: ``%%llm`` generates, ``%llm`` runs subcommands.

Each magic parses its options, calls the Python API and renders the result;
settings are traitlets, so ``%config LLMMagics.x = ...`` and
``ipython_config.py`` work.
"""

from __future__ import annotations

import dataclasses
import threading
from argparse import Namespace
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from IPython.core import magic_arguments as ma
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Bool, CaselessStrEnum, Float, Integer, Unicode, observe, validate

from .. import load
from ..backends.base import DEFAULT_MAX_NEW_TOKENS, check_logprobs
from ..common.text import check_text
from ..errors import InvalidOptionError
from ..history import configure as configure_history
from . import _commands
from ._output import FORMATS, CellOutput, in_notebook, open_output
from ._prompt import check_variable, interpolate, split_batch, stop_text, text

if TYPE_CHECKING:
    from ..analysis.tokens import Scores
    from ..generation import Generation

# The rest of the API (generation, the manager, the analyses) is imported by the methods
# that use it, so that `%load_ext llm_magic` registers the magics without it.

__all__ = ["CellJob", "LLMMagics"]

_CELL_HELP = """\
Generate text with a language model; the cell's body is the prompt.

MODEL is a loaded model's name, or a source to load on first use ('demo', a
model directory, a hub id). Without MODEL, a cell uses LLMMagics.default_model
once it is set (%config, ipython_config.py), else the model chosen with
`%llm use` or loaded last, else it loads 'demo'.

Text streams into the cell as it is generated, then renders by --format. The
result is kept in `_llm` (and in VAR with --out): a Generation with .text,
.stats, .prompt and .model; a list of them with --batch. An interrupt stops
the generation within a fraction of a second, keeps the partial text in
`_llm`, and fails the cell so that "Run all" stops.

Interpolation: {name} in the body becomes the value of the variable `name`
when it exists. Nothing is evaluated, and only whole fields of existing names
change: {x.y}, {0}, {x!r}, {'a': 1}, unknown names, and any field touching
another brace ({{name}}, {{ }}) stay exactly as written. --no-interpolate
keeps the whole body literal. (The options line gets IPython's usual $name
expansion.) Leading and trailing blank lines of the body are dropped.

Defaults of the options are LLMMagics traits: see `%config LLMMagics`.
"""

_CELL_EXAMPLES = """\
Examples (each is a cell):

%%llm -n 40
The import statement

%%llm tiny --temperature 0.8 --top-p 0.9 --seed 1 --out story
Once upon a time in {place}

%%llm --batch -n 20
A list comprehension
---
A dict comprehension

%%llm demo demo16 --compare -n 30
The import statement
"""

_LINE_HELP = """\
Manage models and settings: `%llm SUBCOMMAND [options]`.

Subcommands (one line each; all their options follow):
"""


@dataclass(frozen=True)
class CellJob:
    """A validated ``%%llm`` cell, ready to run.

    Attributes
    ----------
    prompts : list of str
        One prompt, or several with ``--batch``.
    options : dict
        Keyword arguments of :func:`llm_magic.generate` (sampling and chat).
    batch, stream, attention : bool
        How to generate.
    fmt : str
        How the final output renders: "text", "markdown" or "code".
    out : str or None
        A variable that receives the result, besides ``_llm``.
    """

    prompts: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    batch: bool = False
    stream: bool = True
    attention: bool = False
    fmt: str = "text"
    out: str | None = None
    #: Score the body instead of generating (``--score``): K alternatives per token.
    score: int | None = None
    #: Show the logit lens of the final sequence below the result (``--lens``).
    lens: bool = False
    #: A conversation's turn: its name ("" for the current one, ``-c``), and ``--trim``.
    conversation: str | None = None
    trim: bool = False
    #: The cell named its model (a conversation on another model is then refused).
    named_model: bool = False
    #: ``--resume ID``: start the conversation from that turn's history row.
    resume: int | None = None
    #: ``--attribute``: keep the generation for ``%llm attribute`` (made with logprobs).
    attribute: bool = False

    def run(self, model: str, output: CellOutput, stop_event: threading.Event | None = None
            ) -> Generation | list[Generation] | Scores:
        """Generate with ``model``, streaming into ``output`` unless told not to.

        Setting ``stop_event`` stops the generation and keeps its text so far (a panel's Stop).
        """
        from ..generation import generate, generate_batch

        if self.score is not None:
            from ..analysis.tokens import score

            return score(self.prompts[0], model=model, logprobs=self.score)
        if self.conversation is not None:
            return self._turn(model, output, stop_event)
        if self.batch:
            return generate_batch(self.prompts, model=model, attention=self.attention,
                                  stop_event=stop_event, **self.options)
        return generate(self.prompts[0], model=model, attention=self.attention,
                        stream=output if self.stream else None, stop_event=stop_event,
                        **self.options)


    def _turn(self, model: str, output: CellOutput, stop_event: threading.Event | None
              ) -> Generation:
        """The next turn of the named (or current) conversation, started here if new."""
        from ..generation.conversation import chat, find

        options = dict(self.options)
        system = options.pop("system", None)
        conv = find(self.conversation or None)
        if self.resume is not None:
            if conv is not None:
                raise InvalidOptionError(
                    f"Conversation {conv.name!r} exists in this kernel: drop --resume to continue "
                    f"it, or forget it first (`%llm forget {conv.name}`).")
            from ..history.conversations import resume

            conv = resume(self.resume, name=self.conversation,
                          trim="oldest" if self.trim else None)
        elif conv is None:
            conv = chat(model=model, system=system, name=self.conversation or None,
                        trim="oldest" if self.trim else None)
        elif model != conv.model and self.named_model:
            raise InvalidOptionError(
                f"Conversation {conv.name!r} talks to {conv.model!r}, not {model!r}: start "
                f"another with `%%llm {model} --conversation NEW`.")
        elif self.trim:
            conv.trim = "oldest"
        return conv.say(self.prompts[0], stream=output if self.stream else None,
                        stop_event=stop_event, attention=self.attention, **options)


@magics_class
class LLMMagics(Magics):
    """The ``%%llm`` and ``%llm`` magics (``%load_ext llm_magic``).

    Examples
    --------
    >>> from IPython.core.interactiveshell import InteractiveShell
    >>> ip = InteractiveShell.instance()             # doctest: +SKIP
    >>> ip.run_line_magic("load_ext", "llm_magic")   # doctest: +SKIP
    >>> ip.run_cell_magic("llm", "-n 10", "The import statement")  # doctest: +SKIP
    """

    default_model = Unicode(
        "demo",
        help="Model of cells that name none: a loaded name or a source, loaded on first use. "
        "Until this is set, cells use the model of `%llm use` or the latest loaded, and load "
        "'demo' when none is loaded. Set it to '' to go back to that.",
    ).tag(config=True)
    max_new_tokens = Integer(
        DEFAULT_MAX_NEW_TOKENS, min=1,
        help="Most new tokens per cell (-n). At the default, a model with a short context "
        "generates what fits without a warning.",
    ).tag(config=True)
    temperature = Float(0.0, min=0.0, help="Sampling temperature (-t); 0 means greedy.").tag(
        config=True
    )
    stream = Bool(True, help="Show tokens as they are generated (--no-stream).").tag(config=True)
    format = CaselessStrEnum(
        FORMATS, default_value="text", help="How the final output renders (--format)."
    ).tag(config=True)
    interpolate = Bool(
        True, help="Replace {name} in the cell by the variable name (--no-interpolate)."
    ).tag(config=True)
    chat = Bool(
        None, allow_none=True,
        help="Use the model's chat template: None uses it when the model has one (--chat).",
    ).tag(config=True)
    system = Unicode("", help="System prompt, or a preamble for models without chat.").tag(
        config=True
    )
    throttle = Float(
        0.2, min=0.0,
        help="Seconds between updates of the streamed output in a notebook. Each update is "
             "a message through the kernel and a re-render in the browser, which take time "
             "from the model on a small machine; 0.2 s reads as live.",
    ).tag(config=True)

    history_enabled = Bool(
        True, help="Record every generation in the history database (`%llm history`).",
    ).tag(config=True)
    history_path = Unicode(
        "", help="The history database file. '' uses $LLM_MAGIC_HISTORY, else a file in the "
        "per-user data directory.",
    ).tag(config=True)
    warm_up = Bool(
        True, help="Import torch and transformers on a background thread at `%load_ext`, so "
        "that the first cell answers at once (only modules: no model is read, no GPU used). "
        "LLM_MAGIC_WARM_UP=0 in the environment turns it off too.",
    ).tag(config=True)

    _default_set = False
    #: The generation of the latest `%%llm --attribute` cell (`%llm attribute` reads it).
    attributed: Generation | None = None

    @observe("history_enabled", "history_path")
    def _history_settings(self, change: Any) -> None:
        with _commands.usage_errors():
            if change["name"] == "history_enabled":
                configure_history(enabled=change["new"])
            else:
                configure_history(path=change["new"])

    @validate("default_model")
    def _note_default(self, proposal: Any) -> str:
        self._default_set = bool(proposal["value"])
        return str(proposal["value"])

    @property
    def _shell(self) -> Any:
        if self.shell is None:
            raise RuntimeError("LLMMagics works inside an IPython shell.")
        return self.shell

    def follow_manager(self) -> None:
        """Let cells without MODEL use the manager's default (``%llm use``, latest load)."""
        self._default_set = False

    # -- %%llm ----------------------------------------------------------------

    @ma.magic_arguments("%llm")
    @ma.kwds(description=_CELL_HELP, epilog=_CELL_EXAMPLES)
    @ma.argument("model", nargs="*", type=text, metavar="MODEL",
                 help="a loaded model's name or a source to load (default: see above); "
                      "several with --compare")
    @ma.argument("-n", "--max-new-tokens", type=int, metavar="N", help="most new tokens")
    @ma.argument("-t", "--temperature", type=float, metavar="T",
                 help="sampling temperature; 0 is greedy (the default)")
    @ma.argument("--top-p", type=float, metavar="P", help="nucleus sampling: keep this mass")
    @ma.argument("--top-k", type=int, metavar="K", help="sample among the K likeliest tokens")
    @ma.argument("--seed", type=int, help="makes sampling reproducible")
    @ma.argument("--stop", action="append", type=stop_text, metavar="TEXT",
                 help=r"stop before this text (repeatable; \n and \t are understood)")
    @ma.argument("--system", type=text, metavar="TEXT",
                 help="system prompt (chat) or preamble (plain models)")
    @ma.argument("--chat", dest="chat", action="store_const", const=True,
                 help="use the chat template (the default when the model has one)")
    @ma.argument("--no-chat", dest="chat", action="store_const", const=False,
                 help="feed the text as it is, without the chat template")
    @ma.argument("-o", "--out", metavar="VAR", help="also store the result in this variable")
    @ma.argument("--no-stream", dest="stream", action="store_const", const=False,
                 help="show the output only when it is complete")
    @ma.argument("--format", type=str.lower, choices=FORMATS,
                 help="how the final output renders: text, markdown or code")
    @ma.argument("--no-interpolate", dest="interpolate", action="store_const", const=False,
                 help="keep {name} in the body literal")
    @ma.argument("--batch", action="store_true",
                 help="several prompts separated by lines of ---, generated as one batch")
    @ma.argument("--attention", action="store_true",
                 help="capture the attention of prompt and output, shown below the text "
                      "(and by `%%llm attention`)")
    @ma.argument("--logprobs", type=int, metavar="K",
                 help="record each token's probability and its K likeliest alternatives "
                      "(1 to 20), shown below the text as shading; click one to branch")
    @ma.argument("--logprobs-mode", choices=("raw", "sampled"), metavar="MODE",
                 help="raw: the model's own distribution (the default); sampled: the one "
                      "drawn from, after temperature, top-k and top-p")
    @ma.argument("--score", action="store_true",
                 help="do not generate: read the body as a given text and score every token "
                      "(teacher forcing); `_llm` is the Scores, with .perplexity")
    @ma.argument("--lens", action="store_true",
                 help="also show the logit lens of the final sequence (prompt and output, or "
                      "the --score text): what each layer would predict; kept in `_llm_lens`")
    @ma.argument("--attribute", action="store_true",
                 help="keep this generation for `%%llm attribute` (which input tokens drove "
                      "each output token); records its token ids (--logprobs 5 unless given), "
                      "so the token view's why? works too")
    @ma.argument("--target-lang", type=text, metavar="LANG",
                 help="a translation model's output language code (mBART 'fr_XX', NLLB "
                      "'fra_Latn')")
    @ma.argument("-c", "--continue", dest="resume_current", action="store_true",
                 help="continue the kernel's current conversation (start one if none): the "
                      "model's cache is kept, so only the new text is computed")
    @ma.argument("--conversation", type=text, metavar="NAME",
                 help="continue the conversation NAME, or start it (`%%llm conversations`)")
    @ma.argument("--trim", action="store_true",
                 help="in a conversation that outgrows the context, drop the oldest turns "
                      "(and say so) instead of refusing")
    @ma.argument("--resume", type=int, metavar="ID",
                 help="with --conversation NAME: start it from the history's turn ID (its "
                      "messages and reply, model and options), in this kernel or a new one")
    @ma.argument("--compare", action="store_true",
                 help="generate with every MODEL on the line, side by side, each token shaded "
                      "by how much likelier the other model found it; `_llm` is the list of "
                      "Generations (a Comparison)")
    @cell_magic("llm")  # type: ignore[arg-type]  # IPython types the named form loosely
    def llm_cell(self, line: str, cell: str) -> None:
        """Generate text from the cell's body (the usage is built by magic_arguments)."""
        args = _commands.parse(self.llm_cell.parser, line, "%%llm?")
        job = self.cell_job(args, cell)
        if args.compare:
            self._compare(job, [self._model(name) for name in args.model])
            return
        if len(args.model) > 1:
            raise UsageError(f"One model per cell (got {', '.join(args.model)}); add --compare "
                             "to run them side by side.")
        model = self._model(args.model[0] if args.model else None)
        output = open_output(self.shell, fmt=job.fmt, throttle=self.throttle)
        self._keep(job, self._generate(job, model, output), output)

    def cell_job(self, args: Namespace, cell: str) -> CellJob:
        """Check a cell's options and body into a :class:`CellJob`; nothing runs yet."""
        out = check_variable(args.out, self._shell.user_ns_hidden) if args.out else None
        body = cell.strip("\r\n")
        if not body.strip():
            raise UsageError("The cell is empty: write the prompt below the `%%llm` line.")
        prompts = split_batch(body) if args.batch else [body]
        if self.interpolate if args.interpolate is None else args.interpolate:
            prompts = [interpolate(p, self._shell.user_ns) for p in prompts]
        with _commands.usage_errors():  # before any model loads: one line, not a traceback
            for number, prompt in enumerate(prompts, 1):
                check_text(prompt, f"Prompt {number} of the batch" if args.batch else "The prompt")
        if args.compare:
            _check_compare(args)
        if args.lens and args.batch:
            raise UsageError("--lens looks at one sequence: drop --batch.")
        if args.attribute and (args.batch or args.score):
            raise UsageError("--attribute keeps one generation: drop --batch and --score.")
        conversation = _conversation_of(args)
        if args.score:
            job = self._score_job(args, prompts[0] if len(prompts) == 1 else None, out)
            return dataclasses.replace(job, lens=args.lens)
        options = {
            "max_new_tokens": self._length(args.max_new_tokens),
            "temperature": self.temperature if args.temperature is None else args.temperature,
            "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed, "stop": args.stop,
            "system": self.system if args.system is None else args.system,
            "chat": self.chat if args.chat is None else args.chat,
        }
        if args.target_lang is not None:
            options["target_lang"] = args.target_lang
        if args.logprobs is not None or args.logprobs_mode is not None or args.attribute:
            options["logprobs"] = 5 if args.logprobs is None else args.logprobs
            options["logprobs_mode"] = args.logprobs_mode or "raw"
        from ..generation import make_request

        with _commands.usage_errors():
            for prompt in prompts:
                make_request(prompt, **options)
        stream = self.stream if args.stream is None else args.stream
        return CellJob(prompts, options, batch=args.batch, stream=stream and not args.batch,
                       attention=args.attention, fmt=args.format or self.format.lower(), out=out,
                       lens=args.lens, conversation=conversation, trim=args.trim,
                       named_model=bool(args.model), resume=args.resume,
                       attribute=args.attribute)

    def _score_job(self, args: Namespace, text: str | None, out: str | None) -> CellJob:
        """A ``--score`` cell: the body is read, not continued; sampling options do not apply."""
        if text is None:
            raise UsageError("--score reads one text: drop --batch, or score each text in a "
                             "cell of its own.")
        given = [flag for flag, value in (("--attention", args.attention),
                                          ("--logprobs-mode", args.logprobs_mode),
                                          ("-t", args.temperature), ("--seed", args.seed),
                                          ("-n", args.max_new_tokens)) if value]
        if given:
            raise UsageError(f"--score reads the text without generating, so {given[0]} does "
                             "not apply; drop it.")
        k = 5 if args.logprobs is None else args.logprobs
        with _commands.usage_errors():
            check_logprobs(k)
        return CellJob([text], score=k, stream=False, out=out)

    def _compare(self, job: CellJob, models: list[str]) -> None:
        """``--compare``: the columns stream into one view; ``_llm`` is the Comparison."""
        from ..analysis.compare import compare

        with _commands.usage_errors():
            result = compare(job.prompts[0], models=models,
                             stream=True if job.stream else None, **job.options)
        self._shell.user_ns["_llm"] = result
        if job.out:
            self._shell.user_ns[job.out] = result
        if result.live is None:  # nothing streamed into a view: show the finished one
            display(result)

    def _length(self, given: int | None) -> int | None:
        if given is not None:
            return given
        # None lets the API fit its default length to a short context without a warning.
        return None if self.max_new_tokens == DEFAULT_MAX_NEW_TOKENS else self.max_new_tokens

    def _generate(self, job: CellJob, model: str,
                  output: CellOutput) -> Generation | list[Generation] | Scores:
        """Run ``job``; on an interrupt keep and show the partial result, then re-raise."""
        from ..manager import get_manager
        from ..widgets._common import stoppable

        manager = get_manager()
        before = manager.last_generation
        stop_event = threading.Event()  # the models panel's Stop on this model sets it
        try:
            with _commands.usage_errors(), stoppable(manager.events, stop_event):
                return job.run(model, output, stop_event)
        except KeyboardInterrupt:
            partial = manager.last_generation
            if partial is not None and partial is not before and partial.interrupted:
                self._keep(job, partial, output)
            raise

    def _model(self, name: str | None) -> str:
        """The model a cell means, loaded now if it is a source that is not loaded yet."""
        from ..manager import get_manager

        manager = get_manager()
        configured = self.default_model if self._default_set else None
        wanted = name or configured or manager.default or self.default_model or "demo"
        if manager.is_loaded(wanted):
            return wanted
        try:
            with _commands.usage_errors():
                return load(wanted).name
        except UsageError as exc:
            if name is None and configured:
                raise UsageError(f"{exc} (LLMMagics.default_model is {wanted!r}.)") from exc
            loaded = ", ".join(manager.names()) or "none"
            raise UsageError(f"{exc} (Loaded models: {loaded}.)") from exc

    def _keep(self, job: CellJob, result: Generation | list[Generation] | Scores,
              output: CellOutput) -> None:
        """Store the result in ``_llm`` (and ``--out``), then show it."""
        # Imported by the cell's run already; the analyses are not, unless the cell used one.
        from ..generation import Generation

        self._shell.user_ns["_llm"] = result
        if job.out:
            self._shell.user_ns[job.out] = result
        if job.attribute and isinstance(result, Generation):
            self.attributed = result  # what `%llm attribute` reads
        if isinstance(result, (Generation, list)):
            output.finish(result)
            if in_notebook(self._shell):  # a terminal has shown the text already
                for gen in result if isinstance(result, list) else [result]:
                    if gen.tokens is not None:
                        display(gen)  # the token probability view
            attention = getattr(result, "attention", None)
            if attention is not None:
                display(attention)
        else:  # a --score cell's Scores
            display(result)
        if job.lens and not getattr(result, "interrupted", False):
            self._lens(result)

    def _lens(self, result: Generation | list[Generation] | Scores) -> None:
        """``--lens``: the logit lens of what the cell produced, shown and kept in ``_llm_lens``."""
        from ..analysis.lens import logit_lens
        from ..analysis.tokens import Scores

        with _commands.usage_errors():
            if isinstance(result, Scores):
                lens = logit_lens(result.text, model=result.model)
            else:
                assert not isinstance(result, list)
                lens = logit_lens(result)
        self._shell.user_ns["_llm_lens"] = lens
        display(lens)

    # -- %llm -------------------------------------------------------------------

    @line_magic("llm")  # type: ignore[arg-type]
    def llm_line(self, line: str) -> None:
        """Run a subcommand: `%llm help` lists them, `%llm?` shows every option."""
        name, *rest = line.split(None, 1) or ["help"]
        command = _commands.find(name)
        args = _commands.parse(command.parser, "".join(rest), "%llm?")
        command.run(self, args)


def _conversation_of(args: Namespace) -> str | None:
    """The conversation a cell continues: a name, "" for the current one, None for none."""
    if args.resume is not None and (args.conversation is None or args.model):
        raise UsageError("--resume ID starts a conversation from history under a name, on the "
                         "row's model: add --conversation NAME (and drop MODEL).")
    if args.resume_current and args.conversation is not None:
        raise UsageError("-c continues the current conversation and --conversation NAME a named "
                         "one: give one of them.")
    if not args.resume_current and args.conversation is None:
        if args.trim:
            raise UsageError("--trim applies to a conversation: add -c or --conversation NAME.")
        return None
    flag = "-c" if args.resume_current else "--conversation"
    for other, given in (("--batch", args.batch), ("--compare", args.compare),
                         ("--score", args.score)):
        if given:
            raise UsageError(f"{flag} continues one conversation turn by turn, so {other} does "
                             "not apply; drop one of them.")
    if args.conversation is not None:
        from ..generation.conversation import _check_name

        with _commands.usage_errors():
            _check_name(args.conversation)
    return args.conversation or ""


def _check_compare(args: Namespace) -> None:
    """``--compare`` needs two models or more, and one prompt it generates from."""
    if len(args.model) < 2:
        raise UsageError("--compare needs two models or more on the line: `%%llm a b --compare`.")
    for flag, given in (("--batch", args.batch), ("--score", args.score),
                        ("--attention", args.attention), ("--logprobs", args.logprobs),
                        ("--logprobs-mode", args.logprobs_mode), ("--lens", args.lens),
                        ("--attribute", args.attribute)):
        if given not in (None, False):
            raise UsageError(f"--compare does not combine with {flag}; drop it.")


def _line_doc() -> str:
    """The full usage of ``%llm``: what ``%llm?`` shows (only available subcommands)."""
    commands = [c for c in _commands.COMMANDS.values() if c.available()]
    return "\n".join([_LINE_HELP, *_commands.help_lines(), "",
                      *(c.parser.format_help() for c in commands)])


# IPython's `?` asks an object for getdoc() first: the usage follows what is available.
LLMMagics.llm_line.getdoc = _line_doc  # type: ignore[attr-defined, assignment]
