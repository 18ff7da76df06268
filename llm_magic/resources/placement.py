"""Where a model goes and what must leave to make room: a pure function of the numbers.

:func:`plan_placement` sees the load's estimate, each device's budget and free
memory, and the resident models; it returns a :class:`Placement` (one device,
or accelerate's ``device_map="auto"`` with a ``max_memory`` per device) and the
models to evict, or raises :class:`~llm_magic.errors.BudgetExceededError`
without evicting anything. It touches no device, so every branch, several GPUs
included, is testable on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..common.sizes import format_size
from ..errors import BudgetExceededError

__all__ = ["DeviceRoom", "Placement", "Resident", "budget_keyword", "plan_placement"]


@dataclass(frozen=True)
class DeviceRoom:
    """One device as a load sees it.

    Attributes
    ----------
    device : str
        ``"cpu"``, ``"cuda:0"``, ``"mps"``.
    limit : int
        The memory budget for models on it, in bytes.
    free : int or None
        What the device has free right now (other processes count), if known.
    """

    device: str
    limit: int
    free: int | None = None


@dataclass(frozen=True)
class Resident:
    """A loaded model as the planner sees it.

    ``memory`` gives its bytes per device; ``evictable`` is False for a pinned
    model or one that is generating.
    """

    name: str
    memory: tuple[tuple[str, int], ...]
    last_used: float
    evictable: bool = True
    pinned: bool = False

    def on(self, device: str) -> int:
        """Bytes this model holds on ``device``."""
        return sum(n for d, n in self.memory if d == device)


@dataclass(frozen=True)
class Placement:
    """Where a load goes.

    Attributes
    ----------
    device : str
        One device (``"cpu"``, ``"cuda:1"``), or ``"auto"`` for a model spread by
        accelerate.
    device_map : str or None
        ``"auto"`` when accelerate places the layers.
    max_memory : tuple of (device, bytes)
        accelerate's per-device limits, from the budget.
    evict : tuple of str
        Models to evict first, least recently used first.
    expected : tuple of (device, bytes)
        Where the estimate should land (an approximation for a split model).
    """

    device: str
    device_map: str | None = None
    max_memory: tuple[tuple[str, int], ...] = ()
    evict: tuple[str, ...] = ()
    expected: tuple[tuple[str, int], ...] = ()

    @property
    def offloaded(self) -> bool:
        """True when part of the model sits in CPU memory while the rest is on GPUs."""
        devices = {d for d, _ in self.max_memory}
        return "cpu" in devices and len(devices) > 1

    def accelerate_max_memory(self) -> dict[int | str, int]:
        """``max_memory`` as accelerate takes it: GPU indices and ``"cpu"``.

        Examples
        --------
        >>> Placement("auto", "auto", (("cuda:0", 10), ("cpu", 20))).accelerate_max_memory()
        {0: 10, 'cpu': 20}
        """
        out: dict[int | str, int] = {}
        for device, n in self.max_memory:
            out[int(device.split(":")[1]) if device.startswith("cuda:") else device] = n
        return out

    def __str__(self) -> str:
        if self.device_map is None:
            return self.device
        parts = ", ".join(f"{d} up to {format_size(n)}" for d, n in self.max_memory)
        return f"device_map='auto' ({parts})"


def budget_keyword(device: str) -> str:
    """How ``lm.budget`` names a device: ``"cuda:1"`` is ``cuda1``.

    Examples
    --------
    >>> budget_keyword("cuda:1"), budget_keyword("cpu")
    ('cuda1', 'cpu')
    """
    return device.replace(":", "")


class _Planner:
    def __init__(self, need: int, rooms: Sequence[DeviceRoom], residents: Sequence[Resident],
                 chunk: int) -> None:
        self.need = need
        self.rooms = {r.device: r for r in rooms}
        self.residents = list(residents)
        self.chunk = chunk
        self.used = {d: sum(r.on(d) for r in residents) for d in self.rooms}

    def base(self, device: str) -> int:
        """Room for a new model now: the budget left, capped by what the device has free."""
        room = self.rooms[device].limit - self.used[device]
        free = self.rooms[device].free
        return room if free is None else min(room, free)

    def room(self, device: str, evicted: Sequence[Resident]) -> int:
        # Evicting a model frees its memory both from the budget and on the device.
        return self.base(device) + sum(r.on(device) for r in evicted)

    def fits(self, devices: tuple[str, ...], evicted: Sequence[Resident]) -> bool:
        if len(devices) == 1:
            return self.room(devices[0], evicted) >= self.need
        # A split wastes up to one unsplittable block per device.
        usable = sum(max(0, self.room(d, evicted) - self.chunk) for d in devices)
        return usable >= self.need

    def evictions(self, devices: tuple[str, ...]) -> list[Resident] | None:
        """The least-recently-used idle models whose eviction makes room, or None."""
        chosen: list[Resident] = []
        if self.fits(devices, chosen):
            return chosen
        candidates = sorted(
            (r for r in self.residents if r.evictable and any(r.on(d) for d in devices)),
            key=lambda r: r.last_used,
        )
        for resident in candidates:
            chosen.append(resident)
            if self.fits(devices, chosen):
                return chosen
        return None

    def placement(self, devices: tuple[str, ...], evicted: Sequence[Resident]) -> Placement:
        names = tuple(r.name for r in evicted)
        if len(devices) == 1:
            return Placement(devices[0], evict=names, expected=((devices[0], self.need),))
        limits = tuple((d, max(0, self.room(d, evicted))) for d in devices)
        expected, left = [], self.need
        for d, n in limits:
            take = min(left, max(0, n - self.chunk))
            if take:
                expected.append((d, take))
            left -= take
        return Placement("auto", "auto", limits, names, tuple(expected))


def plan_placement(
    need: int,
    target: str,
    rooms: Sequence[DeviceRoom],
    residents: Sequence[Resident] = (),
    *,
    chunk: int = 0,
    source: str = "the model",
    dtype: str = "",
) -> Placement:
    """Choose where a model of ``need`` bytes goes, and which idle models must leave.

    Parameters
    ----------
    need : int
        The load's estimated bytes.
    target : str
        A device (``"cpu"``, ``"cuda:1"``): only that device, evicting there if
        needed. ``"auto"``: one GPU if one has room, else the model spread over
        the GPUs, and only when the GPUs cannot hold it, offloaded partly to CPU
        memory; options that stay on GPUs win even when they need evictions,
        because an offloaded model generates many times slower.
    rooms : sequence of DeviceRoom
        Budget and free memory of every device that may be used.
    residents : sequence of Resident
        The loaded models.
    chunk : int
        The largest block accelerate cannot split (a decoder layer); a split
        keeps this much spare on each device.
    source, dtype : str
        For the message when nothing fits.

    Returns
    -------
    Placement

    Raises
    ------
    BudgetExceededError
        Nothing fits even after evicting every idle model; nothing is evicted.

    Examples
    --------
    >>> rooms = [DeviceRoom("cpu", limit=100)]
    >>> old = Resident("old", (("cpu", 60),), last_used=1.0)
    >>> plan_placement(50, "cpu", rooms, [old]).evict
    ('old',)
    >>> gpus = [DeviceRoom("cuda:0", 40), DeviceRoom("cuda:1", 40), DeviceRoom("cpu", 100)]
    >>> str(plan_placement(60, "auto", gpus))
    "device_map='auto' (cuda:0 up to 40 B, cuda:1 up to 40 B)"
    """
    planner = _Planner(need, rooms, residents, chunk)
    phases: list[list[tuple[str, ...]]]
    if target != "auto":
        if target not in planner.rooms:
            raise ValueError(f"no budget known for {target!r}")
        phases = [[(target,)]]
    else:
        gpus = tuple(d for d in planner.rooms if d.startswith("cuda"))
        if not gpus:
            raise ValueError("target='auto' plans over GPUs; none given")
        on_gpus: list[tuple[str, ...]] = [(g,) for g in gpus] + ([gpus] if len(gpus) > 1 else [])
        phases = [on_gpus] + ([[(*gpus, "cpu")]] if "cpu" in planner.rooms else [])
    for options in phases:
        for devices in options:
            if planner.fits(devices, ()):
                return planner.placement(devices, ())
        best: tuple[int, tuple[str, ...], list[Resident]] | None = None
        for devices in options:
            evicted = planner.evictions(devices)
            if evicted is None:
                continue
            cost = sum(r.on(d) for r in evicted for d in devices)
            if best is None or cost < best[0]:
                best = (cost, devices, evicted)
        if best is not None:
            return planner.placement(best[1], best[2])
    raise BudgetExceededError(_refusal(planner, target, source, dtype))


def _refusal(planner: _Planner, target: str, source: str, dtype: str) -> str:
    device = target if target != "auto" else next(d for d in planner.rooms if d != "cpu")
    room = planner.rooms[device]
    used = planner.used[device]
    on_it = [r for r in planner.residents if r.on(device)]
    idle = [r for r in on_it if r.evictable]
    best = planner.room(device, idle)
    where = f" in {dtype}" if dtype else ""
    lines = [
        f"Loading {source} needs about {format_size(planner.need)}{where}, which does not fit "
        f"on {device if target != 'auto' else 'the GPUs or in CPU memory'}. "
        f"The {device} budget is {format_size(room.limit)}, loaded models use {format_size(used)} "
        "of it" + (f", and the device has {format_size(room.free)} free." if room.free is not None
                   else ".")
    ]
    if idle:
        lines.append(
            f"Even evicting every idle model ({', '.join(repr(r.name) for r in idle)}) would leave "
            f"only {format_size(max(best, 0))}."
        )
    kept = [r for r in on_it if not r.evictable]
    if kept:
        why = ", ".join(f"{r.name!r} ({'pinned' if r.pinned else 'generating'})" for r in kept)
        lines.append(f"Not evictable: {why}.")
    lines.append("Nothing was evicted. To load it:")
    tips = []
    if dtype == "float32":
        tips.append("load it in half precision (dtype='bfloat16'), about half the memory")
    elif dtype in ("bfloat16", "float16"):
        tips.append("use a smaller model or a quantized one")
    others = [d for d in planner.rooms if d != device]
    tips.append(
        f"load it on another device ({', '.join(repr(d) for d in others)})" if others
        else "load it on another device (device='cuda' where there is a GPU)"
    )
    if on_it:
        tips.append("unload models you no longer need (lm.unload(name))"
                    + (", or unpin one so it can be evicted (lm.pin(name, False))"
                       if any(r.pinned for r in on_it) else ""))
    if room.free is None or room.limit - used < room.free:
        tips.append(f"raise the budget (lm.budget({budget_keyword(device)}='...'), "
                    f"`%llm budget {budget_keyword(device)}=...`)")
    if device.startswith("cuda") and target != "auto":
        tips.append("load with device='auto' to offload the layers that do not fit to CPU memory")
    lines += [f"  - {t}" for t in tips]
    return "\n".join(lines)
