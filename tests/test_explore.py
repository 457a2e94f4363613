"""`waferllm explore` and shared traces: a shared trace equals a fresh one; the space, keys, store and resume;
the CLI on a small local Ray runtime; bad input is one line with exit code 2."""

import json
import subprocess
import sys

import pytest

from waferllm.engine import cost, handoff
from waferllm.engine.prefill import layer_ledger as prefill_layer
from waferllm.model import get_config
from waferllm.perf import explore as ex
from waferllm.perf.predict import predict
from waferllm.perf.programs import decode_program, prefill_program
from waferllm.spec import load_device

SMOL = get_config("smollm2-135m")
DEVICES = [{}, {"sram_bytes_per_core": 98304, "clock_hz": 2e9}, {"name": "other", "interwafer_bytes_per_s": 1e9},
           {"width_cores": 700, "power_w": 1.0}, {"sram_bytes_per_core": 20000},  # prefill 24x24 over its SRAM
           {"routes_per_core": 6}]  # over the route limit: traced on its own


@pytest.fixture
def sharing():
    """Fresh caches, sharing on; restored afterwards."""
    handoff.clear_caches()
    was = cost.share_traces(True)
    yield
    cost.share_traces(was)
    handoff.clear_caches()


def _predictions(share: bool) -> list:
    cost.share_traces(share)
    handoff.clear_caches()
    out = []
    for d in DEVICES:
        spec = load_device("wse2", d)
        for kw in (dict(phase="decode", grid="24x24", context=200), dict(phase="decode", grid="30x30", context=64),
                   dict(phase="prefill", grid="30x30", prefill_grid="24x24", input_len=128),
                   dict(phase="e2e", grid="30x30", prefill_grid="30x30", input_len=64, output_len=3)):
            try:
                out.append(predict(SMOL, spec, **kw))
            except Exception as e:  # noqa: BLE001 (an infeasible point must fail the same way)
                out.append(f"{type(e).__name__}: {e}")
    return out


def test_shared_traces_equal_fresh_predictions(sharing):
    fresh = _predictions(False)
    assert _predictions(True) == fresh
    assert sum(isinstance(p, str) for p in fresh) < len(fresh) // 2  # mostly feasible points


def _ledgers(share: bool) -> list:
    cost.share_traces(share)
    handoff.clear_caches()
    out = []
    for d in DEVICES:
        spec = load_device("wse2", d)
        dec = decode_program(SMOL, spec, (30, 30), "float16", 256)
        out += [cost.layer_ledger(dec, [100, 40], 0, [100, 0]), cost.head_ledger(dec, 2), cost.step_ledger(dec, 99),
                prefill_layer(prefill_program(SMOL, spec, (24, 24), "float16"), 128)]
    return out


def test_shared_ledgers_equal_fresh_ones_with_limit_messages(sharing):
    fresh = _ledgers(False)
    shared = _ledgers(True)
    assert shared == fresh
    assert any(led.excess for led in fresh)  # the SRAM and route messages are the device's own


def test_one_trace_per_layer_shape(sharing, monkeypatch):
    calls = []
    real = cost._trace_layer
    monkeypatch.setattr(cost, "_trace_layer", lambda *a: calls.append(1) or real(*a))
    for sram in (49152, 65536, 98304):
        for clock in (1e9, 1.1e9):
            predict(SMOL, load_device("wse2", {"sram_bytes_per_core": sram, "clock_hz": clock}), phase="decode",
                    grid="30x30", context=128)
    assert len(calls) == 1  # SRAM and clock change no traced shape
    predict(SMOL, load_device("wse2", {"alpha_cycles_per_hop": 2.0}), phase="decode", grid="30x30", context=128)
    assert len(calls) == 2  # a latency constant changes the trace's cycles


def test_a_cached_ledger_is_the_callers_to_change(sharing):
    dec = decode_program(SMOL, load_device("wse2"), (30, 30), "float16", 256)
    first = cost.head_ledger(dec)
    first.phases.clear()
    assert cost.head_ledger(dec).phases


def _space(**kw) -> ex.Space:
    base = dict(models=("smollm2-135m",), phases=("decode",), grids=("30x30",), contexts=(128,),
                vary=(("sram_bytes_per_core", (49152, 65536, 81920)),))
    return ex.Space(**(base | kw))


def test_points_drop_unused_lengths_and_repeats():
    pts = ex.points(_space(phases=("decode", "prefill", "e2e"), input_lens=(64, 128), contexts=(128, 256),
                           prefill_grids=("24x24",)))
    dec = [p for p in pts if p.phase == "decode"]
    assert all(p.input_len is None and p.prefill_grid is None for p in dec) and len(dec) == 3 * 2
    assert len([p for p in pts if p.phase == "prefill"]) == 3 * 2  # context does not multiply prefill points
    assert len(pts) == len(set(pts))
    keys = [it.key for it in ex.resolve(pts)]
    assert len(set(keys)) == len(keys) and keys == [it.key for it in ex.resolve(pts)]


def test_key_is_of_the_resolved_device():
    same = ex.resolve(ex.points(_space(vary=(("sram_bytes_per_core", (49152,)),))))
    plain = ex.resolve(ex.points(_space(vary=())))
    assert same[0].key == plain[0].key  # wse2 already has 48 KiB: the same point


def test_infeasible_points_are_stored_results(tmp_path):
    pts = ex.points(_space(grids=("4x4", "30x30"), vary=(("beta_cycles_per_relay", (0.5, 6.5)),)))
    with ex.open_store(tmp_path / "s.duckdb") as store:
        s = ex.explore(ex.resolve(pts), store, executor="local")
        rows = {(r["grid_arg"], r["beta_cycles_per_relay"]): r for r in store.rows()}
    assert s.computed == 4 and s.infeasible == 3
    assert "contradictory latencies" in rows[("4x4", None)]["error"] and not rows[("4x4", None)]["ok"]
    assert "too small for smollm2-135m" in rows[("4x4", 6.5)]["error"]
    assert rows[("30x30", 6.5)]["ok"] and rows[("30x30", 6.5)]["tokens_per_s"] > 0


def test_stopped_sweep_resumes_without_computing_a_point_twice(tmp_path):
    items = ex.resolve(ex.points(_space(grids=("24x24", "30x30"))))
    path = tmp_path / "s.duckdb"
    seen = []

    def stop_after_first(n):
        seen.append(n)
        raise KeyboardInterrupt

    with ex.open_store(path) as store, pytest.raises(KeyboardInterrupt):
        ex.explore(items, store, executor="local", batch_size=2, on_rows=stop_after_first)
    with ex.open_store(path) as store:
        first = {r["key"]: r["run_id"] for r in store.rows()}
        assert len(first) == seen[0] == 2
        s = ex.explore(items, store, executor="local", batch_size=2)
        rows = store.rows()
    assert (s.points, s.resumed, s.computed) == (6, 2, 4)
    assert len(rows) == len({r["key"] for r in rows}) == 6
    assert all(r["run_id"] == first[r["key"]] for r in rows if r["key"] in first)  # kept, not recomputed
    with ex.open_store(path) as store:
        again = ex.explore(items + items[:3], store, executor="local")  # a point listed twice is one point
    assert (again.points, again.computed, again.resumed, again.workers) == (6, 0, 6, 0)


def test_batches_keep_shared_shapes_together():
    items = ex.resolve(ex.points(_space(grids=("24x24", "30x30"), vary=(("sram_bytes_per_core", (49152, 65536)),
                                                                       ("alpha_cycles_per_hop", (1.153, 2.0))))))
    for b in ex.batches(items, 2):
        assert len({(it.point.grid, cost.trace_key(load_device("wse2", dict(it.point.overrides)))) for it in b}) == 1


def test_min_stages_is_the_fewest_regions_memory_allows():
    cfg = get_config("llama3-8b")
    p = ex.Point(device="wse2", model="llama3-8b", phase="decode", grid="420x420", context=4096)
    few = [ex.min_stages(cfg, load_device("wse2", {"sram_bytes_per_core": k * 1024}), p, 420, 420)
           for k in (32, 48, 480)]
    assert few[0] > few[1] > few[2] == 1  # 480 KiB holds all 32 layers on one 420x420 region (88 KiB does too)
    assert ex.min_stages(cfg, load_device("wse2"), p, 8, 8) is None  # one layer does not fit 8x8


def test_pareto_front():
    rows = [{"x": 1, "y": 1}, {"x": 2, "y": 3}, {"x": 2, "y": 2}, {"x": 3, "y": 2}, {"x": 4, "y": 5},
            {"x": None, "y": 9}]
    assert [(r["x"], r["y"]) for r in ex.pareto(rows, "x", "y")] == [(1, 1), (2, 3), (4, 5)]
    assert [(r["x"], r["y"]) for r in ex.pareto(rows, "x", "y", y_max=False)] == [(1, 1)]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "waferllm.cli", "explore", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_explore_cli_on_ray_then_resumed(tmp_path):
    out, png = tmp_path / "e.duckdb", tmp_path / "front.png"
    args = ["--model", "smollm2-135m", "--phase", "decode", "--grid", "24,30", "--context", "128",
            "--vary", "sram_bytes_per_core=49152:65536:16384", "--out", str(out), "--num-cpus", "1", "--json"]
    res = _cli(*args, "--plot", str(png))
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert (s["points"], s["computed"], s["resumed"], s["workers"]) == (4, 4, 0, 1)
    assert s["points_per_s"] > 0 and s["out"] == str(out) and png.stat().st_size > 0
    assert s["front"]["smollm2-135m decode"][0]["sram_bytes_per_core"] == 49152
    again = json.loads(_cli(*args).stdout)
    assert (again["points"], again["computed"], again["resumed"]) == (4, 0, 4)


@pytest.mark.parametrize("args, msg", [
    (["--vary", "sram_per_core=1,2"], "unknown device field 'sram_per_core'; known fields:"),
    (["--vary", "sram_bytes_per_core=9:1:1"], "STOP >= START"),
    (["--vary", "clock_hz=fast"], "bad value for clock_hz: 'fast' is not a number"),
    (["--grid", "big"], "bad grid 'big'"),
    (["--phase", "train"], "unknown phase 'train'; known: prefill, decode, e2e"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--device", "wse2,wse9"], "unknown device 'wse9'"),
    (["--y", "speed"], "unknown column 'speed'; numeric columns:"),
    (["--out", "/no/such/dir/x.duckdb"], "folder '/no/such/dir' does not exist"),
])
def test_explore_bad_input(args, msg, capsys, tmp_path, monkeypatch):
    from waferllm.cli import main

    monkeypatch.chdir(tmp_path)  # the default --out lands here, if anything got that far
    assert main(["explore", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], lines
    assert not list(tmp_path.iterdir())  # refused before any store was made


def test_rows_of_other_code_are_refused():
    ex._same_code([{"code": ex.code_fingerprint()}])
    with pytest.raises(ex.ExploreError, match="other waferllm sources"):
        ex._same_code([{"code": "0123456789ab"}])
