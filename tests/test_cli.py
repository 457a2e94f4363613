"""The command line: tables, JSON keys, plots, and one-line errors with exit code 2."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from waferllm.cli import main

JSON_KEYS = {"kernel", "algo", "device", "grid", "shape", "cycles", "time_s", "compute_cycles", "comm_cycles",
             "compute_efficiency", "peak_core_bytes", "routes_per_core"}


def test_bench_gemv_table(capsys):
    assert main(["bench", "gemv", "--device", "wse2", "--grid", "720x720", "--shape", "16384x16384"]) == 0
    out = capsys.readouterr().out
    for col in ("algorithm", "cycles", "compute %", "comm %", "compute eff", "peak/core", "routes/core",
                "speed-up vs pipeline"):
        assert col in out
    assert "meshgemv" in out and "ring" in out


def test_bench_groups_sets_the_meshgemv_k_tree(capsys):
    argv = ["bench", "gemv", "--grid", "512x512", "--shape", "16384x16384", "--json"]
    assert main(argv) == 0
    default = {r["algo"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(argv + ["--groups", "29"]) == 0
    tuned = {r["algo"]: r for r in json.loads(capsys.readouterr().out)}
    assert default["meshgemv"]["groups"] is None and tuned["meshgemv"]["groups"] == 29
    assert tuned["meshgemv"]["cycles"] != default["meshgemv"]["cycles"]  # 512 cores: the authors' 32 groups or 29
    for a in ("pipeline", "ring"):  # no groups: unchanged
        assert tuned[a]["cycles"] == default[a]["cycles"] and tuned[a]["groups"] is None


def test_bench_json_keys(capsys):
    assert main(["bench", "gemm", "--grid", "360x360", "--shape", "2048x2048x2048", "--algo", "all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["algo"] for r in rows] == ["summa", "meshgemm", "cannon"]
    for r in rows:
        assert JSON_KEYS <= set(r)
        assert r["kernel"] == "gemm" and r["grid"] == "360x360" and r["device"] == "wse2"
    assert rows[1]["cycles"] < rows[0]["cycles"]


def test_bench_plot(tmp_path, capsys):
    png = tmp_path / "lat.png"
    assert main(["bench", "gemv", "--grid", "240x240", "--shape", "4096x4096", "--plot", str(png), "--json"]) == 0
    assert png.stat().st_size > 1000
    json.loads(capsys.readouterr().out)


def test_bench_device_overrides(capsys):
    assert main(["bench", "gemv", "--grid", "8x8", "--shape", "4096x4096", "--algo", "meshgemv", "--json",
                 "--set", "sram_bytes_per_core=1048576"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["peak_core_bytes"] > 49152


@pytest.mark.slow
def test_presets_equal_the_calibration_fit(wse2):
    """The fitted constants in the preset are what `waferllm calibrate` produces from calibration.json."""
    from waferllm.perf.calibrate import FIT_FIELDS, calibrate

    from waferllm.perf.calibrate import e2e_targets, kernel_targets, llama_targets

    fitted, report = calibrate(wse2)
    assert fitted.fp16_macs_per_cycle == wse2.fp16_macs_per_cycle
    for k in FIT_FIELDS:  # the near-zero overheads sit in a flat direction of the fit: compare in cycles
        assert getattr(fitted, k) == pytest.approx(getattr(wse2, k), rel=0.03, abs=6.0), k
    for t in [t for t in kernel_targets() if t.check == "within10"] + llama_targets() + e2e_targets():  # fitted
        assert t.predict(fitted) == pytest.approx(t.predict(wse2), rel=0.01), t.id
    assert report["joint"]["cost_by_fp16"]["4.0"] < report["joint"]["cost_by_fp16"]["2.0"]
    assert all(abs(v) <= 10 for v in report["joint"]["residual_pct"].values()), report["joint"]["residual_pct"]


def test_fit_penalises_a_figure_only_outside_its_band():
    """The joint fit's band term: zero within +-10% less the 1% margin, growing in log ratio outside it."""
    import math

    from waferllm.perf.calibrate import _outside_band

    assert _outside_band(1.0) == 0 and _outside_band(1.085) == 0 and _outside_band(0.912) == 0
    assert _outside_band(1.105) == pytest.approx(math.log(1.105 / (1.1 * 0.99)))
    assert _outside_band(0.85) == pytest.approx(math.log(0.9 * 1.01 / 0.85))
    assert _outside_band(1.2) > _outside_band(1.1) > 0


@pytest.mark.parametrize("argv, msg", [
    (["bench", "gemv", "--grid", "0x5"], "bad grid '0x5'"),
    (["bench", "gemv", "--grid=-3x5"], "bad grid"),
    (["bench", "gemv", "--grid", "abc"], "bad grid 'abc'"),
    (["bench", "gemv", "--base-url", "http://x"], "--base-url does not apply to `waferllm bench gemv`"),
    (["bench", "serve", "--grid", "8x8", "--no-limits"], "--no-limits, --grid do not apply to `waferllm bench serve`"),
    (["bench", "gemv", "--num", "3"], "unrecognized arguments: --num"),  # no abbreviations
    (["bench", "gemv", "--grid", "995x10"], "does not fit device wse2"),
    (["bench", "gemv", "--shape", "16384"], "bad gemv shape"),
    (["bench", "gemm", "--shape", "2x0x3"], "bad gemm shape"),
    (["bench", "gemv", "--algo", "summa"], "unknown gemv algorithm 'summa'; known: meshgemv, pipeline, ring, all"),
    (["bench", "gemv", "--device", "wse9"], "unknown device 'wse9'; known devices: wse2, wse3"),
    (["bench", "gemv", "--dtype", "int3"], "unknown dtype 'int3'"),
    (["bench", "gemv", "--set", "sram=1"], "unknown device field 'sram'"),
    (["bench", "conv"], "invalid choice"),
    (["bench", "gemv", "--grid", "4x4", "--shape", "4096x4096"], "out of SRAM"),
    (["bench", "gemm", "--groups", "3"], "--groups applies to `waferllm bench gemv`"),
    (["bench", "gemv", "--algo", "ring", "--groups", "3"], "--groups applies to `waferllm bench gemv`"),
    (["bench", "gemv", "--grid", "8x8", "--groups", "9"], "--groups 9 is not a group count for a line of 8 cores"),
    (["bench", "gemv", "--groups", "3", "--plot", "x.png"], "--groups fixes one K-tree group count"),
    (["bench", "serve", "--groups", "3"], "--groups does not apply to `waferllm bench serve`"),
])
def test_bad_input_is_one_line_exit_2(argv, msg):
    res = subprocess.run([sys.executable, "-m", "waferllm.cli", *argv], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_bad_device_file(tmp_path):
    f = tmp_path / "dev.json"
    f.write_text(json.dumps({"base": "wse2", "cores_wide": 10}))
    res = subprocess.run([sys.executable, "-m", "waferllm.cli", "bench", "gemv", "--device", str(f)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown device field 'cores_wide'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_compile_cache_flag_before_or_after_the_command():
    from waferllm.cli import build_parser

    p = build_parser()
    assert p.parse_args(["bench", "gemv"]).compile_cache is None  # default: the user's cache folder
    assert p.parse_args(["--compile-cache", "off", "bench", "gemv"]).compile_cache == "off"
    assert p.parse_args(["bench", "gemv", "--compile-cache", "/x"]).compile_cache == "/x"
    assert p.parse_args(["validate", "--compile-cache", "off"]).compile_cache == "off"


def test_compile_cache_lives_in_the_xdg_cache_folder(monkeypatch, tmp_path):
    from waferllm.engine.compile_cache import default_cache_dir

    assert str(default_cache_dir()).startswith(tempfile.gettempdir())  # the suite never touches the user's cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "waferllm" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # not absolute: ignored, as the XDG spec says
    assert default_cache_dir() == Path.home() / ".cache" / "waferllm" / "jax"


@pytest.mark.parametrize("where, cached", [("DIR", True), ("off", False)])
def test_compile_cache_keeps_compiled_programs(tmp_path, where, cached):
    d = tmp_path / "jax"
    code = ("import sys, jax; from waferllm.engine.compile_cache import enable_compile_cache; "
            "enable_compile_cache(sys.argv[1]); jax.jit(lambda x: x * 3 + 1)(2.0).block_until_ready()")
    res = subprocess.run([sys.executable, "-c", code, str(d) if where == "DIR" else "off"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert (d.is_dir() and any(d.iterdir())) == cached


def test_compile_cache_bad_folder_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    res = subprocess.run([sys.executable, "-m", "waferllm.cli", "--compile-cache", str(f / "sub"), "validate"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "as the compile cache" in res.stderr
