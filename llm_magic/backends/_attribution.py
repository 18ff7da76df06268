"""Attribution on a transformers model: which input tokens drove a predicted token.

Hooks only: the input embeddings come from ``model.get_input_embeddings()`` and
the unmodified model runs on ``inputs_embeds=``. The target f of a row is
log p(token) in nats at the position before the token (or log p(a) - log p(b)
for a contrast), in float32 math on the model's logits.

Rows are batched: each copy in a batch is one row (or one step of a row's
integrated-gradients path, or one occluded input), the copies share one
forward and one backward, and the gradient of a copy is its own row's
gradient (batch elements never meet in a transformer). A causal model's
output at position t does not read later tokens, so every copy runs the same
prefix of the sequence; the backend checks that each row's gradient on the
tokens after it is zero, which also checks that copies did not mix.

Copies per pass are bounded by :data:`PASS_BYTES` of estimated activations;
the sequence by ``max_tokens``, refused before anything runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..common.sizes import format_size
from ..errors import InvalidOptionError, NotAvailableError, PromptTooLongError
from ._attribution_setup import baseline_of, check_gradients, describe

__all__ = ["METHODS", "PASS_BYTES", "AttributionCapture", "Row", "attribute", "nodes", "rows_after",
           "rows_of"]

METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "occlusion")
#: Estimated activation bytes one forward and backward pass may hold (the copies per pass).
PASS_BYTES = 1 << 30
#: The most copies in one pass, whatever the estimate allows.
MAX_COPIES = 64


@dataclass(frozen=True)
class Row:
    """One output token to attribute: the token at ``position`` of the sequence.

    ``position`` may be the sequence's length (the next token after it). ``target``
    None means the token that is there (or the greedy next token after the end);
    ``contrast`` makes f = log p(target) - log p(contrast).
    """

    position: int
    target: int | None = None
    contrast: int | None = None


@dataclass(frozen=True, eq=False)
class AttributionCapture:
    """The scores of one attribution, as plain numpy data (see ``analysis/attribution``)."""

    ids: tuple[int, ...]
    texts: tuple[str, ...]
    positions: tuple[int, ...]
    target_ids: tuple[int, ...]
    contrast_ids: tuple[int, ...] | None
    target_texts: tuple[str, ...]
    contrast_texts: tuple[str, ...] | None
    scores: Any
    value: Any
    baseline_value: Any
    completeness: Any
    baseline: str | None
    notes: tuple[str, ...]
    #: An encoder–decoder's: how many columns are the source, and how many come before the
    #: output (the source, then the decoder's start and any forced language token).
    source_tokens: int | None = None
    prompt_tokens: int | None = None


@contextlib.contextmanager
def _prepared(model: Any) -> Iterator[None]:
    """Eval mode and no parameter gradients for the pass; the model's own states after."""
    import torch

    training = model.training
    grads = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in grads:
        p.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p in grads:
            p.requires_grad_(True)
        model.train(training)


def _per_token_bytes(model: Any) -> int:
    """Rough activation bytes of one token through a forward and backward pass."""
    config = model.config
    text = getattr(config, "get_text_config", lambda: config)()
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or 1)
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 1)
    element = next(model.parameters()).element_size()
    # About 17 hidden-sized tensors per layer live until backward (Korthikanti et al., 2022).
    return max(1, layers * hidden * 17 * max(element, 2))


def _copies(model: Any, length: int) -> int:
    return max(1, min(MAX_COPIES, PASS_BYTES // (length * _per_token_bytes(model))))


class _Runner:
    """Forward passes of copies of one prefix of the sequence, reading f of their rows."""

    def __init__(self, model: Any, rows: list[Row], contrast: bool) -> None:
        import inspect

        self.model = model
        self.rows = rows
        self.contrast = contrast
        self.keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.passes = 0

    def f(self, embeds: Any, which: Sequence[Sequence[int]]) -> Any:
        """f of rows ``which[b]`` in copy b (``[copies, rows]`` float32)."""
        import torch

        length = embeds.shape[1]
        wanted = sorted({self.rows[r].position - 1 for rs in which for r in rs})
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "use_cache": False}
        if self.keep:
            kwargs["logits_to_keep"] = torch.tensor(wanted, device=embeds.device)
        logits = self.model(**kwargs).logits
        self.passes += 1
        at = ({p: i for i, p in enumerate(wanted)} if logits.shape[1] == len(wanted)
              else {p: p for p in wanted})
        if logits.shape[1] not in (len(wanted), length):
            raise NotAvailableError(f"{type(self.model).__name__} returned logits for "
                                    f"{logits.shape[1]} positions of {length}.")
        out = []
        for b, rs in enumerate(which):
            index = torch.tensor([at[self.rows[r].position - 1] for r in rs], device=logits.device)
            lp = torch.log_softmax(logits[b, index].float(), dim=-1)
            pick = torch.arange(len(rs), device=lp.device)
            value = lp[pick, torch.tensor([self.rows[r].target for r in rs], device=lp.device)]
            if self.contrast:
                other = torch.tensor([self.rows[r].contrast for r in rs], device=lp.device)
                value = value - lp[pick, other]
            out.append(value)
        return torch.stack(out)


def _gradients(runner: _Runner, embeds: Any, rows: Sequence[int]) -> tuple[Any, Any]:
    """Each copy's gradient of its own row's f, and the f values (one backward)."""
    leaf = embeds.detach().requires_grad_(True)
    value = runner.f(leaf, [[r] for r in rows])[:, 0]
    (grad,) = _autograd().grad(value.sum(), leaf)
    for b, r in enumerate(rows):  # causal and unmixed: nothing at or after the row's token
        p = runner.rows[r].position
        after = grad[b, p:].abs().max().item() if p < grad.shape[1] else 0.0
        if after > 1e-6 * max(grad[b, :p].abs().max().item(), 1e-30) + 1e-30:
            raise NotAvailableError(
                f"{type(runner.model).__name__}'s prediction of token {p} depends on later "
                "tokens; attribution reads causal language models only."
            )
    return grad, value.detach()


def _autograd() -> Any:
    import torch

    return torch.autograd


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _gradient_scores(runner: _Runner, x: Any, method: str, size: Callable[[int], int],
                     scores: Any) -> Any:
    import torch

    values = torch.zeros(len(runner.rows), dtype=torch.float32)
    order = sorted(range(len(runner.rows)), key=lambda r: runner.rows[r].position)
    for chunk in _chunks(order, size(runner.rows[order[-1]].position)):
        length = max(runner.rows[r].position for r in chunk)
        embeds = x[:length].unsqueeze(0).expand(len(chunk), -1, -1)
        grad, value = _gradients(runner, embeds, chunk)
        for b, r in enumerate(chunk):
            p = runner.rows[r].position
            g = grad[b, :p].float()
            row = g.norm(dim=-1) if method == "saliency" else (x[:p].float() * g).sum(-1)
            scores[r, :p] = row.cpu().numpy()
            values[r] = value[b].cpu()
    return values.numpy()


def nodes(steps: int) -> tuple[list[float], list[float]]:
    """The path's points alpha_k = (k / steps)^3 and their trapezoid weights.

    Dense near the baseline, where a normalization layer fed a near-zero
    embedding makes the gradient steep: on a tiny Llama with the zero baseline,
    64 evenly spaced intervals missed completeness by over 100%, these by 2%.
    """
    alphas = [(k / steps) ** 3 for k in range(steps + 1)]
    weights = [((alphas[min(k + 1, steps)] - alphas[max(k - 1, 0)]) / 2) for k in range(steps + 1)]
    return alphas, weights


def _integrated(runner: _Runner, x: Any, base: Any, steps: int, size: Callable[[int], int],
                scores: Any) -> tuple[Any, Any]:
    """The trapezoid rule over :func:`nodes` on the straight path from ``base`` to ``x``."""
    import torch

    n_rows = len(runner.rows)
    alphas, weights = nodes(steps)
    total = torch.zeros(n_rows, x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    ends = torch.zeros(n_rows, 2, dtype=torch.float32)
    jobs = sorted(((r, k) for r in range(n_rows) for k in range(steps + 1)),
                  key=lambda job: (runner.rows[job[0]].position, job[1]))
    delta = (x - base).float()
    for chunk in _chunks(jobs, size(max(runner.rows[r].position for r, _ in jobs))):
        length = max(runner.rows[r].position for r, _ in chunk)
        at = torch.tensor([alphas[k] for _, k in chunk], dtype=x.dtype, device=x.device)
        embeds = base[:length] + at[:, None, None] * (x[:length] - base[:length])
        grad, value = _gradients(runner, embeds, [r for r, _ in chunk])
        for b, (r, k) in enumerate(chunk):
            total[r, :length] += weights[k] * grad[b].float()
            if k in (0, steps):
                ends[r, 0 if k == 0 else 1] = value[b].cpu()
    for r, row in enumerate(runner.rows):
        p = row.position
        scores[r, :p] = (delta[:p] * total[r, :p]).sum(-1).cpu().numpy()
    return ends[:, 1].numpy(), ends[:, 0].numpy()


def _occlusion(runner: _Runner, x: Any, base: Any, size: Callable[[int], int],
               scores: Any) -> Any:
    """f(x) - f(x with input j's embedding replaced by the baseline's), every row, every j."""
    import torch

    length = max(row.position for row in runner.rows)
    everything = list(range(len(runner.rows)))
    with torch.no_grad():
        value = runner.f(x[:length].unsqueeze(0), [everything])[0].cpu()
        for chunk in _chunks(list(range(length)), size(length)):
            embeds = x[:length].unsqueeze(0).repeat(len(chunk), 1, 1)
            for b, j in enumerate(chunk):
                embeds[b, j] = base[j]
            occluded = runner.f(embeds, [everything] * len(chunk)).cpu()
            for b, j in enumerate(chunk):
                for r, row in enumerate(runner.rows):
                    if j < row.position:
                        scores[r, j] = float(value[r] - occluded[b, r])
    return value.numpy()


def attribute(model: Any, ids: Sequence[int], rows: Sequence[Row], *, method: str,
              steps: int, baseline: Any, max_tokens: int, texts: Callable[[int], str],
              pad_id: int | None = None, context_length: int | None = None,
              quantized: str | None = None) -> AttributionCapture:
    """Attribute each row's f to the tokens before it.

    Examples
    --------
    >>> cap = attribute(model, [1, 2, 3], [Row(3)], method="saliency", steps=50,
    ...                 baseline=None, max_tokens=1024, texts=str)  # doctest: +SKIP
    >>> cap.scores.shape  # doctest: +SKIP
    (1, 3)
    """
    import numpy as np
    import torch

    if method not in METHODS:
        raise InvalidOptionError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    ids = [int(i) for i in ids]
    n = len(ids)
    if n == 0:
        raise InvalidOptionError("The text encodes to no tokens; write some text to attribute.")
    embed = model.get_input_embeddings()
    vocab = int(model.get_output_embeddings().weight.shape[0]
                if model.get_output_embeddings() is not None else model.config.vocab_size)
    columns = max(row.position for row in rows)
    evaluations = len(rows) * (steps + 1 if method == "integrated_gradients" else 1)
    if method == "occlusion":
        evaluations = columns + 1
    if columns > max_tokens:
        cost = format_size(columns * _per_token_bytes(model))
        raise InvalidOptionError(
            f"Attributing {len(rows)} output token(s) reads {columns} tokens, past the cap of "
            f"{max_tokens}: {evaluations} {'forward' if method == 'occlusion' else 'gradient'} "
            f"evaluations of up to {columns} tokens (about {cost} of activations each). "
            "Shorten the text, pick fewer output tokens with positions=, or raise the cap "
            f"(max_tokens={columns}) if the time and memory are there."
        )
    if context_length is not None and columns > context_length:
        raise PromptTooLongError(f"The sequence is {columns} tokens, but the model reads at most "
                                 f"{context_length}. Shorten the text.")
    if quantized == "int4" and method != "occlusion":
        raise NotAvailableError(
            "Gradients do not flow through int4 weights (torchao's int4 kernel has no "
            "derivative): use method='occlusion', or a model loaded with quantize='int8' or "
            "without quantize."
        )
    device = embed.weight.device
    with _prepared(model):
        if quantized and method != "occlusion":
            check_gradients(model)
        with torch.no_grad():
            x = embed(torch.tensor(ids[:columns], device=device)).detach()
        resolved = _targets(model, x, ids, rows, vocab)
        contrast = any(row.contrast is not None for row in resolved)
        runner = _Runner(model, resolved, contrast)
        def size(length: int) -> int:
            return _copies(model, length)

        scores = np.full((len(rows), columns), np.nan, dtype=np.float32)
        base = base_text = None
        base_value = completeness = None
        if method in ("integrated_gradients", "occlusion"):
            base, base_text = baseline_of(model, embed, "zero" if baseline is None else baseline,
                                        columns, pad_id, texts, vocab)
        if method in ("saliency", "input_x_gradient"):
            value = _gradient_scores(runner, x, method, size, scores)
        elif method == "integrated_gradients":
            value, base_value = _integrated(runner, x, base, steps, size, scores)
            gap = value - base_value
            error = np.abs(np.nansum(scores.astype(np.float64), axis=1) - gap)
            with np.errstate(divide="ignore", invalid="ignore"):
                completeness = np.where(gap != 0, error / np.abs(gap),
                                        np.where(error == 0, 0.0, np.inf))
        else:
            value = _occlusion(runner, x, base, size, scores)
    notes = describe(method, steps, contrast, runner.passes, model, base_text, quantized)
    return AttributionCapture(
        ids=tuple(ids[:columns]), texts=tuple(texts(i) for i in ids[:columns]),
        positions=tuple(row.position for row in resolved),
        target_ids=tuple(int(row.target or 0) for row in resolved),
        contrast_ids=tuple(int(row.contrast or 0) for row in resolved) if contrast else None,
        target_texts=tuple(texts(int(row.target or 0)) for row in resolved),
        contrast_texts=tuple(texts(int(row.contrast or 0)) for row in resolved)
        if contrast else None,
        scores=scores, value=np.asarray(value, dtype=np.float64),
        baseline_value=None if base_value is None else np.asarray(base_value, dtype=np.float64),
        completeness=completeness, baseline=base_text, notes=notes,
    )


def _targets(model: Any, x: Any, ids: list[int], rows: Sequence[Row], vocab: int) -> list[Row]:
    """Fill in each row's target (the token there, or the greedy next one); check ids."""
    import torch

    out = []
    greedy: dict[int, int] = {}
    need = [row.position for row in rows if row.target is None and row.position >= len(ids)]
    if need:
        with torch.no_grad():
            logits = model(inputs_embeds=x[: max(need)].unsqueeze(0), use_cache=False).logits
        greedy = {p: int(logits[0, p - 1].float().argmax()) for p in need}
    for row in rows:
        if not 1 <= row.position <= len(ids):
            raise InvalidOptionError(f"Position {row.position} has no token before it to "
                                     f"attribute to (1 to {len(ids)}).")
        target = row.target
        if target is None:
            target = ids[row.position] if row.position < len(ids) else greedy[row.position]
        for token in (target, row.contrast):
            if token is not None and not 0 <= token < vocab:
                raise InvalidOptionError(f"Token id {token} is not in the vocabulary "
                                         f"(ids 0 to {vocab - 1}).")
        if row.contrast is not None and row.contrast == target:
            raise InvalidOptionError(f"The contrast compares token {target} with itself; pass "
                                     "two different tokens.")
        out.append(Row(row.position, target, row.contrast))
    return out


def rows_after(specs: Sequence[tuple[Any, Any, Any]], before: int,
               count: int) -> list[tuple[Any, Any, Any]]:
    """Rows whose positions index an output of ``count`` tokens after ``before`` tokens (None:
    the token after the output; negative: from its end; no rows: every output token), as
    positions in the whole sequence; an empty output refused."""
    if count == 0:
        raise InvalidOptionError("The output encodes to no tokens; write the output to "
                                 "attribute.")
    for position, _, _ in specs:
        if position is not None and (isinstance(position, bool) or not -count <= position < count):
            raise InvalidOptionError(f"Output token {position} is not in the output (tokens 0 "
                                     f"to {count - 1}, or negative from the end).")
    if not specs:
        specs = [(k, None, None) for k in range(count)]
    return [(None if p is None else before + p % count, t, c) for p, t, c in specs]


def rows_of(specs: Sequence[tuple[Any, Any, Any]], n: int,
            token_id: Callable[[str], int]) -> list[Row]:
    """Rows from (position or None, target, contrast) with targets as ids or one token's text."""
    def token(t: Any) -> int | None:
        return None if t is None else token_id(t) if isinstance(t, str) else int(t)

    return [Row(n if p is None else int(p), token(t), token(c)) for p, t, c in specs]
