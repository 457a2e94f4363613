"""How attention heads sit on the grid's columns (docs/decode-layout.md).

The K/V width (Hkv * hd) is cut along X. Inside each head the dims are reordered so that RoPE's
rotation partners (i, i + hd/2) are neighbours, and every column holds an even number of dims, so
RoPE never needs a neighbour's data. The query dims of the n_rep heads sharing a KV head sit on the
same core as that KV head's dims (q laid out [kv-dim slot, rep]), so scores need no data movement
beyond the per-head reduction.

aligned (C >= Hkv): each head owns s = C // Hkv whole columns and the score reduction is a segmented
allreduce over those s columns; the C - Hkv*s leftover columns hold no K/V dims (when C is a multiple of
Hkv there are none). Only when C < Hkv are the dims cut flat, so a column may touch several heads;
partial scores then carry every KV head and reduce over the whole row.
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
    """Slots [C, cb] of K/V dims per column; dim[c, j] = HF index (head*hd + d) or -1 for padding."""

    cols: int
    head_dim: int
    n_kv: int
    n_rep: int
    aligned: bool
    cb: int  # K/V dims per column (even)
    dim: np.ndarray  # [C, cb] int
    head: np.ndarray  # [C, cb] int, -1 = padding

    @property
    def slots(self) -> int:
        """KV heads one core's partial scores carry (1 when aligned)."""
        return 1 if self.aligned else self.n_kv

    @property
    def segment(self) -> int:
        """Columns per score reduction (a shorter last segment holds the leftover, idle columns)."""
        return self.cols // self.n_kv if self.aligned else self.cols

    def head_mask(self) -> np.ndarray:
        """[C, cb, slots] one-hot: which of the core's head slots each dim belongs to."""
        if self.aligned:
            return (self.head >= 0)[:, :, None].astype(np.float32)
        return (self.head[:, :, None] == np.arange(self.n_kv)[None, None, :]).astype(np.float32)

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
        dim = -np.ones((cols, cb), np.int64)
        for g in range(n_kv):
            for j in range(s):
                part = inner[j * cb:(j + 1) * cb]
                dim[g * s + j, :len(part)] = g * head_dim + part
    else:
        flat = np.concatenate([g * head_dim + inner for g in range(n_kv)])
        cb = _even_ceil(len(flat) / cols)
        padded = -np.ones(cols * cb, np.int64)
        padded[:len(flat)] = flat
        dim = padded.reshape(cols, cb)
    head = np.where(dim >= 0, dim // head_dim, -1)
    dim.setflags(write=False)
    head.setflags(write=False)
    return HeadLayout(cols=cols, head_dim=head_dim, n_kv=n_kv, n_rep=n_rep, aligned=aligned, cb=cb, dim=dim,
                      head=head)
