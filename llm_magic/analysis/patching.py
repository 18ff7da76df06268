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

On an encoder–decoder (T5, BART, Marian, ``"demo-translator"``) the text is the source, the
decoder reads its start token then ``target=`` (teacher-forced), and ``part=`` picks the
stack: ``"encoder"``, ``"decoder"`` or ``"cross"`` (the decoder's cross-attention).
Predictions are compared at the decoder's positions.

Examples
--------
>>> import llm_magic as lm
>>> p = lm.patch("The cat sat on the mat", "The dog sat on the mat", model="demo",
...              answers=(" mat", " rug"))  # doctest: +SKIP
>>> p.grid.shape  # layers x positions  # doctest: +SKIP
>>> e = lm.patch("3 March 2021", "3 March 2022", model="demo-translator", target="202",
...              answers=("1", "2"), part="encoder")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.text import shown
from ..errors import InvalidOptionError
from ..manager import ModelManager, get_manager
from . import _patching_checks as _checks
from . import _patching_pictures as _pictures
from ._patching_checks import PARTS
from ._resolve import resolve

__all__ = ["MODES", "OVER", "PARTS", "Ablation", "Patching", "ablate", "patch"]

#: What :func:`patch` can patch.
OVER = ("resid", "attn", "mlp", "heads")
#: How :func:`ablate` removes a part.
MODES = ("zero", "mean")
#: What each part's parts are called in :attr:`Ablation.ablated`.
_PART_WORDS = {"encoder": "encoder ", "decoder": "decoder ", "cross": "cross-attention "}


@dataclass(frozen=True, repr=False, eq=False)
class Ablation:
    """An ablated run against the unablated one, at every position.

    Attributes
    ----------
    model : str
    tokens : tuple of str
        The input tokens' texts (an encoder–decoder's: the decoder's, its start token first).
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
    part : str or None
        An encoder–decoder's ablated stack (``"encoder"``, ``"decoder"``, ``"cross"``);
        None for a causal model.
    source_tokens : tuple of str
        An encoder–decoder's source tokens (empty for a causal model).

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
    part: str | None = None
    source_tokens: tuple[str, ...] = ()

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
        worst, n = float(abs(self.delta).max()) if self.delta.size else 0.0, len(self.tokens)
        return (f"Ablation of {self.model!r} ({self.ablated}, {self.mode}): "
                f"{n} {'decoder ' * bool(self.part)}position{'s' * (n != 1)}; largest "
                f"log-probability change {worst:.3f} nats, mean KL "
                f"{float(self.kl.mean()):.4f} nats")

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
    part : str or None
        An encoder–decoder's patched stack: ``"encoder"`` (columns: source positions),
        ``"decoder"`` or ``"cross"`` (columns: decoder positions, or heads); None for a
        causal model. Rows are then that stack's layers.
    decoder_tokens : tuple of str
        An encoder–decoder's decoder tokens, read in both runs (empty for a causal model).

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
    part: str | None = None
    decoder_tokens: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: model, what was patched (in which stack), the grid's shape, the metric's
        two ends."""
        what = "heads" if self.over == "heads" else _pictures.position_word(self.part)
        where = "" if self.part is None else f" in the {_pictures.PART_NAMES[self.part]}"
        return (f"Patching of {self.model!r} over {self.over}{where}: {len(self.rows)} layers x "
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


# -- the calls -----------------------------------------------------------------------------


def ablate(text: str | Sequence[int], model: str | None = None, *,
           target: str | Sequence[int] | None = None, part: str | None = None,
           heads: Sequence[tuple[int, int]] | None = None, layers: Sequence[int] | None = None,
           mlp: Sequence[int] | None = None, mode: str = "zero",
           answers: Sequence[str | int] | str | int | None = None,
           manager: ModelManager | None = None) -> Ablation:
    """Remove attention heads, attention blocks or MLPs and see what the model predicts then.

    Parameters
    ----------
    text : str or list of int
        The text (an encoder–decoder's source, which its encoder reads).
    model : str, optional
        A loaded model's name or a source to load (default: the default model).
    target : str or list of int, optional
        Encoder–decoder only: the output its decoder reads after its start token,
        teacher-forced (a text, tokenized as the model's output without its end token, or
        output ids). Default: none, so one position, the first output token's prediction.
    part : {"decoder", "encoder", "cross"}, optional
        Encoder–decoder only: the stack that ``heads``, ``layers`` and ``mlp`` index (default
        ``"decoder"``: its self-attention and MLPs; ``"encoder"``: the encoder's; ``"cross"``:
        the decoder's cross-attention, heads and layers only).
    heads : list of (layer, head)
        Heads to remove: their slice of the attention output before the output projection.
    layers : list of int
        Attention blocks whose whole output is removed.
    mlp : list of int
        MLPs (or sparse MoE blocks) whose output is removed.
    mode : {"zero", "mean"}
        Replace by zero, or by its mean over the positions of this text (an encoder–decoder:
        over the positions of the ablated stack, the source's for the encoder).
    answers : list of str or int, optional
        Tokens whose log-probability change is reported at every position (each exactly one
        token); default: the model's own prediction at each position.

    Returns
    -------
    Ablation

    Raises
    ------
    InvalidOptionError
        An empty text or target, an unknown mode or part, a layer or head out of range (of
        the chosen stack), a bool for an index, an answer that is not one token,
        ``target``/``part`` on a causal model, ``mlp`` with ``part="cross"``.
    PromptTooLongError
        A source past the encoder's limit, a target past the decoder's.
    NotAvailableError
        A served model, or an architecture whose blocks cannot be found.

    Examples
    --------
    >>> a = lm.ablate("def f(x):", model="demo", heads=[(0, 1), (1, 2)],
    ...               mode="mean")  # doctest: +SKIP
    >>> t = lm.ablate("3 March 2021", model="demo-translator", target="2021-03-0",
    ...               part="cross", heads=[(1, 0)])  # doctest: +SKIP
    """
    manager = manager or get_manager()
    source = _checks.source(text, "The text")
    output, stack = _checks.target(target), _checks.part(part)
    chosen_heads = [] if heads is None else _checks.pairs(heads, "heads", "layer, head")
    chosen_layers, chosen_mlp = _checks.indices(layers, "layers"), _checks.indices(mlp, "mlp")
    if mode not in MODES:
        raise InvalidOptionError(f"mode must be one of {', '.join(MODES)}, not {shown(mode)}.")
    wanted = None if answers is None else _checks.answers(answers, None)
    name = resolve(manager, model)
    with manager.checkout(name) as backend:
        cap = backend.ablate(source, heads=chosen_heads, layers=chosen_layers, mlp=chosen_mlp,
                             mode=mode, answers=wanted, target=output, part=stack)
    word = _PART_WORDS.get(cap.part or "", "")
    attention = "" if cap.part == "cross" else "attention "
    parts = ([f"{word}heads {', '.join(f'{la}.{h}' for la, h in chosen_heads)}"]
             * bool(chosen_heads)
             + [f"{word}{attention}{', '.join(map(str, chosen_layers))}"] * bool(chosen_layers)
             + [f"{word}MLP {', '.join(map(str, chosen_mlp))}"] * bool(chosen_mlp))
    return Ablation(model=name, tokens=cap.texts, ablated="; ".join(parts) or "nothing",
                    mode=mode, top_ids=cap.top_ids, top_logprobs=cap.top_logprobs,
                    base_top_ids=cap.base_top_ids, base_top_logprobs=cap.base_top_logprobs,
                    answer_ids=cap.answer_ids, logprob=cap.answer_logprob,
                    base_logprob=cap.base_answer_logprob,
                    delta=cap.answer_logprob - cap.base_answer_logprob, kl=cap.kl,
                    vocab=cap.vocab, part=cap.part, source_tokens=cap.source_texts)


def patch(clean: str | Sequence[int], corrupt: str | Sequence[int], model: str | None = None,
          *, target: str | Sequence[int] | None = None, part: str | None = None,
          answers: Sequence[str | int] = (" a", " b"),
          metric: Callable[[Any], float] | None = None, over: str = "resid",
          align: Sequence[tuple[int, int]] | None = None,
          manager: ModelManager | None = None) -> Patching:
    """Activation patching: how much of the clean behaviour each layer (and position) restores.

    Parameters
    ----------
    clean, corrupt : str or list of int
        The two inputs (an encoder–decoder's: two sources); they must tokenize to the same
        length unless ``align`` is given (or an encoder–decoder's ``part`` is not the encoder).
    model : str, optional
    target : str or list of int, optional
        Encoder–decoder only: the output both runs' decoders read after the start token
        (a text, tokenized as the model's output without its end token, or output ids).
    part : {"encoder", "decoder", "cross"}, optional
        Encoder–decoder only: the stack patched (default ``"encoder"``: rows are encoder
        layers, columns source positions; ``"decoder"``: decoder layers and positions, the
        difference arriving through cross-attention; ``"cross"``: the cross-attention's
        output at each decoder position (``over="attn"``) or each cross head
        (``over="heads"``)).
    answers : (str or int, str or int)
        The default metric is logit(answers[0]) - logit(answers[1]) at the last position
        (an encoder–decoder's: the decoder's last position).
    metric : callable, optional
        ``metric(logits) -> float`` on one run's float32 ``[T, vocab]`` logits, instead (an
        encoder–decoder's: ``[decoder positions, vocab]``).
    over : {"resid", "attn", "mlp", "heads"}
        What is patched: the residual stream entering each block (TransformerLens's
        ``resid_pre``), each attention or MLP output, at one position per run; or each
        head's output (before the output projection) at every position.
    align : list of (clean_pos, corrupt_pos), optional
        Patch only these positions (inputs of different lengths; an encoder–decoder's
        source positions, ``part="encoder"`` only).

    Returns
    -------
    Patching

    Raises
    ------
    InvalidOptionError
        Unknown ``over`` or ``part``, inputs of different lengths without ``align``, an
        empty text or target, answers that are not one token each, a metric equal on both
        runs, ``target``/``part`` on a causal model, ``over`` other than attn or heads with
        ``part="cross"``.
    PromptTooLongError
        A source past the encoder's limit, a target past the decoder's.
    NotAvailableError
        A served model, an unknown architecture, or a grid that failed its self-check.

    Examples
    --------
    >>> p = lm.patch("x = 1; x", "y = 1; x", model="demo", answers=(" =", " +"))  # doctest: +SKIP
    >>> p.sanity  # doctest: +SKIP
    >>> d = lm.patch("3 March 2021", "3 March 2022", model="demo-translator", target="202",
    ...              answers=("1", "2"), part="decoder")  # doctest: +SKIP
    """
    manager = manager or get_manager()
    clean_source, corrupt_source = _checks.source(clean, "The clean text"), _checks.source(
        corrupt, "The corrupt text")
    output, stack = _checks.target(target), _checks.part(part)
    if over not in OVER:
        raise InvalidOptionError(f"over must be one of {', '.join(OVER)}, not {shown(over)}.")
    if metric is not None and not callable(metric):
        raise InvalidOptionError(f"metric must be a callable metric(logits) -> float, not "
                                 f"{shown(metric)}.")
    wanted = _checks.answers(answers, 2) if metric is None else []
    pairs = None if align is None else _checks.pairs(align, "align", "clean_pos, corrupt_pos")
    if pairs is not None and not pairs:
        raise InvalidOptionError("align is empty: give at least one (clean_pos, corrupt_pos).")
    name = resolve(manager, model)
    with manager.checkout(name) as backend:
        cap = backend.patch(clean_source, corrupt_source, over=over, answers=wanted,
                            metric=metric, align=pairs, target=output, part=stack)
    return _pictures.from_capture(Patching, cap, name, metric)
