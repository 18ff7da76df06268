"""The kernel-resident model manager.

One :class:`ModelManager` per kernel owns every loaded model. It holds the only
strong reference to each; everything else (handles, generations, widgets)
refers to a model by name, so ``unload`` really returns the memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..backends import backend_class
from ..errors import (
    BudgetExceededError,
    InvalidOptionError,
    LLMMagicError,
    LLMMagicWarning,
    ModelConflictError,
    ModelNotLoadedError,
    outside_stacklevel,
)
from ..events import EventBus
from ..resources import rooms as _rooms
from ..resources.estimate import check_quantize, estimate_path
from . import sources as _sources
from .holders import find_holders
from .info import ModelInfo, ModelTable, UnloadReport
from .info import ago as _ago
from .info import count as _count
from .info import size as _size

if TYPE_CHECKING:
    from ..backends.base import Backend, LoadSpec
    from ..resources.estimate import Estimate
    from ..resources.placement import Placement

__all__ = ["ModelInfo", "ModelManager", "ModelRef", "ModelTable", "UnloadReport", "get_manager"]

log = logging.getLogger("llm_magic.manager")




@dataclass
class _Entry:
    spec: LoadSpec
    key: tuple[Any, ...]
    backend: Backend
    info: ModelInfo
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelRef:
    """A loaded model by name, as the manager hands it out (it does not keep the model alive).

    ``lm.load`` returns its subclass :class:`llm_magic.generation.handle.ModelHandle`,
    which can also generate.
    """

    __slots__ = ("name", "_manager")

    def __init__(self, name: str, manager: ModelManager) -> None:
        self.name = name
        self._manager = manager

    @property
    def info(self) -> ModelInfo:
        """Current facts about the model (raises if it was unloaded)."""
        return self._manager.info(self.name)

    @property
    def loaded(self) -> bool:
        return self._manager.is_loaded(self.name)

    @property
    def model(self) -> Any:
        """The raw model object. Your variable keeps it alive: ``del`` it before unloading."""
        return self._manager.backend(self.name).memory_owner()

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of a transformers model."""
        return getattr(self._manager.backend(self.name), "tokenizer", None)

    def unload(self) -> UnloadReport:
        return self._manager.unload(self.name)[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelRef) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        if not self.loaded:
            return f"<model {self.name!r} (not loaded)>"
        i = self.info
        if i.endpoint:
            return f"<model {i.name!r}: {i.architecture} served at {i.endpoint}>"
        estimated = f" (estimated {_size(i.estimate)})" if i.estimate is not None else ""
        weights = f"{i.quantization} weights, " if i.quantization else ""
        return (f"<model {i.name!r}: {i.architecture or i.backend}, {_count(i.parameters)} params, "
                f"{i.device}, {weights}{i.dtype}, {_size(i.memory)}{estimated}>")


class ModelManager:
    """Loads, shares, tracks and frees models for one kernel.

    Use :func:`get_manager` for the kernel's manager; the functions of
    ``llm_magic`` are shortcuts to it.
    """

    def __init__(self) -> None:
        self.events = EventBus()
        self._entries: dict[str, _Entry] = {}
        self._registry_lock = threading.RLock()
        self._load_lock = threading.RLock()
        self._default: str | None = None
        #: The latest generation (an ``llm_magic.generation.Generation``), set by that layer.
        self.last_generation: Any = None
        #: The attention map of the latest generation that captured one.
        self.last_attention: Any = None
        #: Budget per device as ``lm.budget`` set it: bytes, or a fraction of the device.
        self.limits: dict[str, int | float] = {}
        #: Names a load asked for that reach a model resident under another name (same
        #: source and settings: one copy), alias -> name.
        self._aliases: dict[str, str] = {}
        #: The facts of each model this manager unloaded or evicted, by name: how it was loaded.
        self.unloaded: dict[str, ModelInfo] = {}

    # -- queries -----------------------------------------------------------

    def is_loaded(self, name: str) -> bool:
        return self._aliases.get(name, name) in self._entries

    def names(self) -> list[str]:
        with self._registry_lock:
            return list(self._entries)

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(self._aliases.get(name, name))
        if entry is None:
            loaded = ", ".join(sorted(self._entries)) or "none"
            raise ModelNotLoadedError(
                f"Model {name!r} is not loaded (loaded: {loaded}). "
                f"Load it with lm.load({name!r}) or `%llm load {name}`."
            )
        return entry

    def info(self, name: str) -> ModelInfo:
        entry = self._entry(name)
        return replace(entry.info, generating=entry.lock.locked(),
                       cache=entry.backend.kept_bytes())

    def backend(self, name: str) -> Backend:
        return self._entry(name).backend

    def models(self) -> ModelTable:
        """All loaded models, most recently used first."""
        with self._registry_lock:
            infos = [self.info(n) for n in self._entries]
        return ModelTable(sorted(infos, key=lambda i: i.last_used or i.loaded_at, reverse=True))

    def memory_by_model(self) -> dict[str, int]:
        """Measured memory per loaded model, in bytes."""
        with self._registry_lock:
            return {n: e.info.memory for n, e in self._entries.items()}

    @property
    def default(self) -> str | None:
        """The model used when a call names none: set by :meth:`use`, else the latest load."""
        with self._registry_lock:
            if self._default in self._entries:
                return self._default
            if not self._entries:
                return None
            return max(self._entries.values(), key=lambda e: e.info.last_used).info.name

    def use(self, name: str) -> ModelRef:
        """Make ``name`` the default model."""
        self._entry(name)
        self._default = name
        self.events.emit("default_changed", name)
        return ModelRef(name, self)

    def resolve(self, name: str | None) -> str:
        """The name of the model a call means: ``name``, or the default."""
        if name is not None:
            return self._entry(name).info.name
        default = self.default
        if default is None:
            raise ModelNotLoadedError(
                "No model is loaded. Load one first: lm.load('demo') or `%llm load demo`."
            )
        return default

    # -- loading -----------------------------------------------------------

    def load(
        self,
        source: str,
        *,
        name: str | None = None,
        revision: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        reload: bool = False,
        pin: bool = False,
        model: str | None = None,
        api_key_env: str | None = None,
        quantize: str | None = None,
    ) -> ModelRef:
        """Load a model, or return the resident one loaded with the same settings.

        Parameters
        ----------
        source : str
            ``"demo"``, a local directory, a Hugging Face hub id (from the local
            cache, or downloaded when a network is there), or the URL of an
            OpenAI-compatible server (``"http://HOST:PORT/v1"``).
        name : str, optional
            What to call it; defaults to the last part of the source.
        revision : str, optional
            Branch, tag or commit of a hub model; the resolved commit is recorded.
        dtype, device : str
            ``"auto"`` picks float32 on CPU and bf16/fp16 on a GPU; both can be forced.
        trust_remote_code : bool
            Run code shipped with the model. Off unless you turn it on for this load.
        reload : bool
            Replace a model of the same name loaded with other settings.
        pin : bool
            Never evict this model to make room for another.
        model : str, optional
            A served model's id on its server (one of its ``/v1/models``); needed
            when the server serves several.
        api_key_env : str, optional
            The environment variable that holds the server's API key. The key is
            read from there only, and never stored or shown.
        quantize : {None, "int8", "int4"}
            Quantize the weights of the linear layers as the model loads (torchao,
            weight-only; the output head and embeddings stay as they are). The
            estimate, the budget and eviction count the quantized size. The default
            name gets the scheme appended (``"demo-int8"``), so the full-precision
            model can stay loaded beside it; ``lm.quality`` measures the difference.

        Returns
        -------
        ModelRef

        Examples
        --------
        >>> import llm_magic as lm
        >>> lm.load("demo")  # doctest: +SKIP
        <model 'demo': GPT2LMHeadModel, ...>
        """
        kind, path = _sources.classify(source)
        _sources.check_load_options(source, kind, revision=revision, model=model,
                                    api_key_env=api_key_env,
                                    trust_remote_code=trust_remote_code)
        quantize = _check_quantize(quantize, source, kind)
        cls = backend_class(kind)
        name = _sources.check_name(name) if name is not None else _sources.default_name(
            source, kind, path
        ) + (f"-{quantize}" if quantize else "")
        with self._load_lock:
            resolved_device = cls.resolve_device(device)
            resolved_dtype = cls.resolve_dtype(dtype, resolved_device)
            canonical = path if kind == "local" else source.strip()
            key = (canonical, revision, resolved_dtype, resolved_device, model, api_key_env,
                   quantize)
            resident = self._resident(name, key, source, reload=reload, pin=pin)
            if resident is not None:
                return resident
            t0 = time.perf_counter()
            spec, commit = self._spec(cls, source, name, kind, path, revision, resolved_dtype,
                                      resolved_device, trust_remote_code, model, api_key_env)
            if quantize:  # refused here, before anything is evicted to make room
                spec = replace(spec, quantize=quantize)
                cls.check_quantize(spec)
            estimated, placement = self._plan(spec, device) if cls.resident else (None, None)
            if placement is not None and placement.device_map is None:
                spec = replace(spec, device=placement.device)  # "auto" may pick another GPU
            estimate = None if estimated is None else estimated.memory
            backend = self._load_backend(cls, spec, placement, estimate)
            self._register(spec, key, backend, commit=commit, estimate=estimate,
                           seconds=time.perf_counter() - t0, pin=pin)
            return ModelRef(name, self)

    def _resident(self, name: str, key: tuple[Any, ...], source: str, *, reload: bool,
                  pin: bool) -> ModelRef | None:
        """The model already loaded with these settings, if any; unload a replaced one."""
        existing = self._entries.get(name)
        if existing is not None:
            if existing.key == key and not reload:
                return self._touch(name, pin)
            if not reload:
                was = existing.key
                weights = f"{was[6]} weights, " if was[6] else ""
                raise ModelConflictError(
                    f"{name!r} is already loaded from {was[0]!r} (revision {was[1]}, "
                    f"{weights}{was[2]}, {was[3]}). Unload it first, pick another name, or "
                    "reload explicitly (reload=True, `%llm load ... --reload`)."
                )
            self.unload(name)
        for other, entry in self._entries.items():
            if entry.key == key and not reload:
                log.info("%s is already resident as %r; not loading a second copy; %r names "
                         "it too", source, other, name)
                if name != other:  # the name asked for reaches the same model
                    self._aliases[name] = other
                return self._touch(other, pin)
        return None

    @staticmethod
    def _spec(cls: type[Backend], source: str, name: str, kind: str, path: str | None,
              revision: str | None, dtype: str, device: str, trust_remote_code: bool,
              model: str | None, api_key_env: str | None) -> tuple[LoadSpec, str | None]:
        """What the backend is asked to load, with a hub id resolved to its files and commit."""
        from ..backends.base import LoadSpec

        commit = None
        if kind == "hub":
            t0 = time.perf_counter()
            path, commit = cls.locate(source.strip(), kind, path, revision)
            log.debug("resolved %s to %s in %.3fs", source, path, time.perf_counter() - t0)
        spec = LoadSpec(source=source.strip(), name=name, kind=kind, path=path,
                        revision=revision, dtype=dtype, device=device,
                        trust_remote_code=trust_remote_code,
                        model=model.strip() if model else None, api_key_env=api_key_env)
        return spec, commit

    def _load_backend(self, cls: type[Backend], spec: LoadSpec, placement: Placement | None,
                      estimate: int | None) -> Backend:
        """Read the weights (or reach the server); a failure frees what it took, and says so."""
        self.events.emit("loading", spec.name, source=spec.source, estimate=estimate)
        try:
            return cls.load(spec, placement)
        except BaseException as exc:
            cls.release_memory()
            self.events.emit("load_failed", spec.name, error=str(exc))
            if isinstance(exc, (LLMMagicError, KeyboardInterrupt)):
                raise
            raise LLMMagicError(f"Loading {spec.source!r} failed: {exc}") from exc

    def _register(self, spec: LoadSpec, key: tuple[Any, ...], backend: Backend, *,
                  commit: str | None, estimate: int | None, seconds: float, pin: bool) -> None:
        """Keep the loaded model as the default, and tell the listeners what it is."""
        facts = backend.describe()
        now = time.time()
        info = ModelInfo(
            name=spec.name, source=spec.source, backend=backend.kind, device=facts["device"],
            dtype=facts["dtype"], parameters=facts["parameters"], memory=facts["memory"],
            revision=spec.revision, commit=commit or facts.get("commit"), estimate=estimate,
            load_seconds=seconds, loaded_at=now, last_used=now, pinned=pin,
            context_length=facts.get("context_length"), chat=facts.get("chat", False),
            architecture=facts.get("architecture", ""),
            placement=tuple(facts.get("placement", {}).items()),
            endpoint=facts.get("endpoint"), quantization=facts.get("quantization"),
            saved=int(facts.get("saved", 0)), kind=facts.get("kind", "causal"),
        )
        with self._registry_lock:
            self._aliases.pop(spec.name, None)
            self._entries[spec.name] = _Entry(spec, key, backend, info)
            self._default = spec.name
        log.debug("loaded %s as %r in %.3fs: %s", spec.source, spec.name, seconds, facts)
        self.events.emit("loaded", spec.name, info=info)

    def _touch(self, name: str, pin: bool) -> ModelRef:
        entry = self._entries[name]
        entry.info = replace(entry.info, last_used=time.time(), pinned=entry.info.pinned or pin)
        self._default = name
        return ModelRef(name, self)

    def _plan(
        self, spec: LoadSpec, requested_device: str = "auto"
    ) -> tuple[Estimate | None, Placement | None]:
        """Estimate a load's memory before reading weights, and make room for it.

        Idle models leave, least recently used first, when the budget needs it
        (never a pinned or generating one). When even that would not make room,
        :class:`~llm_magic.errors.BudgetExceededError` says why and nothing is
        evicted. ``device="auto"`` on GPUs may spread the model (accelerate's
        ``device_map="auto"`` with ``max_memory`` from the budget).
        """
        assert spec.path is not None
        try:
            estimate = estimate_path(spec.path, source=spec.source, dtype=spec.dtype,
                                     device=spec.device, trust_remote_code=spec.trust_remote_code,
                                     quantize=spec.quantize)
        except LLMMagicError as exc:
            log.warning("%s Loading without a budget check.", exc)
            return None, None
        log.info("loading %r: %s", spec.name, estimate)
        with self._registry_lock:
            while True:  # idle conversation caches leave before any model does
                try:
                    placement = _rooms.plan_load(
                        self.limits, self.models(), device=spec.device,
                        requested_device=requested_device, source=spec.source, dtype=spec.dtype,
                        memory=estimate.memory, largest_block=estimate.largest_block,
                    )
                except BudgetExceededError:
                    if not self.drop_caches(1, reason=f"to make room for {spec.name!r}"):
                        raise
                    continue
                if not placement.evict or not self.drop_caches(
                        1, reason=f"to make room for {spec.name!r}"):
                    break
            if placement.evict:
                self._evict(placement.evict, spec.name, estimate)
        if placement.device_map is not None:
            log.info("placing %r with %s", spec.name, placement)
        return estimate, placement

    def _evict(self, names: tuple[str, ...], newcomer: str, estimate: Estimate) -> None:
        """Unload idle models to make room, and say so (log, event, warning)."""
        entries = [self._entries[n] for n in names]
        taken: list[_Entry] = []
        try:
            for entry in entries:
                if not entry.lock.acquire(blocking=False):  # it started generating meanwhile
                    raise BudgetExceededError(
                        f"{entry.info.name!r} started generating while room was being made for "
                        f"{newcomer!r}; nothing was evicted. Load again when it has finished."
                    )
                taken.append(entry)
            infos = [e.info for e in entries]
            reason = f"to make room for {newcomer!r} ({_size(estimate.memory)})"
            reports = [self._drop(n, reason=reason) for n in names]
        finally:
            for entry in taken:
                entry.lock.release()
        gone = ", ".join(f"{i.name!r} ({_size(i.memory)}, last used {_ago(i.last_used)})"
                         for i in infos)
        message = (f"Evicted {gone}, least recently used first, to make room for {newcomer!r} "
                   f"(about {_size(estimate.memory)} in {estimate.dtype}).")
        for report in reports:
            if not report.freed:
                message += f" But {report.message}"
        log.info("%s", message)
        warnings.warn(message, LLMMagicWarning, stacklevel=outside_stacklevel())

    def pin(self, name: str, pinned: bool = True) -> ModelInfo:
        """Pin a model (never evicted to make room) or unpin it.

        Examples
        --------
        >>> import llm_magic as lm
        >>> lm.get_manager().pin("demo")  # doctest: +SKIP
        """
        with self._registry_lock:
            entry = self._entry(name)
            entry.info = replace(entry.info, pinned=bool(pinned))
        return self.info(name)

    def drop_caches(self, need: int, *, device: str | None = None, keep: str | None = None,
                    reason: str = "under memory pressure") -> int:
        """Drop kept conversation caches, least recently used first, until ``need`` bytes are
        freed (on ``device`` only, when given; never ``keep``'s). Returns the bytes freed.

        Each dropped conversation recomputes its cache on its next turn and says so.
        """
        with self._registry_lock:
            found = [(used, key, n, entry.backend)
                     for entry in self._entries.values()
                     if device is None or entry.info.device == device
                     for used, key, n in entry.backend.idle_caches() if key != keep]
        freed = 0
        for _used, key, _n, backend in sorted(found, key=lambda item: item[0]):
            if freed >= need:
                break
            freed += backend.drop_cache(key, "recomputed: its cache was dropped under memory "
                                             "pressure")
            log.info("dropped conversation cache %s %s", key, reason)
        return freed

    # -- unloading ---------------------------------------------------------

    def unload(self, name: str | None = None, *, all: bool = False) -> list[UnloadReport]:
        """Drop models and verify that their memory is really returned.

        Returns one :class:`UnloadReport` per model; a report with ``freed=False``
        names what still holds the model (a variable, ``Out``, a traceback).
        """
        with self._registry_lock:
            if all:
                names = list(self._entries)
            elif name is None:
                raise InvalidOptionError("Name the model to unload, or pass all=True.")
            else:
                names = [self._entry(name).info.name]
            # Each model's lock is held while it is dropped: a generation starting meanwhile
            # (a cell, while a panel's click unloads) waits, then finds the model gone.
            taken: list[threading.Lock] = []
            try:
                for n in names:
                    lock = self._entries[n].lock
                    if not lock.acquire(blocking=False):
                        raise LLMMagicError(
                            f"Model {n!r} is generating. Stop that generation first, then unload."
                        )
                    taken.append(lock)
                reports = [self._drop(n, reason=None) for n in names]
            finally:
                for lock in taken:
                    lock.release()
        return reports

    def _drop(self, name: str, reason: str | None) -> UnloadReport:
        kind = type(self._entries[name].backend)
        ref, memory = self._detach(name)
        kind.release_memory()
        obj = ref() if ref is not None else None
        holders: tuple[str, ...] = ()
        if obj is not None:
            holders = tuple(find_holders(obj))
        del obj
        report = UnloadReport(name, memory, freed=ref is None or ref() is None, holders=holders)
        if reason:
            self.events.emit("evicted", name, reason=reason, report=report)
        self.events.emit("unloaded", name, freed=report.freed, report=report)
        log.debug("%s", report.message)
        return report

    def _detach(self, name: str) -> tuple[weakref.ref[Any] | None, int]:
        """Remove the entry and close its backend; keep only a weak reference."""
        entry = self._entries.pop(name)
        self.unloaded[name] = entry.info
        for alias in [a for a, target in self._aliases.items() if target == name]:
            del self._aliases[alias]
        if self._default == name:
            self._default = None
        owner = entry.backend.memory_owner()
        ref = weakref.ref(owner) if owner is not None else None
        memory = entry.info.memory
        del owner
        entry.backend.close()
        return ref, memory

    # -- generation support ------------------------------------------------

    @contextlib.contextmanager
    def checkout(self, name: str) -> Iterator[Backend]:
        """Hold ``name``'s lock for one generation: no two generations interleave on a model."""
        entry = self._entry(name)
        entry.lock.acquire()
        try:
            if self._entries.get(name) is not entry:
                raise ModelNotLoadedError(f"Model {name!r} was unloaded while waiting.")
            entry.info = replace(entry.info, last_used=time.time())
            yield entry.backend
        finally:
            entry.info = replace(entry.info, last_used=time.time())
            entry.lock.release()


def _check_quantize(quantize: Any, source: str, kind: str) -> str | None:
    """``quantize=`` normalised; refused for a served model (its server chose the weights)."""
    scheme = check_quantize(quantize)
    if scheme and kind == "url":
        raise InvalidOptionError(
            f"quantize={scheme!r} applies to models loaded in this kernel; the server at "
            f"{source.strip()!r} chose its own weights (quantize there: vLLM's --quantization)."
        )
    return scheme


_manager: ModelManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> ModelManager:
    """The kernel's model manager (created on first use)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = ModelManager()
            from ..resources.sampler import get_sampler

            # The gauges and %llm list show each model's memory through the sampler.
            get_sampler().set_model_memory_provider(_manager.memory_by_model)
        return _manager
