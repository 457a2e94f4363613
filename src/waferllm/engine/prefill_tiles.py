"""Where prefill tensors live on an R x C prefill grid: rows of tokens, columns of features, per core.

Activations are tiles [R, C, mb, w]: core row at Y-ring position p holds tokens p*mb .. p*mb+mb-1 (the
prompt padded to Tp = a multiple of L = lcm(R, C), so mb splits into L/R key blocks for S.V), and the
core column at X-ring position q holds the features colmap[q, :] (-1 = padding). Column maps:

- model dim D: contiguous blocks of w_d = sA * ceil(D / L) (sA = L / C: a tile is sA K-blocks of a GEMM);
- QKV output: contiguous blocks of the fused [q | k | v] dims, each head's dims in RoPE pair order
  (d, d + hd/2 adjacent; an even count per column), so RoPE needs no neighbour's data;
- heads (attention): grouped by KV head along X (engine/heads.py, as in decode): with C >= Hkv each KV head
  owns C // Hkv consecutive physical columns, each holding cb of its dims, with the same dims of its n_rep
  query heads: queries [mb, n_rep, cb], keys/values [mb, cb] per core; scores then reduce over the head's
  columns only. With C < Hkv the K/V dims are cut flat over the row. Regrouping between the dense and the
  head layout moves columns within each row (noc.relayout_cols, costed by what moves);
- O input: contiguous blocks of the query dims;
- FFN: contiguous blocks of w_f = sA * ceil(F / L).

Weights are placed once on the host in these orders (MeshGEMM's B stacks, pre-skewed), so each GEMM's
output columns are the next one's input columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.engine.heads import HeadLayout, head_layout
from waferllm.kernels.gemm import place_b
from waferllm.machine import Mesh, layout
from waferllm.machine.rings import interleave_order, ring_pos
from waferllm.model.config import ModelConfig
from waferllm.model.rope import inv_freq
from waferllm.model.weights import ModelWeights


def _even_ceil(n: float) -> int:
    return max(2, 2 * math.ceil(n / 2))


def _blocks(n: int, cols: int, width: int) -> np.ndarray:
    """[cols, width] contiguous blocks of range(n) (-1 past the end)."""
    i = np.arange(cols * width).reshape(cols, width)
    return np.where(i < n, i, -1)


@dataclass(frozen=True, kw_only=True, eq=False)
class PrefillLayout:
    """Static layout of one prompt length on one prefill grid (see the module docstring)."""

    cfg: ModelConfig
    rows: int
    cols: int
    tokens: int  # the prompt's real tokens

    @property
    def L(self) -> int:
        return math.lcm(self.rows, self.cols)

    @property
    def sA(self) -> int:
        return self.L // self.cols

    @property
    def sB(self) -> int:
        return self.L // self.rows

    @property
    def padded_tokens(self) -> int:
        return self.L * math.ceil(self.tokens / self.L)

    @property
    def mb(self) -> int:
        return self.padded_tokens // self.rows

    # --- column maps by X-ring position ----------------------------------------------------
    @cached_property
    def dim_map(self) -> np.ndarray:
        return _blocks(self.cfg.dim, self.cols, self.sA * math.ceil(self.cfg.dim / self.L))

    @cached_property
    def ffn_map(self) -> np.ndarray:
        return _blocks(self.cfg.ffn_dim, self.cols, self.sA * math.ceil(self.cfg.ffn_dim / self.L))

    @property
    def heads(self) -> HeadLayout:
        """The attention layout: K/V dim slots [C, cb] by physical column, grouped by KV head."""
        c = self.cfg
        return head_layout(self.cols, c.head_dim, c.n_kv_heads, c.group_size)

    def _by_ring(self, phys: np.ndarray) -> np.ndarray:
        """A column map given by physical column, re-indexed by X-ring position (the maps' convention)."""
        return phys[np.asarray(interleave_order(self.cols))]

    @cached_property
    def q_map(self) -> np.ndarray:
        """[C, n_rep * cb]: slot r*cb + j holds dim j of the column's KV-head slot for query head kv*n_rep + r."""
        h, hd, rep = self.heads, self.cfg.head_dim, self.cfg.group_size
        d = h.dim[:, None, :]
        q = ((d // hd) * rep + np.arange(rep)[None, :, None]) * hd + d % hd
        return self._by_ring(np.where(d >= 0, q, -1).reshape(self.cols, -1))

    @cached_property
    def kv_map(self) -> np.ndarray:
        """[C, cb]: the K/V dims (HF index head*hd + d) of each column."""
        return self._by_ring(np.asarray(self.heads.dim))

    @cached_property
    def o_map(self) -> np.ndarray:
        """The O projection's input: contiguous query dims (a multiple of sA per column)."""
        return _blocks(self.cfg.q_dim, self.cols, self.sA * math.ceil(self.cfg.q_dim / self.L))

    @cached_property
    def qkv_map(self) -> np.ndarray:
        """Fused QKV output: contiguous blocks of concat(Wq, Wk, Wv)'s columns, pair-ordered within heads."""
        c = self.cfg
        n, hd, half = c.q_dim + 2 * c.kv_dim, c.head_dim, c.head_dim // 2
        i = np.arange(n)
        d = i % hd
        paired = i - d + np.where(d % 2 == 0, d // 2, half + d // 2)  # slot order 0, h/2, 1, h/2+1, ...
        pos = _blocks(n, self.cols, _even_ceil(n / self.cols))
        return np.where(pos >= 0, paired[np.maximum(pos, 0)], -1)

    @cached_property
    def heads_map(self) -> np.ndarray:
        """The attention layout of the fused QKV output per column: [q heads | k heads | v heads]."""
        c = self.cfg
        kv = self.kv_map
        return np.concatenate([self.q_map, np.where(kv >= 0, kv + c.q_dim, -1),
                               np.where(kv >= 0, kv + c.q_dim + c.kv_dim, -1)], axis=1)

    def moves(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source physical column, source slot) of every slot of the dst map, by physical column."""
        inv = np.full(int(src.max()) + 1, -1, np.int64)
        pos, slot = np.nonzero(src >= 0)
        inv[src[pos, slot]] = pos * src.shape[1] + slot
        d = self.by_core(dst)
        where = np.where(d >= 0, inv[np.clip(d, 0, len(inv) - 1)], -1)
        order = np.asarray(interleave_order(self.cols))
        return np.where(where >= 0, order[where // src.shape[1]], -1), np.where(where >= 0, where % src.shape[1], -1)

    @cached_property
    def gu_map(self) -> np.ndarray:
        f = self.ffn_map
        return np.concatenate([f, np.where(f >= 0, f + self.cfg.ffn_dim, -1)], axis=1)

    # --- physical order -----------------------------------------------------------------------
    def by_core(self, colmap: np.ndarray) -> np.ndarray:
        """A column map indexed by physical column."""
        return colmap[ring_pos(self.cols)]

    def token_of_row(self) -> np.ndarray:
        """[R, mb] token index held by each physical core row's local rows."""
        return ring_pos(self.rows)[:, None] * self.mb + np.arange(self.mb)[None, :]

    def rope_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(freq [C, w/2], rotate [C, w/2]) of each slot pair of the fused QKV output per physical column:
        the pair's RoPE inverse frequency, and whether it is a q or k pair (v and padding stay as they are)."""
        c = self.cfg
        first = self.by_core(self.qkv_map)[:, 0::2]  # the pair's first dim (d < hd/2)
        f = inv_freq(c).astype(np.float32)
        freq = np.where(first >= 0, f[np.maximum(first, 0) % c.head_dim % (c.head_dim // 2)], 0)
        return freq.astype(np.float32), (first >= 0) & (first < c.q_dim + c.kv_dim)

    def core_of(self, token: int) -> tuple[int, int]:
        """(physical core row, local row) holding a token."""
        return interleave_order(self.rows)[token // self.mb], token % self.mb


def place_matrix(mesh: Mesh, w: np.ndarray, kmap: np.ndarray, nmap: np.ndarray, dtype) -> jax.Array:
    """W[K, N] -> MeshGEMM B stacks [R, C, sB, kb, nb] with K in the input's column order (kmap, by ring
    position) and N in the output's (nmap): the GEMM reads activations and writes them in place."""
    wk = layout.take_padded(np.asarray(w, np.float32), kmap.reshape(-1), 0)
    return place_b(mesh, layout.take_padded(wk, nmap.reshape(-1), 1).astype(dtype, copy=False))


def vector_by_column(lay: PrefillLayout, v: np.ndarray, colmap: np.ndarray) -> jax.Array:
    """v[N] -> [C, w] per physical column (replicated along Y): norms and biases."""
    return jnp.asarray(layout.take_padded(np.asarray(v, np.float32), lay.by_core(colmap).reshape(-1), 0).reshape(lay.cols, -1))


def place_weights(cfg: ModelConfig, weights: ModelWeights, mesh: Mesh, dtype) -> list[dict]:
    """Every layer's weights in the prefill placement (one layout serves every prompt length)."""
    lay = PrefillLayout(cfg=cfg, rows=mesh.rows, cols=mesh.cols, tokens=1)
    out = []
    for lw in weights.layers:
        d = {"attn_norm": vector_by_column(lay, lw.attn_norm, lay.dim_map),
             "ffn_norm": vector_by_column(lay, lw.ffn_norm, lay.dim_map),
             "wqkv": place_matrix(mesh, np.concatenate([lw.wq, lw.wk, lw.wv], 1), lay.dim_map, lay.qkv_map, dtype),
             "wo": place_matrix(mesh, lw.wo, lay.o_map, lay.dim_map, dtype),
             "wgu": place_matrix(mesh, np.concatenate([lw.w_gate, lw.w_up], 1), lay.dim_map, lay.gu_map, dtype),
             "wdown": place_matrix(mesh, lw.w_down, lay.ffn_map, lay.dim_map, dtype)}
        if cfg.qkv_bias:
            d["bqkv"] = vector_by_column(lay, np.concatenate([lw.bq, lw.bk, lw.bv]), lay.qkv_map)
        out.append(d)
    return out


def weight_shapes(lay: PrefillLayout, dtype) -> dict:
    """Shape-only stand-ins of one layer's placed weights (predictions without weights)."""
    R, C, L = lay.rows, lay.cols, lay.L
    S = jax.ShapeDtypeStruct
    dt = np.dtype(dtype)

    def mat(kmap, nmap):
        return S((R, C, lay.sB, kmap.size // L, nmap.shape[1]), dt)

    d = {"attn_norm": S((C, lay.dim_map.shape[1]), np.float32), "ffn_norm": S((C, lay.dim_map.shape[1]), np.float32),
         "wqkv": mat(lay.dim_map, lay.qkv_map), "wo": mat(lay.o_map, lay.dim_map),
         "wgu": mat(lay.dim_map, lay.gu_map), "wdown": mat(lay.ffn_map, lay.dim_map)}
    if lay.cfg.qkv_bias:
        d["bqkv"] = S((C, lay.qkv_map.shape[1]), np.float32)
    return d


def embed_tiles(lay: PrefillLayout, tok_emb: np.ndarray, ids) -> np.ndarray:
    """The prompt's embedding rows cut into activation tiles [R, C, mb, w_d] (host gather)."""
    tok = lay.token_of_row()  # [R, mb]
    ids = np.asarray(ids)
    rows = np.where((tok < len(ids))[..., None], tok_emb[ids[np.minimum(tok, len(ids) - 1)]], 0)  # [R, mb, D]
    cols = lay.by_core(lay.dim_map)  # [C, w]
    out = np.take(rows, np.maximum(cols, 0), axis=2)  # [R, mb, C, w]
    out = np.where((cols >= 0)[None, None], out, 0)
    return out.transpose(0, 2, 1, 3).astype(np.float32)
