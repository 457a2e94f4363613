"""The explicit communication schedule of a mesh program: what the NoC primitives send, to whom, on which route,
and what waits on what. One record per primitive call; the analytical ledger (machine/noc.py) and the
event-level fabric (machine/fabric.py) both consume it.

A record names a pattern (a shift along X, a K-tree allreduce along Y, ...). `messages(R, C)` expands it into
explicit stages of messages over the grid: every message has a sender, a delivered range on its line (every
core in [lo, hi] but the sender; a unicast has lo = hi, the cores between pass it through in their routers), a
payload, what the sender waits on (its own data, or the output of one of its relays) and what the receiver does
with it (store it, or feed relay `dst_key`: a software stage that adds its own partial, or forwards). A relay
fires once every message addressed to it has arrived, so a meeting root waits for both of its chains.
"""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import numpy as np

from waferllm.machine.rings import default_groups, interleave_order, ring_pos, ring_src


# --- records -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shift:
    """Every core sends its tile (nbytes) to its neighbour on a ring or line along `axis` (machine/rings.py);
    lines: which lines take part (None: all)."""

    axis: str
    ring: str  # interleaved | wrap | line
    direction: int
    nbytes: int
    lines: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class Multicast:
    """Router multicast of nbytes from the core at `root` to every core of its line; switch: the route is
    re-pointed first (one software relay stage)."""

    axis: str
    root: int
    nbytes: int
    switch: bool = False


@dataclass(frozen=True)
class Allreduce:
    """Reduce `elems` elements per core along `axis` (ktree | pipeline | ring) and return the result to every core,
    within consecutive segments of `segment` cores."""

    axis: str
    algo: str
    segment: int
    elems: int
    elem_bytes: int
    groups: int | None = None


@dataclass(frozen=True)
class Reduce:
    """K-tree reduce along `axis` to the line position `root` (no multicast back)."""

    axis: str
    root: int
    elems: int
    elem_bytes: int
    groups: int | None = None


@dataclass(frozen=True)
class OwnerChain:
    """Each line chain-reduces this step's partial (computed in the step) into its owner core: chains from both
    line ends meet there. Pipelined: the step does not wait for it (a later Drain does). owner: position per
    line (None: the line's far end)."""

    axis: str
    elems: int
    elem_bytes: int
    owner: tuple[int, ...] | None = None
    output = True  # carries the step's result, not its input


@dataclass(frozen=True)
class Drain:
    """Wait for every pipelined OwnerChain still in flight. hidden: cycles of the last chain already covered by
    the last step's transfers (it started when that step's compute ended)."""

    axis: str
    elems: int
    elem_bytes: int
    hidden: float = 0.0


@dataclass(frozen=True)
class Opaque:
    """A transfer the schedule does not spell out (moves between regions, the t10/ladder baselines): both cost
    models take the analytical cycles."""

    cycles: float
    what: str = ""


Record = Shift | Multicast | Allreduce | Reduce | OwnerChain | Drain | Opaque


@dataclass
class Step:
    """One ledger charge: compute (cycles per core, critical path) and the records sent in it, repeated `times`.

    overlap: the step's transfers carry the next step's inputs and overlap its compute (a compute-shift step);
    False: the compute waits for them. overhead: the fixed cycles the ledger adds (step, collective). sync: every
    core starts the step together (a barrier: Cannon and SUMMA as the paper measured them); else a core starts
    it as soon as its own previous step and inputs are done (dataflow)."""

    label: str
    compute: float = 0.0
    records: list = field(default_factory=list)
    overlap: bool = True
    times: int = 1
    overhead: float = 0.0
    sync: bool = False


@dataclass
class Schedule:
    """Everything one Mesh sent, in program order."""

    rows: int
    cols: int
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> None:
        if step.times > 0:
            self.steps.append(step)

    @property
    def n_records(self) -> int:
        return sum(len(s.records) for s in self.steps)


# --- capture: every Mesh built inside records into its own Schedule ---------------------------------------
_CAPTURE: contextvars.ContextVar[list | None] = contextvars.ContextVar("waferllm_schedule_capture", default=None)


@contextmanager
def capture() -> Iterator[list[Schedule]]:
    """Collect the schedules of every Mesh created inside (for callers that do not hold the Mesh)."""
    got: list[Schedule] = []
    token = _CAPTURE.set(got)
    try:
        yield got
    finally:
        _CAPTURE.reset(token)


def capturing(rows: int, cols: int) -> Schedule | None:
    """A new Schedule registered with the active capture, or None outside one."""
    got = _CAPTURE.get()
    if got is None:
        return None
    sched = Schedule(rows, cols)
    got.append(sched)
    return sched


# --- explicit messages -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Batch:
    """Messages of one stage along one axis, one entry per message (arrays of equal length)."""

    axis: str
    line: np.ndarray  # row (axis x) or column (axis y)
    src: np.ndarray  # sender's position on the line
    lo: np.ndarray  # delivered to every position in [lo, hi] except src
    hi: np.ndarray
    nbytes: int
    elem_bytes: int = 4
    src_key: np.ndarray | None = None  # -1: the sender's own data; k: the output of the sender's relay k
    stream: np.ndarray | None = None  # True: relay output streamed straight on (no new message, no overhead)
    dst_key: np.ndarray | None = None  # -1: stored; k: into the receiver's relay k
    own_key: np.ndarray | None = None  # what relay k adds: -1 the core's own data, j the output of its relay j
    add: bool = True  # relay stages add (reduction) or only forward (allgather)
    switch: bool = False  # re-point the route first (one relay stage of latency)

    def __len__(self) -> int:
        return len(self.src)

    def field(self, name: str, default: int) -> np.ndarray:
        v = getattr(self, name)
        return np.full(len(self), default, np.int64) if v is None else np.asarray(v)


def line_shape(rows: int, cols: int, axis: str) -> tuple[int, int]:
    """(number of lines, cores per line) for messages along `axis`."""
    return (rows, cols) if axis == "x" else (cols, rows)


def messages(rec, rows: int, cols: int) -> list[list[Batch]]:
    """The record as stages of explicit messages (stage s may wait on the results of stages < s)."""
    return _messages(rec, rows, cols)


@lru_cache(maxsize=256)
def _messages(rec, rows: int, cols: int) -> list[list[Batch]]:
    nl, n = line_shape(rows, cols, getattr(rec, "axis", "x"))
    if isinstance(rec, Shift):
        return _shift(rec, nl, n)
    if isinstance(rec, Multicast):
        if n == 1:
            return []
        one = np.ones(nl, np.int64)
        return [[Batch(rec.axis, np.arange(nl), one * rec.root, one * 0, one * (n - 1), rec.nbytes,
                       switch=rec.switch)]]
    if isinstance(rec, Allreduce):
        return _segmented(rec, nl, n)
    if isinstance(rec, Reduce):
        local = tuple(ktree_local(n, rec.groups, root=rec.root))
        return _tile(local, nl, [(0, n)], rec.axis, rec.elems * rec.elem_bytes, rec.elem_bytes)
    if isinstance(rec, OwnerChain):
        return _owner_chains(rec, nl, n)
    return []  # Drain, Opaque: no messages


def _shift(rec: Shift, nl: int, n: int) -> list[list[Batch]]:
    if n == 1 or rec.nbytes <= 0:
        return []
    src = ring_src(n, rec.ring, rec.direction)
    dst = np.nonzero((src >= 0) & (src != np.arange(n)))[0]
    lines = np.arange(nl) if rec.lines is None else np.nonzero(np.asarray(rec.lines, bool))[0]
    L, D = np.meshgrid(lines, dst, indexing="ij")
    L, D = L.ravel(), D.ravel()
    return [[Batch(rec.axis, L, src[D], D, D, rec.nbytes)]] if len(D) else []


# A local message on a line of p cores: (src, lo, hi, src_key, stream, dst_key, own_key), as in Batch
def tree_shape(p: int, groups: int | None) -> tuple[int, int]:
    """(G groups, g cores per group) of the two-phase tree over p cores; the last group may be short."""
    g = math.ceil(p / min(groups or default_groups(p), p))
    return math.ceil(p / g), g


def tree_root(p: int, groups: int | None) -> int:
    """The core where the tree's two phases end."""
    G, g = tree_shape(p, groups)
    return (G // 2) * g + g // 2


def tree_groups(p: int, groups: int | None) -> tuple[list[int], list[tuple[int, int]]]:
    """(root, (first, last) core) of every group of the two-phase tree over p cores."""
    G, g = tree_shape(p, groups)
    return [min(j * g + g // 2, p - 1) for j in range(G)], [(j * g, min((j + 1) * g, p) - 1) for j in range(G)]


def ktree_local(p: int, groups: int | None, *, root: int | None = None) -> Iterator[list[tuple]]:
    """Stages of the two-phase K=2 tree on a line of p cores: chains inside every group meet at its root
    (g // 2), group roots chain to the middle group's root over pass-through routes, then a multicast back
    (or, with `root`, one unicast from the tree's root to that position). Chains that meet are aligned to end
    in the same stage, so the fabric queues their last messages at the meeting core together."""
    if p == 1:
        return
    G, g = tree_shape(p, groups)
    roots, ends = tree_groups(p, groups)
    phase1 = max(g // 2, g - 1 - g // 2)
    st: dict[int, list[tuple]] = {}
    for (a, b), r in zip(ends, roots):  # phase 1: both chains of every group toward its root (relay 0)
        for k in range(r - a):
            st.setdefault(phase1 - (r - a) + k, []).append(_hop(a + k, a + k + 1, k, 0, -1, -1))
        for k in range(b - r):
            st.setdefault(phase1 - (b - r) + k, []).append(_hop(b - k, b - k - 1, k, 0, -1, -1))
    rg = G // 2
    phase2 = max(rg, G - 1 - rg)
    for k in range(rg):  # phase 2: over the group roots (relay 1), their group sums (relay 0) as own data
        st.setdefault(phase1 + phase2 - rg + k, []).append(_hop(roots[k], roots[k + 1], k, 1, 0, 0))
    for k in range(G - 1 - rg):
        j = G - 1 - k
        st.setdefault(phase1 + phase2 - (G - 1 - rg) + k, []).append(_hop(roots[j], roots[j - 1], k, 1, 0, 0))
    yield from (st.get(i, []) for i in range(phase1 + phase2))
    final, top = (1 if G > 1 else 0), roots[rg]
    if root is None:
        yield [(top, 0, p - 1, final, False, -1, -1)]
    elif root != top:
        yield [(top, root, root, final, False, -1, -1)]


def _hop(src: int, dst: int, k: int, key: int, own: int, first: int) -> tuple:
    """The k-th message of a chain into relay `key` of each receiver: the chain's first carries the sender's data
    `first` (-1: its own; j: its relay j's result) as a new message, the rest stream the sender's relay `key` on."""
    return (src, dst, dst, first if k == 0 else key, k > 0, key, own)


def pipeline_local(p: int) -> Iterator[list[tuple]]:
    """One chain from core 0 to core p-1 (every core adds its part), then a multicast back."""
    for k in range(p - 1):
        yield [_hop(k, k + 1, k, 0, -1, -1)]
    if p > 1:
        yield [(p - 1, 0, p - 1, 0, False, -1, -1)]


def ring_local(p: int) -> Iterator[list[tuple]]:
    """Interleaved-ring reduce-scatter (p-1 steps, the receiver adds) then allgather (p-1 steps, it forwards):
    every step each core sends one chunk to its ring successor, a new message once the last step's is in."""
    order, pos = np.array(interleave_order(p)), ring_pos(p)
    succ = order[(pos + 1) % p]
    for s in range(2 * (p - 1)):
        yield [(c, int(succ[c]), int(succ[c]), s - 1, False, s, -1) for c in range(p)]


def _segments(n: int, seg: int) -> list[tuple[int, int]]:
    return [(s, min(seg, n - s)) for s in range(0, n, seg)]


def _segmented(rec: Allreduce, nl: int, n: int) -> list[list[Batch]]:
    seg = min(rec.segment or n, n)
    stages: list[list[Batch]] = []
    chunk = math.ceil(rec.elems / seg) if rec.algo == "ring" else rec.elems
    by_len: dict[int, list[tuple[int, int]]] = {}
    for s0, p in _segments(n, seg):
        by_len.setdefault(p, []).append((s0, p))
    for p, segs in by_len.items():
        local = {"ktree": lambda: ktree_local(p, rec.groups), "pipeline": lambda: pipeline_local(p),
                 "ring": lambda: ring_local(p)}[rec.algo]()
        for i, st in enumerate(_tile(tuple(local), nl, segs, rec.axis, chunk * rec.elem_bytes, rec.elem_bytes,
                                     ring=rec.algo == "ring", p=p)):
            while len(stages) <= i:
                stages.append([])
            stages[i].extend(st)
    return stages


def _tile(local: tuple, nl: int, segs: list[tuple[int, int]], axis: str, nbytes: int, eb: int,
          *, ring: bool = False, p: int = 0) -> list[list[Batch]]:
    """Local stages (positions in a segment) repeated over every line and segment as Batches."""
    offs = np.array([s0 for s0, _ in segs], np.int64)
    lines = np.arange(nl, dtype=np.int64)
    out = []
    for s, st in enumerate(local):
        if not st:
            out.append([])
            continue
        m = np.array(st, dtype=np.int64)  # [k, 7]
        L, O, K = np.meshgrid(lines, offs, np.arange(len(m)), indexing="ij")
        L, O, K = L.ravel(), O.ravel(), K.ravel()
        col = lambda i: m[K, i]  # noqa: E731
        adds = not ring or s < p - 1  # the ring's allgather stages forward without adding
        out.append([Batch(axis, L, col(0) + O, col(1) + O, col(2) + O, nbytes, eb, src_key=col(3),
                          stream=col(4).astype(bool), dst_key=col(5), own_key=col(6), add=adds)])
    return out


def _owner_chains(rec: OwnerChain, nl: int, n: int) -> list[list[Batch]]:
    """Chains from both ends of every line to its owner, aligned to end together (stage max(o, n-1-o) - 1)."""
    if n == 1:
        return []
    own = np.full(nl, n - 1, np.int64) if rec.owner is None else np.asarray(rec.owner, np.int64).reshape(-1)
    own = np.broadcast_to(own, (nl,)) if own.size == 1 else own
    span = np.maximum(own, n - 1 - own)  # stages of each line
    stages = []
    for s in range(int(span.max())):
        k_left, k_right = s - (span - own), s - (span - (n - 1 - own))  # hop index of each chain in stage s
        left = np.nonzero((k_left >= 0) & (k_left < own))[0]
        right = np.nonzero((k_right >= 0) & (k_right < n - 1 - own))[0]
        lines = np.concatenate([left, right])
        k = np.concatenate([k_left[left], k_right[right]])
        src = np.concatenate([k_left[left], n - 1 - k_right[right]])
        dst = np.concatenate([src[: len(left)] + 1, src[len(left):] - 1])
        stages.append([Batch(rec.axis, lines, src, dst, dst, rec.elems * rec.elem_bytes, rec.elem_bytes,
                             src_key=np.where(k == 0, -1, 0), stream=k > 0, dst_key=np.zeros(len(k), np.int64),
                             own_key=np.full(len(k), -1))])
    return stages
