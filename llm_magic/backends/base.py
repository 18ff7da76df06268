"""The interface every backend satisfies.

A backend is one loaded model. It never assumes that a model is a torch
module, so a remote, OpenAI-compatible server can satisfy it as well.

Generation is split in two so that the notebook thread stays responsive:
:meth:`GenerationJob.run` blocks in a worker thread and hands raw chunks to
``put``; :meth:`GenerationJob.decode` turns them into text in the caller's
thread.
"""

from __future__ import annotations

import abc
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..common.text import shown
from ..errors import InvalidOptionError, NotAvailableError

if TYPE_CHECKING:
    import numpy as np

    from ._kept import KeptCaches

__all__ = ["AttentionCapture", "Backend", "BatchResult", "DivergenceCapture", "GenerationJob",
           "GenerationRequest",
           "LOGPROBS_MODES", "LensCapture", "MAX_LOGPROBS", "LoadSpec", "ScoreCapture",
           "DEFAULT_MAX_NEW_TOKENS", "TokenRecord", "check_logprobs"]

#: What a token record's probabilities describe: the model's own distribution
#: (softmax of the raw logits) or the one sampled from (after temperature, top-k, top-p).
LOGPROBS_MODES = ("raw", "sampled")
#: The most alternatives a token record keeps (OpenAI's convention for top_logprobs).
MAX_LOGPROBS = 20
#: New tokens when a call or cell gives no length.
DEFAULT_MAX_NEW_TOKENS = 128


def check_logprobs(logprobs: int | None, mode: str = "raw") -> None:
    """Refuse a K outside 1 to :data:`MAX_LOGPROBS`, or an unknown mode."""
    if logprobs is not None:
        if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not (
            1 <= logprobs <= MAX_LOGPROBS
        ):
            raise InvalidOptionError(
                f"logprobs is how many alternatives each token keeps: an integer from 1 to "
                f"{MAX_LOGPROBS}, not {shown(logprobs)}."
            )
    if mode not in LOGPROBS_MODES:
        raise InvalidOptionError(
            f"logprobs_mode must be 'raw' (the model's own distribution) or 'sampled' (after "
            f"temperature, top-k and top-p), not {mode!r}."
        )



@dataclass(frozen=True)
class LoadSpec:
    """What the user asked to load, normalised.

    ``dtype`` and ``device`` are still the user's words ("auto" included);
    the backend resolves them and reports what it chose in :meth:`Backend.describe`.
    """

    source: str
    name: str
    kind: str  # "demo", "local", "hub" or "url"
    path: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    #: A served model: its id on the server, and the environment variable that holds the key.
    model: str | None = None
    api_key_env: str | None = None
    #: Weight-only quantization of the linear layers: None, "int8" or "int4".
    quantize: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """Validated sampling settings for one prompt."""

    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    system: str | None = None
    chat: bool | None = None
    #: False when max_new_tokens is the default: then it is fitted to the context quietly.
    explicit_length: bool = True
    #: Record each new token's log-probability and this many alternatives (None: no records).
    logprobs: int | None = None
    #: "raw" or "sampled" (see :data:`LOGPROBS_MODES`).
    logprobs_mode: str = "raw"
    #: Continue from these token ids instead of the rendered prompt (a branch).
    prefix_ids: tuple[int, ...] | None = None
    #: The output so far that this request continues (a branch): the trailing
    #: ``len(lead_ids)`` ids of ``prefix_ids``, or ``lead`` text for a served model.
    lead_ids: tuple[int, ...] = ()
    lead: str = ""
    #: A conversation: every message so far, the new user turn last, as (role, content)
    #: pairs. The backend renders them (chat template, or the plain transcript) instead
    #: of ``prompt`` and ``system``.
    messages: tuple[tuple[str, str], ...] | None = None
    #: Keep the model's cache under this key after the run, and reuse what still
    #: matches of it on the next run with the same key (a conversation's turns).
    keep: str | None = None
    #: A translation model's output language (mBART, NLLB: its first token is forced).
    target_lang: str | None = None

    def chat_messages(self) -> list[dict[str, str]]:
        """What a chat template (or a chat endpoint) is given: a conversation's messages,
        else the system text and the prompt as its one user message."""
        if self.messages is not None:
            return [{"role": role, "content": text} for role, text in self.messages]
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class BatchResult:
    """One prompt's outcome in a batch."""

    text: str
    prompt_tokens: int
    new_tokens: int
    stop_reason: str
    #: One record per new token when the requests asked for logprobs.
    records: tuple[TokenRecord, ...] | None = None
    #: The prompt's token ids as the model saw them, padding left out.
    prompt_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TokenRecord:
    """One token as the model predicted it: its probability and the likeliest alternatives.

    Attributes
    ----------
    id : int or None
        The token id (None only where a served model does not report ids).
    text : str
        The token's text on its own; a piece of a multi-byte character shows its
        bytes (``\\xe2``).
    logprob : float
        Natural log of the token's probability (float32 math on the model's device).
    rank : int or None
        1 for the likeliest token; None where unknown (a served token outside the
        alternatives the server sent).
    top : tuple of (id, text, logprob)
        The K likeliest tokens at this step, likeliest first.
    entropy : float or None
        Entropy of the whole distribution at this step, in nats (None where unknown).

    Examples
    --------
    >>> r = TokenRecord(7, " the", -0.5, 1, ((7, " the", -0.5), (9, " a", -1.5)))
    >>> round(r.prob, 3), r.in_top
    (0.607, True)
    """

    id: int | None
    text: str
    logprob: float
    rank: int | None
    top: tuple[tuple[int | None, str, float], ...]
    entropy: float | None = None

    @property
    def prob(self) -> float:
        """The token's probability."""
        return math.exp(self.logprob)

    @property
    def surprisal(self) -> float:
        """``-logprob`` in nats: how surprised the model was by this token.

        Nats (natural logarithm) are llm_magic's one unit for surprisal, entropy and KL.
        """
        return -self.logprob

    @property
    def in_top(self) -> bool:
        """Whether the token is one of the K alternatives recorded with it."""
        return self.rank is not None and self.rank <= len(self.top)

    @property
    def others(self) -> float:
        """Probability of every token outside :attr:`top` (1 - the sum of the top K)."""
        return max(0.0, 1.0 - sum(math.exp(lp) for _, _, lp in self.top))


@dataclass(frozen=True)
class ScoreCapture:
    """A text teacher-forced through the model: its ids and one record per token after the first."""

    ids: tuple[int, ...]
    texts: tuple[str, ...]
    records: tuple[TokenRecord, ...]


@dataclass(frozen=True)
class AttentionCapture:
    """The attention weights of one forward pass, as plain numpy data.

    Attributes
    ----------
    ids : tuple of int
        The token ids of the sequence.
    tokens : tuple of str
        The tokenizer's own token strings (``"Ġthe"``, ``"[CLS]"``).
    labels : tuple of str
        The same tokens as readable text (byte-level tokens decoded, whitespace shown).
    layers : tuple of numpy.ndarray
        One float16 array of shape (heads, T, T) per layer; row = query, column = key.
    causal : bool
        True for a causal language model (each token sees only those before it).
    pooled : numpy.ndarray
        Every head averaged over blocks to (layers, heads, s, s) float32 with
        s = min(T, 32): the overview that thumbnails draw, computed while each
        layer's weights are at hand.
    """

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    labels: tuple[str, ...]
    layers: tuple[np.ndarray, ...]
    causal: bool
    pooled: np.ndarray


@dataclass(frozen=True, eq=False)
class LensCapture:
    """The logit lens of one forward pass, as plain numpy data.

    Rows are the embeddings (row 0), then each block's output; the last row is
    the model's own output distribution. Position t predicts token t + 1.

    Attributes
    ----------
    ids : tuple of int
        The token ids of the sequence.
    texts : tuple of str
        Each token's text on its own.
    top_ids, top_probs : numpy.ndarray
        (rows, T, k): the k likeliest tokens of each row and position (int32, float32).
    final_prob, entropy, kl : numpy.ndarray
        (rows, T) float32: the probability of the final prediction (the last row's
        top token), the entropy in nats, the KL divergence from the final distribution.
    final_rank : numpy.ndarray
        (rows, T) int32: the final prediction's rank (1 = likeliest).
    vocab : dict of int to str
        The text of every id in ``ids`` and ``top_ids``.
    vocab_size : int
        Size of the output vocabulary.
    check : float
        How far the lens of the last block was from the model's logits (the self-check).
    """

    ids: tuple[int, ...]
    texts: tuple[str, ...]
    top_ids: np.ndarray
    top_probs: np.ndarray
    final_prob: np.ndarray
    final_rank: np.ndarray
    entropy: np.ndarray
    kl: np.ndarray
    vocab: dict[int, str]
    vocab_size: int
    check: float


@dataclass(frozen=True, eq=False)
class DivergenceCapture:
    """Two models' next-token distributions over one text, compared at every position.

    Position t compares the predictions of token t + 1, so each array has one
    entry per token after the first.

    Attributes
    ----------
    ids : tuple of int
        The token ids of the text (both models' tokenizers agree on them).
    texts : tuple of str
        Each token's text on its own.
    kl : numpy.ndarray
        KL(reference || model) of the two distributions, in nats (float64).
    agree : numpy.ndarray
        Whether both models' likeliest token is the same (bool).
    logprob, reference_logprob : numpy.ndarray
        Each model's log-probability of the text's own next token (natural log).
    """

    ids: tuple[int, ...]
    texts: tuple[str, ...]
    kl: np.ndarray
    agree: np.ndarray
    logprob: np.ndarray
    reference_logprob: np.ndarray


class GenerationJob(abc.ABC):
    """One generation, prepared and ready to run.

    Attributes
    ----------
    prompt_tokens : int
        Length of the prompt as the model sees it (after any chat template).
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    stop_reason: str = "length"
    #: Prompt tokens taken from a kept cache (a conversation's turn; None: no cache kept),
    #: and why a kept cache could not be used, if it could not.
    reused_tokens: int | None = None
    cache_note: str = ""

    @abc.abstractmethod
    def run(self, put: Callable[[Any], None]) -> None:
        """Generate, calling ``put(chunk)`` for each new piece. Runs in a worker thread."""

    @abc.abstractmethod
    def decode(self, chunks: Sequence[Any]) -> str:
        """Take the chunks from :meth:`run` that arrived since the last call; return new text.

        Called in the caller's thread with every chunk drained at once, so a
        backend decodes once per drain rather than once per token.
        """

    def count(self, chunks: Sequence[Any]) -> None:
        """Take chunks without decoding them now (nobody is watching)."""
        self.decode(chunks)

    @abc.abstractmethod
    def final_text(self) -> str:
        """The exact decoding of everything generated, once :meth:`run` has returned."""

    def sequence_ids(self) -> list[int] | None:
        """Prompt and generated token ids, once :meth:`run` has returned (None if unknown)."""
        return None

    def prompt_ids(self) -> list[int] | None:
        """The prompt's token ids as the model saw them (None if unknown)."""
        return None

    def token_records(self) -> tuple[TokenRecord, ...] | None:
        """One record per new token, once :meth:`run` has returned (None unless asked for)."""
        return None

    def lead_text(self) -> str:
        """The output so far that this job continues (a branch), as text."""
        return ""


class Backend(abc.ABC):
    """A loaded model, and (as classmethods) what the manager asks its kind before a load.

    The manager finds the class through :func:`llm_magic.backends.backend_class`
    and never imports a backend module itself: device and dtype resolution,
    locating the files and returning memory are the backend's own business.
    """

    kind: str = "base"
    #: Whether the weights live in this process: budgets, eviction and memory release apply.
    resident: bool = True

    # -- before and after a load (the manager calls these on the class) ------

    @classmethod
    def resolve_device(cls, device: str) -> str:
        """Turn the user's device (``"auto"`` included) into the one this backend will use."""
        return device

    @classmethod
    def resolve_dtype(cls, dtype: str, device: str) -> str:
        """Turn the user's dtype (``"auto"`` included) into one name, for ``device``."""
        return dtype

    @classmethod
    def locate(cls, source: str, kind: str, path: str | None, revision: str | None,
               *, config_only: bool = False) -> tuple[str | None, str | None]:
        """Where the model's files are, and their commit when known.

        ``config_only`` asks for as little as an estimate needs (a config file).
        """
        return path, None

    @classmethod
    def check_quantize(cls, spec: LoadSpec) -> None:
        """Refuse, before anything is read or evicted, a ``spec.quantize`` this backend cannot do.

        By default a backend cannot quantize.
        """
        raise NotAvailableError(
            f"The {cls.kind!r} backend cannot quantize ({spec.source!r}); load it without "
            "quantize=."
        )

    @classmethod
    @abc.abstractmethod
    def load(cls, spec: LoadSpec, placement: Any = None) -> Backend:
        """Load ``spec``; ``placement`` is the manager's plan (a ``Placement``), if any."""

    @classmethod  # noqa: B027 - optional hook
    def release_memory(cls) -> None:
        """Hand memory freed by a dropped model back to the system."""

    @classmethod
    def warm_up_modules(cls) -> tuple[str, ...]:
        """The modules a first :meth:`load` imports, heaviest first (none by default).

        ``%load_ext`` imports them on a background thread (see
        :func:`llm_magic.backends.warm_up`), and only them: importing one must not
        read a model or touch a device.
        """
        return ()

    # -- a loaded model ----------------------------------------------------

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts for ``lm.models()``: device, dtype, parameters, memory, context_length, chat."""

    @abc.abstractmethod
    def prepare(self, request: GenerationRequest, stop_event: threading.Event) -> GenerationJob:
        """Check and tokenize a request; raise :class:`~llm_magic.errors.LLMMagicError` if unfit."""

    def generate_batch(
        self, requests: Sequence[GenerationRequest], stop_event: threading.Event
    ) -> list[BatchResult]:
        """Generate several prompts at once; by default one after another."""
        results = []
        for request in requests:
            job = self.prepare(request, stop_event)
            chunks: list[Any] = []
            job.run(chunks.append)
            job.count(chunks)
            prompt = job.prompt_ids()
            results.append(BatchResult(job.final_text(), job.prompt_tokens, job.new_tokens,
                                       job.stop_reason, records=job.token_records(),
                                       prompt_ids=None if prompt is None else tuple(prompt)))
        return results

    def capture_attention(
        self, source: str | Sequence[int], *, max_tokens: int,
        target: str | Sequence[int] | None = None,
    ) -> Any:
        """The exact attention of one forward pass over ``source`` (a text or token ids).

        An :class:`AttentionCapture`; for an encoder–decoder model, ``target`` is its
        output and the capture holds three (``encoder``, ``decoder``, ``cross``).

        A text is tokenized as the model's tokenizer does by default (special
        tokens included). Raises :class:`~llm_magic.errors.InvalidOptionError`
        when the sequence is longer than ``max_tokens``.
        """
        raise NotAvailableError(
            f"The {self.kind!r} backend cannot capture attention; load the model in this "
            "kernel (a local directory, a cached hub id or 'demo')."
        )

    def score(self, source: str | Sequence[int], *, logprobs: int,
              max_tokens: int | None = None) -> ScoreCapture:
        """Teacher-force ``source`` (a text or token ids) in one forward pass.

        Each token after the first gets a :class:`TokenRecord` from the model's
        prediction at the position before it.
        """
        raise NotAvailableError(
            f"The {self.kind!r} backend cannot score a given text; load the model in this "
            "kernel (a local directory, a cached hub id or 'demo')."
        )

    def score_target(self, source: str | Sequence[int], target: str | Sequence[int], *,
                     logprobs: int, max_tokens: int | None = None) -> ScoreCapture:
        """Teacher-force ``target`` as the continuation of (or the output for) ``source``
        (each a text, or token ids)."""
        raise NotAvailableError(
            f"The {self.kind!r} backend cannot score a given text: it needs the model's "
            "probabilities of every token here. Load the model in this kernel to score.")

    def logit_lens(self, source: str | Sequence[int], *, top: int, max_tokens: int,
                   target: str | Sequence[int] | None = None) -> LensCapture:
        """The exact logit lens of one forward pass over ``source`` (a text or token ids);
        of an encoder–decoder's decoder over ``target``, its output for ``source``.

        Raises :class:`~llm_magic.errors.InvalidOptionError` past ``max_tokens``,
        and :class:`~llm_magic.errors.NotAvailableError` for a model whose lens
        does not reproduce its own logits.
        """
        raise NotAvailableError(
            f"The {self.kind!r} backend has no logit lens (it needs every layer's hidden "
            "state); load the model in this kernel (a local directory, a cached hub id or "
            "'demo')."
        )

    def divergence(self, reference: Backend, text: str, *, max_tokens: int,
                   target: str | None = None) -> DivergenceCapture:
        """Compare this model's next-token distributions over ``text`` with ``reference``'s
        (an encoder–decoder's: over ``target``, the output, for the source ``text``).

        Both read the same tokens in one forward pass each; raises
        :class:`~llm_magic.errors.InvalidOptionError` when their tokenizers or
        vocabularies differ, or past ``max_tokens``.
        """
        raise NotAvailableError(
            f"The {self.kind!r} backend cannot compare full next-token distributions; load "
            "both models in this kernel."
        )

    def ablate(self, source: str | Sequence[int], *, heads: Sequence[tuple[int, int]],
               layers: Sequence[int], mlp: Sequence[int], mode: str,
               answers: Sequence[str | int] | None, target: str | Sequence[int] | None = None,
               part: str | None = None) -> Any:
        """Run ``source`` with heads, attention blocks or MLPs zeroed or mean-replaced
        (hooks on the model's own modules) and compare it with the unablated run. An
        encoder–decoder's decoder reads ``target`` after its start token, and ``part`` picks
        the stack ("encoder", "decoder", "cross"); a causal model refuses both."""
        raise NotAvailableError(
            f"The {self.kind!r} backend cannot ablate parts of a model (it needs hooks "
            "inside the model); load the model in this kernel."
        )

    def patch(self, clean: str | Sequence[int], corrupt: str | Sequence[int], *, over: str,
              answers: Sequence[str | int], metric: Any, align: Any,
              target: str | Sequence[int] | None = None, part: str | None = None) -> Any:
        """Patch the clean run's activations into the corrupt run, one site at a time (an
        encoder–decoder: two sources, the same decoder ids, ``part``'s sites)."""
        raise NotAvailableError(
            f"The {self.kind!r} backend cannot patch activations (it needs hooks inside the "
            "model); load the model in this kernel."
        )

    def attribute(self, source: str | Sequence[int], *, rows: Sequence[tuple[Any, Any, Any]],
                  method: str, steps: int, baseline: Any, max_tokens: int,
                  output: str | Sequence[int] | None = None,
                  target_lang: str | None = None) -> Any:
        """Attribute output tokens of ``source`` (a text or token ids) to the tokens before them.

        Each row is (position, target, contrast): the output token's position in
        the sequence (None: the next token after it), the token to attribute
        (None: the one there, or the greedy next one) and the token it is
        contrasted with (None: none), as ids or one token's text. With ``output``
        (teacher-forced after the text, or an encoder–decoder's output for the
        source, its forced ``target_lang`` token first), positions index the output.
        """
        raise NotAvailableError(
            f"The {self.kind!r} backend cannot attribute: it needs the model's gradients in "
            "this kernel. Load the model here (a local directory, a cached hub id or 'demo')."
        )

    def token_id(self, text: str) -> int:
        """The id of ``text`` when it is exactly one token of this model's vocabulary."""
        raise NotAvailableError(f"The {self.kind!r} backend does not expose its vocabulary.")

    def language_id(self, lang: str) -> int:
        """The id of the language token that ``target_lang=lang`` forces after the decoder's
        start token (mBART's ``fr_XX``, NLLB's ``fra_Latn``, M2M100's ``fr``)."""
        raise NotAvailableError(f"The {self.kind!r} backend cannot tell which token forces "
                                f"the language {lang!r}; load a translation model in this kernel.")

    # -- conversation caches (see ``GenerationRequest.keep``) ---------------

    #: The caches kept between a conversation's turns (None: this backend keeps none).
    kept: KeptCaches | None = None

    def kept_bytes(self, key: str | None = None) -> int:
        """Bytes of the kept caches (of ``key``'s alone when given)."""
        return 0 if self.kept is None else self.kept.nbytes(key)

    def forget(self, key: str) -> None:
        """Free ``key``'s kept cache."""
        if self.kept is not None:
            self.kept.pop(key)

    def fork_kept(self, key: str, new: str) -> None:
        """Give ``new`` a copy of ``key``'s kept cache."""
        if self.kept is not None:
            self.kept.fork(key, new)

    def render_ids(self, request: GenerationRequest) -> list[int] | None:
        """The token ids ``request``'s prompt (or conversation) renders to (None: unknown here)."""
        return None

    def cache_bytes_for(self, tokens: int) -> int:
        """Bytes a kept cache of ``tokens`` tokens takes (0: this backend keeps none)."""
        return 0

    def idle_caches(self) -> list[tuple[float, str, int]]:
        """(last used, key, bytes) of each kept cache (a running turn's is not among them)."""
        return [] if self.kept is None else self.kept.idle()

    def drop_cache(self, key: str, reason: str) -> int:
        """Drop ``key``'s kept cache (its next turn recomputes and says ``reason``)."""
        return 0 if self.kept is None else self.kept.drop(key, reason)

    def memory_owner(self) -> object | None:
        """The object whose death means the memory is free (a torch module), or None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Drop every reference the backend holds."""
