"""NoC primitives on tiled arrays [R, C, *tile]: each computes the numbers and charges its PLMR cost.

Costs follow the spec: a message over h hops with r software relays costs
message_overhead + alpha*h + beta*r + bytes / link_bytes_per_cycle (the payload streams behind the head).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine import shard
from waferllm.machine.mesh import Array, Mesh, is_abstract, tile_bytes
from waferllm.machine.rings import default_groups, ring_hops, ring_src

AX = {"y": 0, "x": 1}


# --- cost formulas (cycles) ------------------------------------------------
def transfer_cycles(mesh: Mesh, nbytes: float, hops: float, relays: float = 0.0) -> float:
    """One message: head latency plus payload streaming at the link rate."""
    s = mesh.spec
    return s.message_overhead_cycles + s.alpha_cycles_per_hop * hops + s.beta_cycles_per_relay * relays \
        + nbytes / s.link_bytes_per_cycle


def chain_cycles(mesh: Mesh, n_elems: int, elem_bytes: int, hops: float, stages: float) -> float:
    """A reduction chain: each of `stages` relay cores adds its part to the stream and forwards it."""
    s = mesh.spec
    per_elem = max(elem_bytes / s.link_bytes_per_cycle, s.relay_cycles_per_element)
    return s.message_overhead_cycles + s.alpha_cycles_per_hop * hops + s.beta_cycles_per_relay * stages \
        + n_elems * per_elem


# --- mesh-oblivious baselines (the paper's T10 and Ladder comparisons) -------------
# t10: cores are a crossbar-connected distributed memory; data sits by core id, so a logical neighbour
#   is anywhere on the grid: every message crosses the mean distance (R + C) / 3 and, with no configured
#   route for an arbitrary pair (32 routes per router), is relayed in software at every hop. No
#   multicast; reductions are rings over core ids.
# ladder: the distributed SRAM is one shared memory; operands are fetched from their owner cores
#   (request + response) and reductions accumulate at the owner, which serves every other core in turn.
def scatter_hops(mesh: Mesh) -> float:
    """Mean hops between two cores placed without regard to distance on this grid."""
    return (mesh.rows + mesh.cols) / 3


def _oblivious(mesh: Mesh, nbytes: float, messages: float) -> tuple[float, float, float]:
    """(cycles, hops, stages) of `messages` relayed point-to-point messages in sequence."""
    d = scatter_hops(mesh)
    return messages * transfer_cycles(mesh, nbytes, d, d), messages * d, messages * d


# --- shifts ----------------------------------------------------------------
def shift(mesh: Mesh, x: Array, axis: str, kind: str = "interleaved", direction: int = 1) -> Array:
    """Every core sends its tile one position along `axis`: interleaved ring (<= 2 hops), wrap ring (the
    wrap-around edge is n-1 hops) or line (neighbours only; the first core in the direction gets zeros)."""
    n = mesh.size(axis)
    if mesh.strategy == "waferllm":
        hops = ring_hops(n, kind)
        mesh.charge_comm(transfer_cycles(mesh, tile_bytes(x), hops), hops=hops)
    else:  # ladder fetches the tile from its owner: a request, then the data
        cyc, hops, stages = _oblivious(mesh, tile_bytes(x), 1 if mesh.strategy == "t10" else 2)
        mesh.charge_comm(cyc, hops=hops, stages=stages)
    if is_abstract(x) or n == 1:
        return x if kind != "line" or is_abstract(x) else jnp.zeros_like(x)
    src = ring_src(n, kind, direction)
    if kind == "line":
        moved = shard.permute(x, AX[axis], np.where(src < 0, (np.arange(n) + direction) % n, src), mesh.devices)
        keep = jnp.asarray(src >= 0).reshape((n, 1) if axis == "y" else (1, n))
        return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - 2)), moved, 0)
    return shard.permute(x, AX[axis], src, mesh.devices)


def shift_rows_masked(mesh: Mesh, x: Array, axis: str, mask: np.ndarray, kind: str = "interleaved",
                      direction: int = 1) -> Array:
    """A shift applied only in the lines (rows for axis x, columns for axis y) where mask is True."""
    moved = shift(mesh, x, axis, kind, direction)
    if is_abstract(x):
        return x
    m = np.asarray(mask, bool)
    m = m[:, None] if axis == "x" else m[None, :]
    m = jnp.asarray(m.reshape(m.shape + (1,) * (x.ndim - 2)))
    return jnp.where(m, moved, x)


# --- broadcast -------------------------------------------------------------
def broadcast(mesh: Mesh, x: Array, axis: str, root: int, *, switch: bool = False) -> Array:
    """Router multicast of the root line's tile to every core along `axis` (no software relays).

    switch=True charges one relay for re-pointing the multicast route at a new root.
    """
    n = mesh.size(axis)
    hops = max(root, n - 1 - root)
    relays = 1 if switch else 0
    if mesh.strategy == "waferllm":
        mesh.charge_comm(transfer_cycles(mesh, tile_bytes(x), hops, relays), hops=hops, stages=relays)
    else:  # no multicast: the root (or the shared-memory owner) serves the other n-1 cores in turn
        cyc, h, st = _oblivious(mesh, tile_bytes(x), n - 1)
        mesh.charge_comm(cyc, hops=h, stages=st)
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
        cost, hops, stages = _allreduce_cost(mesh, algo, seg, elems, eb, groups)
    elif mesh.strategy == "t10":  # ring over core ids: 2(p-1) relayed chunk messages
        cost, hops, stages = _oblivious(mesh, math.ceil(elems / seg) * eb, 2 * (seg - 1)) if seg > 1 else (0, 0, 0)
    else:  # ladder: p-1 partials accumulate at the owner, then p-1 cores read the result back
        cost, hops, stages = _oblivious(mesh, elems * eb, 2 * (seg - 1)) if seg > 1 else (0, 0, 0)
    mesh.charge_comm(cost, hops=hops, stages=stages, overhead=mesh.spec.collective_overhead_cycles)
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
    full, hops, stages = _allreduce_cost(mesh, "ktree", n, elems, eb, groups)
    if n > 1:  # the tree's two phases end at its root; then one unicast to the requested root
        troot = _tree_root(n, groups)
        bcast = transfer_cycles(mesh, elems * eb, max(troot, n - 1 - troot))
        extra = transfer_cycles(mesh, elems * eb, abs(root - troot)) if root != troot else 0.0
        mesh.charge_comm(full - bcast + extra, hops=hops - max(troot, n - 1 - troot) + abs(root - troot),
                         stages=stages, overhead=mesh.spec.collective_overhead_cycles)
    if is_abstract(x) or n == 1:
        return x
    a = AX[axis]
    red = _ktree(jnp.moveaxis(x, a, 0), groups or default_groups(n), op)
    keep = (jnp.arange(n) == root).reshape((n, 1) if axis == "y" else (1, n))
    return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - 2)), jnp.expand_dims(red, a), 0)


def _tree_shape(p: int, groups: int | None) -> tuple[int, int]:
    """(G groups, g cores per group) of the two-phase tree over p cores; the last group may be short."""
    g = math.ceil(p / min(groups or default_groups(p), p))
    return math.ceil(p / g), g


def _tree_root(p: int, groups: int | None) -> int:
    """The core where the tree's two phases end."""
    G, g = _tree_shape(p, groups)
    return (G // 2) * g + g // 2


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
        cyc = chain_cycles(mesh, elems, eb, h1, h1) + chain_cycles(mesh, elems, eb, h2, s2) \
            + transfer_cycles(mesh, elems * eb, h3)
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
