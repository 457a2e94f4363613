"""MeshGEMV (waferllm.md s4): local partial GEMVs, then an allreduce along the input's grid axis.

One kernel on the compact layout decode keeps (replicated copies stored once): a batch of B vectors split
along Y is x_y [B, R, kb]; split along X, y_x [B, C, nb] (B = 1 is the paper's GEMV, B > 1 a skinny GEMM
sharing every weight read and reduction message). The reduction flips the layout, so decode chains
GEMVs without transposes. algo: meshgemv (two-phase K-tree), pipeline or ring allreduce (the baselines).
gemv() places a global x[K] @ W[K, N] into this layout for the benchmarks and runs the same kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from waferllm.machine import layout, noc, ops
from waferllm.machine.shard import AXES
from waferllm.machine.mesh import Array, Mesh, is_abstract

GEMV_ALGOS = ("meshgemv", "pipeline", "ring")
_ALLREDUCE = {"meshgemv": "ktree", "pipeline": "pipeline", "ring": "ring"}
_ROUTES = {"meshgemv": 3, "pipeline": 2, "ring": 2}  # the K-tree root needs K+1 = 3 routes
F32 = jnp.float32


def gemv_y_to_x(mesh: Mesh, x_y: Array, w: Array, algo: str = "meshgemv", *, groups: int | None = None,
                out_dtype=F32, trace: list | None = None) -> Array:
    """X[B, K_y] @ W[K_y, N_x]: x_y [B, R, kb], w [R, kb, C, nb] (core (y, x) owns w[y, :, x]) -> y_x [B, C, nb].

    out_dtype: the partial sums' type, which the reduction's messages carry.
    """
    # per-core partials [R, C, B, nb], computed as one batched dot per core row (fast on XLA CPU)
    part = ops.einsum(mesh, "bYk,YkXn->YXbn", x_y, w, out_dtype=out_dtype)
    _snap(trace, "partial", part)
    y = noc.allreduce(mesh, part, "y", _ALLREDUCE[_check(algo)], groups=groups)
    _snap(trace, "reduced", y)
    return ops.free(lambda y: y[0].transpose(1, 0, 2), y)  # replicated along Y: any row's copy


def gemv_x_to_y(mesh: Mesh, x_x: Array, w: Array, algo: str = "meshgemv", *, groups: int | None = None,
                out_dtype=F32, trace: list | None = None) -> Array:
    """X[B, K_x] @ W[K_x, N_y]: x_x [B, C, nb], w [C, nb, R, kb] (core (y, x) owns w[x, :, y]) -> y_y [B, R, kb]."""
    # one batched dot per core column with the (r, k) outputs flat: XLA's CPU dot is 5x faster this way
    part = ops.einsum(mesh, "bXn,XnYk->YXbk", x_x, w, out_dtype=out_dtype)
    _snap(trace, "partial", part)
    y = noc.allreduce(mesh, part, "x", _ALLREDUCE[_check(algo)], groups=groups)
    _snap(trace, "reduced", y)
    return ops.free(lambda y: y[:, 0].transpose(1, 0, 2), y)  # replicated along X: any column's copy


def gemv(mesh: Mesh, x, w, algo: str = "meshgemv", *, groups: int | None = None, trace: list | None = None):
    """y = x[K] @ W[K, N] on global arrays (or shapes): placed as x_y [1, R, kb], W [R, kb, C, nb], run by
    gemv_y_to_x with the named allreduce; returns y[N] or its shape. Computes in W's dtype, as the paper."""
    _check(algo)
    K, N = w.shape
    R, C = mesh.shape
    kb, nb = layout.blocks(K, R), layout.blocks(N, C)
    isz = np.dtype(w.dtype).itemsize
    with mesh.phase(algo), mesh.hold(w=kb * nb * isz, x=kb * isz, partial=nb * isz, recv=nb * isz), \
            mesh.routes(f"{algo} allreduce y", _ROUTES[algo]):
        xt, wt = _place(mesh, x, w, kb, nb)
        yt = gemv_y_to_x(mesh, xt, wt, algo, groups=groups, out_dtype=w.dtype, trace=trace)
    if is_abstract(yt):
        return jax.ShapeDtypeStruct((N,), yt.dtype)
    return yt[0].reshape(-1)[:N]


def _place(mesh: Mesh, x, w, kb: int, nb: int) -> tuple[Array, Array]:
    """Host placement: x[K] -> x_y [1, R, kb] (in W's dtype), W[K, N] -> [R, kb, C, nb], zero padded."""
    R, C = mesh.shape
    if is_abstract(w):
        return jax.ShapeDtypeStruct((1, R, kb), w.dtype), jax.ShapeDtypeStruct((R, kb, C, nb), w.dtype)
    xt = jnp.pad(jnp.asarray(x, w.dtype), (0, R * kb - x.shape[0])).reshape(1, R, kb)
    wt = layout.pad_to(w, (R * kb, C * nb)).astype(w.dtype).reshape(R, kb, C, nb)
    if mesh.devices is not None:  # grid axes over the device mesh, as engine/tiles.shard_weights does
        wt = jax.device_put(wt, NamedSharding(mesh.devices, P(AXES[0], None, AXES[1], None)))
        xt = jax.device_put(xt, NamedSharding(mesh.devices, P(None, AXES[0], None)))
    return xt, wt


def _check(algo: str) -> str:
    if algo not in GEMV_ALGOS:
        raise ValueError(f"unknown GEMV algorithm {algo!r}; known: {', '.join(GEMV_ALGOS)}")
    return algo


def _snap(trace, name, x) -> None:
    if trace is not None and not is_abstract(x):
        trace.append((name, np.asarray(x)))
