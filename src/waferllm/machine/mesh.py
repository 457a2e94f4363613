"""Mesh: an R x C grid of cores running one program; owns the phase labels, memory and route books."""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import jax
import numpy as np

from waferllm import WaferError
import waferllm.machine.schedule as sched_mod
from waferllm.machine.ledger import Ledger
from waferllm.spec.device import DeviceSpec

Array = jax.Array | jax.ShapeDtypeStruct


class GridError(WaferError):
    """A grid that cannot exist on the device."""


class LimitError(WaferError):
    """A program needs more SRAM or routes per core than the device has."""


def parse_grid(text: str) -> tuple[int, int]:
    """'RxC' (rows x columns) -> (R, C); both >= 1."""
    m = re.fullmatch(r"\s*(-?\d+)\s*[xX*]\s*(-?\d+)\s*", str(text))
    if not m:
        raise GridError(f"bad grid {text!r}; expected ROWSxCOLS with positive integers, e.g. 720x720 or 3x5")
    r, c = int(m.group(1)), int(m.group(2))
    if r < 1 or c < 1:
        raise GridError(f"bad grid {text!r}: rows and columns must be >= 1")
    return r, c


def tile_bytes(x: Array) -> int:
    """Bytes one core holds of a tiled array [R, C, *tile] (padding included)."""
    return int(math.prod(x.shape[2:])) * np.dtype(x.dtype).itemsize


def is_abstract(x: Array) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


@dataclass
class _Step:
    compute: float = 0.0
    comm: float = 0.0
    macs: float = 0.0
    hops: float = 0.0
    stages: float = 0.0
    extra_overhead: float = 0.0
    records: list = field(default_factory=list)  # what the step sent (machine/schedule.py)
    ramp: float = 0.0  # cycles of payload through every core's ramp, summed over the step's transfers
    ramp_lines: dict = field(default_factory=dict)  # axis -> per-line ramp cycles of transfers on some lines
    latency: float = 0.0  # the longest transfer's cycles apart from its payload

    @property
    def busy(self) -> float:
        """Transfers on different links overlap, but each passes its cores' ramps: their payloads queue there
        (on the busiest core: a row's load plus a column's)."""
        lines = sum(float(np.max(v)) for v in self.ramp_lines.values())
        return max(self.comm, self.latency + self.ramp + lines) if self.ramp or lines else self.comm

    def add_ramp(self, cycles: float, ramp: float, lines: tuple[str, np.ndarray] | None) -> None:
        if ramp <= 0:
            return
        self.latency = max(self.latency, cycles - ramp)
        if lines is None:
            self.ramp += ramp
        else:
            axis, mask = lines
            acc = self.ramp_lines.setdefault(axis, np.zeros(len(mask)))
            acc += ramp * np.asarray(mask, bool)


STRATEGIES = ("waferllm", "t10", "ladder")


@dataclass
class Mesh:
    """R x C cores of a device; X = columns (axis 1 of tile arrays), Y = rows (axis 0)."""

    spec: DeviceSpec
    rows: int
    cols: int
    ledger: Ledger | None = None
    limits: bool = True
    devices: object = None  # a jax.sharding.Mesh over the grid axes, or None
    check_fit: bool = True  # False for logical grids spanning several regions (an LM head across regions)
    strategy: str = "waferllm"  # how communication is costed: waferllm | t10 | ladder (machine/noc.py)
    _labels: list[str] = field(default_factory=list)
    _step: _Step | None = None
    _live: dict[str, int] = field(default_factory=dict)
    _routes: list[tuple[str, int]] = field(default_factory=list)
    _times: int = 1  # multiplier for charges inside a repeat()'s first iteration
    _mute: bool = False  # later iterations of a repeat() charge nothing
    _lockstep: bool = False  # every step inside lockstep() is synchronous (a barrier before it)
    _sched: sched_mod.Schedule | None = field(default=None, repr=False, compare=False)  # recorder, if any
    last_step_slack: float = field(default=0.0, repr=False, compare=False)  # cycles a step runs past its compute

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise GridError(f"bad grid {self.rows}x{self.cols}: rows and columns must be >= 1")
        if self.check_fit and (self.rows > self.spec.height_cores or self.cols > self.spec.width_cores):
            raise GridError(f"grid {self.rows}x{self.cols} does not fit device {self.spec.name} "
                            f"({self.spec.height_cores}x{self.spec.width_cores} cores, rows x columns)")
        if self.strategy not in STRATEGIES:
            raise GridError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.ledger is None:
            self.ledger = Ledger(clock_hz=self.spec.clock_hz)
        if self._sched is None:
            self._sched = sched_mod.capturing(self.rows, self.cols)

    @contextmanager
    def lockstep(self) -> Iterator[None]:
        """Steps inside start on every core together (a barrier before each), as the paper's Cannon and SUMMA
        measurements require (docs/fabric-model.md). The ledger charges each step's slowest core either way;
        the event-level fabric honours the barrier, where it otherwise lets every core run on its own clock."""
        saved, self._lockstep = self._lockstep, True
        try:
            yield
        finally:
            self._lockstep = saved

    @contextmanager
    def record(self) -> Iterator[sched_mod.Schedule]:
        """Record every charge inside as an explicit schedule (machine/schedule.py) beside the ledger."""
        saved, self._sched = self._sched, sched_mod.Schedule(self.rows, self.cols)
        try:
            yield self._sched
        finally:
            self._sched = saved

    # --- geometry -----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def size(self, axis: str) -> int:
        """Cores along an axis: 'x' (columns) or 'y' (rows)."""
        return {"x": self.cols, "y": self.rows}[_axis(axis)]

    # --- labels and steps ---------------------------------------------------
    @property
    def label(self) -> str:
        return "/".join(self._labels) or "program"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Label every cost charged inside (labels nest with '/')."""
        self._labels.append(name)
        try:
            yield
        finally:
            self._labels.pop()

    @contextmanager
    def step(self, name: str | None = None, *, overlap: bool = True, times: int = 1) -> Iterator[None]:
        """One compute-shift step: max(compute, transfers) + step overhead (the hardware overlaps them);
        overlap=False when the algorithm must wait for its data before computing."""
        assert self._step is None, "steps do not nest"
        self._step = st = _Step()
        ctx = self.phase(name) if name else _null()
        times *= self._times
        with ctx:
            try:
                yield
            finally:
                self._step = None
            if self._mute:
                return
            overhead = self.spec.step_overhead_cycles + st.extra_overhead
            self.last_step_slack = (max(0.0, st.busy - st.compute) if overlap else 0.0) + overhead
            self.ledger.charge(self.label, compute=st.compute, comm=st.busy, macs=st.macs, hops=st.hops,
                               stages=st.stages, overhead=overhead, overlap=overlap, times=times)
            if self._sched is not None:
                self._sched.add(sched_mod.Step(self.label, st.compute, st.records, overlap, times, overhead,
                                               self._lockstep))

    def repeat(self, n: int, abstract: bool) -> Iterator[int]:
        """Iterate n identical-cost iterations: the first is charged n times, the rest are muted.

        Numeric runs still execute every iteration; shape-only runs stop after the first, so a full
        wafer's 10^5-step loop costs one iteration. Both give the same ledger.
        """
        if n <= 0:
            return
        saved = (self._times, self._mute)
        try:
            self._times = saved[0] * n
            yield 0
            self._times, self._mute = saved[0], True
            for i in range(1, 1 if abstract else n):
                yield i
        finally:
            self._times, self._mute = saved

    def charge_compute(self, cycles: float, macs: float = 0.0) -> None:
        """Local work on every core (critical path = the largest tile, which all cores pad to)."""
        if self._step is not None:
            self._step.compute += cycles
            self._step.macs += macs
        elif not self._mute:
            self.ledger.charge(self.label, compute=cycles, macs=macs, times=self._times)
            if self._sched is not None:
                self._sched.add(sched_mod.Step(self.label, cycles, times=self._times, sync=self._lockstep))

    def charge_comm(self, cycles: float, *, hops: float = 0.0, stages: float = 0.0, overhead: float = 0.0,
                    times: int = 1, record: sched_mod.Record | None = None, ramp: float = 0.0,
                    lines: tuple[str, np.ndarray] | None = None) -> None:
        """A transfer or collective; inside a step, concurrent transfers on independent links take the max,
        but their payloads (`ramp` cycles each through the ramps of every core, or of the cores on `lines`
        = (axis, mask of lines that send)) queue one after another.

        record: what was sent (machine/schedule.py), whose analytical cost `cycles` is; without one the
        schedule keeps the cycles as an Opaque record."""
        rec = record if record is not None else sched_mod.Opaque(cycles)
        if self._step is not None:
            st = self._step
            if cycles > st.comm:
                st.comm, st.hops, st.stages = cycles, hops, stages
            st.add_ramp(cycles, ramp, lines)
            st.extra_overhead += overhead
            st.records.append(rec)
        elif not self._mute:
            self.ledger.charge(self.label, comm=cycles, hops=hops, stages=stages, overhead=overhead,
                               overlap=False, times=times * self._times)
            if self._sched is not None:
                self._sched.add(sched_mod.Step(self.label, 0.0, [rec], False, times * self._times, overhead,
                                               self._lockstep))

    # --- memory -------------------------------------------------------------
    @contextmanager
    def hold(self, **tensors: Array | int) -> Iterator[None]:
        """Tiles live on every core while inside; checks per-core SRAM (bytes padded as stored)."""
        sizes = {k: (v if isinstance(v, int) else tile_bytes(v)) for k, v in tensors.items()}
        clash = set(sizes) & set(self._live)
        names = {k: (k if k not in clash else f"{k}#{len(self._live)}") for k in sizes}
        for k, b in sizes.items():
            self._live[names[k]] = b
        try:
            self._check_memory()
            yield
        finally:
            for k in sizes:
                self._live.pop(names[k], None)

    def _check_memory(self) -> None:
        total = sum(self._live.values())
        self.ledger.note_memory(total, self.label, self._live)
        budget = self.spec.sram_bytes_per_core
        if total > budget:
            big = max(self._live, key=self._live.get)
            msg = (f"out of SRAM in {self.label}: {total} bytes per core needed, {budget} available on "
                   f"{self.spec.name} (largest tensor {big!r}: {self._live[big]} bytes per core) "
                   f"on grid {self.rows}x{self.cols}")
            self._limit(msg)

    # --- routes -------------------------------------------------------------
    @contextmanager
    def routes(self, what: str, n: int) -> Iterator[None]:
        """n routes (colours) configured at the busiest router while inside."""
        self._routes.append((what, n))
        try:
            used = sum(k for _, k in self._routes)
            self.ledger.note_routes(used, f"{self.label} ({'+'.join(w for w, _ in self._routes)})")
            if used > self.spec.routes_per_core:
                self._limit(f"out of routes in {self.label}: {used} routes per core needed, "
                            f"{self.spec.routes_per_core} available on {self.spec.name}")
            yield
        finally:
            self._routes.pop()

    def _limit(self, msg: str) -> None:
        if self.limits:
            raise LimitError(msg + " (use --no-limits to report the excess instead)")
        if msg not in self.ledger.excess:
            self.ledger.excess.append(msg)


def _axis(axis: str) -> str:
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    return axis


@contextmanager
def _null() -> Iterator[None]:
    yield
