"""Distributed GEMM on an R x C mesh: MeshGEMM (interleaved Cannon), Cannon, SUMMA, dist-GEMM-T.

All take global A[M, K], B[K, N] (arrays or jax.ShapeDtypeStruct for shape-only costing) and
return (C[M, N] or a ShapeDtypeStruct, trace) where trace lists per-step tile snapshots if asked.

Non-square meshes follow the paper's logical lcm(R, C) partition: K is cut into L = lcm(R, C)
blocks; each core holds L/C blocks of its A row-slab and L/R of its B column-slab as a stack,
and one block per stack moves per step, so every core still does one block product per step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine import layout, local, noc, shard
from waferllm.machine.mesh import Array, Mesh, is_abstract
from waferllm.machine.rings import ring_pos

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


def _place_cannon(mesh: Mesh, a, b, kind: str, host_skew_b: bool):
    """A stacks [R, C, sA, mb, kb] in ring order; B stacks [R, C, sB, kb, nb], pre-skewed on host if asked."""
    R, C = mesh.shape
    L = math.lcm(R, C)
    sA, sB = L // C, L // R
    order = "ring" if kind == "interleaved" else "natural"
    at = layout.scatter(mesh, a, stack=sA, row_order=order, col_order=order)
    if at.ndim == 4:
        at = at[:, :, None] if not is_abstract(at) else jax.ShapeDtypeStruct(at.shape[:2] + (1,) + at.shape[2:], at.dtype)
    K, N = b.shape
    kb, nb = layout.blocks(K, L), layout.blocks(N, C)
    if is_abstract(b):
        return at, jax.ShapeDtypeStruct((R, C, sB, kb, nb), b.dtype)
    pos_y, pos_x = _ring_positions(mesh, kind)
    bb = layout.pad_to(b, (L * kb, C * nb)).reshape(L, kb, C, nb)
    r = pos_y[:, None] * sB + np.arange(sB)[None, :]  # [R, sB] Y-ring position of each stack slot
    skew = (pos_x * sA) if host_skew_b else np.zeros(C, np.int64)
    kidx = (r[:, None, :] + skew[None, :, None]) % L  # [R, C, sB] k-block held
    bt = bb[kidx, :, pos_x[None, :, None], :]  # [R, C, sB, kb, nb]
    return at, shard.place(bt.astype(b.dtype), mesh.devices)


def _stack_shift(mesh: Mesh, x: Array, axis: str, kind: str, direction: int, mask=None) -> Array:
    """Move a ring of stacked blocks one position: each core passes one end block to its ring neighbour."""
    s = x.shape[2]
    out_end = local.take_slot(x, 0 if direction < 0 else s - 1)
    if mask is None:
        got = noc.shift(mesh, out_end, axis, kind, direction)
    else:
        got = noc.shift_rows_masked(mesh, out_end, axis, mask, kind, direction)
    new = local.push_slot(x, got, front=direction > 0)
    if mask is None or is_abstract(x):
        return new
    m = np.asarray(mask, bool)
    m = (m[:, None] if axis == "x" else m[None, :]).reshape((mesh.rows if axis == "x" else 1,
                                                             mesh.cols if axis == "y" else 1) + (1,) * (x.ndim - 2))
    return jnp.where(jnp.asarray(m), new, x)


def _align(mesh: Mesh, x: Array, axis: str, kind: str, need: np.ndarray, shortest: bool, trace, name):
    """Rotate each line of `axis` backward by need[line] ring positions (or forward, if shorter)."""
    n_pos = x.shape[2] * mesh.size(axis)
    back = need if not shortest else np.where(need <= n_pos - need, need, 0)
    fwd = np.zeros_like(need) if not shortest else np.where(need <= n_pos - need, 0, n_pos - need)
    steps = int(max(back.max(initial=0), fwd.max(initial=0)))
    with mesh.phase("align"):
        for t in mesh.repeat(steps, is_abstract(x)):  # every alignment step moves one block: same cost
            with mesh.step():
                if (back > t).any():
                    x = _stack_shift(mesh, x, axis, kind, -1, mask=back > t)
                if (fwd > t).any():
                    x = _stack_shift(mesh, x, axis, kind, +1, mask=fwd > t)
            _snap(trace, f"{name}-align-{t}", x)
    return x


def _cannon(mesh: Mesh, a, b, algo: str, trace, b_on_device: bool = False) -> Array:
    """Compute-shift GEMM. meshgemm: interleaved rings (<= 2 hops), B pre-skewed on the host (unless it was
    made on the device), A aligned on device the shorter way; cannon: rings with the wrap-around edge,
    both operands aligned on device."""
    kind = "interleaved" if algo == "meshgemm" else "wrap"
    R, C = mesh.shape
    L = math.lcm(R, C)
    sA, sB = L // C, L // R
    M, N = a.shape[-2], b.shape[-1]
    host_skew = algo == "meshgemm" and not b_on_device
    at, bt = _batched(_place_cannon, mesh, a, b, kind, host_skew)
    mb, kb, nb = at.shape[-2], at.shape[-1], bt.shape[-1]
    pos_y, pos_x = _ring_positions(mesh, kind)
    abstract = is_abstract(at)
    acc_dt = jnp.float32 if np.dtype(at.dtype) == np.float32 else at.dtype
    batch = at.shape[3:-2]
    ct = local.zeros(mesh, batch + (mb, nb), acc_dt, abstract)
    nbat = int(np.prod(batch))
    with mesh.hold(a=at, b=bt, c=ct, a_buf=nbat * mb * kb * _isz(at), b_buf=nbat * kb * nb * _isz(bt)), \
            mesh.routes(f"{kind} ring x", 2), mesh.routes(f"{kind} ring y", 2):
        _snap(trace, "placed-a", at)
        _snap(trace, "placed-b", bt)
        at = _align(mesh, at, "x", kind, pos_y * sB, algo == "meshgemm", trace, "a")
        if not host_skew:  # textbook Cannon, or a B made on the device: skew it on the device too
            bt = _align(mesh, bt, "y", kind, pos_x * sA, algo == "meshgemm", trace, "b")
        with mesh.phase("compute-shift"):
            for t in mesh.repeat(L, abstract):
                with mesh.step():
                    ct = local.matmul(mesh, local.take_slot(at, 0), local.take_slot(bt, 0), ct)
                    at = _stack_shift(mesh, at, "x", kind, -1)
                    bt = _stack_shift(mesh, bt, "y", kind, -1)
                _snap(trace, f"step-{t}", ct)
    if abstract:
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
    with mesh.hold(a=at, b=bt, c=ct, a_panel=mb * kb * _isz(at), b_panel=kb * nb * _isz(bt)), \
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
def gemm_t(mesh: Mesh, a, b, *, trace: list | None = None) -> Array:
    """C = A B^T without transposing B: A[M_y, K_x], B[N_y, K_x] -> C[M_y, N_x].

    N is cut into L = lcm(R, C) blocks: core row at Y-ring position p holds B blocks p*L/R .. as a stack
    that rotates one block per step; each core multiplies its A tile by the active B block (transposed
    access, no data transpose) and the row reduces the partial to the column owning that C block, in a
    pipelined chain (a relay adds each element) overlapped with the next step.
    """
    R, C = mesh.shape
    L = math.lcm(R, C)
    sB, sC = L // R, L // C
    M, K = a.shape[-2:]
    N = b.shape[-2]
    with mesh.phase("gemm_t"):
        at, bt = _batched(_place_gemm_t, mesh, a, b, sB)  # [R, C, 1, (H,) mb, kb], [R, C, sB, (H,) nb, kb]
        at = local.take_slot(at, 0)
        mb, kb, nb = at.shape[-2], at.shape[-1], bt.shape[-2]
        batch = at.shape[2:-2]
        abstract = is_abstract(at)
        ct = local.zeros(mesh, (sC,) + batch + (mb, nb), jnp.float32 if np.dtype(at.dtype) == np.float32 else at.dtype,
                         abstract)
        nbat = int(np.prod(batch))
        pos_y, pos_x = ring_pos(R), ring_pos(C)
        eb = _isz(at)
        with mesh.hold(a=at, b=bt, c=ct, b_buf=nbat * nb * kb * eb, partial=nbat * mb * nb * 4), \
                mesh.routes("interleaved ring y", 2), mesh.routes("reduce chain x", 2):
            for t in mesh.repeat(L, abstract):
                with mesh.phase("compute-shift-reduce"), mesh.step():
                    part = local.matmul(mesh, at, local.take_slot(bt, 0), trans_b=True)  # [R, C, mb, nb]
                    relay = mesh.spec.relay_cycles_per_element * nbat * mb * nb if C > 1 else 0.0
                    mesh.charge_comm(relay)
                    ct = _reduce_into_owner(mesh, ct, part, (pos_y * sB + t) % L, sC, pos_x)
                    bt = _stack_shift(mesh, bt, "y", "interleaved", -1)
                _snap(trace, f"step-{t}", ct)
            with mesh.phase("drain"):  # the last partial still has to cross the row
                mesh.charge_comm(noc.chain_cycles(mesh, nbat * mb * nb, 4, C - 1, C - 1) if C > 1 else 0.0,
                                 hops=C - 1, stages=C - 1)
    if abstract:
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


def _reduce_into_owner(mesh: Mesh, ct, part, n_of_row, sC: int, pos_x):
    """Sum the row's partials (chain along X) into the owner column's stack slot for block n_of_row[y]."""
    if is_abstract(part):
        return ct
    total = noc._chain(jnp.moveaxis(part, 1, 0), "sum")  # [R, mb, nb], summed along the row
    owner = (pos_x[None, :] == (n_of_row // sC)[:, None])  # [R, C]
    slot = (np.arange(sC)[None, :] == (n_of_row % sC)[:, None])  # [R, sC]
    m = owner[:, :, None] & slot[:, None, :]
    mask = jnp.asarray(m.reshape(m.shape + (1,) * (ct.ndim - 3)))
    return ct + jnp.where(mask, total[:, None, None].astype(ct.dtype), 0)


def _gather_stacked_c(mesh: Mesh, ct, M: int, N: int):
    """C stacks [R, C, sC, mb, nb] (ring order on both axes) -> C[M, N]."""
    R, C = mesh.shape
    sC, mb, nb = ct.shape[2:]
    t = jnp.take(ct, jnp.asarray(layout.core_of_block(R, "ring")), axis=0)
    t = jnp.take(t, jnp.asarray(layout.core_of_block(C, "ring")), axis=1)
    return t.transpose(0, 3, 1, 2, 4).reshape(R * mb, C * sC * nb)[:M, :N]
