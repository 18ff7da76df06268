"""The logit lens: what the model would predict if each layer were its last.

:func:`logit_lens` runs one forward pass over a text or a generation's final
sequence. Each row is one layer: the embeddings, then the output of every
block (each read where the next block takes it in), through the model's own
final norm and output embedding; the last row is the model's real output
distribution. The backend checks on every call that each block ran once, in
order, and that the lens reproduces the model's logits, and refuses a model
where it does not, so the grid is exact or not drawn at all.

A :class:`LensMap` keeps only what the view shows: the top-k of every row and
position, and four numbers per cell (the final prediction's probability and
rank, the entropy, the KL divergence from the final distribution).

Examples
--------
>>> import llm_magic as lm
>>> lens = lm.logit_lens("The import statement binds a", model="demo")  # doctest: +SKIP
>>> lens.layers  # doctest: +SKIP
('embeddings', 'block 1', 'block 2', 'block 3', 'block 4')
>>> lens.top(-1, 3)[0]  # the model's prediction after token 3  # doctest: +SKIP

An encoder–decoder's lens is its decoder's, over an output for a source:
``lm.logit_lens(source, target=output, model="t5")``, or a generation of it.
The rows are the decoder's embeddings and blocks, the positions the output
after the decoder's start token; the source is read once by the encoder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import views as _views
from ..common.text import check_text, shown
from ..errors import InvalidOptionError, NotAvailableError
from ..manager import ModelManager, get_manager
from . import _lens_pictures
from ._resolve import resolve

if TYPE_CHECKING:
    import numpy as np

    from ..backends.base import LensCapture

__all__ = ["LENS_MAX_TOKENS", "METRICS", "LensMap", "logit_lens"]

#: What the view can shade the cells by (see :meth:`LensMap.shade`).
METRICS = ("probability", "rank", "entropy", "kl")
#: Longest sequence :func:`logit_lens` reads unless a call asks for more.
LENS_MAX_TOKENS = 2048
#: The most alternatives a cell keeps.
MAX_TOP = 20


@dataclass(frozen=True, repr=False, eq=False)
class LensMap:
    """The logit lens of one sequence: rows = layers, columns = positions.

    Row 0 is the embeddings, row i the output of block i (counting from 1), and
    the last row (block N) the model's real output distribution. The cell at
    position t is what that layer predicts for token t + 1.

    Attributes
    ----------
    model : str
        The model's name.
    tokens : tuple of str
        The input tokens' texts.
    input_ids : tuple of int
        The input token ids.
    layers : tuple of str
        The row labels: ``"embeddings"``, ``"block 1"``, ... ``"block N"``.
    ids, probs : numpy.ndarray
        ``[row, position, k]``: the k likeliest tokens (int32) and their
        probabilities (float32), likeliest first.
    final_prob, final_rank, entropy, kl : numpy.ndarray
        ``[row, position]``: the probability and rank (1 = likeliest) of the
        model's final prediction (the last row's top token) at that layer, the
        entropy in nats, and KL(final || layer) in nats.
    vocab : dict of int to str
        The text of every token id in ``ids`` and ``input_ids``.
    vocab_size : int
        The size of the model's output vocabulary.
    prompt_tokens : int or None
        For a generation, how many of the tokens were the prompt (of an
        encoder–decoder's: 1, the decoder's start token; 2 with the language
        code ``target_lang=`` forced after it).
    check : float
        How far the lens of the last block was from the model's own logits.
    source : str or None
        An encoder–decoder's source (what its encoder read); None for a causal
        model. Then the rows are the decoder's and the tokens its output.

    Examples
    --------
    >>> lens = lm.logit_lens("def f(x):", model="demo")  # doctest: +SKIP
    >>> lens.ids.shape  # rows, positions, top  # doctest: +SKIP
    (5, 5, 5)
    >>> lens.final_rank[0]  # how far the embeddings are from the answer  # doctest: +SKIP
    """

    model: str
    tokens: tuple[str, ...]
    input_ids: tuple[int, ...]
    layers: tuple[str, ...]
    ids: np.ndarray
    probs: np.ndarray
    final_prob: np.ndarray
    final_rank: np.ndarray
    entropy: np.ndarray
    kl: np.ndarray
    vocab: dict[int, str]
    vocab_size: int
    prompt_tokens: int | None = None
    check: float = 0.0
    source: str | None = None

    @classmethod
    def from_capture(cls, capture: LensCapture, model: str,
                     prompt_tokens: int | None = None, source: str | None = None) -> LensMap:
        """Wrap a backend's capture (an encoder–decoder's decoder when ``source`` is given)."""
        rows = capture.top_ids.shape[0]
        of = "" if source is None else "decoder "
        layers = (f"{of}embeddings", *(f"{of}block {i}" for i in range(1, rows)))
        return cls(model=model, tokens=capture.texts, input_ids=capture.ids, layers=layers,
                   ids=capture.top_ids, probs=capture.top_probs, final_prob=capture.final_prob,
                   final_rank=capture.final_rank, entropy=capture.entropy, kl=capture.kl,
                   vocab=capture.vocab, vocab_size=capture.vocab_size,
                   prompt_tokens=prompt_tokens, check=capture.check, source=source)

    # -- shape and values -------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, positions, k)."""
        rows, t, k = self.ids.shape
        return (int(rows), int(t), int(k))

    @property
    def nbytes(self) -> int:
        """Bytes the arrays take in the kernel."""
        return sum(int(a.nbytes) for a in (self.ids, self.probs, self.final_prob,
                                            self.final_rank, self.entropy, self.kl))

    @property
    def predicted(self) -> tuple[int, ...]:
        """The model's final prediction at each position (the last row's top token)."""
        return tuple(int(i) for i in self.ids[-1, :, 0])

    @property
    def next_ids(self) -> tuple[int | None, ...]:
        """The actual next token at each position (None after the last one)."""
        return (*self.input_ids[1:], None)

    @property
    def correct(self) -> tuple[bool, ...]:
        """Where the final prediction is the actual next token."""
        return tuple(p == n for p, n in zip(self.predicted, self.next_ids, strict=True))

    def text(self, token_id: int) -> str:
        """The text of a token id that appears in this lens."""
        return self.vocab.get(int(token_id), f"<{int(token_id)}>")

    def _row(self, row: int) -> int:
        rows = self.shape[0]
        if isinstance(row, bool) or not isinstance(row, int) or not -rows <= row < rows:
            raise InvalidOptionError(
                f"row must be an integer from 0 to {rows - 1} (or negative from the end); "
                f"got {row!r}."
            )
        return row % rows

    def top(self, row: int, position: int) -> tuple[tuple[int, str, float], ...]:
        """The cell's top-k: (id, text, probability), likeliest first.

        Examples
        --------
        >>> lens.top(-1, 0)  # the model's own top-k after the first token  # doctest: +SKIP
        """
        row = self._row(row)
        t = self.shape[1]
        if isinstance(position, bool) or not isinstance(position, int) or not -t <= position < t:
            raise InvalidOptionError(f"position must be an integer from 0 to {t - 1}; "
                                     f"got {position!r}.")
        return tuple((int(i), self.text(int(i)), float(p))
                     for i, p in zip(self.ids[row, position], self.probs[row, position],
                                     strict=True))

    def shade(self, metric: str = "probability") -> np.ndarray:
        """Each cell's shade from 0 (light) to 1 (dark) for ``metric``, ``[row, position]``.

        The scale of :meth:`scale` (the one the view, the PNG and the snapshot
        draw and caption): probability from 0 to 1; rank on a log scale from 1
        to the blocks' 99th percentile; entropy and KL in nats from 0 to a 95th
        percentile, larger values clipped.
        """
        check_metric(metric)
        values = {"probability": self.final_prob, "rank": self.final_rank,
                  "entropy": self.entropy, "kl": self.kl}[metric]
        return self.scale(metric).shade(values)

    @property
    def row_names(self) -> list[str]:
        """The rows as the views label them: ``layers``, the last one named the output too."""
        return _lens_pictures.row_names(self)

    def scale(self, metric: str = "probability") -> _lens_pictures.Scale:
        """The colour scale of ``metric``: its ends, ticks and caption (unit, range, clipping).

        Examples
        --------
        >>> lens.scale("kl").caption  # doctest: +SKIP
        'KL to the final layer, nats: 0 = white, 1.3 or more = darkest (...)'
        """
        return _lens_pictures.scale(self, check_metric(metric))

    def rows_shown(self, stride: int = 1) -> list[int]:
        """The rows a view with this layer stride shows: every ``stride``-th, and the last."""
        rows = self.shape[0]
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise InvalidOptionError(f"stride must be a positive integer, not {stride!r}.")
        shown = list(range(0, rows, stride))
        return shown if shown[-1] == rows - 1 else [*shown, rows - 1]

    # -- pictures -----------------------------------------------------------------

    def to_png(self, path: str | os.PathLike[str] | None = None, *,
               metric: str = "probability", stride: int = 1) -> bytes:
        """A PNG of the grid shaded by ``metric``: the last layer on top, embeddings at the bottom.

        Examples
        --------
        >>> png = lens.to_png("lens.png", metric="rank")  # doctest: +SKIP
        """
        png = _lens_pictures.grid_png(self.shade(metric)[self.rows_shown(stride)])
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def to_html(self, *, metric: str = "probability", stride: int = 1) -> str:
        """An escaped HTML snapshot as the view first looks: legend, colour bar, labelled grid."""
        return _lens_pictures.snapshot_html(self, metric=metric, stride=stride)

    def widget(self, metric: str = "probability", stride: int | None = None) -> Any:
        """The interactive view (an anywidget); ``stride`` shows every n-th layer.

        Examples
        --------
        >>> lens.widget(metric="kl")  # doctest: +SKIP
        """
        check_metric(metric)
        if stride is not None:
            self.rows_shown(stride)
        return _views.view_class("lens")(self, metric=metric, stride=stride)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return self.widget()._repr_mimebundle_(include=include, exclude=exclude)  # type: ignore[no-any-return]

    def summary(self) -> str:
        """One line: model, rows, positions, top-k, how often the final prediction is right."""
        rows, t, k = self.shape
        right = sum(self.correct)
        of = "" if self.source is None else "'s decoder"
        return (f"LensMap of {self.model!r}{of}: {rows} rows (embeddings + {rows - 1} blocks) x "
                f"{t} positions, top {k}; final prediction right at {right} of "
                f"{max(t - 1, 0)} positions")

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


def check_metric(metric: str) -> str:
    """Refuse a metric the view does not know."""
    if metric not in METRICS:
        raise InvalidOptionError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}.")
    return metric


def default_stride(rows: int) -> int:
    """The layer stride that keeps a view to about 16 rows."""
    return max(1, math.ceil((rows - 1) / 16))


def _check_top(top: Any) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise InvalidOptionError(
            f"top is how many tokens each cell keeps: an integer from 1 to {MAX_TOP}, "
            f"not {shown(top)}."
        )
    return top


def _sequence(source: Any, name: str) -> tuple[str | Sequence[int], int | None]:
    """A text as it is; a generation's prompt and new token ids (its text when ids are missing)."""
    if isinstance(source, str):
        if not source.strip():
            raise InvalidOptionError("The text is empty: write some text to look at.")
        return source, None
    prompt, text = getattr(source, "prompt", None), getattr(source, "text", None)
    if not isinstance(prompt, str) or not isinstance(text, str):
        raise InvalidOptionError(
            f"logit_lens reads a text or a Generation, not {type(source).__name__}."
        )
    prompt_ids = getattr(source, "prompt_ids", None)
    records = getattr(source, "tokens", None) or ()
    new_ids = [getattr(r, "id", None) for r in records]
    if getattr(source, "model", None) == name and prompt_ids and None not in new_ids and (
        records or not text
    ):
        return (*prompt_ids, *new_ids), len(prompt_ids)
    return prompt + text, None


def _check_target(target: Any) -> str | tuple[int, ...] | None:
    """None, a non-empty text, or token ids (integers, not booleans)."""
    if target is None or isinstance(target, str):
        return target if target is None else check_text(
            target, "The target", hint="write the output to look at")
    if isinstance(target, Sequence) and target and all(
            isinstance(i, int) and not isinstance(i, bool) for i in target):
        return tuple(target)
    raise InvalidOptionError(f"target is an output: a text, or its token ids, not {shown(target)}.")


def _pair(source: Any, name: str, target: str | Sequence[int] | None
          ) -> tuple[str | Sequence[int], str | Sequence[int] | None, int | None, str | None]:
    """An encoder–decoder's source and output: a text and ``target``, or a generation's
    source ids and output ids (its prompt and text when ids are missing), the prefix's
    length, and the language code forced after the decoder's start token (None: none)."""
    if isinstance(source, str):
        return source, target, None, None
    lang = (getattr(source, "params", None) or {}).get("target_lang")
    prompt_ids = getattr(source, "prompt_ids", None)
    new_ids = [getattr(r, "id", None) for r in getattr(source, "tokens", None) or ()]
    if getattr(source, "model", None) == name and prompt_ids and new_ids and None not in new_ids:
        return (tuple(prompt_ids), tuple(int(i) for i in new_ids if i is not None),
                1 if lang is None else 2, lang)
    if lang is not None:
        raise NotAvailableError(
            f"This generation's output follows a forced language token (target_lang={lang!r}), "
            f"and its token ids are not at hand for {name!r}: generate it with logprobs=1 and "
            "look at it with its own model.")
    return source.prompt, source.text, 1, None


def logit_lens(text_or_generation: Any, model: str | None = None, top: int = 5,
               max_tokens: int | None = None, *, target: str | Sequence[int] | None = None,
               manager: ModelManager | None = None) -> LensMap:
    """The exact logit lens of a text, or of a generation's final sequence.

    Parameters
    ----------
    text_or_generation : str or Generation
        A text (tokenized as the model's tokenizer does by default), or a
        ``Generation``: its prompt and new tokens as the model saw them (the ids,
        when it was generated with ``logprobs``; else its prompt and text,
        tokenized again).
    model : str, optional
        A loaded model's name, or a source to load. Default: the generation's
        model, or the default model for a text.
    top : int
        How many tokens each cell keeps (1 to 20).
    max_tokens : int, optional
        Refuse longer sequences (default 2,048); the message says what the lens
        would take.
    target : str or list of int, optional
        For an encoder–decoder (T5, BART, Marian) and a source text: the output
        whose decoder the lens reads (a text, tokenized as the model's output,
        or its ids). A generation of the model holds its own.

    Returns
    -------
    LensMap

    Raises
    ------
    InvalidOptionError
        An empty text, a bad ``top``, or a sequence past ``max_tokens``.
    NotAvailableError
        A served model, or an architecture whose lens does not reproduce its own
        logits (its final norm cannot be found, or its output is scaled in a way
        the lens does not know).
    InvalidOptionError
        ``target`` with a causal model or a generation, or an encoder–decoder
        given a text without one.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lens = lm.logit_lens("The import statement binds a", model="demo")  # doctest: +SKIP
    >>> g = lm.generate("The import statement", model="demo", max_new_tokens=8,
    ...                 logprobs=5)  # doctest: +SKIP
    >>> lm.logit_lens(g).prompt_tokens == g.stats.prompt_tokens  # doctest: +SKIP
    True
    >>> lm.logit_lens("def add(a, b):", target="return a + b", model="t5")  # doctest: +SKIP
    """
    manager = manager or get_manager()
    top = _check_top(top)
    limit = LENS_MAX_TOKENS if max_tokens is None else max_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidOptionError(f"max_tokens must be a positive integer, not {limit!r}.")
    if isinstance(text_or_generation, str):
        check_text(text_or_generation, "The text", hint="write some text to look at")
    elif not isinstance(getattr(text_or_generation, "prompt", None), str):  # before any load
        raise InvalidOptionError("logit_lens reads a text or a Generation, not "
                                 f"{type(text_or_generation).__name__}.")
    elif target is not None:
        raise InvalidOptionError("A Generation holds its own output: drop target=, or give "
                                 "the source as a text with target=.")
    output: str | Sequence[int] | None = _check_target(target)
    name = resolve(manager, model,
                   of=None if isinstance(text_or_generation, str) else text_or_generation)
    text, lang = None, None
    if manager.info(name).kind == "seq2seq":
        source, output, prompt_tokens, lang = _pair(text_or_generation, name, output)
        text = getattr(text_or_generation, "prompt", text_or_generation)
    else:
        source, prompt_tokens = _sequence(text_or_generation, name)
    with manager.checkout(name) as backend:
        if lang is not None:  # the decoder read the forced code after its start token
            output = (backend.language_id(lang), *(output or ()))
        captured = backend.logit_lens(source, top=top, max_tokens=limit, target=output)
    return LensMap.from_capture(captured, name, prompt_tokens, source=text)
