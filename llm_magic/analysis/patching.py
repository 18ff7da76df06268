"""What changes when a part of the computation is removed (ablation) or swapped (patching).

Both run the unmodified model with hooks on its own modules (``backends/_patching``):
nothing is reimplemented, and with no intervention every logit is the model's own, bit
for bit.

- :func:`ablate` zeroes (or mean-replaces) attention heads, whole attention blocks or
  MLPs, and reports the new next-token distribution at each position and the change in
  log-probability (nats) of the tokens you name.
- :func:`patch` writes the clean run's activation into the corrupt run, one layer and
  position (or head) per run, batched, and returns the :class:`Patching` grid of
  normalised effects (patched - corrupt) / (clean - corrupt). Every grid carries its
  sanity line: clean patched into clean changes nothing, and the unpatched corrupt run
  is the model's own.

Examples
--------
>>> import llm_magic as lm
>>> p = lm.patch("The cat sat on the mat", "The dog sat on the mat", model="demo",
...              answers=(" mat", " rug"))  # doctest: +SKIP
>>> p.grid.shape  # layers x positions  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.text import check_text, shown
from ..errors import InvalidOptionError
from ..manager import ModelManager, get_manager
from . import _patching_pictures as _pictures
from ._resolve import resolve

__all__ = ["MODES", "OVER", "Ablation", "Patching", "ablate", "patch"]

#: What :func:`patch` can patch.
OVER = ("resid", "attn", "mlp", "heads")
#: How :func:`ablate` removes a part.
MODES = ("zero", "mean")


@dataclass(frozen=True, repr=False, eq=False)
class Ablation:
    """An ablated run against the unablated one, at every position.

    Attributes
    ----------
    model : str
    tokens : tuple of str
        The input tokens' texts.
    ablated : str
        What was removed, in words.
    mode : str
        ``"zero"`` or ``"mean"``.
    top_ids, top_logprobs : numpy.ndarray
        ``[T, k]``: the ablated run's likeliest next tokens and their log-probabilities (nats).
    base_top_ids, base_top_logprobs : numpy.ndarray
        The same for the unablated run.
    answer_ids : numpy.ndarray
        ``[T, A]``: the tokens whose change is measured (the model's own prediction at
        each position unless ``answers=`` named them).
    logprob, base_logprob, delta : numpy.ndarray
        ``[T, A]``: their log-probability ablated, unablated, and the change (nats).
    kl : numpy.ndarray
        ``[T]``: KL(unablated || ablated) in nats.
    vocab : dict of int to str

    Examples
    --------
    >>> a = lm.ablate("def f(x):", model="demo", heads=[(0, 1)])  # doctest: +SKIP
    >>> a.delta[-1]  # the last prediction's change, nats  # doctest: +SKIP
    """

    model: str
    tokens: tuple[str, ...]
    ablated: str
    mode: str
    top_ids: Any
    top_logprobs: Any
    base_top_ids: Any
    base_top_logprobs: Any
    answer_ids: Any
    logprob: Any
    base_logprob: Any
    delta: Any
    kl: Any
    vocab: dict[int, str]

    def text(self, token_id: int) -> str:
        """The text of a token id of this result."""
        return self.vocab.get(int(token_id), f"<{int(token_id)}>")

    def top(self, position: int) -> tuple[tuple[int, str, float], ...]:
        """The ablated run's top tokens at ``position``: (id, text, log-probability in nats)."""
        t = len(self.tokens)
        if isinstance(position, bool) or not isinstance(position, int) or not -t <= position < t:
            raise InvalidOptionError(f"position must be an integer from 0 to {t - 1}; "
                                     f"got {shown(position)}.")
        return tuple((int(i), self.text(int(i)), float(lp))
                     for i, lp in zip(self.top_ids[position], self.top_logprobs[position],
                                      strict=True))

    def summary(self) -> str:
        """One line: the model, what was ablated, the largest change."""
        worst = float(abs(self.delta).max()) if self.delta.size else 0.0
        return (f"Ablation of {self.model!r} ({self.ablated}, {self.mode}): "
                f"{len(self.tokens)} positions; largest log-probability change "
                f"{worst:.3f} nats, mean KL {float(self.kl.mean()):.4f} nats")

    def to_html(self) -> str:
        """An escaped HTML table: each position's token, prediction before and after, change."""
        return _pictures.ablation_html(self)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


@dataclass(frozen=True, repr=False, eq=False)
class Patching:
    """An activation-patching grid: rows = layers, columns = positions (or heads).

    Attributes
    ----------
    model : str
    over : str
        ``"resid"``, ``"attn"``, ``"mlp"`` or ``"heads"``.
    grid : numpy.ndarray
        float32 ``[layers, columns]``: (patched - corrupt) / (clean - corrupt).
    values : numpy.ndarray
        The metric of each patched run.
    rows, columns : tuple of str
        Labels: ``"layer 0"``...; ``"3 'cat'"`` (position and corrupt token, or
        ``"2→3 'cat'"`` with ``align``) or ``"head 0"``....
    clean_value, corrupt_value : float
        The metric on the clean and on the corrupt run.
    metric_name : str
        What the metric is, with its direction.
    sanity : str
        The self-check that every grid passed before it was drawn.
    clean_tokens, corrupt_tokens : tuple of str
    forwards, rows_per_forward : int
        How the patched runs were batched.

    Examples
    --------
    >>> p = lm.patch("a b c", "a d c", model="demo", answers=(" b", " d"))  # doctest: +SKIP
    >>> p.to_png("patching.png")  # doctest: +SKIP
    """

    model: str
    over: str
    grid: Any
    values: Any
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    clean_value: float
    corrupt_value: float
    metric_name: str
    sanity: str
    clean_tokens: tuple[str, ...]
    corrupt_tokens: tuple[str, ...]
    forwards: int
    rows_per_forward: int

    def summary(self) -> str:
        """One line: model, what was patched, the grid's shape, the metric's two ends."""
        what = "heads" if self.over == "heads" else "positions"
        return (f"Patching of {self.model!r} over {self.over}: {len(self.rows)} layers x "
                f"{len(self.columns)} {what}; {self.metric_name}: clean "
                f"{self.clean_value:.4g}, corrupt {self.corrupt_value:.4g}")

    def to_html(self) -> str:
        """An escaped heatmap: diverging scale -1..1 (blue, white, red), hover values."""
        return _pictures.patching_html(self)

    def to_png(self, path: str | os.PathLike[str] | None = None) -> bytes:
        """A PNG of the grid: layer numbers on the left, column numbers on top, and the
        diverging scale (-1 blue, 0 white, +1 red) under it; saved to ``path`` if given.

        Examples
        --------
        >>> png = p.to_png("patching.png")  # doctest: +SKIP
        """
        png = _pictures.patching_png(self.grid)
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


# -- checks --------------------------------------------------------------------------------


def _index(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(f"{what} must be an integer index, not {shown(value)}.")
    return value


def _indices(values: Any, what: str) -> list[int]:
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidOptionError(f"{what} must be a list of layer indices, not {shown(values)}.")
    return [_index(v, f"Each of {what}") for v in values]


def _pairs(values: Any, what: str, example: str) -> list[tuple[int, int]]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidOptionError(f"{what} must be a list of {example} pairs, not "
                                 f"{shown(values)}.")
    out = []
    for pair in values:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidOptionError(f"Each of {what} must be a {example} pair, not "
                                     f"{shown(pair)}.")
        out.append((_index(pair[0], f"In {what}, {example.split(', ')[0]}"),
                    _index(pair[1], f"In {what}, {example.split(', ')[1]}")))
    return out


def _answers(values: Any, exactly: int | None) -> list[str | int]:
    if isinstance(values, (str, int)) or not isinstance(values, Sequence):
        values = [values]
    out: list[str | int] = []
    for v in values:
        if isinstance(v, str):
            out.append(check_text(v, "An answer", allow_blank=True,
                                  hint="name a token's text or its id"))
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(v)
        else:
            raise InvalidOptionError(f"An answer is a token's text or id, not {shown(v)}.")
    if exactly is not None and len(out) != exactly or not out:
        raise InvalidOptionError(f"answers must be {exactly or 'one or more'} tokens "
                                 f"(texts or ids), not {shown(values)}.")
    return out


def _source(value: Any, what: str) -> str | list[int]:
    if isinstance(value, str):
        return check_text(value, what, hint="write some text")
    if isinstance(value, Sequence) and value and all(
            isinstance(i, int) and not isinstance(i, bool) for i in value):
        return list(value)
    raise InvalidOptionError(f"{what} must be a text or a list of token ids, not {shown(value)}.")


# -- the calls -----------------------------------------------------------------------------


def ablate(text: str | Sequence[int], model: str | None = None, *,
           heads: Sequence[tuple[int, int]] | None = None, layers: Sequence[int] | None = None,
           mlp: Sequence[int] | None = None, mode: str = "zero",
           answers: Sequence[str | int] | str | int | None = None,
           manager: ModelManager | None = None) -> Ablation:
    """Remove attention heads, attention blocks or MLPs and see what the model predicts then.

    Parameters
    ----------
    text : str or list of int
    model : str, optional
        A loaded model's name or a source to load (default: the default model).
    heads : list of (layer, head)
        Heads to remove: their slice of the attention output before the output projection.
    layers : list of int
        Attention blocks whose whole output is removed.
    mlp : list of int
        MLPs (or sparse MoE blocks) whose output is removed.
    mode : {"zero", "mean"}
        Replace by zero, or by its mean over the positions of this text.
    answers : list of str or int, optional
        Tokens whose log-probability change is reported at every position (each exactly one
        token); default: the model's own prediction at each position.

    Returns
    -------
    Ablation

    Raises
    ------
    InvalidOptionError
        An empty text, an unknown mode, a layer or head out of range, a bool for an
        index, an answer that is not one token.
    NotAvailableError
        A served model, or an architecture whose blocks cannot be found.

    Examples
    --------
    >>> a = lm.ablate("def f(x):", model="demo", heads=[(0, 1), (1, 2)],
    ...               mode="mean")  # doctest: +SKIP
    """
    manager = manager or get_manager()
    source = _source(text, "The text")
    chosen_heads = [] if heads is None else _pairs(heads, "heads", "layer, head")
    chosen_layers, chosen_mlp = _indices(layers, "layers"), _indices(mlp, "mlp")
    if mode not in MODES:
        raise InvalidOptionError(f"mode must be one of {', '.join(MODES)}, not {shown(mode)}.")
    wanted = None if answers is None else _answers(answers, None)
    name = resolve(manager, model)
    with manager.checkout(name) as backend:
        cap = backend.ablate(source, heads=chosen_heads, layers=chosen_layers, mlp=chosen_mlp,
                             mode=mode, answers=wanted)
    parts = ([f"heads {', '.join(f'{la}.{h}' for la, h in chosen_heads)}"] * bool(chosen_heads)
             + [f"attention {', '.join(map(str, chosen_layers))}"] * bool(chosen_layers)
             + [f"MLP {', '.join(map(str, chosen_mlp))}"] * bool(chosen_mlp))
    return Ablation(model=name, tokens=cap.texts, ablated="; ".join(parts) or "nothing",
                    mode=mode, top_ids=cap.top_ids, top_logprobs=cap.top_logprobs,
                    base_top_ids=cap.base_top_ids, base_top_logprobs=cap.base_top_logprobs,
                    answer_ids=cap.answer_ids, logprob=cap.answer_logprob,
                    base_logprob=cap.base_answer_logprob,
                    delta=cap.answer_logprob - cap.base_answer_logprob, kl=cap.kl,
                    vocab=cap.vocab)


def patch(clean: str | Sequence[int], corrupt: str | Sequence[int], model: str | None = None,
          *, answers: Sequence[str | int] = (" a", " b"),
          metric: Callable[[Any], float] | None = None, over: str = "resid",
          align: Sequence[tuple[int, int]] | None = None,
          manager: ModelManager | None = None) -> Patching:
    """Activation patching: how much of the clean behaviour each layer (and position) restores.

    Parameters
    ----------
    clean, corrupt : str or list of int
        The two inputs; they must tokenize to the same length unless ``align`` is given.
    model : str, optional
    answers : (str or int, str or int)
        The default metric is logit(answers[0]) - logit(answers[1]) at the last position.
    metric : callable, optional
        ``metric(logits) -> float`` on one run's float32 ``[T, vocab]`` logits, instead.
    over : {"resid", "attn", "mlp", "heads"}
        What is patched: the residual stream entering each block (TransformerLens's
        ``resid_pre``), each attention or MLP output, at one position per run; or each
        head's output (before the output projection) at every position.
    align : list of (clean_pos, corrupt_pos), optional
        Patch only these positions (inputs of different lengths).

    Returns
    -------
    Patching

    Raises
    ------
    InvalidOptionError
        Unknown ``over``, inputs of different lengths without ``align``, an empty text,
        answers that are not one token each, a metric equal on both runs.
    NotAvailableError
        A served model, an unknown architecture, or a grid that failed its self-check.

    Examples
    --------
    >>> p = lm.patch("x = 1; x", "y = 1; x", model="demo", answers=(" =", " +"))  # doctest: +SKIP
    >>> p.sanity  # doctest: +SKIP
    """
    manager = manager or get_manager()
    clean_source, corrupt_source = _source(clean, "The clean text"), _source(
        corrupt, "The corrupt text")
    if over not in OVER:
        raise InvalidOptionError(f"over must be one of {', '.join(OVER)}, not {shown(over)}.")
    if metric is not None and not callable(metric):
        raise InvalidOptionError(f"metric must be a callable metric(logits) -> float, not "
                                 f"{shown(metric)}.")
    wanted = _answers(answers, 2) if metric is None else []
    pairs = None if align is None else _pairs(align, "align", "clean_pos, corrupt_pos")
    if pairs is not None and not pairs:
        raise InvalidOptionError("align is empty: give at least one (clean_pos, corrupt_pos).")
    name = resolve(manager, model)
    with manager.checkout(name) as backend:
        cap = backend.patch(clean_source, corrupt_source, over=over, answers=wanted,
                            metric=metric, align=pairs)
    return _pictures.from_capture(Patching, cap, name, metric)
