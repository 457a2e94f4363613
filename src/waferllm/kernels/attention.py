"""Decode attention over KV caches spread over the grid: sequence along Y, K/V dims along X.

B sequences, each with its own slots on every core: q_x [B, C, cb, n_rep] (query heads sharing a KV head
ride on that head's dim slots); K, V [B, R, T, C, cb]; valid [B, R, T] marks the slots that hold tokens
(tokens move under the shift policy, the mask follows). Scores reduce per head along X (segmented when
heads own whole columns), softmax reduces along Y (max, then sum), P.V reduces along Y: out o_x
[B, C, cb, n_rep], laid out like q. One message per reduction carries every sequence's elements.
"""

from __future__ import annotations

import jax.numpy as jnp

from waferllm.machine import noc, ops
from waferllm.machine.mesh import Mesh

F32 = jnp.float32


def decode_attention(mesh: Mesh, q_x, k, v, valid, head_mask, *, scale: float, segment: int, tokens_per_row: int):
    """softmax(q K^T * scale) V per sequence and head; tokens_per_row = the busiest core's cached tokens
    summed over the batch (it sizes the charged work: the sequence axis b is folded into t)."""
    seg = segment if segment and segment < mesh.size("x") else None
    # head_mask [C, cb, S] is one-hot: each dim slot belongs to one of the core's S head slots, so the head
    # slot axis s selects rather than multiplies (charged at 1); padded KV slots are not work (t is live)
    work = {"b": 1, "t": tokens_per_row, "s": 1}
    rows = {"b": 1, "t": tokens_per_row}  # softmax touches every head slot's scores
    with mesh.phase("scores"):  # scores [R, C, B, S, r, T]: the slot axis last, where softmax reduces
        qm = ops.free(lambda q, m: q.astype(F32)[:, :, :, None, :] * m[None, :, :, :, None], q_x, head_mask)
        part = ops.einsum(mesh, "bXdsr,bYtXd->YXbsrt", qm, k, live=work, compute_dtype=F32)
        s = noc.allreduce(mesh, part, "x", segment=seg, elems=ops.elems("YXbsrt", part, rows))
    with mesh.phase("softmax"):
        live = ops.free(lambda v: jnp.transpose(v, (1, 0, 2))[:, None, :, None, None, :], valid)  # [R, 1, B, 1, 1, T]
        s = ops.map(mesh, "YXbsrt", lambda s, ok: jnp.where(ok, s * scale, -jnp.inf), s, live, live=rows)
        m = noc.allreduce(mesh, ops.reduce(mesh, "YXbsrt", s, "t", "max", live=rows), "y", op="max")  # [R, C, B, S, r]
        e = ops.map(mesh, "YXbsrt", lambda s, m, ok: jnp.where(ok, jnp.exp(s - m[..., None]), 0.0), s, m, live,
                    special=1, live=rows)
        z = noc.allreduce(mesh, ops.reduce(mesh, "YXbsrt", e, "t", live=rows), "y")
        p = ops.map(mesh, "YXbsrt", lambda e, z: e / z[..., None], e, z, special=1, live=rows)  # reciprocal-multiply
    with mesh.phase("pv"):
        o = ops.einsum(mesh, "YXbsrt,bYtXd->YXbsrd", p, v, live=work, compute_dtype=F32)
        o = ops.free(lambda o, m: jnp.einsum("ycbsrd,cds->ycbrd", o, m), o, head_mask)  # each dim's own head
        o = noc.allreduce(mesh, o, "y")  # [R, C, B, r, cb]
    return ops.free(lambda o: jnp.transpose(o[0], (1, 0, 3, 2)), o)  # [B, C, cb, n_rep], replicated along Y
