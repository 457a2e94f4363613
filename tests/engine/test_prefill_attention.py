"""Head-grouped prefill attention (kernels/attention.prefill_attention) equals causal softmax attention, on grids
where each KV head owns whole columns and where the heads are cut flat over the row; its numeric run charges what
its shape-only run charges."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from waferllm.engine.heads import head_layout
from waferllm.kernels.attention import prefill_attention
from waferllm.machine import Ledger, Mesh
from waferllm.machine.rings import ring_pos

CASES = [  # (rows, cols, kv heads, query heads per kv head, head dim, tokens)
    (3, 4, 2, 2, 4, 7),  # aligned: two columns per KV head
    (2, 7, 2, 3, 6, 5),  # aligned with a leftover padding column
    (4, 3, 4, 1, 2, 9),  # flat: fewer columns than KV heads
    (1, 2, 1, 2, 4, 3),  # one row: nothing rotates
]


def _reference(q, k, v):
    """q [T, H, hd], k, v [T, Hkv, hd] -> causal softmax(q k^T / sqrt(hd)) v, [T, H, hd]."""
    T, H, hd = q.shape
    rep = H // k.shape[1]
    kk, vv = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("thd,uhd->htu", q, kk) / np.sqrt(hd)
    s = np.where(np.tril(np.ones((T, T), bool))[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("htu,uhd->thd", p, vv)


def _tiles(R, C, n_kv, rep, hd, T, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((T, n_kv * rep, hd)).astype(np.float32)
    k = rng.standard_normal((T, n_kv, hd)).astype(np.float32)
    v = rng.standard_normal((T, n_kv, hd)).astype(np.float32)
    heads = head_layout(C, hd, n_kv, rep)
    mb = -(-T // R)
    tok = ring_pos(R)[:, None] * mb + np.arange(mb)[None, :]  # [R, mb]
    ok_t = tok < T
    t = np.minimum(tok, T - 1)
    dim = heads.dim  # [C, cb]
    ok_d = dim >= 0
    h, d = np.maximum(dim, 0) // hd, np.maximum(dim, 0) % hd
    mask = ok_t[:, None, :, None] & ok_d[None, :, None, :]  # [R, C, mb, cb]
    kt = np.where(mask, k[t[:, None, :, None], h[None, :, None, :], d[None, :, None, :]], 0)
    vt = np.where(mask, v[t[:, None, :, None], h[None, :, None, :], d[None, :, None, :]], 0)
    qh = h[None, :, None, None, :] * rep + np.arange(rep)[None, None, None, :, None]  # [1, C, 1, rep, cb]
    qt = np.where(mask[:, :, :, None, :], q[t[:, None, :, None, None], qh, d[None, :, None, None, :]], 0)
    return (q, k, v), heads, tok, (qt, kt, vt)


@pytest.mark.parametrize("R, C, n_kv, rep, hd, T", CASES)
def test_prefill_attention_equals_causal_softmax(roomy, R, C, n_kv, rep, hd, T):
    (q, k, v), heads, tok, (qt, kt, vt) = _tiles(R, C, n_kv, rep, hd, T)
    mesh = Mesh(roomy, R, C)
    o = np.asarray(prefill_attention(mesh, jnp.asarray(qt), jnp.asarray(kt), jnp.asarray(vt),
                                     jnp.asarray(heads.head_mask()), tok, scale=hd ** -0.5, segment=heads.segment))
    ref = _reference(q, k, v)
    o = o.reshape(R, C, -1, rep, heads.cb)
    dim = heads.dim
    for r in range(R):
        for i, t in enumerate(tok[r]):
            if t >= T:
                continue
            for c in range(C):
                for j in range(heads.cb):
                    if dim[c, j] < 0:
                        continue
                    h, d = divmod(int(dim[c, j]), hd)
                    np.testing.assert_allclose(o[r, c, i, :, j], ref[t, h * rep:(h + 1) * rep, d], rtol=2e-5, atol=2e-5)


def test_numeric_run_charges_what_the_shape_only_run_charges(roomy):
    R, C, n_kv, rep, hd, T = CASES[0]
    _, heads, tok, tiles = _tiles(R, C, n_kv, rep, hd, T)
    ledgers = []
    for abstract in (False, True):
        led = Ledger(clock_hz=roomy.clock_hz)
        args = [jax.ShapeDtypeStruct(t.shape, np.float32) if abstract else jnp.asarray(t) for t in tiles]
        prefill_attention(Mesh(roomy, R, C, ledger=led), *args, jnp.asarray(heads.head_mask()), tok,
                          scale=hd ** -0.5, segment=heads.segment)
        ledgers.append(led)
    assert ledgers[0].cycles == pytest.approx(ledgers[1].cycles, rel=1e-12)
    assert ledgers[0].peak_core_bytes == ledgers[1].peak_core_bytes
    assert set(ledgers[0].phases) == set(ledgers[1].phases)
