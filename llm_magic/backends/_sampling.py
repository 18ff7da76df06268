"""Sampling with a seed that belongs to one generation, never to torch's global RNG.

transformers' ``generate()`` samples with ``torch.multinomial`` on torch's
global generator and takes no generator of its own. Seeding that global
generator would make a seed depend on whatever else draws from it meanwhile:
another model generating in another thread, seeded or not (the manager locks
each model, not torch). So a seeded sampling runs ``generate()`` greedily
over logits processors that do what its sampling step does:

1. the warpers transformers applies when ``do_sample=True``, built here in its
   order and with its semantics (:func:`warpers`), after its default processors
   (repetition penalty and the like) exactly as in sampling;
2. :class:`SeededDraw`, which draws one token per row from the softmax of the
   warped scores with ``torch.multinomial(..., generator=own)`` and leaves only
   that token finite, so the greedy argmax picks it.

The generator is a ``torch.Generator`` on the logits' device seeded with the
seed, which yields what the global generator yields after
``torch.manual_seed(seed)``: a seed gives the same text as before (tests check
it against transformers' own sampling on the CPU). A batch
has one generator, drawing all its rows at each step (as transformers does):
a seed fixes the texts of that batch, prompts and order included; a row need
not equal the same prompt generated alone with that seed.

Unseeded sampling is left to transformers (``do_sample=True``, global RNG).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["SeededDraw", "processors", "warpers"]

#: Sampling settings of a GenerationConfig that its greedy form must not carry.
_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
             "eta_cutoff")


def warpers(config: Any, defaults: Any, device: Any) -> list[Any]:
    """The warpers transformers' sampling applies for ``config``, in its order.

    A setting left ``None`` in ``config`` takes the model's own (``defaults``,
    its ``generation_config``), as ``generate()`` fills it in; transformers'
    global defaults add no warper. Mirrors the sampling part of
    ``GenerationMixin._get_logits_processor`` (one beam: keep at least one token).
    """
    import transformers as tf

    def value(name: str) -> Any:
        own = getattr(config, name, None)
        return own if own is not None else getattr(defaults, name, None)

    out: list[Any] = []
    temperature, top_h, top_k, top_p = (value(n) for n in ("temperature", "top_h", "top_k",
                                                           "top_p"))
    min_p, typical_p, epsilon, eta = (value(n) for n in ("min_p", "typical_p",
                                                         "epsilon_cutoff", "eta_cutoff"))
    if temperature is not None and temperature != 1.0:
        out.append(tf.TemperatureLogitsWarper(temperature))
    if top_h is not None:
        out.append(tf.TopHLogitsWarper(top_h=top_h))
    if top_k is not None and top_k != 0:
        out.append(tf.TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        out.append(tf.TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    if min_p is not None:
        out.append(tf.MinPLogitsWarper(min_p=min_p, min_tokens_to_keep=1))
    if typical_p is not None and typical_p < 1.0:
        out.append(tf.TypicalLogitsWarper(mass=typical_p, min_tokens_to_keep=1))
    if epsilon is not None and 0.0 < epsilon < 1.0:
        out.append(tf.EpsilonLogitsWarper(epsilon=epsilon, min_tokens_to_keep=1))
    if eta is not None and 0.0 < eta < 1.0:
        out.append(tf.EtaLogitsWarper(epsilon=eta, min_tokens_to_keep=1, device=device))
    return out


class SeededDraw:
    """Last logits processor of a seeded sampling: draws each row's token with its own generator.

    Returns scores of -inf everywhere but the drawn token (0), so greedy
    decoding appends exactly the draw.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: Any = None  # made on the logits' device at the first step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        if self._generator is None:
            self._generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        probs = torch.softmax(scores, dim=-1)  # what transformers' sampling step computes
        drawn = torch.multinomial(probs, num_samples=1, generator=self._generator)
        out = torch.full_like(scores, -torch.inf)
        return out.scatter_(1, drawn, 0.0)


def processors(config: Any, warps: list[Any], seed: int | None,
               recorder: Any = None) -> list[Any]:
    """The logits processors of one generation, in order, given its sampling ``config``.

    ``recorder`` is a sampled-mode token recorder or None. Unseeded, it is the
    only one and transformers samples after it (it applies ``warps`` itself to
    record). Seeded, ``config`` becomes greedy and the list is ``warps``, the
    recorder (which then records the warped scores as they are) and the draw.
    """
    mine = [recorder] if recorder is not None else []
    if seed is None or not config.do_sample:
        return mine
    config.do_sample = False
    for name in _SAMPLING:
        if getattr(config, name, None) is not None:
            setattr(config, name, None)
    return [*warps, *mine, SeededDraw(seed)]
