"""Attribution: which input tokens drove a predicted token, and by how much.

:func:`attribute` reads the model the manager holds, through hooks only: the
input embeddings from ``model.get_input_embeddings()`` and the unmodified model
run on them. The target f of an output token is its log-probability in nats
(or the difference of two tokens' log-probabilities, a contrast); each input
token gets a share of f by one of four methods:

- ``"saliency"``: the L2 norm over the hidden dimension of df/d(embedding);
- ``"input_x_gradient"``: the sum over the hidden dimension of embedding x gradient;
- ``"integrated_gradients"``: embedding minus baseline times the gradient averaged
  on the straight path between them (trapezoid rule), with its completeness error;
- ``"occlusion"``: f minus f with that token's embedding replaced by the baseline's.

An :class:`Attribution` holds a ``[output tokens x input tokens]`` array; an
input token after an output token is no input of it (NaN).

Examples
--------
>>> import llm_magic as lm
>>> a = lm.attribute("def f(x):\\n    return", model="demo")  # doctest: +SKIP
>>> a.top(0, 2)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..common.text import check_text, shown
from ..errors import InvalidOptionError, LLMMagicWarning, NotAvailableError, outside_stacklevel
from ..manager import ModelManager, get_manager
from . import _attribution_view
from ._resolve import resolve

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ATTRIBUTION_MAX_TOKENS", "METHODS", "Attribution", "attribute"]

METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "occlusion")
#: Longest sequence :func:`attribute` reads unless a call asks for more.
ATTRIBUTION_MAX_TOKENS = 1024
#: The most integration steps a call may ask for.
MAX_STEPS = 10_000
#: Completeness error (relative) above which integrated gradients warns.
COMPLETENESS_TOLERANCE = 0.01


@dataclass(frozen=True, repr=False, eq=False)
class Attribution:
    """Each output token's f shared among the tokens before it.

    Attributes
    ----------
    scores : numpy.ndarray
        ``[output tokens, input tokens]`` float32: how much of f each input token
        carries (NaN where the input token is not before the output token).
    method : str
        One of :data:`METHODS`.
    target_ids : tuple of int
        Each row's attributed token (for a contrast, the token a of log p(a) - log p(b)).
    contrast_ids : tuple of int or None
        Each row's token b of a contrast, else None.
    input_ids, input_tokens : tuple
        The columns: token ids and their texts (the prompt, then earlier output).
    output_tokens : tuple of str
        The rows' texts (``" a vs  b"`` for a contrast).
    positions : tuple of int
        Each row's position in the sequence (its column would be that index).
    value : numpy.ndarray
        f of each row at the input, in nats.
    completeness : numpy.ndarray or None
        Integrated gradients only: per row, |sum of the row - (f(x) - f(baseline))|
        relative to |f(x) - f(baseline)|.
    baseline : str or None
        What replaced the input embeddings (integrated gradients, occlusion).
    notes : tuple of str
        How the numbers were computed: f, the rule, the baseline, the passes.
    model : str
        The model's name.
    prompt_tokens : int or None
        How many of the input tokens come before the output (a generation, or ``output=``).
    source_tokens : int or None
        An encoder–decoder's: how many of the input tokens are the source (read by the
        encoder); the decoder's start token (and any forced language token) follow, then
        the output.
    baseline_value : numpy.ndarray or None
        Integrated gradients only: f of each row at the baseline, in nats (the scores of a
        row add up to ``value - baseline_value``, within the completeness error).
    """

    scores: np.ndarray
    method: str
    target_ids: tuple[int, ...]
    contrast_ids: tuple[int, ...] | None
    input_ids: tuple[int, ...]
    input_tokens: tuple[str, ...]
    output_tokens: tuple[str, ...]
    positions: tuple[int, ...]
    value: np.ndarray
    completeness: np.ndarray | None
    baseline: str | None
    notes: tuple[str, ...]
    model: str
    prompt_tokens: int | None = None
    source_tokens: int | None = None
    baseline_value: np.ndarray | None = None

    @property
    def unit(self) -> str:
        """What a score measures, with its unit (the view's scale label)."""
        what = "log-probability difference" if self.contrast_ids else "log-probability"
        if self.method == "saliency":
            return f"gradient norm of the {what} (nats per unit of embedding)"
        return f"{what} (nats) attributed"

    def top(self, row: int, k: int = 5) -> tuple[tuple[int, str, float], ...]:
        """The ``k`` input tokens with the largest absolute score for output ``row``.

        Returns (column, token text, score), largest first.

        Examples
        --------
        >>> a.top(0, 3)  # doctest: +SKIP
        ((6, ' return', 1.17), (4, ' ', -1.19), ...)
        """
        import numpy as np

        rows = len(self.output_tokens)
        if isinstance(row, bool) or not isinstance(row, int) or not -rows <= row < rows:
            raise InvalidOptionError(f"row must be an integer from 0 to {rows - 1} (or negative "
                                     f"from the end); got {shown(row)}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidOptionError(f"k must be a positive integer, not {shown(k)}.")
        values = self.scores[row % rows]
        order = [int(j) for j in np.argsort(-np.abs(np.nan_to_num(values, nan=-1.0)),
                                            kind="stable") if not np.isnan(values[j])]
        return tuple((j, self.input_tokens[j], float(values[j])) for j in order[:k])

    def summary(self) -> str:
        """One line: model, method, rows x columns, f, and the completeness when measured."""
        rows, cols = self.scores.shape
        f = "log p(a) - log p(b)" if self.contrast_ids else "log p(token)"
        line = (f"Attribution of {self.model!r} by {self.method}: {rows} output token"
                f"{'s' if rows != 1 else ''} x {cols} input tokens; f = {f} in nats")
        if self.completeness is not None:
            line += f"; completeness error up to {100 * float(max(self.completeness)):.2f}%"
        return line

    def to_html(self) -> str:
        """An escaped HTML table: rows = output tokens, columns = input tokens, values on hover.

        Examples
        --------
        >>> html = a.to_html()  # doctest: +SKIP
        """
        return _attribution_view.html(self)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


def _check(method: Any, steps: Any, baseline: Any, max_tokens: Any) -> None:
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidOptionError(f"method must be one of {', '.join(METHODS)}, not "
                                 f"{shown(method)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidOptionError(f"steps is how many intervals integrated gradients sums over: "
                                 f"an integer from 1 to {MAX_STEPS}, not {shown(steps)}.")
    if baseline is not None:
        if method not in ("integrated_gradients", "occlusion"):
            raise InvalidOptionError(f"baseline= is for integrated_gradients and occlusion; "
                                     f"{method} has none.")
        if not (baseline in ("zero", "pad") or (isinstance(baseline, int)
                                                and not isinstance(baseline, bool)
                                                and baseline >= 0)):
            raise InvalidOptionError(f"baseline must be 'zero', 'pad' or a token id, not "
                                     f"{shown(baseline)}.")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidOptionError(f"max_tokens must be a positive integer, not {shown(max_tokens)}.")


def _token(value: Any, what: str) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return check_text(value, f"The {what}", allow_blank=True,
                          hint="pass one token's text or its id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidOptionError(f"The {what} must be one token's text or its id, not "
                                 f"{shown(value)}.")
    return value


def _targets(target: Any, contrast: Any) -> tuple[Any, Any]:
    """(target, contrast) as the backend takes them: a single token each, or None."""
    if contrast is None:
        return _token(target, "target"), None
    if target is not None:
        raise InvalidOptionError("Pass target= or contrast=(a, b), not both: the contrast's "
                                 "first token is its target.")
    if isinstance(contrast, str) or not isinstance(contrast, Sequence) or len(contrast) != 2:
        raise InvalidOptionError(f"contrast must be a pair of tokens (a, b), for log p(a) - "
                                 f"log p(b); not {shown(contrast)}.")
    a, b = _token(contrast[0], "contrast's first token"), _token(contrast[1],
                                                                  "contrast's second token")
    if a is None or b is None:
        raise InvalidOptionError("contrast needs two tokens, (a, b).")
    if a == b:
        raise InvalidOptionError(f"The contrast compares {a!r} with itself; pass two "
                                 "different tokens.")
    return a, b


def _positions(positions: Any, count: int | None) -> list[int]:
    """Output token indexes, negatives from the end; ``count`` None: not known yet (the
    backend tokenizes the output, then checks the range and resolves negatives)."""
    if positions is None:
        return [] if count is None else list(range(count))
    items = [positions] if isinstance(positions, int) else positions
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise InvalidOptionError(f"positions must be an output token's index or a list of "
                                 f"them, not {shown(positions)}.")
    out = []
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int) or (
                count is not None and not -count <= p < count):
            end = "the output's tokens" if count is None else f"output tokens 0 to {count - 1}"
            raise InvalidOptionError(f"positions picks {end} (or negative from the end), not "
                                     f"{shown(p)}.")
        out.append(p if count is None else p % count)
    if len(set(out)) != len(out):
        raise InvalidOptionError(f"positions names an output token twice: {shown(positions)}.")
    return out


def _generation(gen: Any, name: str, backend: Any) -> tuple[list[int], int, list[str]]:
    """A generation's prompt and output ids, and how they were found (notes)."""
    prompt_ids = getattr(gen, "prompt_ids", None)
    records = getattr(gen, "tokens", None) or ()
    new_ids = [getattr(r, "id", None) for r in records]
    if gen.model == name and prompt_ids and records and None not in new_ids:
        return [*prompt_ids, *new_ids], len(prompt_ids), []
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:  # a served model: its own refusal
        backend.attribute(gen.text, rows=[], method="saliency", steps=1, baseline=None,
                          max_tokens=1)
        raise NotAvailableError(f"{name!r} has no tokenizer here; it cannot be attributed.")
    if gen.model == name and prompt_ids:
        prompt, how = list(prompt_ids), "the prompt's ids as the model saw them"
    else:
        prompt = list(tokenizer(gen.prompt, add_special_tokens=True, verbose=False)["input_ids"])
        how = f"the prompt tokenized by {name!r}"
    output = list(tokenizer(gen.text, add_special_tokens=False, verbose=False)["input_ids"])
    note = (f"The output was tokenized again from its text (after {how}): generate with "
            "logprobs=K to attribute the very tokens chosen.")
    return [*prompt, *(int(i) for i in output)], len(prompt), [note]


def attribute(generation_or_text: Any, model: str | None = None, target: int | str | None = None,
              method: str = "input_x_gradient", *, steps: int = 50, baseline: Any = None,
              contrast: Sequence[int | str] | None = None, positions: Any = None,
              output: str | Sequence[int] | None = None, target_lang: str | None = None,
              max_tokens: int | None = None,
              manager: ModelManager | None = None) -> Attribution:
    """Attribute output tokens to the input tokens before them.

    Parameters
    ----------
    generation_or_text : str or Generation
        A text: attribute the model's greedy next token after it (one row), or
        ``target``; with ``output``, each token of the output. A ``Generation``
        (best with ``logprobs=K``, whose token ids are the chosen ones): attribute
        each output token to the prompt and the earlier output tokens. For an
        encoder–decoder model (T5, BART, Marian) the text is the source, and the
        inputs are the source's tokens, then the decoder's start token (and any
        forced language token), then the earlier output tokens.
    model : str, optional
        A loaded model's name, or a source to load. Default: the generation's
        model, or the default model for a text.
    target : str or int, optional
        The token to attribute instead (one token's text or its id); for a
        generation or an output, with a single position in ``positions``.
    method : str
        ``"saliency"``, ``"input_x_gradient"`` (default), ``"integrated_gradients"``
        or ``"occlusion"``.
    steps : int
        Integrated gradients: intervals of the trapezoid rule (``steps + 1``
        gradient evaluations per output token).
    baseline : "zero", "pad" or int, optional
        Integrated gradients and occlusion: what replaces the input embeddings:
        the zero vector (default), the pad token's embedding, or a token's.
    contrast : (a, b), optional
        Attribute f = log p(a) - log p(b) instead of log p(token).
    positions : int or list of int, optional
        The output tokens to attribute (indexes into a generation's tokens or the
        output's; negative from the end). Default: all of them.
    output : str or list of int, optional
        An output to attribute, teacher-forced: after the text (a causal model) or
        for the source (an encoder–decoder, tokenized as its output). The classic
        question: which source tokens made this translation.
    target_lang : str, optional
        An encoder–decoder's forced language token before ``output`` (mBART, NLLB).
    max_tokens : int, optional
        Refuse longer sequences (default 1,024); the message says what it would take.

    Returns
    -------
    Attribution

    Raises
    ------
    InvalidOptionError
        An unknown method, bad steps, a target that is not one token, an empty
        text or output, positions out of range, or a sequence past ``max_tokens``.
    NotAvailableError
        A served model, or gradients through int4 weights (occlusion still works).

    Examples
    --------
    >>> import llm_magic as lm
    >>> a = lm.attribute("def f(x):\\n    return", model="demo")  # doctest: +SKIP
    >>> g = lm.generate("import os", model="demo", max_new_tokens=5, logprobs=3)  # doctest: +SKIP
    >>> lm.attribute(g, method="integrated_gradients").completeness  # doctest: +SKIP
    >>> lm.attribute("3/3/2021", model="demo-translator", output="2021-03-03")  # doctest: +SKIP
    """
    manager = manager or get_manager()
    limit = ATTRIBUTION_MAX_TOKENS if max_tokens is None else max_tokens
    _check(method, steps, baseline, limit)
    goal, other = _targets(target, contrast)
    text = isinstance(generation_or_text, str)
    if output is not None:
        output = _output(output, text)
    if target_lang is not None:
        check_text(target_lang, "target_lang", hint="give a language code such as 'fr_XX'")
    if text:
        check_text(generation_or_text, "The text", hint="write some text to attribute")
        if positions is not None and output is None:
            raise InvalidOptionError("positions= picks output tokens of a Generation or of "
                                     "output=; a text alone has one, the next token.")
    elif not isinstance(getattr(generation_or_text, "prompt", None), str) or not isinstance(
            getattr(generation_or_text, "text", None), str):
        raise InvalidOptionError("attribute reads a text or a Generation, not "
                                 f"{type(generation_or_text).__name__}.")
    name = resolve(manager, model, of=None if text else generation_or_text)
    with manager.checkout(name) as backend:
        notes: list[str] = []
        extra: dict[str, Any] = {}
        prompt_tokens: int | None = None
        if text and output is None:
            source: str | list[int] = generation_or_text
            rows: list[tuple[int | None, Any, Any]] = [(None, goal, other)]
            if target_lang is not None:
                extra["target_lang"] = target_lang
        elif text or getattr(backend, "seq2seq", False):
            source, extra, count, notes = (
                (generation_or_text, {"output": output, "target_lang": target_lang}, None, [])
                if text else _seq2seq_generation(generation_or_text, name))
            rows = _rows(positions, count, goal, other)
        else:
            source, prompt_tokens, notes = _generation(generation_or_text, name, backend)
            count = len(source) - prompt_tokens
            if count == 0:
                raise InvalidOptionError("The generation has no output tokens to attribute.")
            rows = [(len(source) - count + (k or 0), g, o)
                    for k, g, o in _rows(positions, count, goal, other)]
        captured = backend.attribute(source, rows=rows, method=method, steps=steps,
                                     baseline=baseline, max_tokens=limit, **extra)
    return _result(captured, method, name, prompt_tokens, notes)


def _output(value: Any, text: bool) -> str | list[int]:
    if not text:
        raise InvalidOptionError("output= goes with a text (the prompt or source); a "
                                 "Generation carries its own output.")
    if isinstance(value, str):
        return check_text(value, "The output", hint="write the output to attribute")
    if isinstance(value, Sequence) and value and all(
            isinstance(i, int) and not isinstance(i, bool) for i in value):
        return list(value)
    raise InvalidOptionError(f"output must be a text or a list of token ids, not {shown(value)}.")


def _rows(positions: Any, count: int | None, goal: Any,
          other: Any) -> list[tuple[int | None, Any, Any]]:
    """Rows for output tokens ``positions`` (``count`` None: checked by the backend)."""
    picked = _positions(positions, count)
    if goal is not None and len(picked) != 1:
        raise InvalidOptionError("target= and contrast= apply to a single output token: pass "
                                 "positions=k with them.")
    return [(k, goal, other) for k in picked]


def _seq2seq_generation(gen: Any, name: str) -> tuple[Any, dict[str, Any], int | None,
                                                        list[str]]:
    """An encoder–decoder generation's source, output and forced language, as it ran."""
    records = getattr(gen, "tokens", None) or ()
    ids = [getattr(r, "id", None) for r in records]
    same = gen.model == name
    source = list(gen.prompt_ids) if same and gen.prompt_ids else gen.prompt
    notes = []
    chosen = [i for i in ids if i is not None]
    if same and records and len(chosen) == len(ids):
        output: Any = chosen
    else:
        output = gen.text
        notes.append("The output was tokenized again from its text: generate with logprobs=K "
                     "to attribute the very tokens chosen.")
    if not output:
        raise InvalidOptionError("The generation has no output tokens to attribute.")
    extra = {"output": output, "target_lang": gen.params.get("target_lang")}
    return source, extra, len(output) if isinstance(output, list) else None, notes


def _result(cap: Any, method: str, name: str, prompt_tokens: int | None,
            notes: list[str]) -> Attribution:
    texts = cap.target_texts
    outputs = texts if cap.contrast_texts is None else tuple(
        f"{a} vs {b}" for a, b in zip(texts, cap.contrast_texts, strict=True))
    result = Attribution(
        scores=cap.scores, method=method, target_ids=cap.target_ids,
        contrast_ids=cap.contrast_ids, input_ids=cap.ids, input_tokens=cap.texts,
        output_tokens=tuple(outputs), positions=cap.positions, value=cap.value,
        completeness=cap.completeness, baseline=cap.baseline,
        notes=(*cap.notes, *notes), model=name,
        prompt_tokens=prompt_tokens if cap.prompt_tokens is None else cap.prompt_tokens,
        source_tokens=cap.source_tokens, baseline_value=cap.baseline_value)
    completeness = result.completeness
    if completeness is not None:
        import numpy as np

        row = max(range(len(completeness)), key=lambda r: float(completeness[r]))
        worst = float(completeness[row])
        if not worst <= COMPLETENESS_TOLERANCE:
            shown_ = "infinite" if math.isinf(worst) else f"{100 * worst:.2f}%"
            gap = (float(result.value[row] - result.baseline_value[row])
                   if result.baseline_value is not None else math.nan)
            off = abs(float(result.scores[row][~np.isnan(result.scores[row])].sum()) - gap)
            warnings.warn(
                f"Integrated gradients of {name!r} miss completeness by {shown_} (over "
                f"{100 * COMPLETENESS_TOLERANCE:.0f}%; output token {row}: {off:.3g} nats off "
                f"f(x) - f(baseline) = {gap:.3g} nats): the scores do not add up to f(x) - "
                "f(baseline). Raise steps= for a closer sum.", LLMMagicWarning,
                stacklevel=outside_stacklevel())
    return result

