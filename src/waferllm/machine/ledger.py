"""The PLMR cost ledger: critical-path cycles per labelled phase, peak memory, routes, hops."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PhaseCost:
    """Critical-path cycles spent in one labelled phase; comm_cycles = cycles - compute_cycles."""

    cycles: float = 0.0
    compute_cycles: float = 0.0  # compute on the critical path (overlapped traffic hidden under it)
    comm_cycles: float = 0.0  # exposed communication, synchronisation and overheads
    overhead_cycles: float = 0.0  # the part of comm_cycles that is fixed per-step/per-message cost
    steps: int = 0
    hops: float = 0.0  # hops on the critical path
    stages: float = 0.0  # software routing stages (relays) on the critical path
    macs: float = 0.0  # MACs per core on the critical path

    def add(self, other: "PhaseCost", times: int = 1) -> None:
        for k in _PHASE_FIELDS:  # not asdict(): this runs for every charge and merge
            setattr(self, k, getattr(self, k) + getattr(other, k) * times)


_PHASE_FIELDS = tuple(PhaseCost.__dataclass_fields__)


@dataclass
class Ledger:
    """What a mesh program cost; passed explicitly, never global. Equal ledgers compare equal."""

    clock_hz: float
    phases: dict[str, PhaseCost] = field(default_factory=dict)
    peak_core_bytes: int = 0
    peak_where: str = ""
    peak_tensors: dict[str, int] = field(default_factory=dict)
    routes_per_core: int = 0
    routes_where: str = ""
    excess: list[str] = field(default_factory=list)  # limit violations recorded when limits are off

    # --- charging -----------------------------------------------------------
    def charge(self, label: str, *, compute: float = 0.0, comm: float = 0.0, overhead: float = 0.0,
               overlap: bool = True, hops: float = 0.0, stages: float = 0.0, macs: float = 0.0,
               times: int = 1) -> float:
        """Charge one step (repeated `times`): max(compute, comm) + overhead if overlapped, else the sum."""
        busy = max(compute, comm) if overlap else compute + comm
        cycles = busy + overhead
        p = self.phases.setdefault(label, PhaseCost())
        p.add(PhaseCost(cycles=cycles, compute_cycles=compute, comm_cycles=cycles - compute,
                        overhead_cycles=overhead, steps=1, hops=hops, stages=stages, macs=macs), times)
        return cycles * times

    def note_memory(self, total: int, where: str, tensors: dict[str, int]) -> None:
        if total > self.peak_core_bytes:
            self.peak_core_bytes, self.peak_where, self.peak_tensors = total, where, dict(tensors)

    def note_routes(self, n: int, where: str) -> None:
        if n > self.routes_per_core:
            self.routes_per_core, self.routes_where = n, where

    # --- totals -------------------------------------------------------------
    def _sum(self, key: str, prefix: str = "") -> float:
        return sum(getattr(p, key) for k, p in self.phases.items() if k.startswith(prefix))

    @property
    def cycles(self) -> float:
        return self._sum("cycles")

    @property
    def compute_cycles(self) -> float:
        return self._sum("compute_cycles")

    @property
    def comm_cycles(self) -> float:
        return self._sum("comm_cycles")

    @property
    def hops(self) -> float:
        return self._sum("hops")

    @property
    def stages(self) -> float:
        return self._sum("stages")

    @property
    def time_s(self) -> float:
        return self.cycles / self.clock_hz

    def cycles_of(self, prefix: str) -> float:
        """Cycles of every phase whose label starts with prefix."""
        return self._sum("cycles", prefix)

    def merge(self, other: "Ledger", prefix: str = "", times: int = 1) -> None:
        """Append another ledger's phases (sequential composition, repeated `times`); peaks take the max."""
        for k, p in other.phases.items():
            self.phases.setdefault(prefix + k, PhaseCost()).add(p, times)
        self.note_memory(other.peak_core_bytes, prefix + other.peak_where, other.peak_tensors)
        self.note_routes(other.routes_per_core, prefix + other.routes_where)
        self.excess.extend(other.excess)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "time_s": self.time_s,
            "compute_cycles": self.compute_cycles,
            "comm_cycles": self.comm_cycles,
            "hops": self.hops,
            "stages": self.stages,
            "peak_core_bytes": self.peak_core_bytes,
            "peak_where": self.peak_where,
            "peak_tensors": dict(self.peak_tensors),
            "routes_per_core": self.routes_per_core,
            "routes_where": self.routes_where,
            "excess": list(self.excess),
            "phases": {k: asdict(v) for k, v in self.phases.items()},
        }
