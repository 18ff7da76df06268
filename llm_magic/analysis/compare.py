"""Side by side: several models, or one model with several settings, on one prompt.

:func:`compare` runs each column through the ordinary generation path (so
each is a :class:`~llm_magic.Generation` in the history), streaming into a
view of columns side by side. Then it cross-scores: each column's whole text
(prompt and output) is teacher-forced through the column's own model and
through every other model, one forward pass each, and each output token gets
a Δlog-probability: how much likelier the other model found it.

Models that share a tokenizer read the same token ids and line up one for
one. Models with different tokenizers are aligned on character spans: runs of
tokens merged until both tokenizations share a boundary, and the view says so.
Columns may have any lengths.

With one model and several settings there is no other model: a token's Δ is
its log-probability minus that of the model's greedy choice at that step.

A model on a server (``transformers serve``, vLLM, …) cannot teacher-force a
given text, and ``transformers serve`` sends no log-probabilities at all, so
served columns are generated without asking for any. A served column's text
is scored by each model of the comparison that runs in this kernel: its Δ is
that model's log-probability of each piece minus that of its likeliest token
at that step (where the served model's choices leave the local model's). A
column whose only reference is served is not shaded. Either way
:attr:`Comparison.column_notes` says which column could not be scored, and why.

The first position where the greedy choices diverge (the two models' likeliest
next tokens differ, or a sampled token is not the greedy one) is marked.

Encoder–decoder models (two translation models, or one with several settings)
are cross-scored the same way, each column's output teacher-forced as the
output for the source, after each decoder's own start token (and its own id
of the language code a column forced with ``target_lang=``). A comparison
mixing them with causal or served models is refused before anything runs:
the one reads an output for a source, the others a continuation.

Examples
--------
>>> import llm_magic as lm
>>> lm.load("demo"); lm.load("demo", name="demo16", dtype="bfloat16")  # doctest: +SKIP
>>> c = lm.compare("The import statement", models=["demo", "demo16"],
...                max_new_tokens=20)                                  # doctest: +SKIP
>>> c[0].text, c.divergence(0)                                         # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.base import Backend
from ..common import views as _views
from ..common.text import check_text
from ..errors import InvalidOptionError, LLMMagicError
from ..generation import generate
from ..manager import ModelManager, get_manager
from ._align import Piece, boundaries, by_characters, by_tokens, compatible

if TYPE_CHECKING:
    from ..generation import Generation

__all__ = ["Comparison", "CrossScore", "Piece", "compare"]

#: Options a settings dict may hold (those of :func:`llm_magic.generate` that shape a sample).
SETTINGS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "system", "chat")
#: Alternatives kept per scored token (the view's tooltips show the likeliest).
_TOP = 3


@dataclass(frozen=True)
class CrossScore:
    """One column's output as its own model and a reference read it.

    Attributes
    ----------
    column : int
        The column (index into the :class:`Comparison`).
    model : str
        The column's model.
    reference : str
        The other model's name; "greedy" when every column has one model, and
        then ``other`` is the log-probability of the model's greedy choice.
    by : str
        "tokens" (one tokenizer: pieces are tokens) or "characters" (pieces are
        runs of tokens between boundaries both tokenizations share).
    pieces : tuple of Piece
        The output, piece by piece, with both log-probabilities.
    divergence : int or None
        Index into ``pieces`` of the first position where the greedy choices
        diverge; None when they never do.
    scored_by : str
        Who read the text: "both" (the column's model and the reference),
        "own" (the column's model alone, against its greedy choice: the
        reference is "greedy") or "reference" (the reference alone: the
        column's model is served and cannot score a text, so ``own`` is NaN
        and the pieces are the reference's tokens of the column's output).
    """

    column: int
    model: str
    reference: str
    by: str
    pieces: tuple[Piece, ...]
    divergence: int | None
    scored_by: str = "both"

    @property
    def deltas(self) -> list[float]:
        """Per piece, in nats: the reference model's log-probability minus the column model's.

        Scored by its own model alone (reference "greedy"): the piece's
        log-probability minus the greedy choice's (0 where the greedy choice
        was taken, negative where it was not). Scored by the reference alone:
        the reference's log-probability of the piece minus that of its own
        likeliest token there (0 where the reference would have chosen it).
        """
        if self.reference == "greedy" or self.scored_by == "own":
            return [p.own - p.other for p in self.pieces]
        if self.scored_by == "reference":
            return [p.other - p.other_top[2] for p in self.pieces]
        return [p.other - p.own for p in self.pieces]


class Comparison(list):  # type: ignore[type-arg]
    """The generations of :func:`compare`, in column order, with their cross-scores.

    A list of :class:`~llm_magic.Generation` (so ``_llm[0].text`` works after
    ``%%llm a b --compare``) that also holds ``labels`` (one per column),
    ``cross`` (the :class:`CrossScore` of every column against every reference),
    ``column_notes`` (per column: what could not be scored there and why, or
    "") and ``notes`` (every note, each naming its column).

    Examples
    --------
    >>> c = lm.compare("The import", models=["demo", "demo16"])  # doctest: +SKIP
    >>> c.against(0).deltas[:3]                                    # doctest: +SKIP
    """

    def __init__(self, generations: Sequence[Generation], labels: Sequence[str],
                 cross: Sequence[CrossScore] = (), notes: Sequence[str] = (),
                 prompt: str = "", column_notes: Sequence[str] = ()) -> None:
        super().__init__(generations)
        self.labels = tuple(labels)
        self.cross = tuple(cross)
        self.column_notes = tuple(column_notes) or ("",) * len(self)
        self.notes = tuple(notes) or tuple(
            f"{label}: {note}" for label, note in zip(self.labels, self.column_notes,
                                                      strict=False) if note)
        self.prompt = prompt
        #: The live view that showed this comparison as it streamed (None if none did).
        self.live: Any = None

    def against(self, column: int, reference: str | None = None) -> CrossScore | None:
        """The cross-score of ``column`` against ``reference`` (by default the first one)."""
        for score in self.cross:
            if score.column == column and reference in (None, score.reference):
                return score
        return None

    def divergence(self, column: int, reference: str | None = None) -> int | None:
        """The piece index where ``column``'s greedy choices first diverge (None: never)."""
        score = self.against(column, reference)
        return None if score is None else score.divergence

    @property
    def by_characters(self) -> bool:
        """Whether some column was aligned on characters (the tokenizers differ)."""
        return any(s.by == "characters" for s in self.cross)

    def widget(self) -> Any:
        """The side-by-side view (an anywidget)."""
        return _views.view_class("compare").of(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        if self.live is not None and not getattr(self.live, "_echoed", True):
            self.live._echoed = True  # it streamed above: show it once, not twice
            return {"text/plain": repr(self)}
        return self.widget()._repr_mimebundle_(include=include, exclude=exclude)

    def __repr__(self) -> str:
        parts = ", ".join(f"{label}: {g.stats.new_tokens} tokens"
                          for label, g in zip(self.labels, self, strict=False))
        return f"<Comparison of {len(self)} generations ({parts})>"


def compare(prompt: str, models: Sequence[str] | None = None,
            settings: Sequence[Mapping[str, Any]] | None = None, *, model: str | None = None,
            stream: bool | Callable[[int, str], Any] | None = True,
            manager: ModelManager | None = None, **options: Any) -> Comparison:
    """Generate ``prompt`` with several models, or one model with several settings; cross-score.

    Parameters
    ----------
    prompt : str
        The prompt of every column.
    models : list of str, optional
        Loaded names or sources (loaded now); every column uses ``options``.
    settings : list of dict, optional
        One column per dict of generation options (``temperature``, ``seed``,
        ``top_p``, ``top_k``, ``max_new_tokens``, ``stop``, ``system``,
        ``chat``), each over ``options``, all with ``model`` (or the one model
        in ``models``, or the default model).
    stream : bool or callable
        True: in a notebook, a live view of the columns streams as they are
        generated (elsewhere the text is printed); a callable gets
        ``(column, piece)``; False or None: nothing until the end.
    **options
        Generation options shared by every column (see :func:`llm_magic.generate`).

    Returns
    -------
    Comparison
        Every column is generated even where it cannot be scored: a served
        model (no log-probabilities) is read by the comparison's models in this
        kernel, and ``column_notes`` says which column was not scored and why.

    Examples
    --------
    >>> c = lm.compare("The import statement", settings=[{"temperature": 0},
    ...                {"temperature": 1.0, "seed": 1}], model="demo")  # doctest: +SKIP
    >>> c.divergence(1)                                                  # doctest: +SKIP
    """
    manager = manager or get_manager()
    check_text(prompt, "The prompt")
    columns = _columns(manager, models, settings, model, options)
    _one_kind(manager, [name for name, _ in columns])
    labels = _labels(columns, settings is not None)
    live = _live(labels, prompt) if stream is True else None
    generations = []
    try:
        for i, (name, kwargs) in enumerate(columns):
            if live is not None:
                live.start(i)
            sink = _sink(i, stream, live, labels)
            gen = generate(prompt, model=name, manager=manager, stream=sink, **kwargs)
            generations.append(gen)
            if live is not None:
                live.finish(i, gen)
    except BaseException as exc:
        if live is not None:
            live.failed(str(exc) or type(exc).__name__)
        raise
    cross, notes = _cross_scores(manager, generations, single=len({n for n, _ in columns}) == 1)
    result = Comparison(generations, labels, cross, prompt=prompt, column_notes=notes)
    if live is not None:
        live.show(result)
        result.live = live
    return result


# -- the columns ------------------------------------------------------------------


def _columns(manager: ModelManager, models: Sequence[str] | None,
             settings: Sequence[Mapping[str, Any]] | None, model: str | None,
             options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(models, str):
        models = [models]
    if settings is None:
        if model is not None:
            models = [model, *(models or [])]
        if not models or len(models) < 2:
            raise InvalidOptionError("compare needs two models or more (models=['a', 'b']), or "
                                     "one model with several settings (settings=[{...}, {...}]).")
        names = [_loaded(manager, m) for m in models]
        return [(n, _with_records(manager, n, options)) for n in names]
    if models and len(models) > 1:
        raise InvalidOptionError("Compare several models or several settings, not both: give "
                                 "one model with settings=[...].")
    if isinstance(settings, Mapping) or len(settings) < 2:
        raise InvalidOptionError("settings is a list of two dicts or more, one per column: "
                                 "[{'temperature': 0}, {'temperature': 1.0, 'seed': 1}].")
    chosen = models[0] if models else model
    name = manager.resolve(None) if chosen is None else _loaded(manager, chosen)
    columns = []
    for each in settings:
        if not isinstance(each, Mapping):
            raise InvalidOptionError(f"Each setting is a dict of options, not {each!r}.")
        unknown = sorted(set(each) - set(SETTINGS))
        if unknown:
            raise InvalidOptionError(f"{unknown[0]!r} is not a generation setting; use one of "
                                     f"{', '.join(SETTINGS)}.")
        columns.append((name, {**_with_records(manager, name, options), **each}))
    return columns


def _one_kind(manager: ModelManager, names: Sequence[str]) -> None:
    """Refuse encoder–decoders beside causal or served models, before anything runs."""
    names = list(dict.fromkeys(names))
    seq2seq = [n for n in names if manager.info(n).kind == "seq2seq"]
    if not seq2seq or len(seq2seq) == len(names):
        return
    others = [n for n in names if n not in seq2seq]
    served = [n for n in others if not _scores(manager.backend(n))]
    what = (f"{_served(served)} (a causal chat model)" if served
            else f"{' and '.join(repr(n) for n in others)} {'is a' if len(others) == 1 else 'are'}"
            f" causal LM{'' if len(others) == 1 else 's'}")
    raise InvalidOptionError(
        f"compare cannot cross-score encoder–decoder models ({', '.join(map(repr, seq2seq))}) "
        f"against other kinds: {what}, which read a continuation, not an output for a source. "
        "Compare each kind on its own.")


def _with_records(manager: ModelManager, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options of a column, asking for token records where the model can score here.

    The token ids of each column are what cross-scoring reads: one record per
    token. A served model cannot score (and ``transformers serve`` sends no
    log-probabilities at all), so it is asked for none unless the user did.
    """
    if options.get("logprobs") or not _scores(manager.backend(name)):
        return dict(options)
    return {**options, "logprobs": 1}


def _loaded(manager: ModelManager, name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"A model is a loaded name or a source, not {name!r}.")
    return name if manager.is_loaded(name) else manager.load(name).name


def _labels(columns: list[tuple[str, dict[str, Any]]], by_settings: bool) -> list[str]:
    if not by_settings:
        return [name for name, _ in columns]
    shared = {k: v for k, v in columns[0][1].items()
              if all(k in kw and kw[k] == v for _, kw in columns)}
    return [", ".join(f"{k}={v!r}" for k, v in kw.items() if k not in shared) or "defaults"
            for _, kw in columns]


def _live(labels: list[str], prompt: str) -> Any:
    """A live view shown now, when a notebook front end is there to see it."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None  # type: ignore[attr-defined]
    if ip is None or type(ip).__name__ != "ZMQInteractiveShell":
        return None
    return _views.view_class("compare").live(labels, prompt)


def _sink(column: int, stream: Any, live: Any, labels: list[str]) -> Callable[[str], Any] | None:
    if live is not None:
        return lambda piece: live.write(column, piece)
    if stream is True:
        print(f"── {labels[column]} ──", flush=True)
        return lambda piece: print(piece, end="", flush=True)
    if callable(stream):
        return lambda piece: stream(column, piece)
    if stream is None or stream is False:
        return None
    raise InvalidOptionError("stream must be True, False or a callable taking (column, piece).")


# -- cross-scoring ------------------------------------------------------------------


def _cross_scores(manager: ModelManager, generations: Sequence[Generation], *,
                  single: bool) -> tuple[list[CrossScore], list[str]]:
    """Every cross-score that can be computed here, and per column a note of what could not."""
    cross: list[CrossScore] = []
    notes: list[str] = []
    names = list(dict.fromkeys(g.model for g in generations))
    local = [n for n in names if _scores(manager.backend(n))]
    for i, gen in enumerate(generations):
        try:
            if gen.model in local:
                scores, note = _scored_column(manager, i, gen, names, local, single)
            else:
                scores, note = _served_column(manager, i, gen, generations, local, single)
        except LLMMagicError as exc:
            scores, note = [], f"Not cross-scored: {exc}"
        cross += scores
        notes.append(note)
    return cross, notes


def _scores(backend: Backend) -> bool:
    """Whether the backend can teacher-force a given text (it runs in this kernel)."""
    return type(backend).score is not Backend.score and (
        getattr(backend, "tokenizer", None) is not None)


def _served(names: Sequence[str]) -> str:
    who = " and ".join(repr(n) for n in names)
    verb = "runs" if len(names) == 1 else "run"
    return f"{who} {verb} on a server, and llm_magic cannot ask a server to score a given text"


def _scored_column(manager: ModelManager, column: int, gen: Generation, names: list[str],
                   local: list[str], single: bool) -> tuple[list[CrossScore], str]:
    """A column of a model in this kernel: against every other model that can score too."""
    read = _read(manager, gen)
    if read is None:
        return [], "Not cross-scored: it has no token ids to score."
    own = _score(manager, gen.model, read)
    if single:
        return [_against_greedy(column, gen, own, read.n)], ""
    others = [o for o in names if o != gen.model]
    scores = [_against(manager, column, gen, read, own, o) for o in others if o in local]
    served = [o for o in others if o not in local]
    if not served:
        return scores, ""
    if scores:
        return scores, f"Not scored against {_served(served)}."
    return scores, f"Not shaded: its only reference, {_served(served)}."


def _served_column(manager: ModelManager, column: int, gen: Generation,
                   generations: Sequence[Generation], local: list[str],
                   single: bool) -> tuple[list[CrossScore], str]:
    """A served column: its text read by each model of the comparison that runs here."""
    if single or not local:
        return [], (f"Not shaded: {_served([gen.model])}, and no model of this comparison "
                    "runs in this kernel to read its text.")
    scores = [_read_by(manager, column, gen, reader, generations) for reader in local]
    return scores, (f"Scored by {' and '.join(repr(r) for r in local)} alone: "
                    f"{_served([gen.model])}, so its own log-probabilities are unknown.")


def _read_by(manager: ModelManager, column: int, gen: Generation, reader: str,
             generations: Sequence[Generation]) -> CrossScore:
    """``gen``'s output teacher-forced through ``reader`` after the prompt as ``reader`` read it.

    Each piece is one of ``reader``'s tokens of the output; its Δ is ``reader``'s
    log-probability of it minus that of ``reader``'s likeliest token there.
    """
    backend = manager.backend(reader)
    context = next((list(g.prompt_ids) for g in generations
                    if g.model == reader and g.prompt_ids), None) or _encode(backend, gen.prompt)
    output = _tokenizer(backend)(gen.text, add_special_tokens=False, verbose=False)["input_ids"]
    ids = [*context, *(int(i) for i in output)]
    n = len(context)
    scored = _score(manager, reader, _Read(ids, n))
    unknown = (None, "", math.nan)
    pieces = [Piece(scored.texts[k], k, k + 1, math.nan, r.logprob, unknown, r.top[0])
              for k, r in enumerate(scored.records[n - 1:], start=n) if n >= 1]
    # The reader cuts the text its own way ("\n\n" where it would generate "\n", "\n"): the
    # choices differ where its likeliest token is not how the text goes on, not where ids do.
    rest = [""] * (len(pieces) + 1)
    for j in range(len(pieces) - 1, -1, -1):
        rest[j] = pieces[j].text + rest[j + 1]
    first = next((j for j, p in enumerate(pieces) if ids[p.start] != p.other_top[0]
                  and not compatible(rest[j], p.other_top[1])), None)
    return CrossScore(column, gen.model, reader, "tokens", tuple(pieces), first, "reference")


@dataclass(frozen=True)
class _Read:
    """How a model reads a column's text: ``ids`` after nothing (a causal model: the prompt's
    and the output's) or, for an encoder–decoder, the output's ids for ``source``, after the
    language code ``lang`` (``target_lang=``) where the column forced one: each model reads
    its own id of that code. ``n``: where the output starts in the scored sequence (after
    the decoder's start token: 1; after the start token and the code: 2)."""

    ids: list[int]
    n: int
    source: str | tuple[int, ...] | None = None
    lang: str | None = None


def _read(manager: ModelManager, gen: Generation) -> _Read | None:
    if gen.prompt_ids is None or gen.tokens is None or any(r.id is None for r in gen.tokens):
        return None
    output = [int(r.id) for r in gen.tokens if r.id is not None]
    if manager.info(gen.model).kind != "seq2seq":
        return _Read([*gen.prompt_ids, *output], len(gen.prompt_ids))
    lang = gen.params.get("target_lang")
    return _Read(output, 1 if lang is None else 2, tuple(gen.prompt_ids), lang)


def _score(manager: ModelManager, name: str, read: _Read) -> Any:
    with manager.checkout(name) as backend:
        if read.source is not None:  # an encoder–decoder's output, for its source
            ids = read.ids if read.lang is None else [backend.language_id(read.lang), *read.ids]
            return backend.score_target(read.source, ids, logprobs=_TOP)
        return backend.score(read.ids, logprobs=_TOP, max_tokens=len(read.ids) + 1)


def _against_greedy(column: int, gen: Generation, own: Any, n: int) -> CrossScore:
    """One model: each token against the model's likeliest token at that step."""
    pieces = [Piece(own.texts[k], k, k + 1, r.logprob, r.top[0][2], r.top[0], r.top[0])
              for k, r in enumerate(own.records[n - 1:], start=n) if n >= 1]
    first = next((j for j, p in enumerate(pieces)
                  if pieces and own.ids[p.start] != p.own_top[0]), None)
    return CrossScore(column, gen.model, "greedy", "tokens", tuple(pieces), first, "own")


def _against(manager: ModelManager, column: int, gen: Generation, read: _Read, own: Any,
             other: str) -> CrossScore:
    n = read.n
    mine, theirs = manager.backend(gen.model), manager.backend(other)
    if _same_tokenizer(mine, theirs):
        pieces = [p for p in by_tokens(own.texts, own.records, _score(manager, other, read).records)
                  if p.start >= n]
        first = next((j for j, p in enumerate(pieces) if p.own_top[0] != p.other_top[0]), None)
        return CrossScore(column, gen.model, other, "tokens", tuple(pieces), first)
    decode_mine, decode_theirs = _decoder(mine), _decoder(theirs)
    text, own_ends = boundaries(list(own.ids), decode_mine)
    if read.source is None:
        scored = _score(manager, other, _Read(_encode(theirs, text), 0))
    else:  # the output as the other model writes it, for the source as it reads it
        scored = _score(manager, other, _Read(_encode(theirs, text, target=True), n, gen.prompt,
                                              read.lang))
    their_text, their_ends = boundaries(list(scored.ids), decode_theirs)
    agreed = _common_prefix(text, their_text)
    their_ends = [e if e <= agreed else -1 for e in their_ends]
    start = max([e for e in own_ends[:n] if e != -1], default=0)
    pieces = []
    for p in by_characters(text, own_ends, own.records, their_ends, scored.records):
        if p.end > n:
            cut = p.offset + len(p.text)
            pieces.append(p if p.offset >= start else Piece(
                text[start:cut], p.start, p.end, p.own, p.other, p.own_top, p.other_top, start))
    first = next((j for j, p in enumerate(pieces)
                  if not compatible(p.own_top[1], p.other_top[1])), None)
    return CrossScore(column, gen.model, other, "characters", tuple(pieces), first)


def _tokenizer(backend: Backend) -> Any:
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise InvalidOptionError(f"The {backend.kind!r} backend has no tokenizer to align with.")
    return tokenizer


def _same_tokenizer(a: Backend, b: Backend) -> bool:
    ta, tb = _tokenizer(a), _tokenizer(b)
    return ta is tb or (len(ta) == len(tb) and ta.get_vocab() == tb.get_vocab())


def _decoder(backend: Backend) -> Callable[[Sequence[int]], str]:
    tokenizer = _tokenizer(backend)
    return lambda ids: str(tokenizer.decode(list(ids), skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False))


def _encode(backend: Backend, text: str, *, target: bool = False) -> list[int]:
    """``text`` as the backend's tokenizer reads it (as an encoder–decoder's output: ``target``)."""
    tokenizer = _tokenizer(backend)
    ids = (tokenizer(text_target=text, verbose=False) if target else
           tokenizer(text, add_special_tokens=True, verbose=False))["input_ids"]
    return [int(i) for i in ids]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
