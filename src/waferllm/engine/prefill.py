"""Prefill on the mesh (waferllm.md s2, s3, s6), on per-core tiles from the embedding to the hand-off.

Activations x [L_y, E_x] are tiles [R, C, mb, w] (engine/prefill_tiles.py); every projection is a
MeshGEMM. Attention runs after grouping the columns by KV head (paper s4): each head's dims sit on its own
C / Hkv columns with the same dims of its n_rep query heads, the K/V tiles rotate along Y, and the partial
scores reduce over the head's columns only (kernels/attention.prefill_attention); K is never transposed.
The causal mask is applied to the computed scores (no block skipping, as in the authors' artifact).
Every number comes from a charged op of machine/ (ops, noc, kernels): the shape-only run that costs a
prefill is the same function on jax.ShapeDtypeStruct stand-ins.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.engine.cost import shared_ledger
from waferllm.engine.prefill_tiles import PrefillLayout, weight_shapes
from waferllm.kernels.attention import prefill_attention
from waferllm.kernels.gemm import cannon_tiles
from waferllm.machine import Ledger, Mesh, noc, ops
from waferllm.model.config import ModelConfig
from waferllm.spec import DeviceSpec, array_dtype

F32 = jnp.float32
S = jax.ShapeDtypeStruct


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

    def layout(self, n_tokens: int) -> PrefillLayout:
        return PrefillLayout(cfg=self.cfg, rows=self.rows, cols=self.cols, tokens=n_tokens)

    @property
    def wdt(self):
        return array_dtype(self.dtype)

    # --- memory ----------------------------------------------------------------------
    def resident_bytes(self, wafers: int = 1) -> int:
        """Weight bytes per core when every layer stays resident: the layers spread over all prefill
        regions of `wafers` wafers (prefill activations then hop region to region)."""
        cfg, eb = self.cfg, np.dtype(self.wdt).itemsize
        regions = (self.spec.height_cores // self.rows) * (self.spec.width_cores // self.cols) * wafers
        layer = cfg.layer_matrix_params()
        return math.ceil(cfg.n_layers / regions) * math.ceil(layer * eb / (self.rows * self.cols))

    def working_bytes(self, n_tokens: int) -> int:
        """The busiest kernel's working tiles per core for an n_tokens prompt (shape-only run of a layer)."""
        return layer_ledger(self, n_tokens).peak_core_bytes

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

    # --- row work ----------------------------------------------------------------------------
    def rmsnorm(self, mesh: Mesh, x, w):
        """Row RMSNorm of x [R, C, mb, w_d]: local sums of squares, a row allreduce along X, scale."""
        ss = ops.reduce(mesh, "YXmd", x, "d", pre=jnp.square)  # [R, C, mb]
        ss = noc.allreduce(mesh, ss, "x")
        dim, eps = self.cfg.dim, self.cfg.norm_eps
        inv = ops.map(mesh, "YXm", lambda s: jax.lax.rsqrt(s / dim + eps), ss, special=1)
        return ops.map(mesh, "YXmd", lambda x, i, w: x * i[..., None] * w[None, :, None, :], x, inv, w, ops=2)

    def rope(self, mesh: Mesh, lay: PrefillLayout, t):
        """Rotate the q and k slots of the fused QKV output t [R, C, mb, w] in place: RoPE partners are
        adjacent slots of one core (the angle tables are resident per core)."""
        tok = jnp.asarray(lay.token_of_row(), F32)  # [R, mb] positions of the core's rows
        freq, rot = (jnp.asarray(a) for a in lay.rope_tables())  # [C, w/2]

        def f(t):
            ang = tok[:, None, :, None] * freq[None, :, None, :]  # [R, C, mb, w/2]
            r = rot[None, :, None, :]
            c, s = jnp.where(r, jnp.cos(ang), 1.0), jnp.where(r, jnp.sin(ang), 0.0)
            x0, x1 = t[..., 0::2], t[..., 1::2]
            return jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1).reshape(t.shape)

        return ops.map(mesh, "YXmn", f, t, ops=4)

    # --- kernels -----------------------------------------------------------------------------
    def proj(self, mesh: Mesh, lay: PrefillLayout, x, w, name: str):
        """x [R, C, mb, w_in] @ placed W -> [R, C, mb, w_out] (fp32): one MeshGEMM whose K blocks are the
        tile's sA slices (a view of the tile, no data moves)."""
        sA = lay.sA
        a = ops.free(lambda x: x.astype(self.wdt).reshape(x.shape[:3] + (sA, -1)).transpose(0, 1, 3, 2, 4), x)
        with mesh.phase(name), mesh.phase("meshgemm"):
            c = cannon_tiles(mesh, a, w, algo="meshgemm")
        return ops.free(lambda c: c.astype(F32), c)

    def attention(self, mesh: Mesh, lay: PrefillLayout, q, k, v):
        """Causal GQA, heads grouped along X: q [R, C, mb, rep, cb], k, v [R, C, mb, cb] -> o [R, C, mb, rep*cb]."""
        wdt, heads = self.wdt, lay.heads
        cast = lambda t: t.astype(wdt)  # noqa: E731
        return prefill_attention(mesh, ops.free(cast, q), ops.free(cast, k), ops.free(cast, v),
                                 jnp.asarray(heads.head_mask()), lay.token_of_row(),
                                 scale=self.cfg.head_dim ** -0.5, segment=heads.segment)

    # --- one layer -------------------------------------------------------------------------------
    def layer(self, mesh: Mesh, w: dict, x):
        """x [R, C, mb, w_d] through one decoder layer -> (x, k, v): k, v [R, C, mb, cb] (head layout, after RoPE)."""
        cfg = self.cfg
        lay = self.layout_of(x)
        rep, cb = cfg.group_size, lay.heads.cb
        nq = rep * cb
        with mesh.phase("attn_norm"):
            xn = self.rmsnorm(mesh, x, w["attn_norm"])
        qkv = self.proj(mesh, lay, xn, w["wqkv"], "qkv")  # the aligned input serves Q, K and V at once
        if "bqkv" in w:
            with mesh.phase("qkv"):
                qkv = ops.map(mesh, "YXmn", lambda a, b: a + b[None, :, None, :], qkv, w["bqkv"])
        with mesh.phase("rope"):
            qkv = self.rope(mesh, lay, qkv)
        with mesh.phase("regroup_heads"):
            qkv = noc.relayout_cols(mesh, qkv, *lay.moves(lay.qkv_map, lay.heads_map))
        sh = qkv.shape[:3]
        q = ops.free(lambda a: a[..., :nq].reshape(sh + (rep, cb)), qkv)
        k = ops.free(lambda a: a[..., nq:nq + cb], qkv)
        v = ops.free(lambda a: a[..., nq + cb:nq + 2 * cb], qkv)
        with mesh.phase("attention"):
            o = self.attention(mesh, lay, q, k, v)
        with mesh.phase("regroup_heads"):
            o = noc.relayout_cols(mesh, o, *lay.moves(lay.q_map, lay.o_map))
        x = self.residual(mesh, x, self.proj(mesh, lay, o, w["wo"], "o_proj"), "o_proj")
        with mesh.phase("ffn_norm"):
            xn = self.rmsnorm(mesh, x, w["ffn_norm"])
        gu = self.proj(mesh, lay, xn, w["wgu"], "gate_up")
        fb = gu.shape[3] // 2
        with mesh.phase("silu_mul"):
            a = ops.map(mesh, "YXmf", lambda gu: jax.nn.silu(gu[..., :fb]) * gu[..., fb:], gu, special=1, ops=2)
        x = self.residual(mesh, x, self.proj(mesh, lay, a, w["wdown"], "down"), "down")
        return x, k, v

    def residual(self, mesh: Mesh, x, y, name: str):
        with mesh.phase(name):
            return ops.map(mesh, "YXmd", jnp.add, x, y)

    def layout_of(self, x) -> PrefillLayout:
        """The layout of activation tiles x [R, C, mb, w_d] (the real token count does not change it)."""
        return self.layout(x.shape[2] * self.rows)


def layer_ledger(pre: PrefillProgram, n_tokens: int) -> Ledger:
    """One prefill layer over n_tokens, shape-only (every layer has the same shapes); cached, since the
    TTFT, the artifact-style rate and the memory check all need it, and shared by every program of the same
    shapes and device costs (cost.shared_ledger)."""
    padded = PrefillLayout(cfg=pre.cfg, rows=pre.rows, cols=pre.cols, tokens=n_tokens).padded_tokens
    what = ("prefill layer", pre.cfg, pre.rows, pre.cols, pre.dtype, pre.strategy, padded)
    return shared_ledger(what, pre, (pre.rows, pre.cols), {},
                         lambda spec, held, led: _trace_layer(dataclasses.replace(pre, spec=spec), n_tokens, led),
                         cache=_LAYERS)


def _trace_layer(pre: PrefillProgram, n_tokens: int, led: Ledger) -> None:
    lay = pre.layout(n_tokens)
    x = S((pre.rows, pre.cols, lay.mb, lay.dim_map.shape[1]), np.float32)
    mesh = pre.mesh(led)
    with mesh.phase("prefill/layer"):
        pre.layer(mesh, weight_shapes(lay, pre.wdt), x)


_LAYERS: dict[tuple, Ledger] = {}  # shared traces by shapes and device costs; per program when sharing is off
