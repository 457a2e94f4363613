"""Distributed GEMM on an R x C mesh: MeshGEMM (interleaved Cannon), Cannon, SUMMA, dist-GEMM-T.

All take global A[M, K], B[K, N] (arrays or jax.ShapeDtypeStruct for shape-only costing) and
return (C[M, N] or a ShapeDtypeStruct, trace) where trace lists per-step tile snapshots if asked.

Non-square meshes follow the paper's logical lcm(R, C) partition: K is cut into L = lcm(R, C)
blocks; each core holds L/C blocks of its A row-slab and L/R of its B column-slab as a stack,
and one block per stack moves per step, so every core still does one block product per step.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine import layout, local, noc, ops, shard
from waferllm.machine.mesh import Array, Mesh, is_abstract
from waferllm.machine.rings import interleave_order, ring_pos

GEMM_ALGOS = ("meshgemm", "summa", "cannon")


def gemm(mesh: Mesh, a, b, algo: str = "meshgemm", *, b_on_device: bool = False, trace: list | None = None) -> Array:
    """A[M_y, K_x] @ B[K_y, N_x] -> C[M_y, N_x] with the named algorithm (meshgemm | cannon | summa).

    A leading batch axis ([H, M, K] @ [H, K, N]) runs H products in the same steps (attention heads).
    b_on_device: B was produced on the mesh (V in S.V), so MeshGEMM must skew it on the device too.
    """
    if algo not in GEMM_ALGOS:
        raise ValueError(f"unknown GEMM algorithm {algo!r}; known: {', '.join(GEMM_ALGOS)}")
    with mesh.phase(algo):
        if algo == "summa":
            return summa(mesh, a, b, trace)
        return _cannon(mesh, a, b, algo, trace, b_on_device)


# --- Cannon family -----------------------------------------------------------
def _ring_positions(mesh: Mesh, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(pos_y[row], pos_x[col]): ring position of every core (identity for the wrap ring)."""
    if kind == "interleaved":
        return ring_pos(mesh.rows), ring_pos(mesh.cols)
    return np.arange(mesh.rows), np.arange(mesh.cols)


def _batched(place, mesh: Mesh, a, b, *args):
    """Apply a 2D placement to each batch element ([H, M, K]); tiles get the batch axis after the stack axis."""
    if a.ndim == 2:
        return place(mesh, a, b, *args)
    if is_abstract(a):
        S = jax.ShapeDtypeStruct
        ta, tb = place(mesh, S(a.shape[1:], a.dtype), S(b.shape[1:], b.dtype), *args)
        ins = lambda t: S(t.shape[:3] + (a.shape[0],) + t.shape[3:], t.dtype)  # noqa: E731
        return ins(ta), ins(tb)
    parts = [place(mesh, a[i], b[i], *args) for i in range(a.shape[0])]
    return jnp.stack([p[0] for p in parts], axis=3), jnp.stack([p[1] for p in parts], axis=3)


def _store(x: Array, block: Array, slot) -> Array:
    """Put the block a core received on the previous step into the stack slot it freed (ring buffer)."""
    return x if is_abstract(x) else jax.lax.dynamic_update_index_in_dim(x, block, slot, 2)


def _ring_send(mesh: Mesh, x: Array, head, axis: str, kind: str) -> tuple[Array, Array]:
    """(the stack's head block, the block arriving from the ring neighbour); the arrival is stored into the
    head's slot at the start of the next step, so the next step reads head + 1 (no stack copy per step)."""
    out = local.take_slot(x, head)
    return out, noc.shift(mesh, out, axis, kind, -1)


def _loop(mesh: Mesh, n: int, body, carry, trace, snap):
    """n identical-cost steps: one compiled loop, or (with a trace) unrolled, snapshotting each step."""
    if trace is None:
        return ops.loop(mesh, n, body, carry)
    for t in mesh.repeat(n, False):
        carry = body(t, carry)
        snap(t, carry)
    return carry


def _align(mesh: Mesh, x: Array, axis: str, kind: str, need: np.ndarray, shortest: bool, trace, name):
    """Rotate each line of `axis` backward by need[line] ring positions (or forward, if shorter)."""
    n_pos = x.shape[2] * mesh.size(axis)
    back = need if not shortest else np.where(need <= n_pos - need, need, 0)
    fwd = np.zeros_like(need) if not shortest else np.where(need <= n_pos - need, 0, n_pos - need)
    with mesh.phase("align"):
        x = noc.rotate_stacks(mesh, x, axis, kind, back, fwd)
    _snap(trace, f"{name}-align-final", x)
    return x


def cannon_tiles(mesh: Mesh, at: Array, bt: Array, *, algo: str = "meshgemm", b_skewed: bool = True,
                 trace: list | None = None) -> Array:
    """Compute-shift GEMM on tiles: A stacks [R, C, sA, *batch, mb, kb] (K blocks in ring order along X),
    B stacks [R, C, sB, *batch_b, kb, nb] (along Y) -> C [R, C, *batch, mb, nb]; sA = L/C, sB = L/R.

    meshgemm: interleaved rings (<= 2 hops), A aligned on the device the shorter way, B pre-skewed on the
    host unless b_skewed=False (made on the device: skewed there too); cannon: wrap rings, both aligned.
    B's batch axes are A's leading ones (one V head serves its query heads).
    """
    kind = "interleaved" if algo == "meshgemm" else "wrap"
    R, C = mesh.shape
    L = math.lcm(R, C)
    sA, sB = L // C, L // R
    pos_y, pos_x = _ring_positions(mesh, kind)
    abstract = is_abstract(at)
    acc_dt = jnp.float32 if np.dtype(at.dtype) == np.float32 else at.dtype
    ct = local.zeros(mesh, at.shape[3:-1] + bt.shape[-1:], acc_dt, abstract)
    a_buf, b_buf = math.prod(at.shape[3:]) * _isz(at), math.prod(bt.shape[3:]) * _isz(bt)
    # textbook Cannon steps in lockstep, as the paper measured it (docs/fabric-model.md); MeshGEMM is dataflow
    sync = mesh.lockstep() if algo == "cannon" else contextlib.nullcontext()
    with mesh.hold(a=at, b=bt, c=ct, a_buf=a_buf, b_buf=b_buf), sync, \
            mesh.routes(f"{kind} ring x", 2), mesh.routes(f"{kind} ring y", 2):
        _snap(trace, "placed-a", at)
        _snap(trace, "placed-b", bt)
        at = _align(mesh, at, "x", kind, pos_y * sB, algo == "meshgemm", trace, "a")
        if not (algo == "meshgemm" and b_skewed):  # textbook Cannon, or a B made on the device
            bt = _align(mesh, bt, "y", kind, pos_x * sA, algo == "meshgemm", trace, "b")

        def body(t, carry):
            ct, at, bt, fa, fb = carry
            ha, hb = t % sA, t % sB
            at, bt = _store(at, fa, (t - 1) % sA), _store(bt, fb, (t - 1) % sB)
            with mesh.step():
                a, fa = _ring_send(mesh, at, ha, "x", kind)
                b, fb = _ring_send(mesh, bt, hb, "y", kind)
                ct = local.matmul(mesh, a, b, ct)
            return ct, at, bt, fa, fb

        with mesh.phase("compute-shift"):
            carry = (ct, at, bt, local.take_slot(at, sA - 1), local.take_slot(bt, sB - 1))
            ct = _loop(mesh, L, body, carry, trace, lambda t, c: _snap(trace, f"step-{t}", c[0]))[0]
    return ct


def place_b(mesh: Mesh, b, kind: str = "interleaved", host_skew: bool = True) -> Array:
    """B[K, N] -> stacks [R, C, sB, kb, nb]: K cut into L blocks (Y-ring positions), N into C blocks
    (X-ring positions), pre-skewed by the X ring position when host_skew (MeshGEMM's host-side skew)."""
    R, C = mesh.shape
    L = math.lcm(R, C)
    sA, sB = L // C, L // R
    K, N = b.shape
    kb, nb = layout.blocks(K, L), layout.blocks(N, C)
    if is_abstract(b):
        return jax.ShapeDtypeStruct((R, C, sB, kb, nb), b.dtype)
    pos_y, pos_x = _ring_positions(mesh, kind)
    xp = np if isinstance(b, np.ndarray) else jnp  # host placement stays in numpy (one device copy at the end)
    bb = xp.pad(b, ((0, L * kb - K), (0, C * nb - N))).reshape(L, kb, C, nb)
    r = pos_y[:, None] * sB + np.arange(sB)[None, :]  # [R, sB] Y-ring position of each stack slot
    skew = (pos_x * sA) if host_skew else np.zeros(C, np.int64)
    kidx = (r[:, None, :] + skew[None, :, None]) % L  # [R, C, sB] k-block held
    bt = bb[kidx, :, pos_x[None, :, None], :]  # [R, C, sB, kb, nb]
    return shard.place(jnp.asarray(bt), mesh.devices)


def _place_cannon(mesh: Mesh, a, b, kind: str, host_skew: bool):
    """A stacks [R, C, sA, mb, kb] in ring order; B stacks [R, C, sB, kb, nb], pre-skewed on host if asked."""
    L = math.lcm(*mesh.shape)
    order = "ring" if kind == "interleaved" else "natural"
    at = layout.scatter(mesh, a, stack=L // mesh.cols, row_order=order, col_order=order)
    if at.ndim == 4:
        at = at[:, :, None] if not is_abstract(at) else jax.ShapeDtypeStruct(at.shape[:2] + (1,) + at.shape[2:], at.dtype)
    return at, place_b(mesh, b, kind, host_skew)


def _cannon(mesh: Mesh, a, b, algo: str, trace, b_on_device: bool = False) -> Array:
    """Global A[(H,) M, K] @ B[(H,) K, N] through cannon_tiles (placement and gather on the host)."""
    kind = "interleaved" if algo == "meshgemm" else "wrap"
    M, N = a.shape[-2], b.shape[-1]
    host_skew = algo == "meshgemm" and not b_on_device
    at, bt = _batched(_place_cannon, mesh, a, b, kind, host_skew)
    ct = cannon_tiles(mesh, at, bt, algo=algo, b_skewed=host_skew, trace=trace)
    if is_abstract(ct):
        return jax.ShapeDtypeStruct(a.shape[:-2] + (M, N), ct.dtype)
    order = "ring" if kind == "interleaved" else "natural"
    if a.ndim == 3:
        return jnp.stack([layout.gather(mesh, ct[:, :, i], (M, N), row_order=order, col_order=order)
                          for i in range(a.shape[0])])
    return layout.gather(mesh, ct, (M, N), row_order=order, col_order=order)


# --- SUMMA -------------------------------------------------------------------
def summa(mesh: Mesh, a, b, trace=None) -> Array:
    """SUMMA: K is cut into P = max(R, C) panels; for each, multicast A's panel along rows from the
    column owning it and B's panel along columns from the row owning it, then multiply.

    The multicast root moves every step, so the route is re-pointed (one relay) and a broadcast cannot
    overlap the multiply that consumes it: each step costs broadcast + compute.
    """
    R, C = mesh.shape
    P = max(R, C)
    M, N = a.shape[0], b.shape[1]
    own_x, own_y = np.arange(P) * C // P, np.arange(P) * R // P  # owner column / row of panel k
    slot_x, slot_y = np.arange(P) - np.searchsorted(own_x, own_x), np.arange(P) - np.searchsorted(own_y, own_y)
    at = _place_panels(mesh, a, P, own_x, slot_x, along="x")  # [R, C, sA, mb, kb]
    bt = _place_panels(mesh, b, P, own_y, slot_y, along="y")  # [R, C, sB, kb, nb]
    mb, kb, nb = at.shape[3], at.shape[4], bt.shape[4]
    abstract = is_abstract(at)
    ct = local.zeros(mesh, (mb, nb), jnp.float32 if np.dtype(at.dtype) == np.float32 else at.dtype, abstract)
    with mesh.hold(a=at, b=bt, c=ct, a_panel=mb * kb * _isz(at), b_panel=kb * nb * _isz(bt)), mesh.lockstep(), \
            mesh.routes("multicast x", 2), mesh.routes("multicast y", 2), mesh.phase("panel-step"):
        for k in range(P):
            with mesh.step(overlap=False):
                pa = noc.broadcast(mesh, local.take_slot(at, int(slot_x[k])), "x", int(own_x[k]), switch=True)
                pb = noc.broadcast(mesh, local.take_slot(bt, int(slot_y[k])), "y", int(own_y[k]), switch=True)
                ct = local.matmul(mesh, pa, pb, ct)
            _snap(trace, f"step-{k}", ct)
    return jax.ShapeDtypeStruct((M, N), ct.dtype) if abstract else layout.gather(mesh, ct, (M, N))


def _place_panels(mesh: Mesh, x, P: int, owner: np.ndarray, slot: np.ndarray, along: str) -> Array:
    """Cut the contracted axis into P panels; panel k sits in slot[k] of the line owner[k] along `along`."""
    R, C = mesh.shape
    s = int(slot.max()) + 1
    if along == "x":  # A[M, K]: K panels over columns
        M, K = x.shape
        mb, kb = layout.blocks(M, R), layout.blocks(K, P)
        shape = (R, C, s, mb, kb)
    else:  # B[K, N]: K panels over rows
        K, N = x.shape
        kb, nb = layout.blocks(K, P), layout.blocks(N, C)
        shape = (R, C, s, kb, nb)
    if is_abstract(x):
        return jax.ShapeDtypeStruct(shape, x.dtype)
    t = jnp.zeros(shape, x.dtype)
    if along == "x":
        panels = layout.pad_to(x, (R * mb, P * kb)).reshape(R, mb, P, kb).transpose(2, 0, 1, 3)  # [P, R, mb, kb]
        t = t.at[:, owner, slot].set(panels.transpose(1, 0, 2, 3))
    else:
        panels = layout.pad_to(x, (P * kb, C * nb)).reshape(P, kb, C, nb).transpose(0, 2, 1, 3)  # [P, C, kb, nb]
        t = t.at[owner, :, slot].set(panels)
    return shard.place(t, mesh.devices)


def _isz(x: Array) -> int:
    return np.dtype(x.dtype).itemsize


def _snap(trace, name, x) -> None:
    if trace is not None and not is_abstract(x):
        trace.append((name, np.asarray(x)))


# --- dist-GEMM-T ---------------------------------------------------------------
def gemm_t_tiles(mesh: Mesh, at: Array, bt: Array, *, trace: list | None = None) -> Array:
    """C = A B^T on tiles without transposing B: A [R, C, *batch, mb, kb] (ring order on both axes),
    B stacks [R, C, sB, *batch_b, nb, kb] (N blocks p*sB.. at Y-ring position p) -> C stacks
    [R, C, sC, *batch, mb, nb] (N blocks q*sC.. at X-ring position q); sB = L/R, sC = L/C.

    Each step every core multiplies its A tile by the active B block (transposed access), the row
    chain-reduces the partial into the column owning that C block (a relay adds each element, overlapped
    with the next step), and B's stack rotates one block along Y. B's batch axes are A's leading ones.
    """
    R, C = mesh.shape
    L = math.lcm(R, C)
    sB, sC = L // R, L // C
    abstract = is_abstract(at)
    acc_dt = jnp.float32 if np.dtype(at.dtype) == np.float32 else at.dtype
    mb, nb = at.shape[-2], bt.shape[-2]
    ct = local.zeros(mesh, (sC,) + at.shape[2:-1] + (nb,), acc_dt, abstract)
    pos_y = ring_pos(R)
    order = jnp.asarray(interleave_order(C))
    part_bytes = math.prod(at.shape[2:-1]) * nb * 4
    b_buf = math.prod(bt.shape[3:]) * _isz(bt)
    with mesh.hold(a=at, b=bt, c=ct, b_buf=b_buf, partial=part_bytes), \
            mesh.routes("interleaved ring y", 2), mesh.routes("reduce chain x", 2):

        def body(t, carry):
            ct, bt, fb = carry
            h = t % sB
            bt = _store(bt, fb, (t - 1) % sB)
            with mesh.phase("compute-shift-reduce"), mesh.step():
                b, fb = _ring_send(mesh, bt, h, "y", "interleaved")
                part = local.matmul(mesh, at, b, trans_b=True)  # [R, C, *batch, mb, nb]
                n_of_row = (jnp.asarray(pos_y) * sB + t) % L  # C block each row produces this step
                red = noc.reduce_to_owner(mesh, part, "x", order[n_of_row // sC])
                if not abstract:
                    slot = (jnp.arange(sC)[None, :] == (n_of_row % sC)[:, None])[:, None, :]  # [R, 1, sC]
                    ct = ct + jnp.where(slot.reshape(slot.shape + (1,) * (ct.ndim - 3)), red[:, :, None], 0
                                        ).astype(ct.dtype)
            return ct, bt, fb

        ct = _loop(mesh, L, body, (ct, bt, local.take_slot(bt, sB - 1)), trace,
                   lambda t, c: _snap(trace, f"step-{t}", c[0]))[0]
        with mesh.phase("drain"):  # the last partial still has to cross the row
            noc.drain(mesh, jax.ShapeDtypeStruct(at.shape[:-1] + (nb,), np.float32), "x")
    return ct


def gemm_t(mesh: Mesh, a, b, *, trace: list | None = None) -> Array:
    """Global C = A B^T: A[(H,) M_y, K_x], B[(H,) N_y, K_x] -> C[(H,) M_y, N_x] through gemm_t_tiles."""
    R, C = mesh.shape
    sB = math.lcm(R, C) // R
    M, N = a.shape[-2], b.shape[-2]
    with mesh.phase("gemm_t"):
        at, bt = _batched(_place_gemm_t, mesh, a, b, sB)  # [R, C, 1, (H,) mb, kb], [R, C, sB, (H,) nb, kb]
        ct = gemm_t_tiles(mesh, local.take_slot(at, 0), bt, trace=trace)
    if is_abstract(ct):
        return jax.ShapeDtypeStruct(a.shape[:-2] + (M, N), ct.dtype)
    if a.ndim == 3:
        return jnp.stack([_gather_stacked_c(mesh, ct[:, :, :, i], M, N) for i in range(a.shape[0])])
    return _gather_stacked_c(mesh, ct, M, N)


def _place_gemm_t(mesh: Mesh, a, b, sB: int):
    """A[M, K] in ring order on both axes (as a 1-stack), B[N, K] as stacks of N blocks along Y."""
    at = layout.scatter(mesh, a, row_order="ring", col_order="ring")
    at = jax.ShapeDtypeStruct(at.shape[:2] + (1,) + at.shape[2:], at.dtype) if is_abstract(at) else at[:, :, None]
    return at, _place_gemm_t_b(mesh, b, sB)


def _place_gemm_t_b(mesh: Mesh, b, sB: int) -> Array:
    """B[N, K]: N cut into L blocks (ring-position stacks along Y), K cut over X in ring order."""
    R, C = mesh.shape
    L = math.lcm(R, C)
    N, K = b.shape
    nb, kb = layout.blocks(N, L), layout.blocks(K, C)
    if is_abstract(b):
        return jax.ShapeDtypeStruct((R, C, sB, nb, kb), b.dtype)
    pos_y, pos_x = ring_pos(R), ring_pos(C)
    bb = layout.pad_to(b, (L * nb, C * kb)).reshape(L, nb, C, kb)
    nidx = pos_y[:, None] * sB + np.arange(sB)[None, :]  # [R, sB]
    bt = bb[nidx[:, None, :], :, pos_x[None, :, None], :]  # [R, C, sB, nb, kb]
    return shard.place(bt, mesh.devices)


def _gather_stacked_c(mesh: Mesh, ct, M: int, N: int):
    """C stacks [R, C, sC, mb, nb] (ring order on both axes) -> C[M, N]."""
    R, C = mesh.shape
    sC, mb, nb = ct.shape[2:]
    t = jnp.take(ct, jnp.asarray(layout.core_of_block(R, "ring")), axis=0)
    t = jnp.take(t, jnp.asarray(layout.core_of_block(C, "ring")), axis=1)
    return t.transpose(0, 3, 1, 2, 4).reshape(R * mb, C * sC * nb)[:M, :N]
