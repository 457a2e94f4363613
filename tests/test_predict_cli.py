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
    (["--model", "llama3-8b", "--context", "0"], "--context must be > 0"),
    (["--model", "llama3-8b", "--context", "999999"], "beyond the model's context"),
    (["--model", "llama3-8b", "--grid", "2000x2000"], "does not fit device wse2"),
    (["--model", "llama3-8b", "--grid", "4x4"], "too small for llama3-8b"),
    (["--model", "llama3-8b", "--device", "wse9"], "known devices: wse2, wse3"),
])
def test_predict_bad_input(args, msg):
    res = _run(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr
