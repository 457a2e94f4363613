"""The decode head layout: every K and V dim on exactly one core of its head, RoPE partners together, and no core
holding more K + V dims than the head's columns force."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings, strategies as st

from waferllm.engine.heads import head_layout


@settings(max_examples=60, deadline=None)
@given(cols=st.integers(1, 97), half=st.integers(1, 40), n_kv=st.integers(1, 9), n_rep=st.integers(1, 4))
def test_every_dim_once_partners_together_and_the_busiest_core_is_as_light_as_can_be(cols, half, n_kv, n_rep):
    hd = 2 * half
    h = head_layout(cols, hd, n_kv, n_rep)
    for dim in (h.dim, h.dim_v):
        assert dim.shape == (cols, h.cb)
        assert sorted(dim[dim >= 0].tolist()) == list(range(n_kv * hd))
    n_k, n_v = (h.dim >= 0).sum(1), (h.dim_v >= 0).sum(1)
    assert h.kv_dims == int(np.max(n_k + n_v))
    pos = {int(d): c for c, d in zip(*np.nonzero(h.dim >= 0)[:1], h.dim[h.dim >= 0])}
    assert all(pos[d] == pos[d + half] for d in pos if d % hd < half)  # rotation partners share a core
    if not h.aligned:
        assert (h.dim_v == h.dim).all()
        return
    s = cols // n_kv
    owner = np.where(np.arange(cols) < n_kv * s, np.arange(cols) // s, -1)[:, None]
    for dim in (h.dim, h.dim_v):  # each head's dims stay on the head's own columns (segmented reductions)
        assert ((dim < 0) | (dim // hd == owner)).all()
    # K comes in whole pairs spread evenly; V then fills the light columns (at most cb on one): the busiest
    # column holds the fewest dims m for which every column's room, min(cb, m - its K dims), takes V's hd
    k_seg = n_k[:s]
    m = next(m for m in range(int(k_seg.max()), 3 * hd) if np.minimum(h.cb, m - k_seg).sum() >= hd)
    assert h.kv_dims == m >= math.ceil(2 * hd / s)
    assert int(k_seg.max() - k_seg.min()) <= 2

def test_llama3_8b_at_360_columns_stores_six_dims_a_slot_where_whole_columns_of_four_stored_eight():
    h = head_layout(360, 128, 8, 4)
    assert (h.cb, h.kv_dims) == (4, 6)  # the even share: 256 dims over 45 columns is 5.7
