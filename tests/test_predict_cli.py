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
    (["--model", "llama3-8b", "--grid", "2000x2000"], "does not fit device wse2"),
    (["--model", "llama3-8b", "--grid", "4x4"], "too small for llama3-8b"),
    (["--model", "llama3-8b", "--device", "wse9"], "known devices: wse2, wse3"),
])
def test_predict_bad_input(args, msg):
    res = _run(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr


@pytest.mark.parametrize("args, msg", [
    (["--phase", "prefill", "--context", "64"], "--context is the KV length of --phase decode"),
    (["--phase", "prefill", "--output-len", "8"], "--output-len is for --phase e2e"),
    (["--phase", "decode", "--input-len", "64"], "--input-len is the prompt of --phase prefill/e2e"),
    (["--phase", "decode", "--output-len", "8"], "--output-len is for --phase e2e"),
    (["--phase", "decode", "--prefill-grid", "480x480"], "--prefill-grid is unused by --phase decode"),
    (["--phase", "e2e", "--context", "64"], "--context is the KV length of --phase decode"),
    (["--no-limits"], "--no-limits has no effect on `waferllm predict`"),
])
def test_predict_refuses_flags_its_phase_ignores(args, msg, capsys):
    """No flag is silently ignored: one that the phase does not read is one line naming the flag that would do."""
    from waferllm.cli import main

    assert main(["predict", "--model", "llama3-8b", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_predict_prefill_grid_flag_sets_the_prefill_grid():
    """--phase prefill --grid RxC prefills on RxC (the decode grid of the hand-off stays the autotuner's);
    with --prefill-grid as well, --grid is the decode grid the KV cache and weights are handed to."""
    from waferllm.cli import build_parser
    from waferllm.cli.predict import resolve

    def kw(*argv):
        return resolve(build_parser().parse_args(["predict", "--model", "llama3-8b", *argv]))

    k = kw("--phase", "prefill", "--grid", "480x480")
    assert (k["grid"], k["prefill_grid"]) == ("auto", "480x480")
    k = kw("--phase", "prefill", "--grid", "420x420", "--prefill-grid", "600x600")
    assert (k["grid"], k["prefill_grid"]) == ("420x420", "600x600")
    k = kw("--phase", "e2e", "--grid", "420x420")
    assert (k["grid"], k["prefill_grid"]) == ("420x420", "auto")
    assert (k["context"], k["input_len"], k["output_len"]) == (4096, 4096, 128)  # the defaults when not given
    res = _run("--model", "llama3-8b", "--phase", "prefill", "--grid", "480x480", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["prefill_grid"] == "480x480"


def test_predict_past_the_context_warns_and_costs():
    """Llama2-13B at 4096 + 128 tokens (the paper ran it with the 4K limit removed): one warning, then the costs."""
    res = _run("--model", "llama2-13b", "--phase", "e2e", "--input-len", "4096", "--output-len", "128",
               "--grid", "375x375", "--prefill-grid", "750x750", "--json")
    assert res.returncode == 0, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("waferllm: warning: 4224 tokens is beyond llama2-13b's context of "
                                               "4096 tokens"), err
    o = json.loads(res.stdout)
    assert o["tokens_per_s"] > 0 and o["grid"] == "375x375" and o["prefill_grid"] == "750x750"
    assert o["warnings"] == [err[0].removeprefix("waferllm: warning: ")]


def test_llama31_presets_are_the_published_configs():
    """The Llama 3.1 presets (Cerebras Inference comparison): sizes as published, 128K context via llama3 RoPE."""
    from waferllm.model import get_config
    from waferllm.model.presets import PRESETS, SOURCES
    from waferllm.perf.predict import check_args

    assert set(SOURCES) == set(PRESETS) and all(v.startswith("https://huggingface.co/") for v in SOURCES.values())
    for name, billions in (("llama3.1-8b", 8.03), ("llama3.1-70b", 70.55), ("llama3.1-405b", 405.85)):
        cfg = get_config(name)
        assert cfg.param_count() / 1e9 == pytest.approx(billions, abs=0.01), name
        rs = cfg.rope_scaling
        assert (rs.kind, rs.factor, rs.low_freq_factor, rs.high_freq_factor, rs.original_max_position_embeddings) == \
            ("llama3", 8.0, 1.0, 4.0, 8192)
        assert (cfg.max_seq_len, cfg.rope_theta, cfg.n_kv_heads, cfg.vocab_size) == (131072, 500000.0, 8, 128256)
        assert check_args(cfg, "decode", context=100_000) == []  # inside the 128K context: no warning
    assert check_args(get_config("llama3-8b"), "decode", context=100_000)  # Llama 3 (8K) warns at the same length
    # Llama-3.1-8B-Instruct's config.json, through the HF parser, is the preset
    hf = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
          "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
          "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072, "hidden_act": "silu",
          "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": False,
          "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    from waferllm.model import ModelConfig

    assert ModelConfig.from_hf_config(hf, name="llama3.1-8b") == get_config("llama3.1-8b")


def test_predict_e2e_batch_json():
    res = _run("--model", "llama3-8b", "--phase", "e2e", "--grid", "420x420", "--prefill-grid", "480x480",
               "--input-len", "1024", "--output-len", "16", "--batch", "2", "--dtype", "float32", "--json")
    assert res.returncode == 0, res.stderr
    o = json.loads(res.stdout)
    assert o["tokens_per_s"] == pytest.approx(16 * 2 / o["time_s"])
    assert o["time_s"] == pytest.approx(2 * o["ttft_s"] + 15 * o["tpot_s"])
    assert o["wafers"] >= 2 and "decode/interwafer" in o["breakdown"]  # 8B at 32 bit overflows one wafer
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


def test_mesh_oblivious_strategies_are_slower_as_the_paper_measured():
    """T10-style (crossbar memory) and Ladder-style (shared memory) plans on the same wafer (paper s7): T10's
    decode a few times slower than ours, Ladder's two orders; both prefills two-plus orders slower."""
    from waferllm.model import get_config
    from waferllm.perf.predict import predict
    from waferllm.spec import get_device

    cfg, spec = get_config("llama3-8b"), get_device("wse2")
    kw = dict(grid="420x420", prefill_grid="660x660", input_len=1024, context=1024)
    ours = {ph: predict(cfg, spec, phase=ph, **kw).tokens_per_s for ph in ("decode", "prefill")}
    gaps = {}
    for strategy in ("t10", "ladder"):
        dec = predict(cfg, spec, phase="decode", strategy=strategy, **kw)
        pre = predict(cfg, spec, phase="prefill", strategy=strategy, **kw)
        assert dec.strategy == strategy
        gaps[strategy] = ours["decode"] / dec.tokens_per_s, ours["prefill"] / pre.tokens_per_s
    assert 3 < gaps["t10"][0] < 20 and gaps["ladder"][0] > 100  # decode: latency-bound collectives
    assert gaps["t10"][1] > 30 and gaps["ladder"][1] > 3 * gaps["t10"][1]  # prefill: one exchange per step


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
