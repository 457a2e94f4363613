"""Event-level model of the wafer's fabric: 32-bit wavelets through routers, links and core ramps.

Every router has five ports (east, west, south, north and the core's ramp). Each directed link, and each ramp
in each direction, is a server that moves one wavelet per cycle (32 / link_bits_per_cycle cycles) through a
FIFO queue: a wavelet waits until its link is free, in arrival order. A wavelet that enters a link at time d
reaches the next router at d + alpha (alpha_cycles_per_hop, its whole hop); leaving the last router through the
ramp it is in the core's memory one wavelet time later. So an uncontended message of W wavelets over h hops
lands at message_overhead + alpha*h + W, the analytical formula; contention shows up as queueing.

A message is a tree of servers: the sender's ramp out, the links of its route (pass-through routers) and the
ramp in of each core it is delivered to (a multicast delivers at every router it crosses). Wavelets travel in
flits of consecutive wavelets (at most `max_flits` per message; `max_flits=0`: one wavelet each): a flit keeps
its first and last wavelet's times, which is exact on a link that only it uses and merges flits, not single
wavelets, where messages meet. All messages of a round are resolved together, link level by link level: the
wavelets that queue at one server are sorted by arrival and served in one vectorised FIFO recurrence.

machine/fabric_run.py runs whole schedules (relays, compute tasks, steps) on this engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from waferllm.machine.schedule import Batch
from waferllm.spec.device import DeviceSpec

WAVELET_BITS = 32  # one wavelet: a 32-bit payload (the paper's "32-bit message to a neighbour per cycle")
# server kinds: id // cores
RAMP_OUT, RAMP_IN, EAST, WEST, SOUTH, NORTH, RELAY = range(7)
KIND_NAMES = ("ramp out", "ramp in", "east link", "west link", "south link", "north link", "relay")


def describe(server: int, rows: int, cols: int) -> str:
    """A server id in words: 'link (1,0)->(2,0)', 'ramp in (2,0)', 'relay (1,0)'; cores as (row, column)."""
    n = rows * cols
    kind, core = divmod(int(server), n)
    y, x = divmod(core, cols)
    if kind in (EAST, WEST, SOUTH, NORTH):
        dy, dx = {EAST: (0, 1), WEST: (0, -1), SOUTH: (1, 0), NORTH: (-1, 0)}[kind]
        return f"link ({y},{x})->({y + dy},{x + dx})"
    return f"{KIND_NAMES[kind]} ({y},{x})"


@dataclass
class Flows:
    """The server trees of one Batch: node arrays, and its messages' flits (all messages alike)."""

    server: np.ndarray  # [N] server id of each node
    parent: np.ndarray  # [N] parent node (-1: the sender's ramp out, fed by injection)
    msg: np.ndarray  # [N] message of each node
    src_core: np.ndarray  # [F] sender core of each message
    wav: np.ndarray  # [K] wavelets per flit
    elems: np.ndarray  # [K] elements per flit (relay work)
    first_elems: np.ndarray  # [K] elements in each flit's first wavelet
    offset: np.ndarray  # [K] wavelets before each flit (its injection offset)

    @property
    def K(self) -> int:
        return len(self.wav)


def flits(nbytes: int, elem_bytes: int, max_flits: int) -> tuple[np.ndarray, ...]:
    """(wavelets, elements, first-wavelet elements, wavelet offset) of each flit of an nbytes message."""
    W = max(1, math.ceil(nbytes / (WAVELET_BITS // 8)))
    K = W if max_flits <= 0 else min(W, max_flits)
    wav = np.full(K, W // K, np.int64)
    wav[: W % K] += 1
    offset = np.concatenate([[0], np.cumsum(wav)[:-1]])
    per = max(1, (WAVELET_BITS // 8) // max(1, elem_bytes))  # elements per wavelet
    n = max(1, nbytes // max(1, elem_bytes))
    start, end = offset * per, np.minimum((offset + wav) * per, n)
    elems = np.maximum(end - start, 1)
    return wav, elems, np.minimum(elems, per), offset


def build_flows(b: Batch, rows: int, cols: int, max_flits: int) -> Flows:
    """Server trees for every message of a batch: ramp out, the links toward lo and hi, ramp in where delivered."""
    n = rows * cols
    F = len(b)
    line, src, lo, hi = (np.asarray(v, np.int64) for v in (b.line, b.src, b.lo, b.hi))
    core = (lambda l, p: l * cols + p) if b.axis == "x" else (lambda l, p: p * cols + l)  # noqa: E731
    server, parent, msg = [core(line, src)], [np.full(F, -1)], [np.arange(F)]
    count = F
    for d, end, kind in ((+1, hi, EAST if b.axis == "x" else SOUTH), (-1, lo, WEST if b.axis == "x" else NORTH)):
        span = (end - src) * d
        prev = np.arange(F)  # the message's ramp-out node
        for h in range(int(span.max(initial=0))):
            m = np.nonzero(span > h)[0]
            pos = src[m] + h * d
            ids = count + np.arange(len(m))
            server.append(kind * n + core(line[m], pos))
            parent.append(prev[m])
            msg.append(m)
            count += len(m)
            prev = prev.copy()
            prev[m] = ids
            to = pos + d
            dv = np.nonzero((to >= lo[m]) & (to <= hi[m]))[0]  # delivered here (else passed through)
            server.append(RAMP_IN * n + core(line[m][dv], to[dv]))
            parent.append(ids[dv])
            msg.append(m[dv])
            count += len(dv)
    wav, elems, first, offset = flits(b.nbytes, b.elem_bytes, max_flits)
    return Flows(np.concatenate(server), np.concatenate(parent), np.concatenate(msg), core(line, src), wav, elems,
                 first, offset)


class Round:
    """Several batches' flows merged into one FIFO problem: items = (node, flit), processed by server level."""

    def __init__(self, parts: list[Flows], spec: DeviceSpec, cores: int):
        tau = WAVELET_BITS / spec.link_bits_per_cycle
        node_off = np.cumsum([0] + [len(p.server) for p in parts])
        Ks = [p.K for p in parts]
        item_off = np.cumsum([0] + [len(p.server) * k for p, k in zip(parts, Ks)])
        inj_off = np.cumsum([0] + [len(p.src_core) * k for p, k in zip(parts, Ks)])
        self.parts, self.item_off, self.inj_off = parts, item_off, inj_off
        srv, par, node, kk, w, root = [], [], [], [], [], []
        for i, p in enumerate(parts):
            N, K = len(p.server), p.K
            srv.append(np.repeat(p.server, K))
            node.append(np.repeat(np.arange(N) + node_off[i], K))
            kk.append(np.tile(np.arange(K), N))
            w.append(np.tile(p.wav, N))
            pi = np.repeat(p.parent, K)
            par.append(np.where(pi >= 0, item_off[i] + pi * K + kk[-1], -1))
            root.append(np.where(pi < 0, inj_off[i] + np.repeat(p.msg, K) * K + kk[-1], -1))
        self.server, self.parent, self.node = map(np.concatenate, (srv, par, node))
        self.k, self.root = np.concatenate(kk), np.concatenate(root)
        self.work = np.concatenate(w) * tau
        self.tau = tau
        kind = self.server // cores
        lat = np.where(kind == RAMP_OUT, 0.0, np.where(kind == RAMP_IN, tau, spec.alpha_cycles_per_hop))
        self.lat_in = np.where(self.parent >= 0, lat[np.maximum(self.parent, 0)], 0.0)  # from the parent server
        self.kind = kind
        self.levels = self._levels(parts, node_off, item_off)

    @staticmethod
    def _levels(parts: list[Flows], node_off: np.ndarray, item_off: np.ndarray) -> list[tuple[np.ndarray, bool]]:
        """Item groups in dependency order: a server's level is one more than any server feeding it; each group
        says whether some server in it is shared by several nodes (its queue must be sorted by arrival)."""
        server = np.concatenate([p.server for p in parts])
        parent = np.concatenate([np.where(p.parent >= 0, p.parent + o, -1) for p, o in zip(parts, node_off)])
        K = np.concatenate([np.full(len(p.server), p.K) for p in parts])
        first = np.concatenate([o + np.arange(len(p.server)) * p.K for p, o in zip(parts, item_off)])
        su, inv = np.unique(server, return_inverse=True)
        has = parent >= 0
        edges = np.unique(inv[parent[has]] * len(su) + inv[has])
        e_src, e_dst = edges // len(su), edges % len(su)
        lvl = np.zeros(len(su), np.int64)
        for _ in range(len(su) + 1):
            new = lvl.copy()
            np.maximum.at(new, e_dst, lvl[e_src] + 1)
            if np.array_equal(new, lvl):
                break
            lvl = new
        else:
            raise RuntimeError("routes of one round form a cycle")
        node_lvl = lvl[inv]
        order = np.argsort(node_lvl, kind="stable")
        bounds = np.searchsorted(node_lvl[order], np.arange(lvl.max() + 2))
        out = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            nodes = order[a:b]
            k = K[nodes]
            starts = np.repeat(first[nodes], k)
            items = starts + np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
            out.append((items, np.unique(server[nodes]).size != len(nodes)))
        return out

    def run(self, free: np.ndarray, last_in: np.ndarray, inj_head: np.ndarray, inj_tail: np.ndarray,
            stats: "Stats"):
        """Departure (head, tail) of every item; updates `free` (each server's last departure) and `last_in` (the
        arrival of the last flit it served: a flit arriving before that, in a later round, counts as reordered)."""
        I = len(self.server)
        d_head, d_tail = np.empty(I), np.empty(I)
        for idx, shared in self.levels:
            par = self.parent[idx]
            r = par < 0
            ah = np.where(r, inj_head[np.maximum(self.root[idx], 0)], d_head[np.maximum(par, 0)] + self.lat_in[idx])
            at = np.where(r, inj_tail[np.maximum(self.root[idx], 0)], d_tail[np.maximum(par, 0)] + self.lat_in[idx])
            if shared:
                o = np.lexsort((self.node[idx], self.k[idx], ah, self.server[idx]))
                idx, ah, at = idx[o], ah[o], at[o]
            srv = self.server[idx]
            dh, dt, last = fifo(srv, ah, at, self.work[idx], np.full(len(idx), self.tau), free)
            d_head[idx], d_tail[idx] = dh, dt
            stats.reordered += int(np.count_nonzero(ah < last_in[srv]))
            if stats.trace is not None:
                stats.log(srv, self.k[idx], ah, dh, dt)
            free[srv[last]] = dt[last]
            last_in[srv[last]] = ah[last]
            stats.queue(self.kind[idx], dh - ah, self.work[idx] / self.tau)
        return d_head, d_tail


def fifo(srv, a_head, a_tail, work, first, free):
    """FIFO servers, items already in service order and grouped by server: item j takes `work` cycles, its first
    wavelet `first`; returns (first departure, last departure, index of each server's last item).

    d_tail_j = max(a_tail_j, a_head_j + work_j - first_j, d_tail_{j-1} + work_j), solved for all j at once as
    W_j + max(free, cummax(b_i - W_i)) with W the running work of the server's queue."""
    n = len(srv)
    start = np.ones(n, bool)
    start[1:] = srv[1:] != srv[:-1]
    seg = np.cumsum(start) - 1
    last = np.nonzero(np.append(start[1:], True))[0]
    cs = np.cumsum(work)
    W = cs - (cs - work)[start][seg]
    v = np.maximum(a_tail, a_head + work - first) - W
    lo = v.min()
    span = v.max() - lo + 1.0
    cm = np.maximum.accumulate(v - lo + seg * span) - seg * span + lo
    f = free[srv]
    d_tail = W + np.maximum(f, cm)
    prev = np.empty(n)
    prev[1:] = d_tail[:-1]
    prev[start] = f[start]
    d_head = np.maximum(a_head, prev + first)
    return d_head, d_tail, last


@dataclass
class Stats:
    """Queueing seen by the fabric: cycles wavelets waited, per server kind."""

    wait: np.ndarray | None = None  # [kinds] total flit-head waiting cycles
    worst: float = 0.0  # longest single wait
    worst_kind: str = ""
    wavelets: float = 0.0
    reordered: int = 0  # flits served after a later-arriving flit of an earlier round (the rounds' approximation)
    held: float = 0.0  # cycles stored messages landed late: their receiver had not posted yet (simulated steps)
    held_worst: float = 0.0  # the most one message was held
    held_wavelets: float = 0.0  # the most wavelets of one message that waited in the fabric for their receiver
    trace: list | None = None  # (server, flit, arrival, first departure, last departure) rows when asked for

    def queue(self, kind: np.ndarray, wait: np.ndarray, wav: np.ndarray) -> None:
        if self.wait is None:
            self.wait = np.zeros(len(KIND_NAMES))
        w = np.maximum(wait, 0.0)
        np.add.at(self.wait, kind, w)
        self.wavelets += float(wav.sum())
        if len(w) and w.max() > self.worst:
            i = int(w.argmax())
            self.worst, self.worst_kind = float(w[i]), KIND_NAMES[int(kind[i])]

    def hold(self, held: np.ndarray, wavelets: np.ndarray) -> None:
        """Record what flow control cost: per message, cycles its landing moved and wavelets that waited."""
        h = np.maximum(held, 0.0)
        self.held += float(h.sum())
        self.held_worst = max(self.held_worst, float(h.max(initial=0.0)))
        self.held_wavelets = max(self.held_wavelets, float(np.max(wavelets, initial=0.0)))

    def log(self, srv: np.ndarray, k: np.ndarray, ah: np.ndarray, dh: np.ndarray, dt: np.ndarray) -> None:
        self.trace.extend(zip(srv.tolist(), k.tolist(), ah.tolist(), dh.tolist(), dt.tolist()))

    def to_dict(self) -> dict:
        wait = self.wait if self.wait is not None else np.zeros(len(KIND_NAMES))
        return {"queue_cycles": {k: float(v) for k, v in zip(KIND_NAMES, wait) if v > 1e-6},
                "worst_wait_cycles": self.worst, "worst_wait_at": self.worst_kind, "wavelet_hops": self.wavelets,
                "reordered_flits": self.reordered, "flow_control_cycles": self.held,
                "flow_control_worst_cycles": self.held_worst, "held_wavelets_worst": self.held_wavelets}
