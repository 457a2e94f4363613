"""The ledger: costs follow the spec, numeric and shape-only runs agree, limits stop or report."""

import time

import jax
import numpy as np
import pytest

from waferllm.kernels import gemm, gemm_t, gemv
from waferllm.machine import LimitError, Mesh, noc
from waferllm.machine.mesh import GridError


def S(*shape, dt=np.float32):
    return jax.ShapeDtypeStruct(shape, dt)


@pytest.mark.parametrize("grid", [(3, 5), (4, 4), (1, 6)])
@pytest.mark.parametrize("kind", ["meshgemm", "cannon", "summa", "gemm_t", "meshgemv", "pipeline", "ring"])
def test_numeric_and_shape_only_ledgers_are_equal(roomy, grid, kind):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((9, 13)).astype(np.float32), rng.standard_normal((13, 11)).astype(np.float32)
    runs = []
    for abstract in (False, True):
        mesh = Mesh(roomy, *grid)
        A = S(*a.shape) if abstract else a
        if kind in ("meshgemm", "cannon", "summa"):
            gemm(mesh, A, S(*b.shape) if abstract else b, kind)
        elif kind == "gemm_t":
            gemm_t(mesh, A, S(*b.T.shape) if abstract else b.T)
        else:
            gemv(mesh, S(13) if abstract else b[:, 0], S(*b.shape) if abstract else b, kind)
        runs.append(mesh.ledger)
    assert runs[0] == runs[1]
    assert runs[0].cycles > 0


def test_compute_shift_step_is_max_plus_overhead(wse2):
    mesh = Mesh(wse2, 4, 4)
    x = S(4, 4, 8, 8, dt=np.float16)
    with mesh.step():
        mesh.charge_compute(1000.0)
        noc.shift(mesh, x, "x")
    expected_transfer = wse2.message_overhead_cycles + 2 * wse2.alpha_cycles_per_hop + 8 * 8 * 2 / wse2.link_bytes_per_cycle
    assert mesh.ledger.cycles == pytest.approx(1000.0 + wse2.step_overhead_cycles)
    mesh2 = Mesh(wse2, 4, 4)
    assert expected_transfer < 1000.0  # the step above was compute-bound
    with mesh2.step():
        mesh2.charge_compute(1.0)
        noc.shift(mesh2, x, "x")
    assert mesh2.ledger.cycles == pytest.approx(expected_transfer + wse2.step_overhead_cycles)


def test_gemv_cost_is_spec_arithmetic(wse2):
    """MeshGEMV 16K at 720x720: compute + K-tree = the formula in waferllm.md, from the spec's numbers."""
    mesh = Mesh(wse2, 720, 720)
    gemv(mesh, S(16384, dt=np.float16), S(16384, 16384, dt=np.float16))
    s = wse2
    compute = 23 * (23 / s.fp16_macs_per_cycle + s.vector_op_overhead_cycles)  # one @fmach per input element
    e = max(2 / s.link_bytes_per_cycle, s.relay_cycles_per_element)
    g = 30  # 720 cores in 24 groups of 30 (the artifact's choice)
    hops = 15 + 12 * g + 375  # chain in group, roots to root, multicast back
    stages = 15 + 12
    a, b = s.alpha_cycles_per_hop, s.beta_cycles_per_relay
    # a root drains its right chain, then its left one (the authors' two-phase tree): the longer left chain
    # costs its own latency, or the right chain's plus a second pass of all 23 elements, whichever is later
    phase1 = max(15 * (a + b), 14 * (a + b) + 23 * e) + (23 - 2) * e
    phase2 = max(12 * g * a + 12 * b, 11 * g * a + 11 * b + 23 * e) + (23 - 2) * e
    reduce = phase1 + phase2 + 375 * a + 23 * 0.5 + 3 * s.message_overhead_cycles \
        + s.collective_overhead_cycles  # two phases and a multicast
    assert mesh.ledger.cycles == pytest.approx(compute + reduce)
    assert mesh.ledger.hops == hops and mesh.ledger.stages == stages


def test_memory_limit_names_tensor_and_numbers(wse2):
    mesh = Mesh(wse2, 4, 4)
    with pytest.raises(LimitError, match=r"out of SRAM .* bytes per core needed, 49152 available .*largest tensor 'w'"):
        gemv(mesh, S(4096, dt=np.float16), S(4096, 4096, dt=np.float16))
    mesh = Mesh(wse2, 4, 4, limits=False)
    gemv(mesh, S(4096, dt=np.float16), S(4096, 4096, dt=np.float16))
    assert mesh.ledger.excess and mesh.ledger.peak_core_bytes > 49152
    assert "meshgemv" in mesh.ledger.peak_where


def test_route_limit(wse2):
    tight = wse2.replace(routes_per_core=4)
    mesh = Mesh(tight, 3, 3)
    with mesh.routes("a", 3):
        with pytest.raises(LimitError, match="out of routes .* 5 routes per core needed, 4 available"):
            with mesh.routes("b", 2):
                pass


def test_grid_must_fit_device(wse2):
    with pytest.raises(GridError, match="does not fit device wse2"):
        Mesh(wse2, 995, 10)
    with pytest.raises(GridError):
        Mesh(wse2, 0, 3)


def test_full_wafer_kernels_cost_fast(wse2):
    """A full 994 x 750 wafer costs shape-only in about a second per kernel (the bound is loose: it is there
    to catch per-core or per-step Python loops, which take minutes, not to time a shared CI machine)."""
    for run in (lambda m: gemm(m, S(8192, 8192, dt=np.float16), S(8192, 8192, dt=np.float16), "meshgemm"),
                lambda m: gemm(m, S(8192, 8192, dt=np.float16), S(8192, 8192, dt=np.float16), "summa"),
                lambda m: gemv(m, S(32768, dt=np.float16), S(32768, 32768, dt=np.float16))):
        t0 = time.perf_counter()
        mesh = Mesh(wse2, 994, 750, limits=False)
        run(mesh)
        assert time.perf_counter() - t0 < 5.0
        assert mesh.ledger.cycles > 0


def test_decode_softmax_pays_software_calls_per_row_not_per_cached_token():
    """The authors' decode normalises with one reciprocal per score row and computes exp as vector passes
    (fast_exp): the software-call share of the attention phase does not grow with the context."""
    from waferllm.engine import cost
    from waferllm.engine.decode import DecodeProgram
    from waferllm.engine.placement import plan_decode
    from waferllm.model.registry import get_config
    from waferllm.spec import get_device

    cfg, base = get_config("smollm2-135m"), get_device("wse2")

    def attention(special: float, tokens: int) -> float:
        spec = base.replace(special_function_cycles=special)
        prog = DecodeProgram(cfg=cfg, plan=plan_decode(cfg, spec, (30, 30), "float16"), spec=spec)
        return cost.layer_ledger(prog, [tokens], tokens // 30 + 2, [0]).cycles_of("attention")

    short, long = (attention(300.0, n) - attention(100.0, n) for n in (120, 1200))
    assert short > 0  # the per-row reciprocal is charged
    assert long == pytest.approx(short)  # ... once per row, whatever the context
    assert attention(100.0, 1200) > attention(100.0, 120)  # while exp and the products grow with it
