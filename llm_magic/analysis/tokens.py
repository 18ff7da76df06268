"""Token probabilities: how sure the model was of each token, and what it almost wrote.

A generation with ``logprobs=K`` carries one :class:`TokenRecord` per new
token (``Generation.tokens``), recorded inside the generation loop. :func:`score`
gives the same records for a text the model is made to read (teacher forcing):
which word surprised it. Both render as a view whose text is shaded by
probability, entropy or surprisal; its static fallback is escaped HTML with
inline colours, so exported notebooks show the shading too.

Examples
--------
>>> import llm_magic as lm
>>> s = lm.score("The import statement binds a name.", model="demo")  # doctest: +SKIP
>>> min(s.tokens, key=lambda r: r.logprob).text                      # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from ..backends.base import TokenRecord, check_logprobs
from ..common import views as _views
from ..common.visible import visible
from ..errors import InvalidOptionError
from ..manager import ModelManager, get_manager

__all__ = ["METRICS", "Scores", "TokenRecord", "legend", "score", "shade", "shaded_html", "view"]

#: What the shading of a token can show.
METRICS = ("probability", "entropy", "surprisal")
#: Longest text :func:`score` reads unless a call asks for more (its logits are T x vocab).
SCORE_MAX_TOKENS = 4096
#: Colour of a token the model found certain (white) and of the most doubtful one.
_LIGHT, _DARK = (255, 255, 255), (230, 85, 13)


@dataclass(frozen=True, repr=False)
class Scores:
    """A text teacher-forced through a model: a record for every token after the first.

    Attributes
    ----------
    text : str
        The text as given.
    model : str
        The model's name.
    ids : tuple of int
        Every token id of the text (special tokens the tokenizer adds included).
    first : str
        The first token's text: it is read, not scored (nothing predicts it).
    tokens : tuple of TokenRecord
        One record per token after the first; ``tokens[i]`` is token ``i + 1``.
    logprobs : int
        How many alternatives each record keeps.

    Examples
    --------
    >>> s = lm.score("The import statement", model="demo")  # doctest: +SKIP
    >>> s.logprob, s.perplexity                             # doctest: +SKIP
    """

    text: str
    model: str
    ids: tuple[int, ...]
    first: str
    tokens: tuple[TokenRecord, ...]
    logprobs: int

    #: Scores describe the model's own distribution: nothing is sampled.
    logprobs_mode = "raw"

    @property
    def logprob(self) -> float:
        """The total log-probability of every scored token (natural log)."""
        return float(sum(r.logprob for r in self.tokens))

    @property
    def perplexity(self) -> float:
        """``exp`` of the mean negative log-probability per scored token."""
        return math.exp(-self.logprob / len(self.tokens)) if self.tokens else math.nan

    def widget(self) -> Any:
        """The interactive view (an anywidget)."""
        return view(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return view(self)._repr_mimebundle_(include=include, exclude=exclude)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return (f"<Scores of {self.model!r}: {len(self.ids)} tokens, log-probability "
                f"{self.logprob:.3f}, perplexity {self.perplexity:.2f}>")


def score(text: str, model: str | None = None, *, logprobs: int = 5,
          max_tokens: int | None = None, manager: ModelManager | None = None) -> Scores:
    """Teacher-force ``text`` through a model in one forward pass and record every token.

    Parameters
    ----------
    text : str
        The text, tokenized as the model's tokenizer does by default.
    model : str, optional
        A loaded model's name, or a source to load; the default model when omitted.
    logprobs : int
        How many alternatives each record keeps (1 to 20).
    max_tokens : int, optional
        Refuse longer texts (default 4,096 tokens): the logits take T x vocab floats.

    Returns
    -------
    Scores

    Examples
    --------
    >>> import llm_magic as lm
    >>> s = lm.score("The import statement binds a name.", model="demo")  # doctest: +SKIP
    >>> shuffled = lm.score("statement name. The binds import a", model="demo")  # doctest: +SKIP
    >>> s.perplexity < shuffled.perplexity  # doctest: +SKIP
    True
    """
    manager = manager or get_manager()
    if not isinstance(text, str) or not text.strip():
        raise InvalidOptionError("The text is empty: write some text to score.")
    check_logprobs(logprobs)
    limit = SCORE_MAX_TOKENS if max_tokens is None else max_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise InvalidOptionError(f"max_tokens must be an integer of at least 2, not {limit!r}.")
    if model is not None and not manager.is_loaded(model):
        model = manager.load(model).name
    name = manager.resolve(model)
    with manager.checkout(name) as backend:
        captured = backend.score(text, logprobs=logprobs, max_tokens=limit)
    return Scores(text=text, model=name, ids=captured.ids, first=captured.texts[0],
                  tokens=captured.records, logprobs=logprobs)


# -- the view and its static fallback -------------------------------------------


def view(result: Any) -> Any:
    """The token probability view of a ``Generation`` with records, or of :class:`Scores`."""
    return _views.view_class("tokens")(result)


def shade(records: Sequence[TokenRecord], metric: str = "probability") -> list[float]:
    """Each token's shade from 0 (light) to 1 (dark) for ``metric``.

    probability: 1 - p, so the tokens the model doubted stand out; surprisal:
    bits over the text's largest; entropy: nats over the text's largest.
    """
    if metric not in METRICS:
        raise InvalidOptionError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}.")
    if metric == "probability":
        return [1.0 - r.prob for r in records]
    values = [r.surprisal if metric == "surprisal" else (r.entropy or 0.0) for r in records]
    top = max(values, default=0.0)
    return [v / top if top > 0 else 0.0 for v in values]


def legend(metric: str, mode: str) -> str:
    """The one line that says what the shading means and which distribution it shows."""
    what = {
        "probability": "darker = less likely (1 - p)",
        "entropy": "darker = more uncertain step (entropy, scaled to this text's largest)",
        "surprisal": "darker = more surprising (-log2 p, scaled to this text's largest)",
    }[metric]
    source = ("the model's raw distribution" if mode == "raw"
              else "the distribution sampled from (after temperature, top-k, top-p)")
    return f"Shading: {what}; probabilities of {source}."


def _colour(x: float) -> str:
    x = min(1.0, max(0.0, x))
    r, g, b = (round(a + (c - a) * x) for a, c in zip(_LIGHT, _DARK, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def shaded_html(records: Sequence[TokenRecord], *, lead: str = "", mode: str = "raw",
                metric: str = "probability", title: str = "") -> str:
    """Escaped HTML of the tokens shaded by ``metric``, each with its alternatives as a tooltip.

    Examples
    --------
    >>> r = TokenRecord(1, "<b>", -0.1, 1, ((1, "<b>", -0.1),))
    >>> "&lt;b&gt;" in shaded_html([r]) and "<b>" not in shaded_html([r])
    True
    """
    spans = []
    for record, x in zip(records, shade(records, metric), strict=True):
        tip = "; ".join(f"{i}. {t!r} {math.exp(lp) * 100:.1f}%"
                        for i, (_, t, lp) in enumerate(record.top, start=1))
        flag = "" if record.in_top else " outline:1px dashed #b00;"
        dark = x > 0.6
        spans.append(
            f"<span title='{escape(f'p={record.prob:.3f}; {tip}')}' style='background:"
            f"{_colour(x)};{' color:#fff;' if dark else ''}{flag} white-space:pre-wrap; "
            f"border-radius:2px'>{escape(visible(record.text, breaks=True))}</span>"
        )
    head = f"<div style='opacity:.7;font-size:smaller'>{escape(title)}</div>" if title else ""
    lead_html = f"<span style='opacity:.6'>{escape(lead)}</span>" if lead else ""
    return (f"<div class='llm-magic-tokens'>{head}<div style='font-family:monospace;"
            f"line-height:1.7'>{lead_html}{''.join(spans)}</div><div style='opacity:.7;"
            f"font-size:smaller'>{escape(legend(metric, mode))}</div></div>")
