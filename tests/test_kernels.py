"""Every kernel equals jnp.matmul on awkward shapes and grids, computed through its own algorithm."""

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from waferllm.kernels import gemm, gemm_t, gemv, gemv_x_to_y, gemv_y_to_x
from waferllm.machine import Mesh
from waferllm.machine.rings import ring_pos

GRIDS = st.sampled_from([(1, 1), (1, 5), (4, 1), (2, 3), (3, 3), (3, 5), (5, 2), (7, 7), (2, 7)])
DIM = st.integers(min_value=1, max_value=23)


def _rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(grid=GRIDS, m=DIM, k=DIM, n=DIM, algo=st.sampled_from(["meshgemm", "cannon", "summa"]))
def test_gemm_equals_matmul(roomy, grid, m, k, n, algo):
    a, b = _rand((m, k), 1), _rand((k, n), 2)
    out = gemm(Mesh(roomy, *grid), a, b, algo)
    np.testing.assert_allclose(np.asarray(out), a @ b, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(grid=GRIDS, m=DIM, k=DIM, n=DIM)
def test_gemm_t_equals_matmul_bt(roomy, grid, m, k, n):
    a, b = _rand((m, k), 3), _rand((n, k), 4)
    out = gemm_t(Mesh(roomy, *grid), a, b)
    np.testing.assert_allclose(np.asarray(out), a @ b.T, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(grid=GRIDS, k=DIM, n=DIM, algo=st.sampled_from(["meshgemv", "pipeline", "ring"]))
def test_gemv_equals_matmul(roomy, grid, k, n, algo):
    x, w = _rand((k,), 5), _rand((k, n), 6)
    out = gemv(Mesh(roomy, *grid), x, w, algo)
    np.testing.assert_allclose(np.asarray(out), x @ w, rtol=1e-5, atol=1e-5)


def _expected_meshgemm_state(a, b, R, C, t):
    """What core (y, x) must hold after step t of MeshGEMM, derived from the algorithm's invariant."""
    L = math.lcm(R, C)
    sA, sB = L // C, L // R
    py, px = ring_pos(R), ring_pos(C)
    mb, kb, nb = -(-a.shape[0] // R), -(-a.shape[1] // L), -(-b.shape[1] // C)
    A = np.pad(a, ((0, R * mb - a.shape[0]), (0, L * kb - a.shape[1])))
    B = np.pad(b, ((0, L * kb - b.shape[0]), (0, C * nb - b.shape[1])))
    out = np.zeros((R, C, mb, nb), np.float32)
    for y in range(R):
        for x in range(C):
            for s in range(t + 1):  # block k = px*sA + py*sB + s meets at core (y, x) in step s
                k = (px[x] * sA + py[y] * sB + s) % L
                out[y, x] += A[py[y] * mb:(py[y] + 1) * mb, k * kb:(k + 1) * kb] @ \
                    B[k * kb:(k + 1) * kb, px[x] * nb:(px[x] + 1) * nb]
    return out


@pytest.mark.parametrize("grid", [(3, 3), (2, 3), (4, 4)])
def test_meshgemm_core_by_core(roomy, grid):
    R, C = grid
    a, b = _rand((7, 12), 7), _rand((12, 5), 8)
    trace = []
    gemm(Mesh(roomy, R, C), a, b, "meshgemm", trace=trace)
    states = dict(trace)
    L = math.lcm(R, C)
    sA, sB = L // C, L // R
    # after alignment, row y holds ring positions rotated by pos_y * sB (A's k-blocks)
    aligned = [v for k, v in trace if k.startswith("a-align")]
    at = aligned[-1] if aligned else states["placed-a"]
    py, px = ring_pos(R), ring_pos(C)
    kb, mb = -(-12 // L), at.shape[3]
    A = np.pad(a, ((0, R * mb - 7), (0, L * kb - 12)))
    for y in range(R):
        for x in range(C):
            for j in range(sA):
                k = (px[x] * sA + j + py[y] * sB) % L
                np.testing.assert_array_equal(at[y, x, j], A[py[y] * mb:(py[y] + 1) * mb, k * kb:(k + 1) * kb])
    for t in range(L):
        np.testing.assert_allclose(states[f"step-{t}"], _expected_meshgemm_state(a, b, R, C, t), rtol=1e-5, atol=1e-5)


def test_meshgemm_alignment_takes_the_short_way(wse2):
    mesh = Mesh(wse2, 720, 720)
    S = lambda *s: jax.ShapeDtypeStruct(s, np.float16)  # noqa: E731
    gemm(mesh, S(2048, 2048), S(2048, 2048), "meshgemm")
    assert mesh.ledger.phases["meshgemm/align"].steps == 360  # <= N/2 shifts
    assert mesh.ledger.phases["meshgemm/compute-shift"].steps == 720
    assert mesh.ledger.phases["meshgemm/compute-shift"].hops == 720 * 2  # every shift is 2 hops
    cannon = Mesh(wse2, 720, 720)
    gemm(cannon, S(2048, 2048), S(2048, 2048), "cannon")
    assert cannon.ledger.phases["cannon/compute-shift"].hops == 720 * 719  # the wrap-around edge


def test_gemv_partial_sums_and_flip(roomy):
    """The one MeshGEMV kernel (what decode runs): core (y, x) holds x_y's slice y times W's block (y, x),
    and after the K-tree the output is split along X and replicated along Y."""
    R, C = 4, 3
    x, w = _rand((10,), 9), _rand((10, 7), 10)
    trace = []
    gemv(Mesh(roomy, R, C), x, w, "meshgemv", trace=trace)
    st = dict(trace)
    kb, nb = 3, 3
    X = np.pad(x, (0, R * kb - 10))
    W = np.pad(w, ((0, R * kb - 10), (0, C * nb - 7)))
    assert st["partial"].shape == (R, C, 1, nb)  # [R, C, B, nb] per-core partials of a batch of one
    for y in range(R):
        for xx in range(C):
            np.testing.assert_allclose(st["partial"][y, xx, 0], X[y * kb:(y + 1) * kb] @ W[y * kb:(y + 1) * kb,
                                       xx * nb:(xx + 1) * nb], rtol=1e-5, atol=1e-6)
            # after the K-tree: output split along X, replicated along Y
            np.testing.assert_allclose(st["reduced"][y, xx, 0], (X @ W)[xx * nb:(xx + 1) * nb], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algo", ["meshgemv", "pipeline", "ring"])
@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (4, 2)])
def test_compact_gemv_both_directions(roomy, grid, algo):
    """x_y [B, R, kb] @ W [R, kb, C, nb] -> y_x [B, C, nb] and back x_x [B, C, nb] @ W [C, nb, R, kb] -> y_y."""
    R, C = grid
    B, kb, nb = 3, 4, 5
    xy, w1 = _rand((B, R, kb), 11), _rand((R, kb, C, nb), 12)
    mesh = Mesh(roomy, R, C)
    yx = np.asarray(gemv_y_to_x(mesh, xy, w1, algo))
    np.testing.assert_allclose(yx.reshape(B, C * nb), xy.reshape(B, R * kb) @ w1.reshape(R * kb, C * nb),
                               rtol=1e-5, atol=1e-5)
    w2 = _rand((C, nb, R, kb), 13)
    yy = np.asarray(gemv_x_to_y(mesh, yx, w2, algo))
    np.testing.assert_allclose(yy.reshape(B, R * kb), yx.reshape(B, C * nb) @ w2.reshape(C * nb, R * kb),
                               rtol=1e-5, atol=1e-4)
    assert mesh.ledger.cycles > 0
