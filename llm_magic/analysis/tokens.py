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
from ..common.heatmap import ink
from ..common.text import check_text
from ..common.visible import visible
from ..errors import InvalidOptionError
from ..manager import ModelManager, get_manager
from ._resolve import resolve

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
    #: With ``target=``: the text the target was scored after (or for, on an encoder–decoder).
    source: str | None = None

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
        return (f"<Scores of {self.model!r}: {len(self.tokens)} tokens scored, log-probability "
                f"{self.logprob:.3f}, perplexity {self.perplexity:.2f}>")


def score(text: str, model: str | None = None, *, target: str | None = None, logprobs: int = 5,
          max_tokens: int | None = None, manager: ModelManager | None = None) -> Scores:
    """Teacher-force ``text`` through a model in one forward pass and record every token.

    Parameters
    ----------
    text : str
        The text, tokenized as the model's tokenizer does by default.
    model : str, optional
        A loaded model's name, or a source to load; the default model when omitted.
    target : str, optional
        Score only this text: the continuation of ``text`` on a causal model, the
        output for the source ``text`` on an encoder–decoder (the teacher-forced
        log-likelihood of a translation: compare two candidates by it).
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
    check_text(text, "The text", hint="write some text to score")
    check_logprobs(logprobs)
    limit = SCORE_MAX_TOKENS if max_tokens is None else max_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise InvalidOptionError(f"max_tokens must be an integer of at least 2, not {limit!r}.")
    if target is not None:
        check_text(target, "The target", hint="write the continuation or output to score")
    name = resolve(manager, model)
    with manager.checkout(name) as backend:
        if target is None:
            captured = backend.score(text, logprobs=logprobs, max_tokens=limit)
        else:
            captured = backend.score_target(text, target, logprobs=logprobs, max_tokens=limit)
    return Scores(text=text if target is None else target, model=name, ids=captured.ids,
                  first=captured.texts[0], tokens=captured.records, logprobs=logprobs,
                  source=None if target is None else text)


# -- the view and its static fallback -------------------------------------------


def view(result: Any) -> Any:
    """The token probability view of a ``Generation`` with records, or of :class:`Scores`."""
    return _views.view_class("tokens")(result)


def shade(records: Sequence[TokenRecord], metric: str = "probability") -> list[float]:
    """Each token's shade from 0 (light) to 1 (dark) for ``metric``.

    probability: 1 - p, so the tokens the model doubted stand out; surprisal
    (-ln p) and entropy, both in nats: each over the text's largest.
    """
    if metric not in METRICS:
        raise InvalidOptionError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}.")
    if metric == "probability":
        return [1.0 - r.prob for r in records]
    values = [-r.logprob if metric == "surprisal" else (r.entropy or 0.0) for r in records]
    values = [v if math.isfinite(v) else 0.0 for v in values]
    top = max(values, default=0.0)
    return [v / top if top > 0 else 0.0 for v in values]


def legend(metric: str, mode: str) -> str:
    """The one line that says what the shading means and which distribution it shows."""
    what = {
        "probability": "darker = less likely (1 - p)",
        "entropy": "darker = more uncertain step (entropy in nats, scaled to this text's "
                   "largest)",
        "surprisal": "darker = more surprising (surprisal -ln p in nats, scaled to this "
                     "text's largest)",
    }[metric]
    source = ("the model's raw distribution" if mode == "raw"
              else "the distribution sampled from (after temperature, top-k, top-p)")
    return f"Shading: {what}; probabilities of {source}."


def _colour(x: float) -> tuple[int, int, int]:
    """The shade ``x`` (0 to 1) as [r, g, b], as ``shadeColour()`` in widgets/static/tokens.js."""
    x = min(1.0, max(0.0, x))
    # Halves round up, as Math.round does (Python's round() would round them to even).
    r, g, b = (math.floor(a + (c - a) * x + 0.5) for a, c in zip(_LIGHT, _DARK, strict=True))
    return r, g, b


#: One token of the snapshot: isolated, so no text inside it reorders its neighbours.
_TOKEN_STYLE = ("display:inline-block;white-space:pre;unicode-bidi:isolate;border-radius:2px;"
                "border:1px solid rgba(0,0,0,.12);padding:0 1px;margin:0 1px 1px 0")
_SMALL = "font-size:smaller;opacity:.75"


def shaded_html(records: Sequence[TokenRecord], *, lead: str = "", mode: str = "raw",
                metric: str = "probability", title: str = "") -> str:
    """Escaped HTML of the tokens shaded by ``metric``, each with its alternatives as a tooltip.

    The view as it first looks: what the shading shows, the title, the text
    (left-aligned, each token isolated and inked for WCAG AA contrast), the legend.

    Examples
    --------
    >>> r = TokenRecord(1, "<b>", -0.1, 1, ((1, "<b>", -0.1),))
    >>> "&lt;b&gt;" in shaded_html([r]) and "<b>" not in shaded_html([r])
    True
    """
    spans = []
    for record, x in zip(records, shade(records, metric), strict=True):
        tip = "; ".join(f"{i}. \u201c{visible(t)}\u201d {math.exp(lp) * 100:.1f} %"
                        for i, (_, t, lp) in enumerate(record.top, start=1))
        flag = "" if record.in_top else "outline:1px dashed #b00;"
        rgb = _colour(x)
        spans.append(
            f"<span title='{escape(f'p {record.prob * 100:.1f} %; alternatives: {tip}')}' "
            f"style='background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{ink(rgb)};"
            f"{flag}{_TOKEN_STYLE}'>{escape(visible(record.text))}</span>"
            + "<br>" * record.text.count("\n")  # as the live view: the box, then the break
        )
    head = f"<div style='font-weight:600'>{escape(title)}</div>" if title else ""
    what = (f"<div style='{_SMALL}'>Token probabilities, shaded by {escape(metric)}; "
            f"point at a token for its alternatives.</div>")
    lead_html = (f"<span style='opacity:.7;white-space:pre-wrap;unicode-bidi:isolate'>"
                 f"{escape(visible(lead, breaks=True))}</span>") if lead else ""
    return (f"<div class='llm-magic-tokens' dir='ltr' style='text-align:left'>{what}{head}"
            f"<div style='font-family:monospace;line-height:1.9;margin:4px 0'>{lead_html}"
            f"{''.join(spans)}</div><div style='{_SMALL}'>{escape(legend(metric, mode))}</div>"
            f"</div>")
