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

    @property
    def freq(self) -> np.ndarray:
        """[C, cb/2] RoPE inverse frequency of each rotation pair slot."""
        return inv_freq(self.cfg).astype(np.float32)[self.plan.heads.pair_index()[:, 0::2]]

    def mesh(self, ledger: Ledger | None = None) -> Mesh:
        return Mesh(self.spec, self.plan.rows, self.plan.cols, ledger=ledger, limits=False)

    def lm_mesh(self, ledger: Ledger) -> Mesh:
        return Mesh(self.spec, self.plan.rows, self.plan.lm_cols, ledger=ledger, limits=False, check_fit=False)

    # --- one layer -------------------------------------------------------------
    def layer(self, mesh: Mesh, w: dict, kc, vc, x, pos, n, n_cost: int | None = None, p=0, p_cost: int = 0):
        """x_y [R, kb] through one decoder layer; inserts this token's K/V into kc, vc [R, T, C, cb].

        n: tokens cached before this one (p of them came from the prefill); n_cost/p_cost: the same as
        Python ints when costing (the charged attention work follows the busiest row).
        """
        cfg, h = self.cfg, self.plan.heads
        C, cb, rep = self.plan.cols, h.cb, h.n_rep
        t_row = kc.shape[1] if n_cost is None else kv.busiest_row(self.policy, n_cost, p_cost, mesh.rows)
        with mesh.phase("attn_norm"):
            xn = rmsnorm_y(mesh, x, w["attn_norm"], cfg.dim, cfg.norm_eps)
        with mesh.phase("qkv"):
            y = gemv_y_to_x(mesh, xn, w["wqkv"])  # [C, cb*rep + 2cb]
            if w.get("bqkv") is not None:
                local.charge_elementwise(mesh, y.shape[1])
                y = y + w["bqkv"]
        q, k, v = y[:, : cb * rep].reshape(C, cb, rep), y[:, cb * rep: cb * (rep + 1)], y[:, cb * (rep + 1):]
        with mesh.phase("rope"):
            local.charge_elementwise(mesh, cb * (rep + 1), ops=4)
            cos, sin = jnp.cos(pos * self.freq), jnp.sin(pos * self.freq)  # tables resident per core
            q, k = rope_pairs(q, cos, sin), rope_pairs(k, cos, sin)
        with mesh.phase("kv_insert"):
            kv.charge_insert(mesh, self.policy, 0 if n_cost is None else n_cost, cb, jnp.dtype(kc.dtype).itemsize)
            kc, vc = kv.insert(self.policy, kc, k, n, p), kv.insert(self.policy, vc, v, n, p)
        with mesh.phase("attention"):
            valid = kv.policy_valid(self.policy, n + 1, p, mesh.rows, kc.shape[1])
            o = decode_attention(mesh, q, kc, vc, valid, jnp.asarray(h.head_mask()), scale=cfg.head_dim ** -0.5,
                                 segment=h.segment, tokens_per_row=t_row)
        with mesh.phase("o_proj"):
            x = x + gemv_x_to_y(mesh, o.reshape(C, cb * rep), w["wo"])
            local.charge_elementwise(mesh, x.shape[1])
        with mesh.phase("ffn_norm"):
            xn = rmsnorm_y(mesh, x, w["ffn_norm"], cfg.dim, cfg.norm_eps)
        with mesh.phase("gate_up"):
            gu = gemv_y_to_x(mesh, xn, w["wgu"])  # [C, 2fb]
        with mesh.phase("silu_mul"):
            fb = gu.shape[1] // 2
            local.charge_elementwise(mesh, fb, special=1, ops=2)
            a = jax.nn.silu(gu[:, :fb]) * gu[:, fb:]
        with mesh.phase("down"):
            x = x + gemv_x_to_y(mesh, a, w["wdown"])
            local.charge_elementwise(mesh, x.shape[1])
        return x, kc, vc

    # --- embedding and head ------------------------------------------------------
    def embed(self, mesh: Mesh, mw: MeshWeights, token):
        """The token's row of the embedding tiles, multicast from its owner column: x_y [R, kb]."""
        vb = self.plan.vb
        eb = jnp.dtype(mw.embed.dtype).itemsize
        mesh.charge_comm(noc.transfer_cycles(mesh, self.plan.kb * eb, self.plan.lm_cols - 1),
                         hops=self.plan.lm_cols - 1)
        return mw.embed[:, :, token // vb, token % vb].astype(F32)

    def head(self, mesh: Mesh, mw: MeshWeights, x):
        """Final RMSNorm and the LM-head MeshGEMV over the vocabulary: logits_x [C_lm, vb] (padding -inf)."""
        with mesh.phase("final_norm"):
            xn = rmsnorm_y(mesh, x, mw.final_norm, self.cfg.dim, self.cfg.norm_eps)
        with mesh.phase("lm_head"):
            logits = gemv_y_to_x(mesh, xn, mw.lm_head)
        pad = jnp.arange(logits.size).reshape(logits.shape) >= self.cfg.vocab_size
        return jnp.where(pad, -jnp.inf, logits)

    def argmax(self, mesh: Mesh, logits):
        """Distributed argmax: each column's local best, then a max-reduction along X (ties -> lowest id)."""
        with mesh.phase("argmax"):
            local.charge_elementwise(mesh, logits.shape[1])
            best = jnp.max(logits, axis=1)
            idx = jnp.argmax(logits, axis=1)
            col = jnp.argmax(best)  # the reduction's tie-break keeps the first column, as a global argmax does
            tile = jnp.broadcast_to(best[None, :, None], (mesh.rows, logits.shape[0], 1))
            noc.allreduce(mesh, tile, "x", "ktree", op="max", elems=2)  # value and index travel together
            return (col * logits.shape[1] + idx[col]).astype(jnp.int32)


def rope_pairs(x, cos, sin):
    """Rotate adjacent slot pairs (d, d + hd/2) of x [C, cb, ...] by per-pair angles cos/sin [C, cb/2]."""
    extra = (None,) * (x.ndim - 2)
    c, s = cos[(...,) + extra], sin[(...,) + extra]
    x0, x1 = x[:, 0::2], x[:, 1::2]
    return jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=2).reshape(x.shape)


def make_decode_step(prog: DecodeProgram):
    """jit(token, pos, n, caches, weights) -> (next greedy token, logits_x, caches): one full step."""
    scratch = Ledger(clock_hz=prog.spec.clock_hz)

    def step(mw: MeshWeights, kcs, vcs, token, pos, n, p):
        mesh, lm = prog.mesh(scratch), prog.lm_mesh(scratch)
        x = prog.embed(lm, mw, token)
        ks, vs = [], []
        for w, kc, vc in zip(mw.layers, kcs, vcs):  # unrolled: each layer's tiles are read where they live
            x, kc, vc = prog.layer(mesh, w, kc, vc, x, pos, n, p=p)
            ks.append(kc)
            vs.append(vc)
        logits = prog.head(lm, mw, x)
        return prog.argmax(lm, logits), logits, tuple(ks), tuple(vs)

    return jax.jit(step, donate_argnums=(1, 2))
