"""GPU model (perf/gpu.py) fitted to the SGLang figures, and `waferllm compare` (model and --gemv modes)."""

import dataclasses
import json

import pytest

from waferllm import WaferError
from waferllm.cli import main
from waferllm.model import get_config
from waferllm.perf.gpu import (DEFAULT_EFFICIENCY, GpuError, GpuSpec, fit_gpu_efficiency, get_gpu, gpu_gemv_time,
                               gpu_names, gpu_predict, sglang_targets)

EFFS = ("eff_mem", "eff_flops", "eff_net")
COSTS = ("step_overhead_s", "allreduce_latency_s", "internode_latency_s")


@pytest.fixture(scope="module")
def fit():
    return fit_gpu_efficiency()


def test_fit_is_physical_and_reproduces_sglang(fit):
    eff, report = fit
    assert all(0 < getattr(eff, k) <= 1 for k in EFFS)
    assert all(getattr(eff, k) >= 0 for k in COSTS)
    assert len(report["residuals"]) == 6
    # Real residuals: prefill 1/8/16 GPUs -1.9% / +15.1% / -11.5%; decode 1/8/16 +0.1% / -0.5% / +0.6%.
    for row in report["residuals"]:
        assert abs(row["rel_error"]) < 0.25, row
    assert report["max_abs_rel_error"] < 0.16


def test_stored_default_is_the_fit(fit):
    eff, _ = fit
    for k in EFFS + COSTS:
        assert getattr(DEFAULT_EFFICIENCY, k) == pytest.approx(getattr(eff, k), rel=0.02), k


def test_default_reproduces_each_figure_within_25_percent():
    cfg, gpu = get_config("llama3-8b"), get_gpu("a100-80gb")
    for fid, phase, n, published in sglang_targets():
        got = gpu_predict(cfg, gpu, n, phase=phase, input_len=4096, context=4096).tokens_per_s
        assert got == pytest.approx(published, rel=0.25), (fid, n)


def test_presets_carry_sources_and_calibration_numbers():
    a100 = get_gpu("a100-80gb")
    assert (a100.hbm_bytes_per_s, a100.fp16_flops, a100.power_w) == (2.039e12, 312e12, 400.0)
    assert get_gpu("a100-40gb").hbm_bytes_per_s == 1.555e12 and get_gpu("h200").hbm_bytes == 141e9
    measured = {f.name for f in dataclasses.fields(GpuSpec)} - {"name", "sources"}
    for name in gpu_names():
        assert measured <= set(get_gpu(name).sources), name
    cfg = get_config("llama3-8b")
    tps = {g: gpu_predict(cfg, get_gpu(g), 1, phase="decode").tokens_per_s for g in gpu_names()}
    assert tps["a100-40gb"] < tps["a100-80gb"] < tps["h100"] < tps["h200"]  # HBM bandwidth order


def test_unknown_gpu_lists_known_ones():
    with pytest.raises(GpuError, match="known GPUs: a100-40gb, a100-80gb, h100, h200") as e:
        get_gpu("v100")
    assert isinstance(e.value, WaferError)


def test_bad_gpu_model_arguments():
    cfg, gpu = get_config("llama3-8b"), get_gpu("a100-80gb")
    with pytest.raises(GpuError, match="whole nodes"):
        gpu_predict(cfg, gpu, 12, phase="decode")
    with pytest.raises(GpuError, match="unknown phase"):
        gpu_predict(cfg, gpu, 1, phase="train")
    with pytest.raises(GpuError, match="positive"):
        gpu_gemv_time(0, gpu)
    assert not gpu_predict(get_config("qwen2-72b"), gpu, 1, phase="decode").fits  # 145 GB on one 80 GB GPU


def _json(capsys, *argv):
    assert main(["compare", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_gemv_16k(capsys):
    out = _json(capsys, "--gemv", "16384")
    wafer, gpu = out["rows"][0], out["rows"][1]
    assert wafer["kind"] == "wafer" and gpu["kind"] == "gpu"
    # paper Table 6 at the fastest grid and K-tree group count (docs/cost-model.md)
    assert wafer["time_s"] == pytest.approx(1.2e-6, rel=0.10)
    assert out["groups"] and f"{out['groups']} K-tree groups" in wafer["system"]
    assert gpu["speedup"] > 100 and gpu["energy_ratio"] > 1  # the paper: 280x faster, 7.5x less energy
    published = {r["kind"]: r for r in out["rows"]}["published_gpu"]
    assert published["time_s"] == 0.000336 and published["speedup"] > 100
    assert gpu["time_s"] == pytest.approx(published["time_s"], rel=0.25)  # model vs Table 6: +20%


def test_compare_model_rows(capsys):
    out = _json(capsys, "--model", "llama3-8b")
    rows = out["rows"]
    assert rows[0]["kind"] == "wafer" and "derived" in rows[0]["power_source"]
    assert [r["n_gpus"] for r in rows[1:]] == [1, 8, 16]
    for r in rows:
        assert r["prefill_energy_j_per_token"] > 0 and r["decode_energy_j_per_token"] > 0
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0
    for r in rows[1:]:
        assert r["decode_speedup"] > 1  # the wafer decodes faster than any A100 count
        assert r["decode_energy_j_per_token"] == pytest.approx(r["power_w"] / r["decode_tokens_per_s"])


def test_compare_table_text(capsys):
    assert main(["compare", "--gemv", "32768"]) == 0
    text = capsys.readouterr().out
    assert "| system" in text and "paper Table 6" in text and "power: wse2" in text


@pytest.mark.parametrize("argv, msg", [
    (["--gemv", "0"], "--gemv must be a positive"),
    (["--gpu", "v100"], "known GPUs: a100-40gb, a100-80gb, h100, h200"),
    (["--gpus", "0"], "bad --gpus"),
    (["--gpus", "12"], "whole nodes"),
    (["--gemv", "16384", "--model", "llama2-13b"], "--model does not apply to --gemv"),
    (["--gemv", "16384", "--context", "8", "--gpus", "1"], "--context, --gpus do not apply to --gemv"),
    (["--no-limits"], "--no-limits has no effect on `waferllm compare`"),
])
def test_compare_bad_input(capsys, argv, msg):
    assert main(["compare", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
