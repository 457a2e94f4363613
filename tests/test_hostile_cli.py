"""Hostile input: NaN and infinity, out-of-range sampling, absurd token counts, bad UTF-8 in argv, misleading
messages. Each is one line on stderr, exit code 2, no traceback and nothing on stdout."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from waferllm import WaferError
from waferllm.cli import main
from waferllm.cli.args import OutputError, json_text
from waferllm.engine import kv
from waferllm.engine.generate import CapacityError, Engine, check_context
from waferllm.engine.sampling import SamplingError, SamplingParams, sample
from waferllm.model import get_config
from waferllm.model.config import ModelConfig
from waferllm.model.weights import random_weights
from waferllm.spec import SpecError, get_device, load_device


def run(capsys, argv) -> tuple[int, str, str]:
    """main(argv) in-process: (exit code, stdout, the single stderr line)."""
    rc = main(argv)
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cap.err, cap.err
    return rc, cap.out, lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """`generate` must refuse bad arguments before loading a checkpoint: loading fails the test."""
    import waferllm.cli.generate as gen

    def load(args):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(gen, "load_model_from_args", load)


# --- NaN and infinity in device figures (the DeviceSpec itself refuses them) -----------------------------
@pytest.mark.parametrize("field, value", [("clock_hz", float("nan")), ("clock_hz", float("inf")),
                                          ("power_w", -float("inf")), ("alpha_cycles_per_hop", float("inf")),
                                          ("message_overhead_cycles", float("nan")), ("power_w", 10 ** 400)])
def test_device_fields_must_be_finite(wse2, field, value):
    with pytest.raises(SpecError, match=f"{field} must be a finite"):
        wse2.replace(**{field: value})


@pytest.mark.parametrize("name, text", [("nan.json", '{"base": "wse2", "clock_hz": NaN}'),
                                        ("inf.json", '{"base": "wse2", "power_w": Infinity}'),
                                        ("inf.toml", 'base = "wse2"\ninterwafer_latency_s = inf\n'),
                                        ("nan.toml", 'base = "wse2"\nfp16_macs_per_cycle = nan\n')])
def test_device_files_with_nan_or_inf(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(SpecError, match="must be a finite positive number, got (nan|inf)"):
        load_device(str(tmp_path / name))


def test_device_file_odd_shapes(tmp_path):
    for text, msg in (('{"base": "wse2", "sources": 5}', '"sources" must be an object'),
                      ('{"base": ["wse2"]}', '"base" must be a preset name'),
                      ('{"base": "wse2", "name": 3}', "device name must be a non-empty string")):
        (tmp_path / "d.json").write_text(text)
        with pytest.raises(SpecError, match=msg):
            load_device(str(tmp_path / "d.json"))
    (tmp_path / "d.json").write_bytes(b'{"base": "wse2", "name": "\xff"}')
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_device(str(tmp_path / "d.json"))


@pytest.mark.parametrize("argv", [
    ["predict", "--model", "llama3-8b", "--set", "clock_hz=nan"],
    ["predict", "--model", "llama3-8b", "--set", "clock_hz=inf", "--json"],
    ["bench", "gemv", "--grid", "8x8", "--set", "power_w=-inf"],
    ["compare", "--set", "interwafer_bytes_per_s=nan", "--json"],
])
def test_cli_non_finite_device_one_line(capsys, argv):
    rc, out, err = run(capsys, argv)
    assert rc == 2 and out == ""
    assert err.startswith("waferllm: error: device 'wse2': ") and "must be a finite positive number" in err


def test_device_file_with_nan_on_the_cli(capsys, tmp_path):
    (tmp_path / "dev.json").write_text('{"base": "wse2", "clock_hz": NaN}')
    rc, out, err = run(capsys, ["predict", "--model", "llama3-8b", "--device", str(tmp_path / "dev.json"), "--json"])
    assert rc == 2 and out == "" and "clock_hz must be a finite positive number, got nan" in err


# --- sampling parameters -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, msg", [
    (dict(temperature=float("nan")), "temperature must be >= 0 and finite"),
    (dict(temperature=float("inf")), "temperature must be >= 0 and finite"),
    (dict(temperature=True), "temperature must be >= 0 and finite"),
    (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
    (dict(top_p=float("inf")), r"top_p must be in \(0, 1\]"),
    (dict(top_k=2.5), "top_k must be an integer >= 0"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(seed=0.5), "seed must be an integer >= 0"),
    (dict(max_new_tokens=1e30), "max_new_tokens must be an integer >= 1"),
    (dict(max_new_tokens=float("nan")), "max_new_tokens must be an integer >= 1"),
    (dict(stop="abc"), "stop must be a sequence of strings"),
])
def test_sampling_params_reject(bad, msg):
    with pytest.raises(SamplingError, match=msg):
        SamplingParams(**bad)


def test_sampling_extremes_stay_finite():
    logits = np.array([1.0, 3.0, 2.0, -5.0], np.float32)
    rng = np.random.default_rng(0)
    # a subnormal temperature is greedy, not NaN (softmax of inf - inf)
    assert sample(logits, SamplingParams(temperature=1e-320, top_k=2), rng) == 1
    assert sample(logits, SamplingParams(temperature=1e-320, top_p=0.5), rng) == 1
    # top_k past the vocabulary keeps every token (np.partition would raise)
    assert {sample(logits, SamplingParams(temperature=5.0, top_k=1000), rng) for _ in range(200)} >= {0, 1, 2}


@pytest.mark.parametrize("args, msg", [
    (["--temperature", "nan"], "temperature must be >= 0 and finite, got nan"),
    (["--temperature", "inf"], "temperature must be >= 0 and finite, got inf"),
    (["--top-p", "nan"], r"top_p must be in (0, 1], got nan"),
    (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["--top-k", "-3"], "top_k must be an integer >= 0"),
    (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
    (["--grid", "99999x1"], "grid 99999x1 does not fit device wse2"),
    (["--prefill-grid", "1x99999"], "prefill grid 1x99999 does not fit device wse2"),
    (["--prefill-grid", "big"], "bad prefill grid 'big'; expected auto, none or ROWSxCOLS"),
    (["--set", "clock_hz=nan"], "clock_hz must be a finite positive number"),
])
def test_generate_refuses_before_loading(capsys, no_model_load, args, msg):
    rc, out, err = run(capsys, ["generate", "--prompt", "a", *args])
    assert rc == 2 and out == "" and msg in err and err.startswith("waferllm: error: ")


# --- capacity: exact for any size, the binding limit first -----------------------------------------------
def test_fullest_row_matches_counts_and_never_overflows():
    for policy in kv.POLICIES:
        for rows in (1, 3, 8):
            for p in range(0, 20):
                for n in range(p, p + 30):
                    assert kv.fullest_row(policy, n, p, rows) == int(np.max(kv.counts(policy, n, p, rows, np)))
    assert kv.fullest_row("shift", 10 ** 30, 7, 20) == 5 * 10 ** 28
    assert kv.fullest_row("concat", 10 ** 30, 7, 20) == 10 ** 30 - 7 + 1


def _tiny(max_seq_len: int) -> ModelConfig:
    return ModelConfig(name="tiny", arch="llama", vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       head_dim=8, ffn_dim=48, norm_eps=1e-5, rope_theta=1e4, max_seq_len=max_seq_len)


@pytest.fixture(scope="module")
def small_wafer():
    return get_device("wse2").replace(name="small", width_cores=12, height_cores=12, sram_bytes_per_core=1 << 14)


def test_capacity_names_the_binding_limit(small_wafer):
    cfg = _tiny(128)
    eng = Engine(cfg, random_weights(cfg), small_wafer, grid="4x4", prefill_grid=None, max_tokens=96)
    for max_new in (10 ** 30, 2 ** 63, 200):  # the model's context binds: said first, no OverflowError
        with pytest.raises(CapacityError, match=r"exceeds the context of tiny \(128 tokens\)") as e:
            eng.check_capacity(5, max_new)
        assert "policy" not in str(e.value) and "at most 123 with this prompt" in str(e.value)
    with pytest.raises(CapacityError, match="exceeds this engine's limit of 96 tokens"):
        eng.check_capacity(5, 100)
    with pytest.raises(CapacityError, match=r"^prompt \(200 tokens\) .* \(128 tokens\); shorten the prompt$"):
        eng.check_capacity(200, 1)


def test_kv_capacity_message_kept(small_wafer):
    cfg = _tiny(10 ** 9)
    eng = Engine(cfg, random_weights(cfg), small_wafer, grid="2x2", prefill_grid=None, max_tokens=10 ** 6)
    cap = eng.plan.kv_capacity_tokens()
    with pytest.raises(CapacityError, match=f"KV capacity of this plan: shift policy {cap['shift']}, concat "
                                            f"policy {cap['concat']} tokens"):
        eng.check_capacity(5, cap["shift"])
    eng.check_capacity(5, cap["shift"] - 5)  # exactly full: fits


def test_auto_grid_says_what_the_largest_grid_holds(small_wafer):
    cfg = _tiny(10 ** 9)
    with pytest.raises(CapacityError, match=r"a KV cache of 10000000 tokens does not fit small at any square "
                                            r"grid: the largest, 12x12, holds \d+ tokens \(shift policy\)"):
        Engine(cfg, random_weights(cfg), small_wafer, max_tokens=10 ** 7, prefill_grid=None)


def test_long_prompt_reports_the_model_context():
    """A 20,000-token prompt is over the model's 8192-token context: that limit, not a KV figure."""
    with pytest.raises(CapacityError) as e:
        check_context(get_config("smollm2-135m"), 20_000, 64)
    assert str(e.value) == ("prompt (20000 tokens) + max_new_tokens (64) = 20064 tokens exceeds the context of "
                            "smollm2-135m (8192 tokens); shorten the prompt")


# --- messages: the prefix once, bad UTF-8 named, JSON always valid --------------------------------------
def test_error_prefix_appears_once(capsys):
    rc, _, err = run(capsys, ["predict"])
    assert rc == 2 and err == "waferllm predict: error: the following arguments are required: --model"
    rc, _, err = run(capsys, ["predict", "--model", "llama3-8b", "--phase", "warp"])
    assert rc == 2 and err.startswith("waferllm predict: error: argument --phase: invalid choice: 'warp'")
    rc, _, err = run(capsys, ["frobnicate"])
    assert rc == 2 and err.startswith("waferllm: error: argument command: invalid choice: 'frobnicate'")
    rc, _, err = run(capsys, ["compare", "--gpus", "x"])  # a command's own ArgError: the plain prefix
    assert rc == 2 and err == "waferllm: error: bad --gpus 'x'; expected positive integers, e.g. 1,8,16"


@pytest.mark.parametrize("argv, name", [
    (["generate", "--prompt", "\udcff"], "--prompt"),
    (["generate", "--prompt", "ok", "--stop=a\udcfeb"], "--stop"),
    (["generate", "--system", "x\udc80", "--chat"], "--system"),
    (["predict", "--model", "llama\udcff"], "--model"),
])
def test_invalid_utf8_in_argv(capsys, no_model_load, argv, name):
    """Bytes that are not UTF-8 reach sys.argv as lone surrogates (surrogateescape)."""
    rc, out, err = run(capsys, argv)
    assert rc == 2 and out == "" and err == f"waferllm: error: {name} is not valid UTF-8"


def test_json_output_is_strict(capsys, monkeypatch):
    assert json.loads(json_text({"a": [1.5, None]})) == {"a": [1.5, None]}
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(OutputError, match="non-finite number"):
            json_text({"x": [bad]})
    import waferllm.cli.bench as bench

    monkeypatch.setattr(bench, "speedups", lambda results: [float("nan")] * len(results))
    rc, out, err = run(capsys, ["bench", "gemv", "--grid", "8x8", "--shape", "256x256", "--algo", "meshgemv", "--json"])
    assert rc == 1 and out == "" and "non-finite number" in err  # never a half-written or NaN-bearing JSON


def test_autotune_skips_unusable_times(monkeypatch, wse2):
    """A cost model that gives 0 s (the old --set clock_hz=inf) is a reason, not a ZeroDivisionError."""
    import waferllm.perf.autotune as autotune

    class Led:
        time_s = 0.0

    monkeypatch.setattr(autotune, "step_ledger", lambda *a, **k: Led())
    pt = autotune.decode_point(get_config("llama3-8b"), wse2, 420, "float16", 4096)
    assert pt.tokens_per_s is None and "step time of 0.0 s" in pt.reason
    with pytest.raises(WaferError, match="no candidate grid fits"):
        autotune.best([pt])


# --- with the bundled model: the limits a user meets first -------------------------------------------------
def test_generate_context_binds_before_any_grid(capsys):
    rc, out, err = run(capsys, ["generate", "--prompt", "word " * 20_000])
    assert rc == 2 and out == ""
    assert "exceeds the context of smollm2-135m (8192 tokens); shorten the prompt" in err and "policy" not in err
    rc, out, err = run(capsys, ["generate", "--prompt", "hi", "--max-new-tokens", "10000000"])
    assert rc == 2 and "+ max_new_tokens (10000000)" in err and "context of smollm2-135m (8192 tokens)" in err


# --- the real command: exit code, one stderr line, argv as raw bytes ---------------------------------------
@pytest.mark.parametrize("argv, msg", [
    ([b"predict", b"--model", b"llama3-8b", b"--set", b"clock_hz=nan"], "clock_hz must be a finite positive number"),
    ([b"generate", b"--temperature", b"nan", b"--prompt", b"a"], "temperature must be >= 0 and finite, got nan"),
    ([b"generate", b"--seed", b"-1", b"--prompt", b"a"], "seed must be an integer >= 0, got -1"),
    ([b"generate", b"--prompt", b"\xff"], "--prompt is not valid UTF-8"),
])
def test_subprocess_one_line_exit_2(argv, msg):
    res = subprocess.run([sys.executable.encode(), b"-m", b"waferllm.cli", *argv], capture_output=True, timeout=300)
    err = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 2 and res.stdout == b"", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("waferllm: error: ") and msg in lines[0], err


@pytest.mark.parametrize("argv, msg", [
    (["sweep", "--model", ""], "--model is empty"),
    (["sweep", "--paper", "--model", " "], "--model is empty"),
    (["predict", "--model", "", "--phase", "decode"], "empty model name; presets:"),
    (["generate", "--model", "", "--prompt", "a"], "empty model name; known: smollm2-135m"),
])
def test_an_empty_model_name_is_an_error_not_the_default(capsys, argv, msg):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
