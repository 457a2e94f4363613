"""The decode program: one token through every layer on the mesh (the transpose-free chain, waferllm.md s4).

Every function takes the Mesh whose ledger it charges. The numeric path jit-compiles decode_step once
(charges made while tracing go to a scratch ledger); step_ledger() runs the same layer function under
jax.eval_shape with the true cache occupancy to cost a step without computing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.engine import kv
from waferllm.engine.placement import DecodePlan
from waferllm.engine.tiles import MeshWeights
from waferllm.kernels.attention import decode_attention
from waferllm.kernels.meshvec import gemv_x_to_y, gemv_y_to_x, rmsnorm_y
from waferllm.machine import Ledger, Mesh, local, noc
from waferllm.model.config import ModelConfig
from waferllm.model.rope import inv_freq
from waferllm.spec import DeviceSpec

F32 = jnp.float32


@dataclass(frozen=True, kw_only=True, eq=False)
class DecodeProgram:
    """Static facts of one placed model: config, plan, device and per-slot tables."""

    cfg: ModelConfig
    plan: DecodePlan
    spec: DeviceSpec
    policy: str = "shift"  # KV cache policy: shift | concat
    strategy: str = "waferllm"  # communication costing (machine/noc.py): waferllm | t10 | ladder

    @property
    def freq(self) -> np.ndarray:
        """[C, cb/2] RoPE inverse frequency of each rotation pair slot."""
        return inv_freq(self.cfg).astype(np.float32)[self.plan.heads.pair_index()[:, 0::2]]

    def mesh(self, ledger: Ledger | None = None) -> Mesh:
        return Mesh(self.spec, self.plan.rows, self.plan.cols, ledger=ledger, limits=False, strategy=self.strategy)

    def lm_mesh(self, ledger: Ledger) -> Mesh:
        return Mesh(self.spec, self.plan.rows, self.plan.lm_cols, ledger=ledger, limits=False, check_fit=False,
                    strategy=self.strategy)

    # --- one layer -------------------------------------------------------------
    def layer(self, mesh: Mesh, w: dict, kc, vc, x, pos, n, p, load: tuple[int, int] | None = None):
        """x_y [B, R, kb] through one decoder layer; inserts each sequence's K/V into kc, vc [B, R, T, C, cb].

        pos, n, p [B]: position, tokens cached before this one, and how many came from the prefill.
        load: (busiest row's tokens summed over the batch, sequences whose rows shift) as Python ints when
        costing; None charges a worst case (numeric runs charge a scratch ledger).
        """
        cfg, h = self.cfg, self.plan.heads
        B, C, cb, rep = x.shape[0], self.plan.cols, h.cb, h.n_rep
        t_row, moving = load if load is not None else (B * kc.shape[2], B)
        with mesh.phase("attn_norm"):
            xn = rmsnorm_y(mesh, x, w["attn_norm"], cfg.dim, cfg.norm_eps)
        with mesh.phase("qkv"):
            y = gemv_y_to_x(mesh, xn, w["wqkv"])  # [B, C, cb*rep + 2cb]
            if w.get("bqkv") is not None:
                local.charge_elementwise(mesh, B * y.shape[2])
                y = y + w["bqkv"]
        q = y[:, :, : cb * rep].reshape(B, C, cb, rep)
        k, v = y[:, :, cb * rep: cb * (rep + 1)], y[:, :, cb * (rep + 1):]
        with mesh.phase("rope"):
            local.charge_elementwise(mesh, B * cb * (rep + 1), ops=4)
            ang = pos[:, None, None] * self.freq  # tables resident per core
            cos, sin = jnp.cos(ang), jnp.sin(ang)
            q, k = rope_pairs(q, cos, sin), rope_pairs(k, cos, sin)
        with mesh.phase("kv_insert"):
            kv.charge_insert(mesh, moving if self.policy == "shift" else 0, cb, jnp.dtype(kc.dtype).itemsize)
            kc, vc = kv.insert_batch(self.policy, kc, k, n, p), kv.insert_batch(self.policy, vc, v, n, p)
        with mesh.phase("attention"):
            valid = kv.valid_batch(self.policy, n + 1, p, mesh.rows, kc.shape[2])
            o = decode_attention(mesh, q, kc, vc, valid, jnp.asarray(h.head_mask()), scale=cfg.head_dim ** -0.5,
                                 segment=h.segment, tokens_per_row=t_row)
        with mesh.phase("o_proj"):
            x = x + gemv_x_to_y(mesh, o.reshape(B, C, cb * rep), w["wo"])
            local.charge_elementwise(mesh, B * x.shape[2])
        with mesh.phase("ffn_norm"):
            xn = rmsnorm_y(mesh, x, w["ffn_norm"], cfg.dim, cfg.norm_eps)
        with mesh.phase("gate_up"):
            gu = gemv_y_to_x(mesh, xn, w["wgu"])  # [B, C, 2fb]
        with mesh.phase("silu_mul"):
            fb = gu.shape[2] // 2
            local.charge_elementwise(mesh, B * fb, special=1, ops=2)
            a = jax.nn.silu(gu[:, :, :fb]) * gu[:, :, fb:]
        with mesh.phase("down"):
            x = x + gemv_x_to_y(mesh, a, w["wdown"])
            local.charge_elementwise(mesh, B * x.shape[2])
        return x, kc, vc

    # --- embedding and head ------------------------------------------------------
    def embed(self, mesh: Mesh, mw: MeshWeights, tokens):
        """Each token's row of the embedding tiles, multicast from its owner column: x_y [B, R, kb]."""
        vb = self.plan.vb
        eb = jnp.dtype(mw.embed.dtype).itemsize
        B = tokens.shape[0]
        mesh.charge_comm(noc.transfer_cycles(mesh, B * self.plan.kb * eb, self.plan.lm_cols - 1),
                         hops=self.plan.lm_cols - 1)
        return jnp.transpose(mw.embed[:, :, tokens // vb, tokens % vb], (2, 0, 1)).astype(F32)

    def head(self, mesh: Mesh, mw: MeshWeights, x):
        """Final RMSNorm and the LM-head MeshGEMV over the vocabulary: logits_x [B, C_lm, vb] (padding -inf)."""
        with mesh.phase("final_norm"):
            xn = rmsnorm_y(mesh, x, mw.final_norm, self.cfg.dim, self.cfg.norm_eps)
        with mesh.phase("lm_head"):
            logits = gemv_y_to_x(mesh, xn, mw.lm_head)
        pad = jnp.arange(logits[0].size).reshape(logits.shape[1:]) >= self.cfg.vocab_size
        return jnp.where(pad, -jnp.inf, logits)

    def argmax(self, mesh: Mesh, logits):
        """Distributed argmax per sequence: each column's local best, then one max-reduction along X carrying
        every sequence's (value, index) (ties -> lowest id)."""
        with mesh.phase("argmax"):
            B, C, vb = logits.shape
            local.charge_elementwise(mesh, B * vb)
            best = jnp.max(logits, axis=2)  # [B, C]
            idx = jnp.argmax(logits, axis=2)
            col = jnp.argmax(best, axis=1)  # the reduction's tie-break keeps the first column, as a global argmax does
            tile = jnp.broadcast_to(best.T[None], (mesh.rows, C, B))
            noc.allreduce(mesh, tile, "x", "ktree", op="max", elems=2 * B)  # value and index travel together
            return (col * vb + jnp.take_along_axis(idx, col[:, None], axis=1)[:, 0]).astype(jnp.int32)


def rope_pairs(x, cos, sin):
    """Rotate adjacent slot pairs (d, d + hd/2) of x [B, C, cb, ...] by per-pair angles cos/sin [B, C, cb/2]."""
    extra = (None,) * (x.ndim - 3)
    c, s = cos[(...,) + extra], sin[(...,) + extra]
    x0, x1 = x[:, :, 0::2], x[:, :, 1::2]
    return jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=3).reshape(x.shape)


def make_decode_step(prog: DecodeProgram):
    """jit(weights, caches, tokens, pos, n, p, active) -> (greedy tokens [B], logits_x [B, C_lm, vb], caches).

    Lanes with active False leave their caches untouched (free lanes of a continuous batch).
    """
    scratch = Ledger(clock_hz=prog.spec.clock_hz)

    def step(mw: MeshWeights, kcs, vcs, tokens, pos, n, p, active):
        mesh, lm = prog.mesh(scratch), prog.lm_mesh(scratch)
        keep = active[:, None, None, None, None]
        x = prog.embed(lm, mw, tokens)
        ks, vs = [], []
        for w, kc, vc in zip(mw.layers, kcs, vcs):  # unrolled: each layer's tiles are read where they live
            x, k2, v2 = prog.layer(mesh, w, kc, vc, x, pos, n, p)
            ks.append(jnp.where(keep, k2, kc))
            vs.append(jnp.where(keep, v2, vc))
        logits = prog.head(lm, mw, x)
        return prog.argmax(lm, logits), logits, tuple(ks), tuple(vs)

    return jax.jit(step, donate_argnums=(1, 2))
