"""Vector kernels on decode's compact layouts (replicated copies stored once; kernels/gemv.py has MeshGEMV).

A batch of B vectors split along Y and replicated along X is x_y [B, R, kb]; split along X, x_x [B, C, nb].
"""

from __future__ import annotations

import jax.numpy as jnp

from waferllm.machine import noc, ops
from waferllm.machine.mesh import Mesh


def rmsnorm_y(mesh: Mesh, x_y: jnp.ndarray, weight_y: jnp.ndarray, dim: int, eps: float) -> jnp.ndarray:
    """RMSNorm of B Y-split vectors x_y [B, R, kb] with weight_y [R, kb]: local sums of squares, one
    B-element allreduce along Y, a reciprocal square root per sequence, then scale and weight."""
    ss = ops.reduce(mesh, "bYk", x_y, "k", pre=jnp.square)  # [B, R]: squares fused into the summing pass
    # each core's partial [R, C, B] (the same on every core of a row: x_y is replicated along X)
    part = ops.free(lambda s: jnp.broadcast_to(s.T[:, None, :], (mesh.rows, mesh.cols, s.shape[0])), ss)
    tot = ops.free(lambda t: t[0, 0], noc.allreduce(mesh, part, "y"))  # [B], replicated on every core
    inv = ops.map(mesh, "b", lambda t: 1.0 / jnp.sqrt(t / dim + eps), tot, special=1)
    return ops.map(mesh, "bYk", lambda x, i, w: x * i[:, None, None] * w, x_y, inv, weight_y, ops=2)
