"""`waferllm predict`: shape-only predictions for presets; bad input is one line with exit code 2."""

import json
import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "waferllm.cli", "predict", *args], capture_output=True, text=True,
                          timeout=300)


def test_predict_prefill_json():
    res = _run("--model", "llama3-8b", "--phase", "prefill", "--grid", "480x480", "--prefill-grid", "480x480",
               "--input-len", "4096", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["prefill_grid"] == "480x480" and out["tokens_per_s"] == pytest.approx(4096 / out["time_s"])
    assert "prefill/layer/attention" in out["breakdown"] and "prefill/layer/gate_up" in out["breakdown"]


@pytest.mark.parametrize("args, msg", [
    (["--model", "foo"], "unknown model 'foo'"),
    (["--model", "llama3-8b", "--grid", "0x3"], "bad grid '0x3'"),
    (["--model", "llama3-8b", "--grid", "big"], "bad grid 'big'; expected auto or ROWSxCOLS"),
    (["--model", "llama3-8b", "--phase", "prefill", "--prefill-grid", "1000x10"],
     "prefill grid 1000x10 does not fit device wse2 (994x750 cores"),
    (["--model", "llama3-8b", "--context", "0"], "--context must be > 0"),
    (["--model", "llama3-8b", "--context", "999999"], "beyond llama3-8b's context"),
    (["--model", "llama3-8b", "--grid", "2000x2000"], "does not fit device wse2"),
    (["--model", "llama3-8b", "--grid", "4x4"], "too small for llama3-8b"),
    (["--model", "llama3-8b", "--device", "wse9"], "known devices: wse2, wse3"),
])
def test_predict_bad_input(args, msg):
    res = _run(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr


def test_predict_e2e_batch_json():
    res = _run("--model", "llama3-8b", "--phase", "e2e", "--grid", "420x420", "--prefill-grid", "480x480",
               "--input-len", "1024", "--output-len", "16", "--batch", "2", "--json")
    assert res.returncode == 0, res.stderr
    o = json.loads(res.stdout)
    assert o["tokens_per_s"] == pytest.approx(16 * 2 / o["time_s"])
    assert o["time_s"] == pytest.approx(2 * o["ttft_s"] + 15 * o["tpot_s"])
    assert o["wafers"] >= 2 and "decode/interwafer" in o["breakdown"]  # 8B at 16 bit overflows one wafer
    assert 0 < o["utilization"]["mac"] < 1 and 0 < o["utilization"]["sram_bandwidth"] < 1
    for k in ("cycles", "grid", "prefill_grid", "breakdown", "peak_core_bytes", "routes_per_core",
              "kv_capacity_tokens", "fits"):
        assert k in o


def test_predict_agrees_with_the_engine(engine_for, smollm):
    """predict's shape-only TTFT and TPOT equal the cycles the numeric engine charged for the same plan."""
    from waferllm.engine.sampling import SamplingParams
    from waferllm.engine.textgen import prompt_ids
    from waferllm.perf.predict import predict

    eng = engine_for("20x20")
    ids = prompt_ids(smollm[2], "What is the capital of France?", chat=True)
    timing = None
    for ev in eng.generate(ids, SamplingParams(max_new_tokens=3, ignore_eos=True)):
        timing = ev
    from waferllm.engine.batch import Timing

    t = Timing()
    list(eng.generate(ids, SamplingParams(max_new_tokens=3, ignore_eos=True), t))
    pre = predict(eng.cfg, eng.spec, phase="prefill", grid="20x20", prefill_grid="20x20", input_len=len(ids),
                  dtype="float32")
    dec = predict(eng.cfg, eng.spec, phase="decode", grid="20x20", context=len(ids) + 1, dtype="float32")
    assert pre.ttft_s == pytest.approx(t.ttft_s, rel=1e-12)
    assert dec.tpot_s == pytest.approx(t.decode_s[0], rel=1e-12)
    assert timing is not None


def test_mesh_oblivious_strategies_are_orders_of_magnitude_slower():
    """T10-style (crossbar memory) and Ladder-style (shared memory) plans on the same wafer (paper s7)."""
    from waferllm.model import get_config
    from waferllm.perf.predict import predict
    from waferllm.spec import get_device

    cfg, spec = get_config("llama3-8b"), get_device("wse2")
    kw = dict(grid="360x360", prefill_grid="660x660", input_len=1024, context=1024)
    ours = {ph: predict(cfg, spec, phase=ph, **kw).tokens_per_s for ph in ("decode", "prefill")}
    for strategy in ("t10", "ladder"):
        dec = predict(cfg, spec, phase="decode", strategy=strategy, **kw)
        pre = predict(cfg, spec, phase="prefill", strategy=strategy, **kw)
        assert dec.strategy == strategy
        assert ours["decode"] / dec.tokens_per_s > 100  # decode is all latency: two-plus orders of magnitude
        assert ours["prefill"] / pre.tokens_per_s > 2  # prefill is mostly compute, the gap is smaller


def test_unknown_strategy_one_line():
    res = _run("--model", "llama3-8b", "--strategy", "cerebras")
    assert res.returncode == 2 and "invalid choice" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_grids_resolve_auto_by_the_callers_meaning(wse2):
    """resolve_grids: explicit grids pass through (checked), `auto` asks the strategy, only where asked."""
    from waferllm.engine.grids import AutoGrids, resolve_grids
    from waferllm.engine.placement import auto_grid, smallest_fit
    from waferllm.model import get_config

    asked = []
    spy = AutoGrids(name="spy", decode=lambda: asked.append("decode") or (30, 40),
                    prefill=lambda rc: asked.append(("prefill", rc)) or (7, 7))
    g = resolve_grids(wse2, grid="20x30", prefill_grid=(16, 24), auto=spy)
    assert (g.decode, g.prefill, asked) == ((20, 30), (16, 24), [])
    g = resolve_grids(wse2, grid="auto", prefill_grid="auto", auto=spy)
    assert (g.decode, g.prefill, asked) == ((30, 40), (7, 7), ["decode", ("prefill", (30, 40))])
    assert resolve_grids(wse2, grid="2x3", prefill_grid="none", auto=spy).prefill is None
    assert resolve_grids(wse2, grid="2x3", prefill_grid=None, auto=spy).prefill is None
    cfg = get_config("smollm2-135m")
    eng = resolve_grids(wse2, grid="auto", prefill_grid="auto", auto=smallest_fit(cfg, wse2, "float32", 256))
    assert eng.decode == auto_grid(cfg, wse2, "float32", 256) and eng.decode[0] == eng.decode[1]
    assert resolve_grids(wse2, grid="23x29", auto=smallest_fit(cfg, wse2, "float32", 256)).prefill == (23, 23)


@pytest.mark.parametrize("grid, msg", [
    ("0x3", "bad grid '0x3': rows and columns must be >= 1"),
    ("3 by 3", "bad grid '3 by 3'; expected auto or ROWSxCOLS"),
    ((1, 2, 3), "bad grid (1, 2, 3)"),
    ("995x10", "grid 995x10 does not fit device wse2 (994x750 cores, rows x columns)"),
])
def test_grids_one_clear_error(wse2, grid, msg):
    from waferllm.engine.grids import check_grid
    from waferllm.machine import GridError

    with pytest.raises(GridError) as e:
        check_grid(wse2, grid)
    assert msg in str(e.value)


def test_predict_auto_is_the_autotuner(wse2):
    """predict's `auto` decode grid is the autotuner's pick, not the engine's smallest fit."""
    from waferllm.engine.placement import auto_grid
    from waferllm.model import get_config
    from waferllm.perf.autotune import tune_decode
    from waferllm.perf.predict import predict

    cfg = get_config("llama3-8b")
    side = tune_decode(cfg, wse2, "float16", 4096).side
    assert predict(cfg, wse2, phase="decode", context=4096).grid == f"{side}x{side}"
    assert (side, side) != auto_grid(cfg, wse2, "float16", 4096)
