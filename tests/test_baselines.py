"""The paper's mesh-oblivious baselines (machine/baselines.py, `--strategy t10|ladder`): each primitive's cost
follows its documented mechanism, and the programs built on them keep the published shape (paper Tables 2-4)."""

import pytest

from waferllm.machine import baselines
from waferllm.machine.mesh import Mesh


@pytest.fixture(scope="module")
def meshes(wse2):
    return {st: Mesh(wse2, 600, 600, strategy=st, limits=False) for st in ("t10", "ladder")}


def test_t10_shift_is_an_exchange_plus_the_wrap_around_edge(wse2, meshes):
    s = wse2
    cyc, hops, stages = baselines.shift_cost(meshes["t10"], "t10", 600, 400)
    assert (hops, stages) == (599, 0)
    assert cyc == pytest.approx(s.t10_exchange_cycles + s.message_overhead_cycles + 599 * s.alpha_cycles_per_hop
                                + 400 / s.link_bytes_per_cycle)
    assert baselines.shift_cost(meshes["t10"], "t10", 1, 400) == (0.0, 0.0, 0.0)


def test_t10_collectives_are_relayed_at_every_hop(wse2, meshes):
    """A reduce chain to one end then a broadcast back, both relayed: 2(p - 1) relayed hops; no fixed exchange."""
    s, m = wse2, meshes["t10"]
    cyc, hops, stages = baselines.allreduce_cost(m, "t10", 300, 10, 4)
    assert hops == stages == 2 * 299
    chain = s.message_overhead_cycles + 299 * s.t10_relay_cycles_per_hop + 10 * s.relay_cycles_per_element
    back = s.message_overhead_cycles + 299 * s.t10_relay_cycles_per_hop + 40 / s.link_bytes_per_cycle
    assert cyc == pytest.approx(chain + back)
    assert cyc < s.t10_exchange_cycles  # decode's collectives never pay the compute-shift exchange
    cyc_b, hops_b, _ = baselines.broadcast_cost(m, "t10", 600, 100, 64)
    assert hops_b == 499 and cyc_b == pytest.approx(s.message_overhead_cycles + 499 * s.t10_relay_cycles_per_hop
                                                    + 64 / s.link_bytes_per_cycle)


def test_ladder_every_primitive_is_one_shared_memory_access(wse2, meshes):
    s, m = wse2, meshes["ladder"]
    access = s.ladder_access_cycles + 2 * 599 * (s.ladder_relay_cycles_per_hop + 256 / s.link_bytes_per_cycle)
    assert baselines.shift_cost(m, "ladder", 600, 256) == (pytest.approx(access), 1198.0, 1198.0)
    assert baselines.broadcast_cost(m, "ladder", 600, 0, 256)[0] == pytest.approx(access)
    assert baselines.allreduce_cost(m, "ladder", 600, 64, 4)[0] == pytest.approx(access)
    assert baselines.serial("ladder") and not baselines.serial("t10")


def test_ladder_accesses_in_one_step_queue(wse2):
    """Two shifts in one step: T10's overlap (the step costs the slower), Ladder's add up (blocking accesses)."""
    import jax
    import numpy as np

    from waferllm.machine import noc

    x = jax.ShapeDtypeStruct((60, 60, 8, 8), np.float16)
    cost = {}
    for st in ("t10", "ladder"):
        m = Mesh(wse2, 60, 60, strategy=st, limits=False)
        with m.step():
            noc.shift(m, x, "x")
            noc.shift(m, x, "y")
        one = baselines.shift_cost(m, st, 60, 128)[0]
        cost[st] = (m.ledger.cycles - wse2.step_overhead_cycles) / one  # the step's own fixed cost aside
    assert cost["t10"] == pytest.approx(1.0, rel=1e-3) and cost["ladder"] == pytest.approx(2.0, rel=1e-3)


def test_baseline_prefill_hardly_depends_on_the_prompt(wse2):
    """Table 2 gives T10 and Ladder the same prefill time for 2048 and 4096 tokens (within a few percent): their
    cost is per exchange or access, not per byte."""
    from waferllm.model import get_config
    from waferllm.perf.predict import artifact_prefill_tps
    from waferllm.perf.programs import prefill_program

    cfg = get_config("llama3-8b")
    for st in ("t10", "ladder"):
        t = {n: n / artifact_prefill_tps(prefill_program(cfg, wse2, (480, 480), "float16", st), n) for n in (2048, 4096)}
        assert 1.0 <= t[4096] / t[2048] < 1.15, (st, t)


def test_baselines_slow_down_as_the_grid_grows(wse2):
    """Paper s7: T10 and Ladder get slower on more cores, in decode and in prefill."""
    from waferllm.model import get_config
    from waferllm.perf.predict import artifact_decode_tps, artifact_prefill_tps
    from waferllm.perf.programs import decode_program, prefill_program

    cfg = get_config("llama3-8b")
    for st in ("t10", "ladder"):
        dec = [artifact_decode_tps(decode_program(cfg, wse2, (g, g), "float16", 4096, strategy=st), 4096)
               for g in (420, 660)]
        pre = [artifact_prefill_tps(prefill_program(cfg, wse2, (g, g), "float16", st), 4096) for g in (480, 720)]
        assert dec[1] < dec[0] and pre[1] < pre[0], (st, dec, pre)


def test_baseline_rows_within_ten_percent(wse2):
    """Every Llama3-8B T10 and Ladder row of Tables 3 and 4 (the rows their constants are fitted to)."""
    from waferllm.perf.validation import baseline_targets

    for t in baseline_targets():
        assert t.predict(wse2) == pytest.approx(float(t.published), rel=0.10), t.id


@pytest.mark.slow
def test_presets_equal_the_baseline_fit(wse2):
    """The baselines' constants in the preset are what `waferllm calibrate` (perf/baseline_fit.py) produces."""
    from waferllm.perf.baseline_fit import fit_baselines, fit_fields

    fitted, report = fit_baselines(wse2)
    for k in fit_fields():
        assert getattr(fitted, k) == pytest.approx(getattr(wse2, k), rel=0.03), k
    assert set(report) == {"t10", "ladder"}
    assert all(abs(v) <= 10 for b in report.values() for v in b["residual_pct"].values())
