"""Decode attention over KV caches spread over the grid: sequence along Y, K/V dims along X.

B sequences, each with its own slots on every core: q_x [B, C, cb, n_rep] (query heads sharing a KV head
ride on that head's dim slots); K, V [B, R, T, C, cb]; valid [B, R, T] marks the slots that hold tokens
(tokens move under the shift policy, the mask follows). Scores reduce per head along X (segmented when
heads own whole columns), softmax reduces along Y (max, then sum), P.V reduces along Y: out o_x
[B, C, cb, n_rep], laid out like q. One message per reduction carries every sequence's elements.
"""

from __future__ import annotations

import jax.numpy as jnp

from waferllm.machine import local, noc
from waferllm.machine.mesh import Mesh

F32 = jnp.float32


def decode_attention(mesh: Mesh, q_x, k, v, valid, head_mask, *, scale: float, segment: int, tokens_per_row: int):
    """softmax(q K^T * scale) V per sequence and head; tokens_per_row = the busiest core's cached tokens
    summed over the batch (it sizes the charged work)."""
    B, R, T, C, cb = k.shape
    n_rep = q_x.shape[-1]
    slots = head_mask.shape[-1]
    t = tokens_per_row
    dt = jnp.dtype(k.dtype).name
    with mesh.phase("scores"):
        mesh.charge_compute(local.matmul_cycles(mesh, t, cb, n_rep, dt), macs=t * cb * n_rep)
        qm = q_x.astype(F32)[:, :, :, None, :] * head_mask[None, :, :, :, None]  # [B, C, cb, S, r] by head slot
        part = jnp.einsum("bcdsr,bytcd->ycbtsr", qm, k.astype(F32))
        s = _reduce(mesh, part, "x", "sum", segment, t * slots * n_rep)  # [R, C, B, T, S, r]
    with mesh.phase("softmax"):
        live = jnp.transpose(valid, (1, 0, 2))[:, None, :, :, None, None]  # [R, 1, B, T, 1, 1]
        s = jnp.where(live, s * scale, -jnp.inf)
        local.charge_elementwise(mesh, t * slots * n_rep, ops=2)  # scale, local max
        m = _reduce(mesh, jnp.max(s, axis=3), "y", "max", None, B * slots * n_rep)  # [R, C, B, S, r]
        e = jnp.where(live, jnp.exp(s - m[:, :, :, None]), 0.0)
        local.charge_elementwise(mesh, t * slots * n_rep, special=1, ops=2)  # exp, local sum
        z = _reduce(mesh, jnp.sum(e, axis=3), "y", "sum", None, B * slots * n_rep)
        local.charge_elementwise(mesh, t * slots * n_rep, special=1)  # one reciprocal-multiply each
        p = e / z[:, :, :, None]
    with mesh.phase("pv"):
        mesh.charge_compute(local.matmul_cycles(mesh, cb, t, n_rep, dt), macs=t * cb * n_rep)
        pd = jnp.einsum("cds,ycbtsr->ycbtdr", head_mask, p)  # each dim slot takes its head's weights
        o = jnp.einsum("ycbtdr,bytcd->ycbdr", pd, v.astype(F32))
        o = _reduce(mesh, o, "y", "sum", None, B * cb * n_rep)
    return jnp.transpose(o[0], (1, 0, 2, 3))  # [B, C, cb, n_rep], replicated along Y


def _reduce(mesh: Mesh, x, axis: str, op: str, segment: int | None, elems: int):
    """K-tree allreduce of per-core tiles x [R, C, ...] (charged for `elems` live elements per core)."""
    return noc.allreduce(mesh, x, axis, "ktree", segment=segment if segment and segment < mesh.size(axis) else None,
                         op=op, elems=elems)
