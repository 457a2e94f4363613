"""Run a mesh program's schedule (machine/schedule.py) on the event-level fabric (machine/fabric.py).

Each core keeps its own clock: a step starts on a core when its previous step's compute is done and the data
that step received has landed (no global barrier). In a step the core's sends start at once (after the message
overhead), its compute runs beside them (overlap) or after its inputs arrive (overlap=False), and the step ends
when the compute, its own sends and the data for the next step are all done, plus the step's fixed overhead. A core
posts its receives at its step start (double buffers, as in the authors' MeshGEMM): data that reaches it earlier
waits in the fabric (unbounded queues: its sender does not stall) and lands at link rate once posted.

Relays are software stages on a core: a relay fires when every message addressed to it has landed, adds its own
partial (or forwards) and emits each wavelet beta cycles after it arrived, no faster than
relay_cycles_per_element per element; a relay fed by two chains drains one, then the other (a K-tree root); its
output streams on as the next message (no new message overhead) or is stored. Steps marked sync start on every
core together (a barrier). A step repeated n times is simulated until the cores' clocks and the servers' queues are periodic
(every clock moves by the same amount per period); the rest is extrapolated exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from waferllm.machine.fabric import RAMP_IN, RAMP_OUT, RELAY, WAVELET_BITS, Round, Stats, build_flows, fifo
from waferllm.machine.schedule import Drain, Opaque, Schedule, messages
from waferllm.spec.device import DeviceSpec

MAX_PERIOD = 4  # periods (in step repetitions) tried when looking for a periodic state


@dataclass
class FabricResult:
    """What the event-level model says a schedule takes."""

    cycles: float
    time_s: float
    phases: dict[str, float]  # label -> cycles added to the program's finish time
    steps: int  # step repetitions in the schedule
    simulated: int  # repetitions simulated (the rest extrapolated from a periodic state)
    routes_per_core: int  # distinct route settings at the busiest router in any step
    opaque_cycles: float  # cycles taken from the analytical model (transfers the schedule does not spell out)
    queues: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Plan:
    """A record's stages as flows, and how many messages each (core, relay key) waits for."""

    def __init__(self, rec, fab: "Fabric"):
        self.stages = [[(b, build_flows(b, fab.rows, fab.cols, fab.max_flits)) for b in st]
                       for st in messages(rec, fab.rows, fab.cols)]
        self.need: dict[int, np.ndarray] = {}
        self.own: dict[int, int] = {}
        self.add: dict[int, bool] = {}
        for st in self.stages:
            for b, fl in st:
                for key in np.unique(b.field("dst_key", -1)):
                    if key < 0:
                        continue
                    m = b.field("dst_key", -1) == key
                    dst = _deliver_core(b, fab.cols)[m]
                    need = self.need.setdefault(int(key), np.zeros(fab.n, np.int64))
                    np.add.at(need, dst, 1)
                    self.own[int(key)] = int(b.field("own_key", -1)[m][0])
                    self.add[int(key)] = b.add
        sizes = {fl.K for st in self.stages for _, fl in st}
        if len(sizes) > 1 and self.need:
            raise ValueError(f"relayed messages of one record must be the same size: {rec!r}")
        self.flits = next((fl for st in self.stages for _, fl in st), None)


def _deliver_core(b, cols: int) -> np.ndarray:
    """The core a unicast delivers to (messages into relays are unicasts)."""
    return b.line * cols + b.hi if b.axis == "x" else b.hi * cols + b.line


class _Relay:
    """Relay k on every core that expects messages for it: joined inputs, then its output flits."""

    def __init__(self, need: np.ndarray, K: int):
        self.cores = np.nonzero(need)[0]
        self.need = need[self.cores]
        if self.need.max(initial=0) > 2:
            raise ValueError("a relay takes at most two input streams (one from each side of its line)")
        self.got = np.zeros(len(self.cores), np.int64)
        self.in_head = np.full((len(self.cores), 2, K), -np.inf)  # [core, input (consumed in this order), flit]
        self.in_tail = np.full((len(self.cores), 2, K), -np.inf)
        self.out_head = np.zeros((len(self.cores), K))
        self.out_tail = np.zeros((len(self.cores), K))
        self.fired = np.zeros(len(self.cores), bool)

    def rows(self, cores: np.ndarray) -> np.ndarray:
        r = np.searchsorted(self.cores, cores)
        if np.any(r >= len(self.cores)) or np.any(self.cores[np.minimum(r, len(self.cores) - 1)] != cores):
            raise KeyError("a message reads a relay its core does not run")
        return r


class _RecRun:
    """One repetition of one record: injects each stage's messages, takes in deliveries, fires relays."""

    def __init__(self, fab: "Fabric", rec, start: np.ndarray):
        self.fab, self.rec, self.start = fab, rec, start
        self.plan = fab.plan(rec)
        self.done = start.copy()  # data landed / relay results per core
        self.sent = start.copy()  # own sends out of the ramp
        K = self.plan.flits.K if self.plan.flits is not None else 1
        self.relays = {k: _Relay(need, K) for k, need in self.plan.need.items()}

    def result(self, key: int, cores: np.ndarray) -> np.ndarray:
        """When relay `key`'s output is complete on these cores (their own data when it has no inputs)."""
        out = self.start[cores].copy()
        rl = self.relays.get(key)
        if rl is not None and key >= 0:
            r = np.searchsorted(rl.cores, cores)
            ok = (r < len(rl.cores)) & (rl.cores[np.minimum(r, len(rl.cores) - 1)] == cores)
            if not rl.fired[r[ok]].all():
                raise RuntimeError("a message waits on a relay that has not fired yet")
            out[ok] = rl.out_tail[r[ok], -1]
        return out

    def inject(self, b, fl) -> tuple[np.ndarray, np.ndarray]:
        """Arrival of every flit of every message at its sender's ramp out: [F, K] heads and tails."""
        s, tau = self.fab.spec, self.fab.tau
        src = fl.src_core
        key, stream = b.field("src_key", -1), b.field("stream", 0).astype(bool)
        t0 = np.where(key < 0, self.start[src], 0.0)
        for k in np.unique(key[key >= 0]):
            m = key == k
            t0[m] = self.result(int(k), src[m])
        t0 = t0 + s.message_overhead_cycles + (s.beta_cycles_per_relay if b.switch else 0.0)
        head = t0[:, None] + fl.offset[None, :] * tau
        tail = head + (fl.wav[None, :] - 1) * tau
        for k in np.unique(key[stream]):
            m = stream & (key == k)
            rl = self.relays[int(k)]
            r = rl.rows(src[m])
            if not rl.fired[r].all():
                raise RuntimeError("a relay streams before it has fired")
            head[m], tail[m] = rl.out_head[r], rl.out_tail[r]
        return head, tail

    def absorb(self, b, fl, d_head: np.ndarray, d_tail: np.ndarray) -> None:
        """Take a stage's departures ([N, K] per node): sends, deliveries, relay inputs."""
        n, tau = self.fab.n, self.fab.tau
        kind = fl.server // n
        out = np.nonzero(kind == RAMP_OUT)[0]
        np.maximum.at(self.sent, fl.server[out], d_tail[out, -1] + tau)
        inn = np.nonzero(kind == RAMP_IN)[0]
        core = fl.server[inn] - RAMP_IN * n
        dkey = b.field("dst_key", -1)[fl.msg[inn]]
        st = dkey < 0
        np.maximum.at(self.done, core[st], self._posted(fl, core[st], d_head[inn[st], 0], d_tail[inn[st], -1] + tau))
        for k in np.unique(dkey[~st]):
            m = dkey == k
            rl = self.relays[int(k)]
            r = rl.rows(core[m])
            # a core with two inputs drains the one from the higher line position first, then the other (one DSD
            # op per fabric input: the authors' two-phase tree and prefill reduce). It pulls each from the router's
            # queue as it drains it: a wavelet is in when it reaches the ramp (beta runs from there), not at its
            # turn on the ramp's FIFO, where the stream the core is not draining yet would hold up the other
            src = fl.src_core[fl.msg[inn[m]]]
            pos = (lambda c: c % self.fab.cols) if b.axis == "x" else (lambda c: c // self.fab.cols)  # noqa: E731
            slot = ((rl.need[r] == 2) & (pos(src) < pos(core[m]))).astype(np.int64)
            par = fl.parent[inn[m]]
            hop = self.fab.spec.alpha_cycles_per_hop
            np.maximum.at(rl.in_head, (r, slot), d_head[par] + hop)
            np.maximum.at(rl.in_tail, (r, slot), d_tail[par] + hop)
            np.add.at(rl.got, r, 1)

    def _posted(self, fl, core: np.ndarray, head: np.ndarray, land: np.ndarray) -> np.ndarray:
        """Flow control: a stored message lands in the buffer its receiver posts at its own step start (the artifact's
        double buffers); wavelets that come earlier wait in the fabric and drain at link rate once it is posted."""
        tau, wav = self.fab.tau, float(fl.wav.sum())
        post = self.start[core]
        held = post + wav * tau - land
        self.fab.stats.hold(held, np.clip((post - head) / tau + 1.0, 0.0, wav))
        return np.maximum(land, post + wav * tau)

    def fire(self) -> None:
        """Run every relay whose inputs have all landed: it adds (or forwards) its inputs one after another, each
        wavelet beta cycles after it arrived and no faster than relay_cycles_per_element per element; the first
        input joins the core's own partial, and the last pass is what streams on."""
        s, fab = self.fab.spec, self.fab
        fl = self.plan.flits
        for k, rl in self.relays.items():
            go = np.nonzero((rl.got == rl.need) & ~rl.fired)[0]
            if not len(go):
                continue
            own = self.result(self.plan.own[k], rl.cores[go]) if self.plan.own[k] >= 0 else self.start[rl.cores[go]]
            K = fl.K
            if self.plan.add[k]:  # no faster than the ramp brings the wavelets in
                work = np.maximum(fl.elems * s.relay_cycles_per_element, fl.wav * fab.tau)
                first = np.maximum(fl.first_elems * s.relay_cycles_per_element, fab.tau)
            else:
                work, first = fl.wav * fab.tau, np.full(K, fab.tau)
            for slot in range(2):
                g = go[rl.need[go] > slot]
                if not len(g):
                    continue
                base = own[rl.need[go] > slot][:, None] if slot == 0 else -np.inf
                ah = np.maximum(rl.in_head[g, slot], base) + s.beta_cycles_per_relay
                at = np.maximum(rl.in_tail[g, slot], base) + s.beta_cycles_per_relay
                srv = np.repeat(RELAY * fab.n + rl.cores[g], K)
                dh, dt, last = fifo(srv, ah.ravel(), at.ravel(), np.tile(work, len(g)).astype(float),
                                    np.tile(first, len(g)).astype(float), fab.free)
                fab.free[srv[last]] = dt[last]
                fab.stats.queue(np.full(len(srv), RELAY), dh - ah.ravel(), np.tile(fl.wav, len(g)))
                if fab.stats.trace is not None:
                    fab.stats.log(srv, np.tile(np.arange(K), len(g)), ah.ravel() - s.beta_cycles_per_relay, dh, dt)
                rl.out_head[g], rl.out_tail[g] = dh.reshape(-1, K), dt.reshape(-1, K)
            rl.fired[go] = True
            np.maximum.at(self.done, rl.cores[go], rl.out_tail[go, -1])


class Fabric:
    """The fabric's state while a schedule runs: every core's clock, every server's last departure."""

    def __init__(self, spec: DeviceSpec, rows: int, cols: int, max_flits: int = 16, barriers: bool = True):
        self.spec, self.rows, self.cols, self.n, self.max_flits = spec, rows, cols, rows * cols, max_flits
        self.barriers = barriers
        self.tau = WAVELET_BITS / spec.link_bits_per_cycle
        self.free = np.full(7 * self.n, -np.inf)
        self.last_in = np.full(7 * self.n, -np.inf)
        self.t = np.zeros(self.n)
        self.pending = np.zeros(self.n)  # pipelined outputs still in flight (OwnerChain)
        self.stats = Stats()
        self._plans: dict = {}
        self._rounds: dict = {}

    def plan(self, rec) -> _Plan:
        if rec not in self._plans:
            self._plans[rec] = _Plan(rec, self)
        return self._plans[rec]

    def finish(self) -> float:
        return float(max(self.t.max(), self.pending.max()))

    def step(self, st) -> None:
        """One repetition of a schedule step on every core."""
        if st.sync and self.barriers:  # the barrier: every core starts when the last one is ready
            self.t = np.full(self.n, self.t.max())
        t, X = self.t, st.compute
        arrive, sent, drain, runs = t.copy(), t.copy(), False, []
        for rec in st.records:
            if isinstance(rec, Opaque):
                arrive = np.maximum(arrive, t + rec.cycles)
            elif isinstance(rec, Drain):
                drain = True
            else:
                runs.append(_RecRun(self, rec, t + X if getattr(rec, "output", False) else t))
        self._stages(runs)
        for r in runs:
            if getattr(r.rec, "output", False):
                self.pending = np.maximum(self.pending, np.maximum(r.done, r.sent))
            else:
                arrive, sent = np.maximum(arrive, r.done), np.maximum(sent, r.sent)
        new = np.maximum(t + X, arrive) if st.overlap else np.maximum(t, arrive) + X
        new = np.maximum(new, sent)
        if drain:
            new = np.maximum(new, self.pending.max())
        self.t = new + st.overhead

    def _stages(self, runs: list[_RecRun]) -> None:
        """All records' stage s together, s = 0, 1, ...: their messages queue at shared links."""
        s = 0
        while True:
            act = [r for r in runs if s < len(r.plan.stages)]
            if not act:
                return
            parts = [(r, b, fl) for r in act for b, fl in r.plan.stages[s]]
            if parts:
                key = tuple((r.rec, s) for r in act)
                rnd = self._rounds.get(key)
                if rnd is None:
                    rnd = self._rounds[key] = Round([fl for _, _, fl in parts], self.spec, self.n)
                inj = [r.inject(b, fl) for r, b, fl in parts]
                dh, dt = rnd.run(self.free, self.last_in, np.concatenate([h.ravel() for h, _ in inj]),
                                 np.concatenate([t.ravel() for _, t in inj]), self.stats)
                for i, (r, b, fl) in enumerate(parts):
                    sl = slice(rnd.item_off[i], rnd.item_off[i + 1])
                    r.absorb(b, fl, dh[sl].reshape(-1, fl.K), dt[sl].reshape(-1, fl.K))
            for r in act:
                r.fire()
            s += 1

    # --- periodic repetitions -----------------------------------------------------------------------------
    def _state(self) -> tuple[np.ndarray, float]:
        """Clocks and queues relative to a floor below which nothing can bind (for periodicity)."""
        s = self.spec
        floor = self.t.min() - self.tau - (WAVELET_BITS // 8) * s.relay_cycles_per_element
        return np.concatenate([self.t, np.maximum(self.free, floor), np.maximum(self.pending, floor)]), floor

    def repeat(self, st, times: int, tick: Callable[[int], None] | None = None, periodic: bool = True) -> int:
        """Run `times` repetitions of a step (jumping over whole periods once the state is periodic); returns how
        many were simulated."""
        hist: list[np.ndarray] = []
        done = sim = 0
        while done < times:
            self.step(st)
            done, sim = done + 1, sim + 1
            if tick:
                tick(1)
            if not periodic:
                continue
            state, floor = self._state()
            hist = (hist + [state])[-(MAX_PERIOD + 1):]
            for c in range(1, len(hist)):
                d = state - hist[-1 - c]
                if np.all(np.abs(d - d[0]) <= 1e-9 * max(1.0, abs(float(d[0])))):
                    q = (times - done) // c
                    if q:
                        self._jump(q * float(d[0]), floor)
                        done += q * c
                        if tick:
                            tick(q * c)
                        hist = []
                    break
        return sim

    def _jump(self, delta: float, floor: float) -> None:
        self.t = self.t + delta
        self.free = np.where(self.free > floor, self.free + delta, self.free)
        self.last_in = np.where(self.last_in > floor, self.last_in + delta, self.last_in)
        self.pending = np.where(self.pending > floor, self.pending + delta, self.pending)


def simulate(spec: DeviceSpec, sched: Schedule, *, max_flits: int = 16,
             progress: Callable[[int, int], None] | None = None, trace: list | None = None,
             periodic: bool = True, barriers: bool = True) -> FabricResult:
    """Replay a recorded schedule on the event-level fabric; progress(done, total) after each repetition;
    trace: a list that receives (server, flit, arrival, first departure, last departure) of every flit served;
    periodic=False simulates every repetition (no extrapolation); barriers=False runs the program's synchronous
    steps as dataflow (the what-if of docs/fabric-model.md)."""
    t0 = time.perf_counter()
    fab = Fabric(spec, sched.rows, sched.cols, max_flits, barriers)
    fab.stats.trace = trace
    total = sum(st.times for st in sched.steps)
    phases: dict[str, float] = {}
    count = [0]

    def tick(k: int) -> None:
        count[0] += k
        if progress:
            progress(count[0], total)

    simulated, opaque = 0, 0.0
    for st in sched.steps:
        before = fab.finish()
        simulated += fab.repeat(st, st.times, tick, periodic)
        phases[st.label] = phases.get(st.label, 0.0) + fab.finish() - before
        opaque += st.times * sum(r.cycles for r in st.records if isinstance(r, Opaque))
    cycles = fab.finish()
    return FabricResult(cycles=cycles, time_s=cycles / spec.clock_hz, phases=phases, steps=total,
                        simulated=simulated, routes_per_core=route_settings(fab, sched), opaque_cycles=opaque,
                        queues=fab.stats.to_dict(), wall_s=time.perf_counter() - t0)


def route_settings(fab: Fabric, sched: Schedule) -> int:
    """Distinct route settings (record, input port, set of output ports) at the busiest router of any step."""
    best = 0
    for st in sched.steps:
        rows = [_settings(fl, fab.n, fab.cols, i) for i, rec in enumerate(st.records)
                if not isinstance(rec, (Opaque, Drain)) for stage in fab.plan(rec).stages for _, fl in stage]
        if rows:
            codes = np.unique(np.concatenate(rows))
            best = max(best, int(np.bincount(codes // (1 << 16)).max()))
    return best


def _settings(fl, n: int, cols: int, rec: int) -> np.ndarray:
    """router * 2^16 + code(record, input port, output ports) of every node whose wavelets a router sends on."""
    kind, core = fl.server // n, fl.server % n
    out_bit = np.where(kind == RAMP_IN, 16, 1 << np.clip(kind - 2, 0, 3))  # E W S N, ramp
    mask = np.zeros(len(fl.server), np.int64)
    has = np.nonzero(fl.parent >= 0)[0]
    np.bitwise_or.at(mask, fl.parent[has], out_bit[has])
    at = np.nonzero(mask > 0)[0]
    k = kind[at]
    move = np.array([0, 0, 1, -1, cols, -cols, 0])[k]  # the router a link's wavelets arrive at
    in_port = np.array([4, 4, 1, 0, 3, 2, 4])[k]  # they come in from the opposite side (ramp: 4)
    code = ((rec % 64) * 5 + in_port) * 32 + mask[at]
    return (core[at] + move) * (1 << 16) + code
