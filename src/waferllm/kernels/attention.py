"""Attention on the mesh. Decode: over KV caches spread over the grid, sequence along Y, K/V dims along X.

B sequences, each with its own slots on every core: q_x [B, C, cb, n_rep] (query heads sharing a KV head
ride on that head's K dim slots); K, V [B, R, T, C, cb]; valid [B, R, T] marks the slots that hold tokens
(tokens move under the shift policy, the mask follows). Scores reduce per head along X (segmented when
heads own whole columns), softmax reduces along Y (max, then sum), P.V reduces along Y: out o_x
[B, C, cb, n_rep], laid out like V. One message per reduction carries every sequence's elements.
Prefill (prefill_attention): the same head grouping along X, K and V tiles rotating along Y.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine import noc, ops
from waferllm.machine.mesh import Mesh, tile_bytes
from waferllm.machine.rings import ring_pos

F32 = jnp.float32


EXP_PASSES = 4  # vector passes per exp (subtract the max, then the authors' fast_exp: x/256 + 1, squared twice)


def decode_attention(mesh: Mesh, q_x, k, v, valid, head_mask, v_mask, *, scale: float, segment: int,
                     tokens_per_row: int):
    """softmax(q K^T * scale) V per sequence and head; head_mask, v_mask [C, cb, S]: the head slot of each K
    and each V dim (V's dims need not sit where K's do); tokens_per_row = the busiest core's cached tokens
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
        # exp as the authors' decode computes it: a short polynomial of vector passes (their fast_exp is
        # (1 + x/256)^4 after subtracting the max: 4 passes), not a software divide/sqrt-class call
        e = ops.map(mesh, "YXbsrt", lambda s, m, ok: jnp.where(ok, jnp.exp(s - m[..., None]), 0.0), s, m, live,
                    ops=EXP_PASSES, live=rows)
        z = noc.allreduce(mesh, ops.reduce(mesh, "YXbsrt", e, "t", live=rows), "y")
        # one reciprocal per score row, then a multiply pass (the authors' decode: 1/sum once, then @fmulh)
        inv = ops.map(mesh, "YXbsr", lambda z: 1.0 / z, z, special=1)
        p = ops.map(mesh, "YXbsrt", lambda e, i: e * i[..., None], e, inv, live=rows)
    with mesh.phase("pv"):
        o = ops.einsum(mesh, "YXbsrt,bYtXd->YXbsrd", p, v, live=work, compute_dtype=F32)
        o = ops.free(lambda o, m: jnp.einsum("ycbsrd,cds->ycbrd", o, m), o, v_mask)  # each V dim's own head
        o = noc.allreduce(mesh, o, "y")  # [R, C, B, r, cb]
    return ops.free(lambda o: jnp.transpose(o[0], (1, 0, 3, 2)), o)  # [B, C, cb, n_rep], replicated along Y


# --- prefill: head-grouped attention, K/V rotating along Y ------------------------------------------------
NEG = -1e30  # a finite "minus infinity": masked keys never make a nan


def _ownership(C: int, seg: int, tp: int) -> np.ndarray:
    """[C, tp] which keys each column keeps: key i on column i mod seg of its segment (a shorter last segment
    holds only padding dims: its missing columns' keys are nobody's)."""
    return (np.arange(tp)[None, :] % seg) == (np.arange(C) % seg)[:, None]


def _rows_slice(x, start, size: int):
    """x [R, ..., K] -> [R, ..., size]: each row's own window along the last axis (start [R], traced)."""
    return jax.vmap(lambda r, s0: jax.lax.dynamic_slice_in_dim(r, s0, size, axis=r.ndim - 1))(x, start)


def _rows_put(x, blk, start):
    """x [R, ..., K] with each row's block blk [R, ..., b] written at start[r] along the last axis."""
    return jax.vmap(lambda r, b, s0: jax.lax.dynamic_update_slice_in_dim(r, b, s0, axis=r.ndim - 1))(x, blk, start)


def prefill_attention(mesh: Mesh, q, k, v, head_mask, qtok, *, scale: float, segment: int):
    """Causal softmax(q K^T * scale) V over a prompt on tiles, heads grouped along X (paper s4: dist-GEMM-T
    and dist-GEMM "locally after grouping by head dimensions").

    q [R, C, mb, rep, cb] (the rep query heads of each K/V dim slot), k, v [R, C, mb, cb]: column c holds cb dims
    of the KV heads head_mask [C, cb, S] selects (S = 1 when a head owns whole columns, `segment` of them);
    qtok [R, mb] the query token of each local row; the core row at Y-ring position p holds tokens p*mb...

    scores (dist-GEMM-T): R steps, each row's K tile moving one interleaved-ring position along Y while the
    cores multiply the tile they hold; the partials [S, rep, mb, mb] reduce over the head's columns only (a
    segmented allreduce), and each column keeps the keys it owns (key i on column i mod segment of the segment).
    softmax: over the owned keys, the max and the sum reduced over the segment. P.V: R steps, V's tile
    rotating the same way; the owned probabilities of the tile's keys are summed over the segment (each key
    has one owner) and every column multiplies them into its own dims. Returns o [R, C, mb, rep * cb]."""
    R, C = mesh.shape
    mb, tp = q.shape[2], R * q.shape[2]
    seg = segment if segment and segment < C else C
    kept = -(-tp // seg)  # keys a column keeps: its share of the segment's
    abstract = ops.any_abstract(q, k, v)
    pos_y = jnp.asarray(ring_pos(R))
    sh = (R, C, head_mask.shape[-1], q.shape[3], mb)  # [R, C, S, rep, mb]
    lay, one = "YXsrmk", {"s": 1}  # the slot axis selects each dim's head: charged once
    qm = ops.free(lambda q, hm: q[..., None] * hm[None, :, None, None, :, :].astype(q.dtype), q, head_mask)
    src = lambda t: ((pos_y - t) % R) * mb  # noqa: E731  first key of the tile each row holds at step t
    rows = int(math.prod(sh[2:]))  # [S, rep, mb] score rows per core
    with mesh.hold(q=q, kv=2 * tile_bytes(k), scores=rows * kept * 4, out=rows * q.shape[4] * 4), \
            mesh.routes("interleaved ring y", 2):
        def scores_step(t, carry):
            sc, kt = carry
            with mesh.step():
                k_next = noc.shift(mesh, kt, "y")
                part = ops.einsum(mesh, "YXmrds,YXnd->YXsrmn", qm, kt, live=one, compute_dtype=F32, along_m=True)
            blk = noc.allreduce(mesh, part, "x", segment=seg)  # after the step, as the artifact's blocking adds
            keys = src(t)[:, None] + jnp.arange(mb)[None, :]  # [R, mb] the keys of the tile
            mine = ops.free(lambda b: b * (keys[:, None, :] % seg == jnp.arange(C)[None, :, None] % seg)
                            [:, :, None, None, None, :], blk)
            return ops.free(lambda a, b: _rows_put(a, b, src(t)), sc, mine), k_next

        with mesh.phase("scores"):
            sc = ops.zeros(sh + (tp,), F32, abstract)
            sc = ops.loop(mesh, R, scores_step, (sc, k))[0]
        with mesh.phase("softmax"):
            ok = jax.ShapeDtypeStruct((R, C, 1, 1, mb, tp), np.dtype(bool)) if abstract else \
                jnp.asarray(_ownership(C, seg, tp))[None, :, None, None, None, :] & \
                (jnp.arange(tp)[None, None, None, None, None, :] <= jnp.asarray(qtok)[:, None, None, None, :, None])
            live = {"k": kept}
            z = ops.map(mesh, lay, lambda s, ok: jnp.where(ok, s * scale, NEG), sc, ok, ops=2, live=live)
            m = noc.allreduce(mesh, ops.reduce(mesh, lay, z, "k", "max", live=live), "x", segment=seg, op="max")
            # exp charged as the decode's vector passes. The authors' prefill calls math_lib.exp_f16 per score,
            # but over one 4K-wide head: 1/32 of a 32-head layer's scores. A call per score here would add 2-3%
            # to a 4K Llama3-8B prefill that their measurement does not contain (docs/cost-model.md)
            e = ops.map(mesh, lay, lambda z, m, ok: jnp.where(ok, jnp.exp(z - m[..., None]), 0.0), z, m, ok,
                        ops=EXP_PASSES, live=live)
            tot = noc.allreduce(mesh, ops.reduce(mesh, lay, e, "k", live=live), "x", segment=seg)
            # one reciprocal per score row, then a multiply pass, as the decode (and the authors' prefill:
            # 1 / local_sum per row, then @fmulh)
            inv = ops.map(mesh, "YXsrm", lambda t: 1.0 / jnp.where(t > 0, t, 1.0), tot, special=1)
            p = ops.map(mesh, lay, lambda e, i: e * i[..., None], e, inv, live=live)

        def pv_step(t, carry):
            acc, vt = carry
            blk = noc.allreduce(mesh, ops.free(lambda p: _rows_slice(p, src(t), mb), p), "x", segment=seg)
            with mesh.step():
                v_next = noc.shift(mesh, vt, "y")
                acc = ops.map(mesh, "YXsrmd", jnp.add, acc,
                              ops.einsum(mesh, "YXsrmn,YXnd->YXsrmd", blk, vt, live=one, compute_dtype=F32,
                                         along_m=True), live=one)
            return acc, v_next

        with mesh.phase("pv"):
            acc = ops.zeros(sh + (q.shape[4],), F32, abstract)
            acc = ops.loop(mesh, R, pv_step, (acc, v))[0]
    o = ops.free(lambda o, hm: jnp.einsum("ycsrmd,cds->ycmrd", o, hm.astype(o.dtype)), acc, head_mask)
    return ops.free(lambda o: o.reshape(o.shape[:3] + (-1,)), o)
