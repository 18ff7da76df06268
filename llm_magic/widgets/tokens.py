"""The token probability view: shaded text, the alternatives of each token, click to branch.

The widget holds state only. The branch on screen travels as binary buffers:
ids as int32, log-probabilities as float16 (the chosen token's, then the top
K), ranks as int32, entropies as float16, and a string table of only the ids
used, so a token costs 42 bytes at K=5 plus its strings. Every number comes
from the records of a :class:`~llm_magic.Generation` (``logprobs=K``) or of
:class:`~llm_magic.analysis.tokens.Scores`.

A click on a token pins the side panel to it (a pointer resting on a token
only previews it, and never while one is pinned), so the alternative clicked
is one of the token meant. Clicking an alternative sends
``{"action": "branch", "position", "choice"}``;
the kernel runs :meth:`Generation.branch` on a worker thread with a stop
event, streams the branch's text into ``stream`` and shows the new branch when
it ends. Breadcrumbs (``crumbs``, ``current``) switch between the branches of
one root. "why?" on the pinned token (or "why not?" on one of its alternatives)
shades the prompt and the earlier output by their attribution to it (see
``_why``). Messages may arrive on llm_magic's kernel subshell (see
``_subshell``): the view's state changes under its one lock, and a failure is
the view's one-line ``error``, never printed.

Examples
--------
>>> import llm_magic as lm
>>> g = lm.generate("The import statement", model="demo", logprobs=5)  # doctest: +SKIP
>>> view = lm.analysis.tokens.view(g)                                   # doctest: +SKIP
>>> view.payload_bytes                                                  # doctest: +SKIP
{'binary': 840, 'strings': 412, 'tokens': 20}
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import anywidget
import numpy as np
import traitlets as t

from ..analysis.tokens import METRICS, Scores, legend, shaded_html
from ..backends.base import TokenRecord
from ..common.visible import visible
from ..errors import InvalidOptionError
from ..generation import branch as branch_generation
from ..generation.core import STOP_REASONS, Generation
from ..manager import ModelManager
from ._common import STATIC, Throttled, esm, one_line, stop_with_comm, with_fallback
from ._subshell import route
from ._why import METHOD_WORDS, Explainer, Why

__all__ = ["Payload", "TokensWidget", "encode", "stopped"]

log = logging.getLogger("llm_magic.widgets")

SERVED_NOTE = ("Served model: a branch sends the text before the chosen token to the server, "
               "which tokenises it again (its ids may differ from these).")
SCORES_NOTE = "A scored text: the alternatives are shown; only a generation branches."


@dataclass(frozen=True)
class Payload:
    """One branch's records as the view receives them (little-endian buffers).

    ``ids[i]`` is token i's id (-1: none; -2 and below: a served token known
    by its text only, keyed in the string table); ``top_ids`` holds K ids per
    token (-1 where a step kept fewer); ``logprobs`` K + 1 float16 per token,
    the chosen token's first; ``ranks`` 0 where unknown; ``entropy`` NaN where
    unknown. ``strings[j]`` is the text of id ``string_ids[j]``.
    """

    k: int
    ids: bytes
    top_ids: bytes
    logprobs: bytes
    ranks: bytes
    entropy: bytes
    string_ids: bytes
    strings: tuple[str, ...]

    @property
    def tokens(self) -> int:
        return len(self.ids) // 4

    @property
    def binary(self) -> int:
        """Bytes of the per-token buffers."""
        return (len(self.ids) + len(self.top_ids) + len(self.logprobs) + len(self.ranks)
                + len(self.entropy))

    @property
    def string_bytes(self) -> int:
        """Bytes of the string table: its ids and its texts in UTF-8."""
        return len(self.string_ids) + sum(len(s.encode("utf-8")) for s in self.strings)


def encode(records: tuple[TokenRecord, ...] | list[TokenRecord], k: int | None = None) -> Payload:
    """The view's buffers for ``records``, with K alternatives per token.

    Examples
    --------
    >>> r = TokenRecord(7, " the", -0.5, 1, ((7, " the", -0.5), (9, " a", -1.5)))
    >>> p = encode([r])
    >>> p.k, p.binary, p.strings
    (2, 20, (' the', ' a'))
    """
    k = max([len(r.top) for r in records] + [k or 0, 1])
    n = len(records)
    table: dict[int, str] = {}
    by_text: dict[str, int] = {}

    def key(token_id: int | None, text: str) -> int:
        if token_id is None:  # a served token named by its text only
            token_id = by_text.setdefault(text, -2 - len(by_text))
        table.setdefault(int(token_id), text)
        return int(token_id)

    ids = np.full(n, -1, dtype="<i4")
    top_ids = np.full((n, k), -1, dtype="<i4")
    logprobs = np.full((n, k + 1), -np.inf, dtype="<f4")
    ranks = np.zeros(n, dtype="<i4")
    entropy = np.full(n, np.nan, dtype="<f4")
    for i, r in enumerate(records):
        ids[i] = key(r.id, r.text)
        logprobs[i, 0] = r.logprob
        ranks[i] = r.rank or 0
        if r.entropy is not None:
            entropy[i] = r.entropy
        for j, (token_id, text, lp) in enumerate(r.top[:k]):
            top_ids[i, j] = key(token_id, text)
            logprobs[i, j + 1] = lp
    return Payload(
        k=k, ids=ids.tobytes(), top_ids=top_ids.tobytes(),
        logprobs=logprobs.astype("<f2").tobytes(), ranks=ranks.tobytes(),
        entropy=entropy.astype("<f2").tobytes(),
        string_ids=np.array(list(table), dtype="<i4").tobytes(), strings=tuple(table.values()),
    )


def stopped(reason: str) -> str:
    """Why a generation ended, in words.

    Examples
    --------
    >>> stopped("length")
    'stopped: reached the token limit'
    """
    return f"stopped: {STOP_REASONS.get(reason, reason)}"


def _branch_words(index: int, made: Generation) -> str:
    """``branch 1: token 6 replaced by “ clause”``."""
    at = made.branch_at if made.branch_at is not None else -1
    records = made.tokens or ()
    if not 0 <= at < len(records):
        return f"branch {index}: token {at}"
    return f"branch {index}: token {at} replaced by \u201c{visible(records[at].text)}\u201d"


def _made_from(index: int) -> str:
    return "the original" if index == 0 else f"branch {index}"


def _served(result: Any) -> bool:
    return isinstance(result, Generation) and (
        result.prompt_ids is None or any(r.id is None for r in result.tokens or ()))


class TokensWidget(anywidget.AnyWidget):  # type: ignore[misc]
    """Shaded tokens, the alternatives of the token clicked (pinned), breadcrumbs of branches.

    Parameters
    ----------
    result : Generation or Scores
        A generation made with ``logprobs=K``, or a scored text.
    metric : {"probability", "entropy", "surprisal"}
        What the shading shows first (the view's toggle changes it).
    manager : ModelManager, optional
        Where branches run; the kernel's manager by default.

    Examples
    --------
    >>> import llm_magic as lm
    >>> from llm_magic.widgets.tokens import TokensWidget
    >>> g = lm.generate("The import statement", model="demo", logprobs=5)  # doctest: +SKIP
    >>> view = TokensWidget(g)                                              # doctest: +SKIP
    >>> view.branch(3, g.tokens[3].top[1][0], wait=True).branch_at         # doctest: +SKIP
    3
    """

    _esm = esm("tokens.js")
    _css = STATIC / "tokens.css"

    title = t.Unicode("").tag(sync=True)
    #: Text before the first record, shown dimmed: the prompt, or a scored text's first token.
    lead = t.Unicode("").tag(sync=True)
    #: The index of ``tokens[0]`` in what the panel names: 0 for a generation, 1 for a score.
    first_index = t.Int(0).tag(sync=True)
    mode = t.Unicode("raw").tag(sync=True)
    metric = t.Unicode("probability").tag(sync=True)
    legends = t.Dict().tag(sync=True)
    branchable = t.Bool(False).tag(sync=True)
    note = t.Unicode("").tag(sync=True)
    #: One line when clicks wait for the running cell (no kernel subshell); else empty.
    wait_note = t.Unicode("").tag(sync=True)

    # The branch on screen (see Payload); ``revision`` changes with every new payload.
    k = t.Int(1).tag(sync=True)
    ids = t.Bytes(b"").tag(sync=True)
    top_ids = t.Bytes(b"").tag(sync=True)
    logprobs = t.Bytes(b"").tag(sync=True)
    ranks = t.Bytes(b"").tag(sync=True)
    entropy = t.Bytes(b"").tag(sync=True)
    string_ids = t.Bytes(b"").tag(sync=True)
    strings = t.List(t.Unicode()).tag(sync=True)
    revision = t.Int(0).tag(sync=True)

    #: One per branch of the root, the root first: {label, title, state, parent, position}.
    crumbs = t.List(t.Dict()).tag(sync=True)
    current = t.Int(0).tag(sync=True)
    state = t.Unicode("idle").tag(sync=True)  # idle, running, error
    stream = t.Unicode("").tag(sync=True)  # the running branch's text so far
    error = t.Unicode("").tag(sync=True)

    # "why?": the row on screen (see _why.Why; {} for none), its method and whether one runs.
    explainable = t.Bool(False).tag(sync=True)
    why = t.Dict().tag(sync=True)
    why_scores = t.Bytes(b"").tag(sync=True)
    why_prompt = t.List(t.Unicode()).tag(sync=True)
    why_method = t.Unicode("input_x_gradient").tag(sync=True)
    why_methods = t.Dict(METHOD_WORDS).tag(sync=True)
    why_state = t.Unicode("").tag(sync=True)

    def __init__(self, result: Generation | Scores, metric: str = "probability", *,
                 manager: ModelManager | None = None, **kwargs: Any) -> None:
        if isinstance(result, Generation):
            if result.tokens is None:
                raise InvalidOptionError(
                    "This generation has no token records: generate with logprobs=K "
                    "(`%%llm --logprobs K`) to see its probabilities.")
            mode, lead, first, branchable = result.logprobs_mode or "raw", result.prompt, 0, True
        elif isinstance(result, Scores):
            mode, lead, first, branchable = result.logprobs_mode, result.first, 1, False
        else:
            raise InvalidOptionError(
                f"The token view shows a Generation with records or Scores, not "
                f"{type(result).__name__}.")
        self._manager = manager
        self._lock = threading.RLock()  # results, payloads, the running branch
        self._results: list[Generation | Scores] = [result]
        self._payloads: dict[int, Payload] = {}
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._made: Generation | None = None
        self._explainer = Explainer(self, manager)
        note = SERVED_NOTE if _served(result) else ("" if branchable else SCORES_NOTE)
        super().__init__(
            lead=lead, first_index=first, mode=mode, metric=metric, branchable=branchable,
            explainable=branchable, note=note, legends={m: legend(m, mode) for m in METRICS},
            crumbs=[{"label": "original", "title": "the generation as it was made",
                     "state": "done", "parent": -1, "position": -1}], **kwargs)
        self._show(0)
        self.on_msg(self._on_message)
        stop_with_comm(self, self.stop)
        self.wait_note = route(self)

    # -- validation

    @t.validate("metric")
    def _valid_metric(self, proposal: Any) -> str:
        if proposal["value"] not in METRICS:
            raise t.TraitError(f"metric must be one of {', '.join(METRICS)}, "
                               f"not {proposal['value']!r}.")
        return str(proposal["value"])

    @t.validate("why_method")
    def _valid_why_method(self, proposal: Any) -> str:
        if proposal["value"] not in METHOD_WORDS:
            raise t.TraitError(f"why_method must be one of {', '.join(METHOD_WORDS)}, "
                               f"not {proposal['value']!r}.")
        return str(proposal["value"])

    @t.validate("current")
    def _valid_current(self, proposal: Any) -> int:
        # Clamped, not refused: a click on a crumb may cross the failed branch's removal.
        return min(max(0, int(proposal["value"])), max(0, len(self.crumbs) - 1))

    @t.observe("current")
    def _on_current(self, change: Any) -> None:
        if hasattr(self, "_results"):
            self._show(change["new"])

    # -- what the view shows

    @property
    def results(self) -> list[Generation | Scores]:
        """The root, then every branch made here, in order."""
        with self._lock:
            return list(self._results)

    @property
    def shown(self) -> Generation | Scores:
        """The branch on screen (the last finished one while a branch runs there)."""
        with self._lock:
            return self._results[min(self.current, len(self._results) - 1)]

    @property
    def payload_bytes(self) -> dict[str, int]:
        """Bytes of the branch on screen: ``binary`` buffers, ``strings`` table, ``tokens``."""
        with self._lock:
            payload = self._payload(min(self.current, len(self._results) - 1))
        return {"binary": payload.binary, "strings": payload.string_bytes,
                "tokens": payload.tokens}

    def _payload(self, index: int) -> Payload:
        if index not in self._payloads:
            result = self._results[index]
            k = result.params.get("logprobs") if isinstance(result, Generation) else result.logprobs
            self._payloads[index] = encode(result.tokens or (), k)
        return self._payloads[index]

    def _show(self, index: int) -> None:
        """Put branch ``index`` on screen (nothing to send for a branch still running)."""
        with self._lock:
            if index >= len(self._results):
                return
            p, title = self._payload(index), self._title(index)
            with self.hold_sync():
                self.k, self.ids, self.top_ids, self.logprobs = p.k, p.ids, p.top_ids, p.logprobs
                self.ranks, self.entropy = p.ranks, p.entropy
                self.string_ids, self.strings = p.string_ids, list(p.strings)
                self.title = title
                self.why, self.why_scores, self.why_prompt = {}, b"", []
                self.revision += 1

    def _title(self, index: int) -> str:
        """The line over branch ``index``: its model, what it is, its length, why it stopped."""
        result = self._results[index]
        if isinstance(result, Scores):
            return (f"{result.model}: {len(result.ids)} tokens, {len(result.tokens)} scored; "
                    f"log-probability "
                    f"{result.logprob:.3f} nats, perplexity {result.perplexity:.2f}")
        what = "the original" if index == 0 else _branch_words(index, result)
        return (f"{result.model}, {what}; {len(result.tokens or ())} tokens, "
                f"{stopped(result.stats.stop_reason)}")

    # -- branching

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """A click in the page: branch from an alternative, or stop the running branch."""
        try:
            action = content.get("action") if isinstance(content, dict) else None
            if action == "branch":
                self._branch_from(content)
            elif action == "stop":
                self.stop()
            elif action == "why":
                self.explain(content.get("position"), content.get("choice"),
                             method=content.get("method"))
            elif action == "unwhy":
                self._explainer.clear()
            else:
                raise InvalidOptionError(f"Unknown action {action!r} from the view.")
        except Exception as exc:
            log.debug("token view action failed", exc_info=True)
            with self._lock, self.hold_sync():
                self.error = one_line(exc)

    def _branch_from(self, content: dict[str, Any]) -> None:
        """Alternative ``choice`` (an index of ``top``) at ``position`` of the branch on screen."""
        position, choice = content.get("position"), content.get("choice")
        if not isinstance(position, int) or not isinstance(choice, int):
            raise InvalidOptionError("A branch needs an integer position and choice.")
        with self._lock:
            parent = self._results[min(self.current, len(self._results) - 1)]
            records = parent.tokens or ()
            if not 0 <= position < len(records):
                raise InvalidOptionError(f"There is no token {position} here.")
            top = records[position].top
            if not 0 <= choice < len(top):
                raise InvalidOptionError(f"Token {position} has no alternative {choice + 1}.")
            token_id, text, _ = top[choice]
        self.branch(position, text if token_id is None else token_id, parent=parent)

    def branch(self, position: int, token: int | str, *, parent: Generation | Scores | None = None,
               wait: bool = False) -> Generation | None:
        """Branch ``parent`` (the branch on screen) at ``position`` on a worker thread.

        Returns the new generation with ``wait=True`` (None if it failed: the
        view's ``error`` says why); else None at once. Its text streams into
        ``stream``; it is shown when it ends.
        """
        with self._lock:
            parent = parent if parent is not None else self.shown
            if not isinstance(parent, Generation):
                raise InvalidOptionError("A scored text has no branches: generate with "
                                         "logprobs=K to branch.")
            if self._thread is not None:
                raise InvalidOptionError("A branch is being generated here; wait for it or "
                                         "stop it first.")
            from_index = next((i for i, r in enumerate(self._results) if r is parent), None)
            if from_index is None:
                raise InvalidOptionError("Branch a generation of this view: the root or one of "
                                         "its branches (view.results).")
            stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(parent, position, token, stop),
                                      name="llm_magic-branch", daemon=True)
            self._stop, self._thread, self._made = stop, thread, None
            number = len(self._results)
            with self.hold_sync():
                self.error, self.stream, self.state = "", "", "running"
                self.crumbs = [*self.crumbs, {
                    "label": f"branch {number}: token {position}, generating\u2026",
                    "title": f"made from {_made_from(from_index)}",
                    "state": "running", "parent": from_index, "position": position}]
                self.current = number
        thread.start()
        if wait:
            thread.join()
            with self._lock:
                return self._made
        return None

    def _run(self, parent: Generation, position: int, token: int | str,
             stop: threading.Event) -> None:
        def publish(text: str) -> None:
            with self._lock:
                self.stream = text

        stream = Throttled(publish)

        try:
            made = branch_generation(parent, position, token, stream=stream, stop_event=stop,
                                     manager=self._manager)
        except Exception as exc:
            log.debug("branch failed", exc_info=True)
            with self._lock, self.hold_sync():
                crumbs = self.crumbs[:-1]
                back = self.crumbs[-1]["parent"]
                self.stream, self.state, self.error = stream.text, "error", one_line(exc)
                self.current = back if self.current >= len(crumbs) else self.current
                self.crumbs = crumbs
                self._stop = self._thread = None
            return
        with self._lock, self.hold_sync():
            index = len(self._results)
            self._results.append(made)
            self._made = made
            crumbs = [dict(c) for c in self.crumbs]
            crumbs[index].update(
                label=_branch_words(index, made), state="stopped" if made.interrupted else "done",
                title=f"made from {_made_from(crumbs[index]['parent'])}; "
                      f"{stopped(made.stats.stop_reason)}")
            self.crumbs = crumbs
            self.stream, self.state = made.text, "idle"
            self._stop = self._thread = None
            if self.current == index:
                self._show(index)

    # -- why?

    def explain(self, position: int, choice: int | None = None, *, method: str | None = None,
                wait: bool = False) -> Why | None:
        """Shade the inputs of token ``position`` (of the branch on screen) by their attribution.

        ``choice`` (an index of the token's alternatives) attributes log p(chosen) -
        log p(alternative) instead. Runs on a worker thread; with ``wait=True`` returns
        the row (None if it failed: ``error`` says why).
        """
        return self._explainer.request(position, choice, method, wait=wait)

    def stop(self, wait: bool = False) -> None:
        """Stop the running branch (its text so far is kept as the branch)."""
        with self._lock:
            stop, thread = self._stop, self._thread
        if stop is not None:
            stop.set()
        if wait and thread is not None:
            thread.join()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running branch, if any, to end."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        if hasattr(self, "_lock"):  # ipywidgets also closes half-built widgets
            self.stop()
        super().close()

    # -- the static fallback

    def html(self) -> str:
        """The branch on screen as escaped HTML with inline colours (GitHub, nbconvert, nbval)."""
        shown = self.shown
        return shaded_html(shown.tokens or (), lead=self.lead, mode=self.mode,
                           metric=self.metric, title=self.title)

    def __repr__(self) -> str:
        shown = self.shown
        return shown.text if isinstance(shown, Generation) else repr(shown)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_fallback(super()._repr_mimebundle_(**kwargs), self.html(), repr(self))
