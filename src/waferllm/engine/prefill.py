"""Prefill on the mesh (waferllm.md s2, s3, s6): activations [L_y, E_x]; every projection a MeshGEMM,
scores a dist-GEMM-T (K never transposed), S.V a MeshGEMM with V skewed on the device.

GQA: the n_rep query heads of a KV group are stacked along the sequence axis ([n_rep*L, hd]) so one
batched dist-GEMM-T per KV head serves all of them; heads are the batch axis of the kernels (they share
every compute-shift step). The causal mask is applied to the computed scores (no block skipping, as in
the authors' artifact). Prompts that do not divide the grid are padded by the kernels.

Between kernels the numbers pass through global arrays (the same per-core tiles, re-cut on the host for
convenience); regrouping heads is a real data movement on the mesh and is charged as one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.kernels.gemm import gemm, gemm_t
from waferllm.machine import Ledger, Mesh, local, noc
from waferllm.machine.mesh import is_abstract
from waferllm.model.config import ModelConfig
from waferllm.model.rope import inv_freq
from waferllm.model.weights import ModelWeights
from waferllm.spec import DeviceSpec

F32 = jnp.float32
S = jax.ShapeDtypeStruct


def _num(fn, shape, dtype, *args):
    """fn(*args) with numbers, or a shape-only result when any input is shape-only."""
    if any(is_abstract(a) for a in args):
        return S(tuple(shape), np.dtype(dtype))
    return fn(*args)


@dataclass(frozen=True, kw_only=True, eq=False)
class PrefillProgram:
    """A model's prefill on an R x C prefill grid."""

    cfg: ModelConfig
    spec: DeviceSpec
    rows: int
    cols: int
    dtype: str = "float32"
    strategy: str = "waferllm"  # communication costing (machine/noc.py): waferllm | t10 | ladder

    def mesh(self, ledger: Ledger, limits: bool = False) -> Mesh:
        return Mesh(self.spec, self.rows, self.cols, ledger=ledger, limits=limits, strategy=self.strategy)

    def resident_bytes(self, wafers: int = 1) -> int:
        """Weight bytes per core when every layer stays resident: the layers spread over all prefill
        regions of `wafers` wafers (prefill activations then hop region to region)."""
        cfg, eb = self.cfg, np.dtype(self.wdt).itemsize
        regions = (self.spec.height_cores // self.rows) * (self.spec.width_cores // self.cols) * wafers
        layer = cfg.layer_matrix_params()
        return math.ceil(cfg.n_layers / regions) * math.ceil(layer * eb / (self.rows * self.cols))

    def working_bytes(self, n_tokens: int) -> int:
        """The busiest kernel's working tiles per core for an n_tokens prompt (shape-only run of a layer)."""
        from waferllm.engine.handoff import prefill_layer_ledger

        return prefill_layer_ledger(self, n_tokens).peak_core_bytes

    def peak_core_bytes(self, n_tokens: int, wafers: int = 1) -> int:
        """Resident weights plus the busiest kernel's working tiles for an n_tokens prompt."""
        return self.resident_bytes(wafers) + self.working_bytes(n_tokens)

    def wafers_needed(self, n_tokens: int, at_least: int = 1, limit: int = 64) -> int | None:
        """The fewest wafers (>= at_least) whose prefill regions hold every layer resident; None if even
        `limit` wafers do not (the working tiles alone overflow a core)."""
        working = self.working_bytes(n_tokens)  # independent of the wafer count: trace it once
        for w in range(at_least, limit + 1):
            if self.resident_bytes(w) + working <= self.spec.sram_bytes_per_core:
                return w
            if self.resident_bytes(w) == self.resident_bytes(limit):
                return None  # one layer per region already: more wafers cannot help
        return None

    @property
    def wdt(self):
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[self.dtype]

    # --- per-core elementwise and row work -------------------------------------
    def _tile(self, rows: int, cols: int) -> tuple[int, int]:
        return math.ceil(rows / self.rows), math.ceil(cols / self.cols)

    def _row_reduce(self, mesh: Mesh, rows: int, batch: int = 1, op: str = "sum") -> None:
        """Charge an allreduce along X of one value per local row (per batch entry)."""
        mb = math.ceil(rows / self.rows)
        noc.allreduce(mesh, S((self.rows, self.cols, batch * mb), np.float32), "x", op=op)

    def rmsnorm(self, mesh: Mesh, x, w):
        """Row RMSNorm of x[L_y, E_x]: local squares, a row allreduce along X, scale."""
        T, D = x.shape
        mb, nb = self._tile(T, D)
        local.charge_elementwise(mesh, mb * nb)
        self._row_reduce(mesh, T)
        local.charge_elementwise(mesh, mb, special=1)
        local.charge_elementwise(mesh, mb * nb, ops=2)
        eps = self.cfg.norm_eps
        return _num(lambda x, w: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * w, x.shape, F32, x, w)

    def rope(self, mesh: Mesh, t, n_heads: int):
        """Rotate t[L, H*hd] (rotation partners sit on the same core, see docs/decode-layout.md)."""
        T, W = t.shape
        mb, nb = self._tile(T, W)
        local.charge_elementwise(mesh, mb * nb, ops=4)
        ang = np.arange(T, dtype=np.float32)[:, None] * inv_freq(self.cfg).astype(np.float32)[None, :]
        cos, sin = np.cos(ang), np.sin(ang)

        def f(t):
            t = t.reshape(T, n_heads, -1)
            h = t.shape[-1] // 2
            t1, t2 = t[..., :h], t[..., h:]
            c, s = cos[:, None, :], sin[:, None, :]
            return jnp.concatenate([t1 * c - t2 * s, t2 * c + t1 * s], -1).reshape(T, W)

        return _num(f, t.shape, F32, t)

    def regroup(self, mesh: Mesh, t) -> None:
        """Charge moving a [L_y, E_x] tile set between the token-major and head-group layouts."""
        mb, nb = self._tile(*t.shape[-2:])
        hops = max(self.rows, self.cols)
        with mesh.phase("regroup_heads"):
            mesh.charge_comm(noc.transfer_cycles(mesh, mb * nb * 4, hops), hops=hops)

    # --- attention -----------------------------------------------------------------
    def attention(self, mesh: Mesh, q, k, v):
        """Causal GQA attention: q[L, Hq*hd], k, v[L, Hkv*hd] -> o[L, Hq*hd]."""
        cfg = self.cfg
        T, hd, g, rep = q.shape[0], cfg.head_dim, cfg.n_kv_heads, cfg.group_size
        for t in (q, k, v):
            self.regroup(mesh, t)
        qg = _num(lambda q: q.reshape(T, g, rep, hd).transpose(1, 2, 0, 3).reshape(g, rep * T, hd),
                  (g, rep * T, hd), F32, q)
        kg = _num(lambda k: k.reshape(T, g, hd).transpose(1, 0, 2), (g, T, hd), F32, k)
        vg = _num(lambda v: v.reshape(T, g, hd).transpose(1, 0, 2), (g, T, hd), F32, v)
        with mesh.phase("scores"):
            s = gemm_t(mesh, self._cast(qg), self._cast(kg))  # [g, rep*T, T]
        with mesh.phase("softmax"):
            mb, nb = self._tile(rep * T, T)
            local.charge_elementwise(mesh, g * mb * nb, ops=3)  # scale, mask, local max
            self._row_reduce(mesh, rep * T, g, "max")
            local.charge_elementwise(mesh, g * mb * nb, special=1, ops=2)  # exp, local sum
            self._row_reduce(mesh, rep * T, g)
            local.charge_elementwise(mesh, g * mb * nb)
            p = _num(lambda s: _causal_softmax(s, T, hd), s.shape, F32, s)
        with mesh.phase("pv"):
            o = gemm(mesh, self._cast(p), self._cast(vg), b_on_device=True)  # [g, rep*T, hd]
        self.regroup(mesh, q)
        return _num(lambda o: o.astype(F32).reshape(g, rep, T, hd).transpose(2, 0, 1, 3).reshape(T, -1),
                    q.shape, F32, o)

    def _cast(self, x):
        return S(x.shape, np.dtype(self.wdt)) if is_abstract(x) else x.astype(self.wdt)

    def _proj(self, mesh: Mesh, x, w, name: str):
        with mesh.phase(name):
            y = gemm(mesh, self._cast(x), w)
        return _num(lambda y: y.astype(F32), y.shape, F32, y)

    # --- one layer -------------------------------------------------------------------
    def layer(self, mesh: Mesh, w: dict, x):
        """x[L, D] through one decoder layer; returns (x, k, v) with k, v[L, Hkv*hd] after RoPE."""
        cfg = self.cfg
        qd, kvd, F = cfg.q_dim, cfg.kv_dim, cfg.ffn_dim
        with mesh.phase("attn_norm"):
            xn = self.rmsnorm(mesh, x, w["attn_norm"])
        qkv = self._proj(mesh, xn, w["wqkv"], "qkv")  # one MeshGEMM: the aligned input serves Q, K and V
        if "bqkv" in w:
            local.charge_elementwise(mesh, math.prod(self._tile(*qkv.shape)))
            qkv = _num(lambda a, b: a + b, qkv.shape, F32, qkv, w["bqkv"])
        T = x.shape[0]
        q = _num(lambda a: a[:, :qd], (T, qd), F32, qkv)
        k = _num(lambda a: a[:, qd:qd + kvd], (T, kvd), F32, qkv)
        v = _num(lambda a: a[:, qd + kvd:], (T, kvd), F32, qkv)
        with mesh.phase("rope"):
            q, k = self.rope(mesh, q, cfg.n_heads), self.rope(mesh, k, cfg.n_kv_heads)
        with mesh.phase("attention"):
            o = self.attention(mesh, q, k, v)
        x = _num(lambda a, b: a + b, x.shape, F32, x, self._proj(mesh, o, w["wo"], "o_proj"))
        with mesh.phase("ffn_norm"):
            xn = self.rmsnorm(mesh, x, w["ffn_norm"])
        gu = self._proj(mesh, xn, w["wgu"], "gate_up")
        with mesh.phase("silu_mul"):
            local.charge_elementwise(mesh, math.prod(self._tile(T, F)), special=1, ops=2)
            a = _num(lambda gu: jax.nn.silu(gu[:, :F]) * gu[:, F:], (T, F), F32, gu)
        x = _num(lambda a, b: a + b, x.shape, F32, x, self._proj(mesh, a, w["wdown"], "down"))
        return x, k, v

    def run(self, mesh: Mesh, layers: list[dict], x):
        """Every layer; returns (last position's hidden [D], [k per layer], [v per layer])."""
        ks, vs = [], []
        for i, w in enumerate(layers):
            with mesh.phase("prefill/layer"):
                x, k, v = self.layer(mesh, w, x)
            ks.append(k)
            vs.append(v)
        last = S((x.shape[1],), np.float32) if is_abstract(x) else x[-1]
        return last, ks, vs


def _causal_softmax(s, T: int, hd: int):
    """Scale, mask key j > token (row r is token r mod T of its query head), softmax along keys."""
    rows = jnp.arange(s.shape[1]) % T
    mask = jnp.arange(T)[None, :] <= rows[:, None]
    z = jnp.where(mask[None], s.astype(F32) * (hd ** -0.5), -jnp.inf)
    return jax.nn.softmax(z, axis=-1)


def prefill_weights(cfg: ModelConfig, weights: ModelWeights, dtype) -> list[dict]:
    """Per-layer global matrices for the prefill GEMMs (QKV and gate/up fused), in the storage dtype."""
    out = []
    for lw in weights.layers:
        d = {"attn_norm": jnp.asarray(lw.attn_norm), "ffn_norm": jnp.asarray(lw.ffn_norm),
             "wqkv": jnp.asarray(np.concatenate([lw.wq, lw.wk, lw.wv], 1), dtype),
             "wo": jnp.asarray(lw.wo, dtype), "wgu": jnp.asarray(np.concatenate([lw.w_gate, lw.w_up], 1), dtype),
             "wdown": jnp.asarray(lw.w_down, dtype)}
        if cfg.qkv_bias:
            d["bqkv"] = jnp.asarray(np.concatenate([lw.bq, lw.bk, lw.bv]))
        out.append(d)
    return out


def weight_shapes(cfg: ModelConfig, dtype) -> list[dict]:
    """Shape-only stand-ins of prefill_weights (for predictions without weights)."""
    D, F, qkv = cfg.dim, cfg.ffn_dim, cfg.q_dim + 2 * cfg.kv_dim
    dt = np.dtype(dtype)
    d = {"attn_norm": S((D,), np.float32), "ffn_norm": S((D,), np.float32), "wqkv": S((D, qkv), dt),
         "wo": S((cfg.q_dim, D), dt), "wgu": S((D, 2 * F), dt), "wdown": S((F, D), dt)}
    if cfg.qkv_bias:
        d["bqkv"] = S((qkv,), np.float32)
    return [d] * cfg.n_layers
