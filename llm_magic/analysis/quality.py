"""What quantizing cost: a model's next-token predictions over a text against a reference's.

:func:`quality` reads one text through both models, one forward pass each, and
compares their distributions at every position: how often their likeliest
token agrees, the KL divergence from the reference (mean and max, in nats),
and the perplexity of each on the text. Made for a quantized model against
the full-precision one (``lm.quality("demo-int8", against="demo", text=...)``),
it compares any two loaded models that share a tokenizer.

The reference is a loaded model's name or a source. A source that is not loaded
is loaded (as stored, on the model's device) only when the budget has room for
it without evicting anything; otherwise nothing is loaded and the error says so.
A reference loaded for the call is unloaded after it.

Examples
--------
>>> import llm_magic as lm
>>> q = lm.load("demo", quantize="int8")                        # doctest: +SKIP
>>> r = lm.quality("demo-int8", against="demo",
...                text="The import statement binds names.")  # doctest: +SKIP
>>> r.agreement, r.mean_kl                                      # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any

from ..common.sizes import format_size
from ..common.text import check_text
from ..common.visible import visible
from ..errors import BudgetExceededError, InvalidOptionError
from ..manager import ModelManager, get_manager
from ..manager.room import estimate as _estimate
from ..resources.rooms import plan_load as _plan_load
from ._resolve import resolve

__all__ = ["QUALITY_MAX_TOKENS", "QualityReport", "quality"]

#: Longest text :func:`quality` reads unless a call asks for more (two T x vocab logits).
QUALITY_MAX_TOKENS = 2048


@dataclass(frozen=True, repr=False)
class QualityReport:
    """How far a model's predictions are from a reference's, over one text.

    Attributes
    ----------
    model, reference : str
        The two models' names.
    text : str
        The text as given.
    tokens : tuple of str
        Each token's text; position i of the per-token arrays predicts ``tokens[i + 1]``.
    kl : tuple of float
        KL(reference || model) at each position, in nats.
    agree : tuple of bool
        Whether both models' likeliest next token is the same at each position.
    logprob, reference_logprob : tuple of float
        Each model's log-probability (natural log) of the text's own next token.
    loaded_reference : bool
        True when the reference was loaded for this call (and unloaded after it).

    Examples
    --------
    >>> r = lm.quality("demo-int8", against="demo", text="The import statement")  # doctest: +SKIP
    >>> print(r)                                                                 # doctest: +SKIP
    """

    model: str
    reference: str
    text: str
    tokens: tuple[str, ...]
    kl: tuple[float, ...]
    agree: tuple[bool, ...]
    logprob: tuple[float, ...]
    reference_logprob: tuple[float, ...]
    loaded_reference: bool = False

    @property
    def predicted(self) -> int:
        """How many next tokens were compared (every token after the first)."""
        return len(self.kl)

    @property
    def agreement(self) -> float:
        """Share of positions where both models' likeliest next token is the same (0 to 1)."""
        return sum(self.agree) / len(self.agree)

    @property
    def mean_kl(self) -> float:
        """Mean KL(reference || model) per token, in nats."""
        return math.fsum(self.kl) / len(self.kl)

    @property
    def max_kl(self) -> float:
        """Largest KL(reference || model) of any token, in nats."""
        return max(self.kl)

    @property
    def worst(self) -> int:
        """The position of :attr:`max_kl`: the prediction of ``tokens[worst + 1]``."""
        return max(range(len(self.kl)), key=self.kl.__getitem__)

    @property
    def perplexity(self) -> float:
        """The model's perplexity on the text: ``exp`` of its mean negative log-probability."""
        return math.exp(-math.fsum(self.logprob) / len(self.logprob))

    @property
    def reference_perplexity(self) -> float:
        """The reference's perplexity on the text."""
        return math.exp(-math.fsum(self.reference_logprob) / len(self.reference_logprob))

    def rows(self) -> list[tuple[str, str]]:
        """The report as (what, value) lines."""
        worst = self.worst
        loaded = " (loaded for this call, unloaded after)" if self.loaded_reference else ""
        return [
            ("model", self.model),
            ("reference", self.reference + loaded),
            ("tokens compared", f"{self.predicted:,}"),
            ("top-1 agreement", f"{self.agreement:.2%} ({sum(self.agree):,} of "
                                f"{self.predicted:,})"),
            ("mean KL per token", f"{self.mean_kl:.5f} nats"),
            ("max KL per token", f"{self.max_kl:.4f} nats, predicting "
                                 f"\u201c{visible(self.tokens[worst + 1])}\u201d "
                                 f"(token {worst + 1})"),
            ("perplexity", f"{self.perplexity:.3f} (reference {self.reference_perplexity:.3f})"),
        ]

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        title = f"Quality of {self.model!r} against {self.reference!r}"
        return "\n".join([title, *(f"  {k.ljust(width)}  {v}" for k, v in self.rows())])

    def __repr__(self) -> str:
        return (f"<QualityReport {self.model!r} against {self.reference!r}: "
                f"{self.agreement:.2%} top-1 agreement, mean KL {self.mean_kl:.5f} nats>")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td "
                       f"style='text-align:left'>{escape(v)}</td></tr>" for k, v in self.rows())
        title = f"Quality of {self.model!r} against {self.reference!r}"
        return (f"<div class='llm-magic-quality' dir='ltr' style='text-align:left'>"
                f"<b>{escape(title)}</b><table>{rows}</table>"
                f"<div style='font-size:smaller;opacity:.75'>KL(reference \u2016 model) of the "
                f"next-token distributions, natural log (nats).</div></div>")


def quality(model: str, *, against: str, text: str, target: str | None = None,
            max_tokens: int | None = None,
            manager: ModelManager | None = None) -> QualityReport:
    """Compare ``model``'s next-token predictions over ``text`` with ``against``'s.

    Parameters
    ----------
    model : str
        A loaded model's name (a quantized one, typically), or a source to load.
    against : str
        The reference: a loaded model's name, or a source, loaded as stored on
        ``model``'s device if the budget has room for it without evicting anything
        (and unloaded after).
    text : str
        The text both models read, tokenized as their (shared) tokenizer does; for
        encoder–decoder models (a quantized translator, say), the source.
    target : str, optional
        Encoder–decoder models only, and needed for them: the output whose tokens both
        decoders predict, teacher-forced (the reference's own translation, typically).
    max_tokens : int, optional
        Refuse longer texts (default 2,048 tokens; never past a model's context).

    Returns
    -------
    QualityReport
        Top-1 agreement, mean and max KL per token in nats, both perplexities.

    Raises
    ------
    BudgetExceededError
        ``against`` is not loaded and loading it would pass the budget or evict a model.

    Examples
    --------
    >>> import llm_magic as lm
    >>> lm.load("demo"); lm.load("demo", quantize="int4")        # doctest: +SKIP
    >>> r = lm.quality("demo-int4", against="demo", text="The import statement")  # doctest: +SKIP
    >>> print(r)                                                   # doctest: +SKIP
    >>> lm.quality("demo-translator-int8", against="demo-translator", text="3/3/2021",
    ...            target="2021-03-03")                            # doctest: +SKIP
    """
    manager = manager or get_manager()
    check_text(text, "The text", hint="write some text to compare the models on")
    if target is not None:
        check_text(target, "The target", hint="write the output both models should read")
    limit = QUALITY_MAX_TOKENS if max_tokens is None else max_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise InvalidOptionError(f"max_tokens must be an integer of at least 2, not {limit!r}.")
    check_text(against, "against", hint="name the reference model")
    name = resolve(manager, model)
    if against == name:
        raise InvalidOptionError(f"against={against!r} is the model itself; name the reference "
                                 "(the full-precision model, say).")
    reference = against if manager.is_loaded(against) else _resident(manager, against, name)
    loaded = reference is None
    if reference is None:
        reference = _load_reference(manager, against, manager.info(name).device)
    try:
        with manager.checkout(name) as backend, manager.checkout(reference) as ref:
            captured = backend.divergence(ref, text, max_tokens=limit, target=target)
    finally:
        if loaded:
            manager.unload(reference)
    return QualityReport(
        model=name, reference=reference, text=text, tokens=captured.texts,
        kl=tuple(float(x) for x in captured.kl), agree=tuple(bool(x) for x in captured.agree),
        logprob=tuple(float(x) for x in captured.logprob),
        reference_logprob=tuple(float(x) for x in captured.reference_logprob),
        loaded_reference=loaded,
    )


def _resident(manager: ModelManager, source: str, name: str) -> str | None:
    """A loaded model from ``source`` as stored (not quantized) on ``name``'s device, if any."""
    device = manager.info(name).device
    for info in manager.models():
        if (info.source == source.strip() and not info.quantization and info.device == device
                and info.name != name):
            return info.name
    return None


def _load_reference(manager: ModelManager, source: str, device: str) -> str:
    """Load the reference when the budget has room for it as it stands; else say why not."""
    estimate = _estimate(source, device=device)
    again = f"lm.load({source!r}, device={device!r})"
    try:
        placement = _plan_load(manager.limits, manager.models(), device=estimate.device,
                               requested_device=estimate.device, source=source,
                               dtype=estimate.dtype, memory=estimate.memory,
                               largest_block=estimate.largest_block)
    except BudgetExceededError as exc:
        raise BudgetExceededError(
            f"The reference {source!r} is not loaded, and the budget has no room for it "
            f"(about {format_size(estimate.memory)}), so it was not loaded: {exc}"
        ) from exc
    if placement.evict:
        gone = ", ".join(repr(n) for n in placement.evict)
        raise BudgetExceededError(
            f"The reference {source!r} is not loaded, and loading it (about "
            f"{format_size(estimate.memory)} on {estimate.device}) would evict {gone}, so it was "
            f"not loaded. Load it yourself ({again}) or unload a model, then call again."
        )
    return manager.load(source, device=device).name
