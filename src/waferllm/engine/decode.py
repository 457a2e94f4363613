"""The decode program: one token through every layer on the mesh (the transpose-free chain, waferllm.md s4).

Every function takes the Mesh whose ledger it charges. The numeric path jit-compiles decode_step once
(charges made while tracing go to a scratch ledger); step_ledger() runs the same layer function under
jax.eval_shape with the true cache occupancy to cost a step without computing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.engine import kv
from waferllm.engine.placement import DecodePlan
from waferllm.engine.tiles import MeshWeights
from waferllm.kernels.attention import decode_attention
from waferllm.kernels.gemv import gemv_x_to_y, gemv_y_to_x
from waferllm.kernels.meshvec import rmsnorm_y
from waferllm.machine import Ledger, Mesh, noc, ops
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
        costing (kv.step_load); None charges a worst case (numeric runs charge a scratch ledger).
        """
        cfg, h = self.cfg, self.plan.heads
        B, cb, rep = x.shape[0], h.cb, h.n_rep
        t_row, moving = load if load is not None else (B * kc.shape[2], B)
        with mesh.phase("attn_norm"):
            xn = rmsnorm_y(mesh, x, w["attn_norm"], cfg.dim, cfg.norm_eps)
        with mesh.phase("qkv"):
            y = gemv_y_to_x(mesh, xn, w["wqkv"])  # [B, C, cb*rep + 2cb]
            if w.get("bqkv") is not None:
                y = ops.map(mesh, "bXn", jnp.add, y, w["bqkv"])
        q = ops.free(lambda y: y[:, :, : cb * rep].reshape(B, -1, cb, rep), y)
        k, v = ops.free(lambda y: (y[:, :, cb * rep: cb * (rep + 1)], y[:, :, cb * (rep + 1):]), y)
        with mesh.phase("rope"):  # q and k rotated in one pass over [B, C, cb, rep + 1]
            qk = ops.map(mesh, "bXdr", self._rope_qk, q, k, pos, ops=4)
            q, k = ops.free(lambda a: (a[..., :rep], a[..., rep]), qk)
        with mesh.phase("kv_insert"):
            kc, vc = kv.insert_kv(mesh, self.policy, kc, vc, k, v, n, p, moving=moving)
        with mesh.phase("attention"):
            valid = ops.free(lambda n, p: kv.valid_batch(self.policy, n + 1, p, mesh.rows, kc.shape[2]), n, p)
            o = decode_attention(mesh, q, kc, vc, valid, jnp.asarray(h.head_mask()), jnp.asarray(h.head_mask("v")),
                                 scale=cfg.head_dim ** -0.5, segment=h.segment, tokens_per_row=t_row)
        with mesh.phase("o_proj"):
            o = gemv_x_to_y(mesh, ops.free(lambda o: o.reshape(B, -1, cb * rep), o), w["wo"])
            x = ops.map(mesh, "bYk", jnp.add, x, o)  # residual
        with mesh.phase("ffn_norm"):
            xn = rmsnorm_y(mesh, x, w["ffn_norm"], cfg.dim, cfg.norm_eps)
        with mesh.phase("gate_up"):
            gu = gemv_y_to_x(mesh, xn, w["wgu"])  # [B, C, 2fb]
        with mesh.phase("silu_mul"):
            fb = gu.shape[2] // 2
            g, u = ops.free(lambda gu: (gu[:, :, :fb], gu[:, :, fb:]), gu)
            a = ops.map(mesh, "bXf", lambda g, u: jax.nn.silu(g) * u, g, u, special=1, ops=2)
        with mesh.phase("down"):
            x = ops.map(mesh, "bYk", jnp.add, x, gemv_x_to_y(mesh, a, w["wdown"]))  # residual
        return x, kc, vc

    def _rope_qk(self, q, k, pos):
        """q [B, C, cb, rep], k [B, C, cb] rotated -> [B, C, cb, rep + 1]; the cos/sin tables are resident per
        core (indexed by position), so they are part of the rotation's passes, not extra work."""
        ang = pos[:, None, None] * self.freq
        cos, sin = jnp.cos(ang), jnp.sin(ang)
        return jnp.concatenate([rope_pairs(q, cos, sin), rope_pairs(k, cos, sin)[..., None]], axis=-1)

    # --- embedding and head ------------------------------------------------------
    def embed(self, mesh: Mesh, mw: MeshWeights, tokens):
        """Each token's row of the embedding tiles, multicast from its owner column: x_y [B, R, kb] (fp32)."""
        vb = self.plan.vb
        # the owner column reads its row in place (a view); the receivers store it widened to fp32
        rows = ops.free(lambda e, t: jnp.transpose(e[:, :, t // vb, t % vb], (2, 0, 1)), mw.embed, tokens)
        rows = noc.multicast_from_owners(mesh, rows, "bYk", "X")
        return ops.free(lambda r: r.astype(F32), rows)

    def head(self, mesh: Mesh, mw: MeshWeights, x):
        """Final RMSNorm and the LM-head MeshGEMV over the vocabulary: logits_x [B, C_lm, vb] (padding -inf)."""
        with mesh.phase("final_norm"):
            xn = rmsnorm_y(mesh, x, mw.final_norm, self.cfg.dim, self.cfg.norm_eps)
        with mesh.phase("lm_head"):
            logits = gemv_y_to_x(mesh, xn, mw.lm_head)
        # the local argmax stops at the vocabulary's end: -inf marks the slots it never reads
        pad = np.arange(math.prod(logits.shape[1:])).reshape(logits.shape[1:]) >= self.cfg.vocab_size
        return ops.free(lambda lg: jnp.where(pad, -jnp.inf, lg), logits)

    def argmax(self, mesh: Mesh, logits):
        """Distributed argmax per sequence: each column's local best, then one max-reduction along X carrying
        every sequence's (value, index) (ties -> lowest id)."""
        with mesh.phase("argmax"):
            B, C, vb = logits.shape
            best, idx = ops.reduce(mesh, "bXv", logits, "v", "argmax")  # [B, C] value and index, one pass
            tile = ops.free(lambda b: jnp.broadcast_to(b.T[None], (mesh.rows, C, B)), best)
            noc.allreduce(mesh, tile, "x", "ktree", op="max", elems=2 * B)  # value and index travel together

            def pick(best, idx):  # the index that rode with the winning value (first column on ties)
                col = jnp.argmax(best, axis=1)
                return (col * vb + jnp.take_along_axis(idx, col[:, None], axis=1)[:, 0]).astype(jnp.int32)

            return ops.free(pick, best, idx)


def rope_pairs(x, cos, sin):
    """Rotate adjacent slot pairs (d, d + hd/2) of x [B, C, cb, ...] by per-pair angles cos/sin [B, C, cb/2]."""
    extra = (None,) * (x.ndim - 3)
    c, s = cos[(...,) + extra], sin[(...,) + extra]
    x0, x1 = x[:, :, 0::2], x[:, :, 1::2]
    return jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=3).reshape(x.shape)


def step_embed(prog: DecodeProgram, lm: Mesh, mw: MeshWeights, tokens):
    """Every lane's token embedding -> x_y [B, R, kb] (charged on the LM-head grid as decode/embed)."""
    with lm.phase("decode"), lm.phase("embed"):
        return prog.embed(lm, mw, tokens)


def step_layer(prog: DecodeProgram, mesh: Mesh, w: dict, kc, vc, x, pos, n, p, active, load=None):
    """One layer for every lane -> (x, kc, vc); lanes with active False keep their caches (free lanes)."""
    keep = active[:, None, None, None, None]
    with mesh.phase("decode"), mesh.phase("layer"):
        x, k2, v2 = prog.layer(mesh, w, kc, vc, x, pos, n, p, load)
    where = lambda new, old: jnp.where(keep, new, old)  # noqa: E731
    return x, ops.free(where, k2, kc), ops.free(where, v2, vc)


def step_head(prog: DecodeProgram, lm: Mesh, mw: MeshWeights, x):
    """Final norm, LM head and argmax -> (greedy tokens [B], logits_x [B, C_lm, vb])."""
    with lm.phase("decode"):
        logits = prog.head(lm, mw, x)
        return prog.argmax(lm, logits), logits


def decode_step(prog: DecodeProgram, mesh: Mesh, lm: Mesh, mw: MeshWeights, kcs, vcs, tokens, pos, n, p, active,
                load: tuple[int, int] | None = None):
    """One token for every lane -> (greedy tokens [B], logits_x [B, C_lm, vb], caches); charges mesh and lm
    under the labels cost.step_ledger uses (decode/embed, decode/layer/..., decode/lm_head, ...)."""
    x = step_embed(prog, lm, mw, tokens)
    ks, vs = [], []
    for w, kc, vc in zip(mw.layers, kcs, vcs):
        x, kc, vc = step_layer(prog, mesh, w, kc, vc, x, pos, n, p, active, load)
        ks.append(kc)
        vs.append(vc)
    tok, logits = step_head(prog, lm, mw, x)
    return tok, logits, tuple(ks), tuple(vs)


def make_decode_step(prog: DecodeProgram):
    """(weights, caches, tokens, pos, n, p, active) -> (greedy tokens [B], logits_x [B, C_lm, vb], caches):
    decode_step with each piece compiled once: one program serves every layer (they share shapes), so
    compile time does not grow with the layer count; each layer reads its own tiles in place (no stacked
    copy) and updates its caches in place (donated).

    Charges made while tracing go to a scratch ledger (the engine costs each step with cost.step_ledger).
    """
    scratch = Ledger(clock_hz=prog.spec.clock_hz)
    embed = jax.jit(lambda mw, tokens: step_embed(prog, prog.lm_mesh(scratch), mw, tokens))
    layer = jax.jit(lambda w, kc, vc, x, pos, n, p, active: step_layer(prog, prog.mesh(scratch), w, kc, vc, x, pos,
                                                                        n, p, active), donate_argnums=(1, 2))
    head = jax.jit(lambda mw, x: step_head(prog, prog.lm_mesh(scratch), mw, x))

    def step(mw: MeshWeights, kcs, vcs, tokens, pos, n, p, active):
        ends = MeshWeights(layers=(), final_norm=mw.final_norm, lm_head=mw.lm_head, embed=mw.embed)
        x = embed(ends, tokens)
        ks, vs = [], []
        for w, kc, vc in zip(mw.layers, kcs, vcs):
            x, kc, vc = layer(w, kc, vc, x, pos, n, p, active)
            ks.append(kc)
            vs.append(vc)
        tok, logits = head(ends, x)
        return tok, logits, tuple(ks), tuple(vs)

    return step
