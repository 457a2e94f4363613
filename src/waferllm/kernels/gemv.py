"""Distributed GEMV on an R x C mesh: MeshGEMV (local GEMV + K-tree allreduce) and its baselines.

x[K] @ W[K, N] -> y[N]. Sharding: W[K_y, N_x]; x[K_y] replicated along X; y[N_x] replicated along Y
(the reduction flips the layout, which the decode chain exploits: no transposes between GEMVs).
"""

from __future__ import annotations

import jax
import numpy as np

from waferllm.machine import layout, local, noc
from waferllm.machine.mesh import Array, Mesh, is_abstract

GEMV_ALGOS = ("meshgemv", "pipeline", "ring")
_ALLREDUCE = {"meshgemv": "ktree", "pipeline": "pipeline", "ring": "ring"}
_ROUTES = {"meshgemv": 3, "pipeline": 2, "ring": 2}  # K-tree root needs K+1 = 3 routes


def gemv(mesh: Mesh, x, w, algo: str = "meshgemv", *, groups: int | None = None, trace: list | None = None):
    """y = x @ W with the named allreduce (meshgemv: K-tree; pipeline; ring); returns y[N] or its shape."""
    if algo not in GEMV_ALGOS:
        raise ValueError(f"unknown GEMV algorithm {algo!r}; known: {', '.join(GEMV_ALGOS)}")
    K, N = w.shape
    with mesh.phase(algo):
        wt = layout.scatter(mesh, w)  # [R, C, kb, nb]
        xt = layout.scatter_vector(mesh, x, "y", dtype=w.dtype)  # [R, C, kb]
        yt = gemv_tiles(mesh, xt, wt, algo, groups=groups, trace=trace)
    if is_abstract(yt):
        return jax.ShapeDtypeStruct((N,), yt.dtype)
    return layout.gather_vector(mesh, yt, N, "x")


def gemv_tiles(mesh: Mesh, xt: Array, wt: Array, algo: str = "meshgemv", *, groups: int | None = None,
               trace: list | None = None) -> Array:
    """x_t[R, C, kb] (split along Y) @ W_t[R, C, kb, nb] -> y_t[R, C, nb] (split along X, replicated on Y)."""
    nb = wt.shape[3]
    isz = np.dtype(wt.dtype).itemsize
    with mesh.hold(w=wt, x=xt, partial=nb * isz, recv=nb * isz), mesh.routes(f"{algo} allreduce y", _ROUTES[algo]):
        with mesh.phase("local"):
            part = local.matmul(mesh, _row(xt), wt)  # [R, C, 1, nb] partial sums over this core's K slice
        part = _unrow(part)
        _snap(trace, "partial", part)
        with mesh.phase("allreduce"):
            y = noc.allreduce(mesh, part, "y", _ALLREDUCE[algo], groups=groups)
        _snap(trace, "reduced", y)
    return y


def _row(x: Array) -> Array:
    if is_abstract(x):
        return jax.ShapeDtypeStruct(x.shape[:2] + (1,) + x.shape[2:], x.dtype)
    return x[:, :, None, :]


def _unrow(x: Array) -> Array:
    if is_abstract(x):
        return jax.ShapeDtypeStruct(x.shape[:2] + x.shape[3:], x.dtype)
    return x[:, :, 0, :]


def _snap(trace, name, x) -> None:
    if trace is not None and not is_abstract(x):
        trace.append((name, np.asarray(x)))
