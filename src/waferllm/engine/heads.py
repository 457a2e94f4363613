"""How attention heads sit on the grid's columns (docs/decode-layout.md).

The K/V width (Hkv * hd) is cut along X. Inside each head the dims are reordered so that RoPE's
rotation partners (i, i + hd/2) are neighbours, and every column holds an even number of dims, so
RoPE never needs a neighbour's data. The query dims of the n_rep heads sharing a KV head sit on the
same core as that KV head's dims (q laid out [kv-dim slot, rep]), so scores need no data movement
beyond the per-head reduction.

aligned (C >= Hkv): each head owns s = C // Hkv whole columns and the score reduction is a segmented
allreduce over those s columns; the C - Hkv*s leftover columns hold no K/V dims (when C is a multiple of
Hkv there are none). K's rotation pairs spread evenly over the head's columns; V, which needs no partner,
fills the columns K leaves light (a column with two K pairs takes fewer V dims), so a core stores as few
K + V dims as the head allows (dim_v; 6 rather than 8 per slot at s = 45). Arrays stay [C, cb] for K and V
alike (padded), the memory a core holds is its own dims (kv_dims). Only when C < Hkv are the dims cut
flat, so a column may touch several heads; partial scores then carry every KV head and reduce over the
whole row, and V sits exactly where K does.
"""

from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass

import numpy as np


def _even_ceil(n: float) -> int:
    return max(2, 2 * math.ceil(n / 2))


@dataclass(frozen=True, kw_only=True, eq=False)
class HeadLayout:
    """Slots [C, cb] of K dims (dim) and V dims (dim_v) per column: HF index (head*hd + d) or -1 for padding."""

    cols: int
    head_dim: int
    n_kv: int
    n_rep: int
    aligned: bool
    cb: int  # K/V dims per column (even)
    dim: np.ndarray  # [C, cb] int: K (and q, n_rep heads per slot)
    head: np.ndarray  # [C, cb] int, -1 = padding
    dim_v: np.ndarray  # [C, cb] int: V (and the attention output o)

    @property
    def slots(self) -> int:
        """KV heads one core's partial scores carry (1 when aligned)."""
        return 1 if self.aligned else self.n_kv

    @property
    def segment(self) -> int:
        """Columns per score reduction (a shorter last segment holds the leftover, idle columns)."""
        return self.cols // self.n_kv if self.aligned else self.cols

    @property
    def col_dims(self) -> tuple[np.ndarray, np.ndarray]:
        """([C], [C]) the K dims and the V dims each column really holds (padding slots not counted)."""
        return np.sum(self.dim >= 0, axis=1), np.sum(self.dim_v >= 0, axis=1)

    @property
    def kv_dims(self) -> int:
        """K plus V dims held by the busiest column (what one KV slot of one layer stores there)."""
        return int(np.max(sum(self.col_dims)))

    def head_mask(self, of: str = "k") -> np.ndarray:
        """[C, cb, slots] one-hot: which of the core's head slots each K (of="k") or V (of="v") dim belongs to."""
        dim = self.dim if of == "k" else self.dim_v
        head = np.where(dim >= 0, dim // self.head_dim, -1)
        if self.aligned:
            return (head >= 0)[:, :, None].astype(np.float32)
        return (head[:, :, None] == np.arange(self.n_kv)[None, None, :]).astype(np.float32)

    def slot_heads(self) -> np.ndarray:
        """[C, slots] the KV head of each score slot on each column."""
        if self.aligned:
            return np.minimum(np.arange(self.cols) // self.segment, self.n_kv - 1)[:, None]
        return np.broadcast_to(np.arange(self.n_kv)[None, :], (self.cols, self.n_kv))

    def pair_index(self) -> np.ndarray:
        """[C, cb] RoPE frequency index (d mod hd/2) of each slot; 0 for padding."""
        d = np.where(self.dim >= 0, self.dim % self.head_dim, 0)
        return d % (self.head_dim // 2)


@lru_cache(maxsize=1024)
def head_layout(cols: int, head_dim: int, n_kv: int, n_rep: int) -> HeadLayout:
    """Cut the K/V dims over `cols` columns (whole columns per head when cols >= Hkv). Cached: plans and
    costings ask for the same layout many times; its arrays are read-only."""
    half = head_dim // 2
    inner = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)  # 0, h/2, 1, h/2+1, ...
    aligned = cols >= n_kv
    if aligned:
        s = cols // n_kv
        cb = _even_ceil(head_dim / s)
        n_k = 2 * _spread(half, s)  # K dims per column of a head: whole rotation pairs, as even as can be
        n_v = _fill(head_dim, n_k, cb)
        dim, dim_v = -np.ones((cols, cb), np.int64), -np.ones((cols, cb), np.int64)
        k_at, v_at = np.concatenate([[0], np.cumsum(n_k)]), np.concatenate([[0], np.cumsum(n_v)])
        for g in range(n_kv):
            for j in range(s):
                dim[g * s + j, :n_k[j]] = g * head_dim + inner[k_at[j]:k_at[j + 1]]
                dim_v[g * s + j, :n_v[j]] = g * head_dim + np.arange(v_at[j], v_at[j + 1])
    else:
        flat = np.concatenate([g * head_dim + inner for g in range(n_kv)])
        cb = _even_ceil(len(flat) / cols)
        padded = -np.ones(cols * cb, np.int64)
        padded[:len(flat)] = flat
        dim = padded.reshape(cols, cb)
        dim_v = dim
    head = np.where(dim >= 0, dim // head_dim, -1)
    for a in (dim, head, dim_v):
        a.setflags(write=False)
    return HeadLayout(cols=cols, head_dim=head_dim, n_kv=n_kv, n_rep=n_rep, aligned=aligned, cb=cb, dim=dim,
                      head=head, dim_v=dim_v)


def _spread(n: int, s: int) -> np.ndarray:
    """n items over s columns, the first n % s columns one more."""
    return n // s + (np.arange(s) < n % s)


def _fill(n: int, used: np.ndarray, cap: int) -> np.ndarray:
    """n V dims over the columns, each next one to the column holding the fewest dims (K + V so far, the first
    such column on ties), at most cap per column: the busiest column ends as light as the head allows."""
    v = np.zeros_like(used)
    for _ in range(n):
        load = np.where(v < cap, used + v, np.iinfo(used.dtype).max)
        v[np.argmin(load)] += 1
    return v
