"""Allreduce algorithms: sums and maxima along X or Y, in groups and segments, with their costs."""

import numpy as np
import pytest

from waferllm.machine import Mesh, noc
from waferllm.machine.rings import default_groups


@pytest.mark.parametrize("algo", ["ktree", "pipeline", "ring"])
@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("grid", [(7, 5), (1, 11), (13, 2)])
def test_allreduce_sum(roomy, algo, axis, grid):
    x = np.random.default_rng(1).standard_normal(grid + (3, 2)).astype(np.float32)
    out = np.asarray(noc.allreduce(Mesh(roomy, *grid), x, axis, algo))
    a = 0 if axis == "y" else 1
    np.testing.assert_allclose(out, np.broadcast_to(x.sum(a, keepdims=True), x.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2, 3, 5, 7])
def test_ktree_groups_that_do_not_divide(roomy, groups):
    x = np.random.default_rng(2).standard_normal((11, 2, 4)).astype(np.float32)
    out = np.asarray(noc.allreduce(Mesh(roomy, 11, 2), x, "y", "ktree", groups=groups))
    np.testing.assert_allclose(out[0], x.sum(0), rtol=1e-5, atol=1e-6)


def test_max_and_segments(roomy):
    x = np.random.default_rng(3).standard_normal((3, 12, 5)).astype(np.float32)
    mesh = Mesh(roomy, 3, 12)
    out = np.asarray(noc.allreduce(mesh, x, "x", "ktree", segment=4, op="max"))
    want = x.reshape(3, 3, 4, 5).max(2, keepdims=True)
    np.testing.assert_array_equal(out, np.broadcast_to(want, (3, 3, 4, 5)).reshape(3, 12, 5))
    seg = np.asarray(noc.allreduce(mesh, x, "x", "pipeline", segment=3))
    np.testing.assert_allclose(seg, np.broadcast_to(x.reshape(3, 4, 3, 5).sum(2, keepdims=True),
                                                    (3, 4, 3, 5)).reshape(3, 12, 5), rtol=1e-5, atol=1e-6)


def test_ktree_beats_pipeline_and_ring_on_long_lines(wse2):
    import jax

    x = jax.ShapeDtypeStruct((720, 720, 23), np.float16)
    cyc = {}
    for algo in ("ktree", "pipeline", "ring"):
        mesh = Mesh(wse2, 720, 720)
        noc.allreduce(mesh, x, "y", algo)
        cyc[algo] = mesh.ledger.cycles
    assert cyc["ktree"] * 4 < cyc["pipeline"] < cyc["ring"]


def test_default_groups():
    assert default_groups(720) == 24 and default_groups(360) == 18  # the artifact's configs
    assert default_groups(512) == 32 and default_groups(480) == 20  # every grid it has a config for
    assert default_groups(100) == 10 and default_groups(1) == 1


def test_broadcast(roomy):
    x = np.arange(4 * 5, dtype=np.float32).reshape(4, 5, 1)
    out = np.asarray(noc.broadcast(Mesh(roomy, 4, 5), x, "x", root=2))
    np.testing.assert_array_equal(out[:, :, 0], np.repeat(x[:, 2:3, 0], 5, axis=1))


def test_line_shift_and_reduce(roomy):
    x = np.arange(4 * 3, dtype=np.float32).reshape(4, 3, 1)
    mesh = Mesh(roomy, 4, 3)
    out = np.asarray(noc.shift(mesh, x, "y", "line"))
    np.testing.assert_array_equal(out[1:], x[:-1])
    np.testing.assert_array_equal(out[0], 0)
    assert mesh.ledger.hops == 1
    red = np.asarray(noc.reduce(Mesh(roomy, 4, 3), x, "x", root=1))
    np.testing.assert_allclose(red[:, 1], x.sum(1))
    np.testing.assert_array_equal(red[:, [0, 2]], 0)
    m1, m2 = Mesh(roomy, 7, 1), Mesh(roomy, 7, 1)
    noc.reduce(m1, np.ones((7, 1, 5), np.float32), "y", root=3)
    noc.allreduce(m2, np.ones((7, 1, 5), np.float32), "y")
    assert 0 < m1.ledger.cycles < m2.ledger.cycles  # no multicast back
