"""Decode-time mesh kernels on compact layouts: replicated copies are stored once.

A vector split along Y and replicated along X is held as [R, kb]; split along X and replicated along Y
as [C, nb]. Per-core partial sums are materialised as [R, C, tile] and reduced with the K-tree of
machine.noc, so every core's work and every reduction step is the mesh algorithm's; the ledger is
charged per core exactly as the tiled kernels charge it (shapes are per-core tiles).
"""

from __future__ import annotations

import jax.numpy as jnp

from waferllm.machine import local, noc
from waferllm.machine.mesh import Mesh

F32 = jnp.float32


def _dt(x) -> str:
    return jnp.dtype(x.dtype).name


def gemv_y_to_x(mesh: Mesh, x_y: jnp.ndarray, w: jnp.ndarray, algo: str = "ktree") -> jnp.ndarray:
    """MeshGEMV x[K_y] @ W[K_y, N_x] -> y[N_x]: x_y [R, kb], w [R, kb, C, nb] -> y_x [C, nb] (fp32)."""
    R, kb, C, nb = w.shape
    mesh.charge_compute(local.matmul_cycles(mesh, 1, kb, nb, _dt(w)), macs=kb * nb)
    part = jnp.einsum("rk,rkm->rm", x_y.astype(w.dtype), w.reshape(R, kb, C * nb),
                      preferred_element_type=F32).reshape(R, C, nb)
    return noc.allreduce(mesh, part, "y", algo)[0]


def gemv_x_to_y(mesh: Mesh, x_x: jnp.ndarray, w: jnp.ndarray, algo: str = "ktree") -> jnp.ndarray:
    """MeshGEMV x[K_x] @ W[K_x, N_y] -> y[N_y]: x_x [C, nb], w [C, nb, R, kb] -> y_y [R, kb] (fp32)."""
    C, nb, R, kb = w.shape
    mesh.charge_compute(local.matmul_cycles(mesh, 1, nb, kb, _dt(w)), macs=nb * kb)
    # a batched GEMV per column with the (r, k) outputs flat: XLA's CPU dot is 5x faster this way
    part = jnp.einsum("cn,cnm->cm", x_x.astype(w.dtype), w.reshape(C, nb, R * kb), preferred_element_type=F32)
    part = part.reshape(C, R, kb).transpose(1, 0, 2)  # [R, C, kb] per-core partials
    return noc.allreduce(mesh, part, "x", algo)[:, 0]


def rmsnorm_y(mesh: Mesh, x_y: jnp.ndarray, weight_y: jnp.ndarray, dim: int, eps: float) -> jnp.ndarray:
    """RMSNorm of a Y-split vector x_y [R, kb]: local sum of squares, 1-element allreduce along Y."""
    R, kb = x_y.shape
    local.charge_elementwise(mesh, kb, ops=1)  # squares and local sum
    ss = jnp.sum(jnp.square(x_y), axis=1)  # [R]
    tot = noc.allreduce(mesh, jnp.broadcast_to(ss[:, None, None], (R, mesh.cols, 1)), "y")[0, 0, 0]
    local.charge_elementwise(mesh, 1, special=1)  # rsqrt on one value
    inv = jax_rsqrt(tot / dim + eps)
    local.charge_elementwise(mesh, kb, ops=2)  # scale and weight
    return x_y * inv * weight_y


def jax_rsqrt(v):
    return 1.0 / jnp.sqrt(v)
