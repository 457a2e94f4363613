"""NoC primitives on tiled arrays [R, C, *tile]: each computes the numbers and charges its PLMR cost.

Costs follow the spec: a message over h hops with r software relays costs
message_overhead + alpha*h + beta*r + bytes / link_bytes_per_cycle (the payload streams behind the head).
Each primitive describes what it sends as a schedule record (machine/schedule.py); the ledger's charge is
`record_cost` of that record, and the event-level fabric (machine/fabric.py) replays the same records.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine import baselines, shard
from waferllm.machine.mesh import Array, Mesh, is_abstract, tile_bytes
from waferllm.machine.ops import times as ops_times
from waferllm.machine.rings import default_groups, ring_hops, ring_src
from waferllm.machine.schedule import (Allreduce, Drain, Multicast, Opaque, OwnerChain, Reduce, Shift,
                                       tree_groups as _tree_groups, tree_root as _tree_root,
                                       tree_shape as _tree_shape)

AX = {"y": 0, "x": 1}


# --- cost formulas (cycles) ------------------------------------------------
def transfer_cycles(mesh: Mesh, nbytes: float, hops: float, relays: float = 0.0) -> float:
    """One message: head latency plus payload streaming at the link rate."""
    s = mesh.spec
    return s.message_overhead_cycles + s.alpha_cycles_per_hop * hops + s.beta_cycles_per_relay * relays \
        + nbytes / s.link_bytes_per_cycle


def chain_cycles(mesh: Mesh, n_elems: int, elem_bytes: int, hops: float, stages: float) -> float:
    """A reduction chain: each of `stages` relay cores adds its part to the stream and forwards it. A stage's
    latency beta covers its first wavelet (parse, add, re-send); the rest stream behind at the slower of the link
    and the relay's add (a pipeline: fill, then one interval per further element)."""
    s = mesh.spec
    per_elem = _relay_interval(mesh, elem_bytes)
    first = _first_wavelet_elems(mesh, n_elems, elem_bytes) if stages > 0 else 0
    return s.message_overhead_cycles + s.alpha_cycles_per_hop * hops + s.beta_cycles_per_relay * stages \
        + (n_elems - first) * per_elem


def _relay_interval(mesh: Mesh, elem_bytes: int) -> float:
    """Cycles per element through a relay stage: the link's rate or the relay's add, whichever is slower."""
    return max(elem_bytes / mesh.spec.link_bytes_per_cycle, mesh.spec.relay_cycles_per_element)


def _first_wavelet_elems(mesh: Mesh, n_elems: int, elem_bytes: int) -> int:
    """Elements in a stream's first wavelet (a relay stage's beta covers them)."""
    return min(n_elems, max(1, int(mesh.spec.link_bytes_per_cycle // elem_bytes)))


def record_cost(mesh: Mesh, rec) -> tuple[float, float, float]:
    """(cycles, hops, stages) of one schedule record: the analytical model of what it sends."""
    n = mesh.size(rec.axis) if hasattr(rec, "axis") else 1
    if isinstance(rec, Shift):
        hops = ring_hops(n, rec.ring)
        return transfer_cycles(mesh, rec.nbytes, hops), hops, 0.0
    if isinstance(rec, Multicast):
        hops, relays = max(rec.root, n - 1 - rec.root), (1 if rec.switch else 0)
        return transfer_cycles(mesh, rec.nbytes, hops, relays), hops, relays
    if isinstance(rec, Allreduce):
        return _allreduce_cost(mesh, rec.algo, min(rec.segment or n, n), rec.elems, rec.elem_bytes, rec.groups)
    if isinstance(rec, Reduce):
        return _reduce_cost(mesh, rec)
    if isinstance(rec, OwnerChain):  # the chain's streaming rate; it overlaps the next compute step
        return (mesh.spec.relay_cycles_per_element * rec.elems if n > 1 else 0.0), 0.0, 0.0
    if isinstance(rec, Drain):  # the last pipelined chain's latency across the line, less what its step covered
        return max(0.0, chain_cycles(mesh, rec.elems, rec.elem_bytes, n - 1, n - 1) - rec.hidden), n - 1, n - 1
    if isinstance(rec, Opaque):
        return rec.cycles, 0.0, 0.0
    raise TypeError(f"not a schedule record: {rec!r}")


def ramp_cycles(mesh: Mesh, rec) -> float:
    """Cycles one record's payload occupies a core's ramp (every core sends or receives it through its own)."""
    if isinstance(rec, (Shift, Multicast)):
        return rec.nbytes / mesh.spec.link_bytes_per_cycle
    if isinstance(rec, OwnerChain) and mesh.size(rec.axis) > 1:
        return rec.elems * rec.elem_bytes / mesh.spec.link_bytes_per_cycle
    return 0.0


def _emit(mesh: Mesh, rec, overhead: float = 0.0) -> None:
    """Charge a record's analytical cost and hand the record to the mesh's schedule."""
    cyc, hops, stages = record_cost(mesh, rec)
    lines = getattr(rec, "lines", None)
    mesh.charge_comm(cyc, hops=hops, stages=stages, overhead=overhead, record=rec, ramp=ramp_cycles(mesh, rec),
                     lines=None if lines is None else (rec.axis, np.asarray(lines, bool)))


# --- mesh-oblivious baselines (the paper's T10 and Ladder comparisons): machine/baselines.py ------------
def _baseline(mesh: Mesh, cost: tuple[float, float, float], overhead: float = 0.0) -> None:
    """Charge a baseline's (cycles, hops, stages) for one primitive; a strategy whose transfers queue (serial)
    charges them as fixed cost, which adds up within a step instead of overlapping."""
    cyc, hops, stages = cost
    if baselines.serial(mesh.strategy):
        cyc, overhead = 0.0, overhead + cyc
    mesh.charge_comm(cyc, hops=hops, stages=stages, overhead=overhead)


# --- shifts ----------------------------------------------------------------
def shift(mesh: Mesh, x: Array, axis: str, kind: str = "interleaved", direction: int = 1, *,
          lines: np.ndarray | None = None) -> Array:
    """Every core sends its tile one position along `axis`: interleaved ring (<= 2 hops), wrap ring (the
    wrap-around edge is n-1 hops) or line (neighbours only; the first core in the direction gets zeros).
    lines: which lines really move (the schedule's record; the cost is the slowest line's either way)."""
    n = mesh.size(axis)
    if mesh.strategy == "waferllm":
        live = None if lines is None else tuple(bool(v) for v in np.asarray(lines).reshape(-1))
        _emit(mesh, Shift(axis, kind, direction, tile_bytes(x), live))
    else:
        _baseline(mesh, baselines.shift_cost(mesh, mesh.strategy, n, tile_bytes(x)))
    if is_abstract(x) or n == 1:
        return x if kind != "line" or is_abstract(x) else jnp.zeros_like(x)
    src = ring_src(n, kind, direction)
    if kind == "line":
        moved = shard.permute(x, AX[axis], np.where(src < 0, (np.arange(n) + direction) % n, src), mesh.devices)
        keep = jnp.asarray(src >= 0).reshape((n, 1) if axis == "y" else (1, n))
        return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - 2)), moved, 0)
    return shard.permute(x, AX[axis], src, mesh.devices)


# --- broadcast -------------------------------------------------------------
def broadcast(mesh: Mesh, x: Array, axis: str, root: int, *, switch: bool = False) -> Array:
    """Router multicast of the root line's tile to every core along `axis` (no software relays).

    switch=True charges one relay for re-pointing the multicast route at a new root.
    """
    n = mesh.size(axis)
    if mesh.strategy == "waferllm":
        _emit(mesh, Multicast(axis, root, tile_bytes(x), switch))
    else:
        _baseline(mesh, baselines.broadcast_cost(mesh, mesh.strategy, n, root, tile_bytes(x)))
    if is_abstract(x):
        return x
    a = AX[axis]
    src = jax.lax.index_in_dim(x, root, axis=a, keepdims=True)
    return jnp.broadcast_to(src, x.shape)


# --- reductions ------------------------------------------------------------
def allreduce(mesh: Mesh, x: Array, axis: str, algo: str = "ktree", *, groups: int | None = None,
              segment: int | None = None, op: str = "sum", elems: int | None = None) -> Array:
    """Sum (or max) every core's tile along `axis`; result replicated along it.

    algo: ktree (two-phase K=2 tree, then multicast), pipeline (chain + multicast), ring (interleaved
    ring reduce-scatter + allgather). segment=s reduces within consecutive groups of s cores only (the
    last group is shorter when s does not divide the line).
    elems overrides the charged elements per core (when x holds padding the core would not send).
    """
    n = mesh.size(axis)
    seg = min(segment or n, n)  # a shorter last segment takes the leftover cores
    eb = np.dtype(x.dtype).itemsize
    elems = int(math.prod(x.shape[2:])) if elems is None else elems
    if mesh.strategy == "waferllm":
        _emit(mesh, Allreduce(axis, algo, seg, elems, eb, groups), mesh.spec.collective_overhead_cycles)
    else:
        _baseline(mesh, baselines.allreduce_cost(mesh, mesh.strategy, seg, elems, eb),
                  mesh.spec.collective_overhead_cycles)
    if is_abstract(x) or seg == 1:
        return x
    a = AX[axis]
    v = jnp.moveaxis(x, a, 0)  # [n, other, *tile]
    pad = -n % seg
    if pad:  # the short last segment, padded with the identity (its padding is dropped below)
        v = jnp.concatenate([v, jnp.full((pad,) + v.shape[1:], 0.0 if op == "sum" else -jnp.inf, v.dtype)])
    v = v.reshape(((n + pad) // seg, seg) + v.shape[1:])
    v = jnp.moveaxis(v, 1, 0)  # [seg, n_segments, other, *tile]
    red = {"ktree": lambda t: _ktree(t, groups or default_groups(seg), op),
           "pipeline": lambda t: _chain(t, op), "ring": lambda t: _ring(t, op)}[algo](v)
    out = jnp.broadcast_to(red[None], v.shape)
    out = jnp.moveaxis(out, 0, 1).reshape((n + pad,) + v.shape[2:])[:n]
    return jnp.moveaxis(out, 0, a)


def reduce(mesh: Mesh, x: Array, axis: str, root: int, *, groups: int | None = None, op: str = "sum") -> Array:
    """K-tree reduce along `axis` to the line `root` (no multicast back); other lines keep zeros."""
    n = mesh.size(axis)
    elems, eb = int(math.prod(x.shape[2:])), np.dtype(x.dtype).itemsize
    if n > 1:  # the tree's two phases end at its root; then one unicast to the requested root
        _emit(mesh, Reduce(axis, root, elems, eb, groups), mesh.spec.collective_overhead_cycles)
    if is_abstract(x) or n == 1:
        return x
    a = AX[axis]
    red = _ktree(jnp.moveaxis(x, a, 0), groups or default_groups(n), op)
    keep = (jnp.arange(n) == root).reshape((n, 1) if axis == "y" else (1, n))
    return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - 2)), jnp.expand_dims(red, a), 0)


def _reduce_cost(mesh: Mesh, rec: Reduce) -> tuple[float, float, float]:
    """A K-tree allreduce without its multicast back, plus one unicast from the tree's root to rec.root."""
    n, nbytes = mesh.size(rec.axis), rec.elems * rec.elem_bytes
    full, hops, stages = _allreduce_cost(mesh, "ktree", n, rec.elems, rec.elem_bytes, rec.groups)
    troot = _tree_root(n, rec.groups)
    bcast = transfer_cycles(mesh, nbytes, max(troot, n - 1 - troot))
    extra = transfer_cycles(mesh, nbytes, abs(rec.root - troot)) if rec.root != troot else 0.0
    return full - bcast + extra, hops - max(troot, n - 1 - troot) + abs(rec.root - troot), stages


def _allreduce_cost(mesh: Mesh, algo: str, p: int, elems: int, eb: int, groups: int | None):
    """(cycles, hops, stages) of one allreduce over p cores of `elems` elements each."""
    if p == 1:
        return 0.0, 0.0, 0.0
    if algo == "ktree":
        G, g = _tree_shape(p, groups)
        r, rg = g // 2, G // 2
        h1 = max(r, g - 1 - r)  # phase 1: chains inside a group toward its root
        h2 = max(rg, G - 1 - rg) * g  # phase 2: group roots chain to the global root (pass-through routes)
        s2 = max(rg, G - 1 - rg)
        root = _tree_root(p, groups)
        h3 = max(root, p - 1 - root)  # multicast back along the line
        cyc = _ktree_reduce_cycles(mesh, p, groups, elems, eb) + transfer_cycles(mesh, elems * eb, h3)
        return cyc, h1 + h2 + h3, h1 + s2
    if algo == "pipeline":
        cyc = chain_cycles(mesh, elems, eb, p - 1, p - 1) + transfer_cycles(mesh, elems * eb, p - 1)
        return cyc, 2 * (p - 1), p - 1
    if algo == "ring":
        chunk = math.ceil(elems / p)
        hops = ring_hops(p, "interleaved")
        rs = (p - 1) * chain_cycles(mesh, chunk, eb, hops, 1)  # reduce-scatter: relay adds each chunk
        ag = (p - 1) * (transfer_cycles(mesh, chunk * eb, hops, 1))  # allgather: relay forwards
        return rs + ag, 2 * (p - 1) * hops, 2 * (p - 1)
    raise ValueError(f"unknown allreduce algorithm {algo!r}; known: ktree, pipeline, ring")


def _ktree_reduce_cycles(mesh: Mesh, p: int, groups: int | None, elems: int, eb: int) -> float:
    """When the two-phase tree's sum is complete at its root: each group's chains meet at the group root, then
    the group roots' chains meet at the middle one; a root's partial joins a passing stream once it is ready."""
    roots, ends = _tree_groups(p, groups)
    G = len(roots)
    done = [_meet(mesh, elems, eb, _arrival(mesh, [0.0] * (r - a), [1] * (r - a)),
                  _arrival(mesh, [0.0] * (b - r), [1] * (b - r)), 0.0) for (a, b), r in zip(ends, roots)]
    rg = G // 2
    gaps = [roots[j + 1] - roots[j] for j in range(G - 1)]
    left = _arrival(mesh, done[:rg], gaps[:rg])
    right = _arrival(mesh, done[rg + 1:][::-1], gaps[rg:][::-1])
    return _meet(mesh, elems, eb, left, right, done[rg])


def _arrival(mesh: Mesh, ready: list[float], hops: list[int]) -> float | None:
    """When a chain's first wavelet reaches its root: the far core's message leaves when its partial is ready,
    each relay on the way passes it on (beta) once its own partial is ready too. ready/hops from the far end."""
    if not ready:
        return None
    s = mesh.spec
    head = ready[0] + s.message_overhead_cycles + s.alpha_cycles_per_hop * hops[0]
    for r, h in zip(ready[1:], hops[1:]):
        head = max(head, r) + s.beta_cycles_per_relay + s.alpha_cycles_per_hop * h
    return head


def _meet(mesh: Mesh, elems: int, eb: int, left: float | None, right: float | None, own: float) -> float:
    """When a root holds the sum of its own partial (ready at `own`) and the chains arriving from the left and
    the right (their first wavelet's arrival, None: no chain). It drains one fabric input, then the other (one
    DSD op per input, as the authors' two-phase tree does): the right one first; the left stream waits in the
    fabric meanwhile, then passes at the relay's rate."""
    s = mesh.spec
    per_elem = _relay_interval(mesh, eb)
    rest = (elems - _first_wavelet_elems(mesh, elems, eb)) * per_elem
    if right is None and left is None:
        return own
    first, second = (right, left) if right is not None else (left, None)
    t = max(first, own) + s.beta_cycles_per_relay + rest
    if second is not None:
        t = max(t + elems * per_elem, second + s.beta_cycles_per_relay + rest)
    return t


def _combine(op: str):
    return jnp.add if op == "sum" else jnp.maximum


def _chain(v: jax.Array, op: str) -> jax.Array:
    """Partial results stream down the line, each core folding in its own: ((v0 + v1) + v2) ..."""
    f, acc = _combine(op), v[0]
    for i in range(1, v.shape[0]):
        acc = f(acc, v[i])
    return acc


def _ktree(v: jax.Array, G: int, op: str) -> jax.Array:
    """Two-phase tree: chains from both ends of each group meet at its root, then roots chain likewise."""
    p = v.shape[0]
    G, g = _tree_shape(p, G)
    pad = G * g - p  # missing cores at the end of the last group contribute the identity
    fill = 0.0 if op == "sum" else -jnp.inf
    v = jnp.concatenate([v, jnp.full((pad,) + v.shape[1:], fill, v.dtype)]) if pad else v
    roots = _meet_at_middle(v.reshape((G, g) + v.shape[1:]), op)  # phase 1, all groups in parallel
    return _meet_at_middle(roots[None], op)[0]  # phase 2 over the G group roots


def _meet_at_middle(v: jax.Array, op: str) -> jax.Array:
    """v[G, g, ...] -> [G, ...]: two chains per row of g meet at index g//2, which adds both."""
    f, g = _combine(op), v.shape[1]
    r = g // 2
    out = v[:, r]
    if r > 0:
        out = f(_chain(v[:, :r].swapaxes(0, 1), op), out)
    if r < g - 1:
        out = f(out, _chain(v[:, r + 1:][:, ::-1].swapaxes(0, 1), op))
    return out


def _ring(v: jax.Array, op: str) -> jax.Array:
    """Reduce-scatter then allgather around the ring: chunk c accumulates starting after core c."""
    p = v.shape[0]
    flat = v.reshape(p, -1)
    n = flat.shape[1]
    ch = math.ceil(n / p)
    flat = jnp.pad(flat, ((0, 0), (0, ch * p - n)))
    chunks = flat.reshape(p, p, ch)  # [core, chunk, ch]
    f = _combine(op)
    # after p-1 steps chunk c holds f over cores c+1, c+2, ..., c (ring order of accumulation)
    acc = chunks[(jnp.arange(p) + 1) % p, jnp.arange(p)]  # [chunk, ch], started at core c+1
    for s in range(2, p + 1):
        acc = f(acc, chunks[(jnp.arange(p) + s) % p, jnp.arange(p)])
    return acc.reshape(-1)[:n].reshape(v.shape[1:])


# --- pipelined reductions to an owner line (dist-GEMM-T) ---------------------------------------
def reduce_to_owner(mesh: Mesh, x: Array, axis: str, owner) -> Array:
    """Chain-reduce every line's tile x [R, C, *tile] along `axis` into the line's owner core; other cores
    get zeros. owner: [lines] index of the owner core (may be traced). Charged as the chain's streaming
    rate (a relay adds each element), which overlaps the next compute step; `drain` charges the tail."""
    elems = int(math.prod(x.shape[2:]))
    n = mesh.size(axis)
    _emit(mesh, OwnerChain(axis, elems, np.dtype(x.dtype).itemsize, _concrete(owner)))
    if is_abstract(x):
        return x
    a = AX[axis]
    total = jnp.sum(x.astype(jnp.float32), axis=a, keepdims=True).astype(x.dtype)
    idx = jnp.arange(n).reshape((1, n) if axis == "x" else (n, 1))
    own = jnp.asarray(owner).reshape((-1, 1) if axis == "x" else (1, -1))
    keep = idx == own
    keep = keep.reshape(keep.shape + (1,) * (x.ndim - 2))
    return jnp.where(keep, total, jnp.zeros_like(x))


def drain(mesh: Mesh, x: Array, axis: str) -> None:
    """The last pipelined chain's latency across the line (after a loop of reduce_to_owner steps); it began when
    the last step's compute ended, so the rest of that step (its transfers) already covers part of it."""
    n = mesh.size(axis)
    if n > 1:
        _emit(mesh, Drain(axis, int(math.prod(x.shape[2:])), 4, mesh.last_step_slack))


def _concrete(v) -> tuple[int, ...] | None:
    """Owner positions as a tuple when known at trace time; None inside a compiled loop (traced)."""
    if isinstance(v, jax.core.Tracer):
        return None
    return tuple(int(i) for i in np.asarray(v).reshape(-1))


# --- moves between regions ---------------------------------------------------------------
def _core_bytes(x: Array, layout: str, live: dict[str, int] | None) -> int:
    """Bytes per core of x laid out as `layout` (Y/X grid letters drop out; live overrides extents)."""
    live = live or {}
    elems = math.prod(live.get(c, n) for c, n in zip(layout, x.shape) if c not in "YX")
    return int(elems) * np.dtype(x.dtype).itemsize


def transfer(mesh: Mesh, x: Array, layout: str, hops: float, *, live: dict[str, int] | None = None) -> Array:
    """Every core receives its tile of x from `hops` away (another region: the data keeps its place in the
    tile layout); one message per core, all in parallel."""
    mesh.charge_comm(transfer_cycles(mesh, _core_bytes(x, layout, live), hops), hops=hops)
    return x


def relayout(mesh: Mesh, x: Array, out_shape: tuple[int, ...], layout: str, hops: float, index_fn,
             *, dtype=None, live: dict[str, int] | None = None) -> Array:
    """Every core gathers its new tile (out_shape laid out as `layout`) from tiles `hops` away.

    index_fn() -> int array of out_shape: the flat position in x of each element (-1: zero); called only
    for numeric runs. Charged as one message of the destination tile per core.
    """
    dt = np.dtype(dtype or x.dtype)
    out = jax.ShapeDtypeStruct(tuple(out_shape), dt)
    mesh.charge_comm(transfer_cycles(mesh, _core_bytes(out, layout, live), hops), hops=hops)
    if is_abstract(x):
        return out
    idx = np.asarray(index_fn())
    flat = jnp.asarray(x).reshape(-1)
    # in bounds by construction: no index normalisation for XLA to constant-fold over a large index map
    got = flat.at[jnp.asarray(np.maximum(idx, 0))].get(mode="promise_in_bounds")
    return jnp.where(jnp.asarray(idx >= 0), got, 0).astype(dt)


# --- decode-program moves (KV shift, embedding rows, sampling gather, wafer boundaries) -------
def line_shift(mesh: Mesh, x: Array, layout: str, fill: Array, *, along: str = "Y",
               live: dict[str, int] | None = None) -> Array:
    """Every core sends its tile to the previous core along `along` over the adjacent link (core i gets
    core i+1's; the last gets `fill`, laid out as x without that axis), all cores in one parallel step.

    One 1-hop message per core of the live bytes, whatever the strategy (the program places the lines
    itself); a pass that carries nothing (live extent 0) sends no message.
    """
    nbytes = _core_bytes(x, layout, live)
    if nbytes > 0 and mesh.size(along.lower()) > 1:
        _emit(mesh, Shift(along.lower(), "line", -1, nbytes))
    elif nbytes > 0:  # a one-core line: charged as one hop, nothing for the fabric to move
        mesh.charge_comm(transfer_cycles(mesh, nbytes, 1), hops=1)
    if is_abstract(x):
        return x
    a = layout.index(along)
    rest = jax.lax.slice_in_dim(x, 1, x.shape[a], axis=a)
    return jnp.concatenate([rest, jnp.expand_dims(fill.astype(x.dtype), a)], axis=a)


def multicast_from_owners(mesh: Mesh, x: Array, layout: str, along: str) -> Array:
    """Router multicast along `along` of tiles whose owner line differs per element (B tokens' embedding
    rows, each in its own column): x holds the owners' data; charged at the farthest owner (n-1 hops)."""
    hops = mesh.size(along.lower()) - 1
    mesh.charge_comm(transfer_cycles(mesh, _core_bytes(x, layout, None), hops), hops=hops)
    return x


def gather_line(mesh: Mesh, x: Array, layout: str, along: str, *, live: dict[str, int] | None = None) -> Array:
    """Every core along `along` streams its tile to the line's end core: one stream of n tiles back to
    back over n-1 hops. Returns the tiles stacked at that core: [n, ...] (x's `along` axis moved first)."""
    n = mesh.size(along.lower())
    mesh.charge_comm(transfer_cycles(mesh, n * _core_bytes(x, layout, live), n - 1), hops=n - 1)
    a = layout.index(along)
    if is_abstract(x):
        return jax.ShapeDtypeStruct((x.shape[a],) + x.shape[:a] + x.shape[a + 1:], x.dtype)
    return jnp.moveaxis(x, a, 0)


def interwafer(mesh: Mesh, x: Array, *, times: int = 1) -> Array:
    """All of x (e.g. activations [B, D]) crosses a wafer boundary `times` times in sequence: link latency +
    bytes / link rate (spec.interwafer_latency_s, interwafer_bytes_per_s), exposed (a pipeline hand-over)."""
    s = mesh.spec
    if times > 0:
        nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
        t = s.interwafer_latency_s + nbytes / s.interwafer_bytes_per_s
        mesh.charge_comm(t * s.clock_hz, times=times)
    return x


# --- line rotations of stacked tiles (Cannon's alignment) ----------------------------------------
def rotate_stacks(mesh: Mesh, x: Array, axis: str, kind: str, back: np.ndarray, fwd: np.ndarray) -> Array:
    """Rotate the stacked blocks x [R, C, s, ...] of each line along `axis` by back[line] ring positions
    backward (or fwd[line] forward): max(back, fwd) steps, each moving one block per core (the lines
    that are done idle). Numbers: the composed permutation in one gather; cost: every step's shift."""
    steps = int(max(np.max(back, initial=0), np.max(fwd, initial=0)))
    if steps == 0:
        return x
    blk = jax.ShapeDtypeStruct(x.shape[:2] + x.shape[3:], x.dtype)
    with ops_times(mesh, steps), mesh.step():
        if np.any(back):
            shift(mesh, blk, axis, kind, -1, lines=np.asarray(back) > 0)
        if np.any(fwd):
            shift(mesh, blk, axis, kind, +1, lines=np.asarray(fwd) > 0)
    if is_abstract(x):
        return x
    idx = _rotation_index(mesh.rows, mesh.cols, x.shape[2], axis, kind, tuple(back), tuple(fwd))
    flat = x.reshape((-1,) + x.shape[3:])
    return jnp.take(flat, jnp.asarray(idx), axis=0).reshape(x.shape)


@functools.lru_cache(maxsize=64)
def _rotation_index(R: int, C: int, s: int, axis: str, kind: str, back: tuple, fwd: tuple) -> np.ndarray:
    """Flat (core, slot) source of every block after the rotation, found by running its steps on indices."""
    idx = np.arange(R * C * s).reshape(R, C, s)
    n = C if axis == "x" else R
    a = AX[axis]
    back, fwd = np.asarray(back), np.asarray(fwd)
    for t in range(int(max(back.max(initial=0), fwd.max(initial=0)))):
        for direction, need in ((-1, back), (+1, fwd)):
            move = need > t
            if not move.any():
                continue
            src = ring_src(n, kind, direction)
            end = 0 if direction < 0 else s - 1
            got = np.take(idx[:, :, end], src, axis=a)
            new = np.concatenate([idx[:, :, 1:], got[:, :, None]] if direction < 0 else [got[:, :, None], idx[:, :, :-1]], 2)
            m = move[:, None, None] if axis == "x" else move[None, :, None]
            idx = np.where(m, new, idx)
    return idx.reshape(-1)


# --- moves along rows ------------------------------------------------------------------------------
def relayout_cols(mesh: Mesh, x: Array, src_col: np.ndarray, src_slot: np.ndarray) -> Array:
    """Re-cut the columns of every row: x [R, C, rows, w] -> [R, C, rows, w'] where slot j of core column c
    takes x[:, src_col[c, j], :, src_slot[c, j]] (-1: zero padding, made locally). Charged as one message
    per core carrying what it receives from other columns, over the farthest such column."""
    moved = (src_col >= 0) & (src_col != np.arange(mesh.cols)[:, None])
    n_in = int(moved.sum(axis=1).max(initial=0))
    hops = int(np.abs(np.where(moved, src_col - np.arange(mesh.cols)[:, None], 0)).max(initial=0))
    eb = np.dtype(x.dtype).itemsize
    if n_in:
        mesh.charge_comm(transfer_cycles(mesh, n_in * x.shape[2] * eb, hops), hops=hops)
    out_shape = x.shape[:3] + (src_col.shape[1],)
    if is_abstract(x):
        return jax.ShapeDtypeStruct(out_shape, x.dtype)
    w = x.shape[3]
    flat = jnp.swapaxes(x, 1, 2).reshape(x.shape[0], x.shape[2], -1)  # [R, rows, C*w]
    idx = np.where(src_col >= 0, src_col * w + src_slot, 0).reshape(-1)
    got = jnp.take(flat, jnp.asarray(idx), axis=2).reshape(x.shape[0], x.shape[2], mesh.cols, -1)
    got = jnp.where(jnp.asarray(src_col >= 0)[None, None], got, 0)
    return jnp.swapaxes(got, 1, 2)
