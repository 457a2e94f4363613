"""Decode-time mesh kernels on compact layouts: replicated copies are stored once.

A batch of B vectors split along Y and replicated along X is held as [B, R, kb]; split along X and
replicated along Y as [B, C, nb] (B = 1 is the paper's GEMV; B > 1 turns each GEMV into a skinny GEMM). Per-core partial sums are materialised as [R, C, tile] and reduced with the K-tree of
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
    """Skinny MeshGEMM X[B, K_y] @ W[K_y, N_x] -> Y[B, N_x]: x_y [B, R, kb], w [R, kb, C, nb] -> y_x [B, C, nb].

    B sequences share every weight read and every reduction message (B x nb elements per message).
    """
    B = x_y.shape[0]
    R, kb, C, nb = w.shape
    mesh.charge_compute(local.matmul_cycles(mesh, B, kb, nb, _dt(w)), macs=B * kb * nb)
    part = jnp.einsum("brk,rkm->rbm", x_y.astype(w.dtype), w.reshape(R, kb, C * nb), preferred_element_type=F32)
    part = part.reshape(R, B, C, nb).transpose(0, 2, 1, 3)  # [R, C, B, nb] per-core partials
    return noc.allreduce(mesh, part, "y", algo)[0].transpose(1, 0, 2)


def gemv_x_to_y(mesh: Mesh, x_x: jnp.ndarray, w: jnp.ndarray, algo: str = "ktree") -> jnp.ndarray:
    """Skinny MeshGEMM X[B, K_x] @ W[K_x, N_y] -> Y[B, N_y]: x_x [B, C, nb], w [C, nb, R, kb] -> y_y [B, R, kb]."""
    B = x_x.shape[0]
    C, nb, R, kb = w.shape
    mesh.charge_compute(local.matmul_cycles(mesh, B, nb, kb, _dt(w)), macs=B * nb * kb)
    # a batched GEMM per column with the (r, k) outputs flat: XLA's CPU dot is 5x faster this way
    part = jnp.einsum("bcn,cnm->cbm", x_x.astype(w.dtype), w.reshape(C, nb, R * kb), preferred_element_type=F32)
    part = part.reshape(C, B, R, kb).transpose(2, 0, 1, 3)  # [R, C, B, kb] per-core partials
    return noc.allreduce(mesh, part, "x", algo)[:, 0].transpose(1, 0, 2)


def rmsnorm_y(mesh: Mesh, x_y: jnp.ndarray, weight_y: jnp.ndarray, dim: int, eps: float) -> jnp.ndarray:
    """RMSNorm of B Y-split vectors x_y [B, R, kb]: local sums of squares, a B-element allreduce along Y."""
    B, R, kb = x_y.shape
    local.charge_elementwise(mesh, B * kb, ops=1)  # squares and local sums
    ss = jnp.sum(jnp.square(x_y), axis=2).T  # [R, B]
    tot = noc.allreduce(mesh, jnp.broadcast_to(ss[:, None, :], (R, mesh.cols, B)), "y")[0, 0]  # [B]
    local.charge_elementwise(mesh, B, special=1)  # one rsqrt per sequence
    inv = jax_rsqrt(tot / dim + eps)
    local.charge_elementwise(mesh, B * kb, ops=2)  # scale and weight
    return x_y * inv[:, None, None] * weight_y


def jax_rsqrt(v):
    return 1.0 / jnp.sqrt(v)
