"""`waferllm generate`: JSON keys, streaming text, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

KEYS = {"model", "device", "grid", "dtype", "prompt_token_ids", "token_ids", "text", "finish_reason", "wall_s",
        "predicted", "peak_core_bytes", "routes_per_core", "kv"}


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "waferllm.cli", "generate", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_generate_json_two_prompts():
    res = _run("--prompt", "The capital of France is", "--prompt", "Hello", "--grid", "20x20", "--max-new-tokens", "6",
               "--json")
    assert res.returncode == 0, res.stderr
    outs = json.loads(res.stdout)
    assert isinstance(outs, list) and len(outs) == 2
    for o in outs:
        assert KEYS <= set(o)
        assert set(o["predicted"]) >= {"ttft_s", "tpot_s", "decode_tokens_per_s"}
        assert o["grid"] == "20x20" and o["device"] == "wse2" and o["dtype"] == "float32"
        assert 0 < o["peak_core_bytes"] <= 49152 and o["routes_per_core"] > 0
        assert len(o["token_ids"]) <= 6 and o["finish_reason"] in ("stop", "length")
        assert o["predicted"]["ttft_s"] >= o["predicted"]["tpot_s"] > 0
    assert outs[0]["text"].strip()


@pytest.mark.slow
def test_generate_streams_and_prints_stats():
    res = _run("--chat", "--prompt", "What is the capital of France?", "--grid", "23x29", "--max-new-tokens", "12")
    assert res.returncode == 0, res.stderr
    assert "Paris" in res.stdout
    assert "TTFT" in res.stdout and "TPOT" in res.stdout and "routes/core" in res.stdout


@pytest.mark.parametrize("args, msg", [
    (["--temperature", "-0.5"], "temperature must be >= 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'; known: smollm2-135m"),
    (["--model", "/nonexistent/x.gguf"], "GGUF file not found"),
    (["--grid", "4x4"], "too small"),
    (["--grid", "20x20", "--max-new-tokens", "5000"], "exceeds the KV capacity"),
    (["--prompt", ""], "empty prompt"),
    (["--device", "wse7"], "unknown device 'wse7'"),
])
def test_bad_input_one_line(args, msg):
    res = _run(*args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_corrupt_and_truncated_gguf(tmp_path, gguf_path):
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(gguf_path.read_bytes()[:100_000])
    garbage = tmp_path / "junk.gguf"
    garbage.write_bytes(b"not a gguf at all" * 100)
    for f in (bad, garbage):
        res = _run("--model", str(f))
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and str(f.name) in res.stderr, res.stderr


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    res = _run("--model", str(tmp_path))
    assert res.returncode != 0 and "unsupported architecture 'GPT2LMHeadModel'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_generate_prefill_grid_and_kv_policy_flags():
    res = _run("--prompt", "The capital of France is", "--grid", "20x20", "--prefill-grid", "16x24", "--kv", "concat",
               "--max-new-tokens", "4", "--json")
    assert res.returncode == 0, res.stderr
    o = json.loads(res.stdout)
    assert o["prefill_grid"] == "16x24" and o["kv"]["policy"] == "concat"
    assert set(o["kv"]["capacity_by_policy"]) == {"shift", "concat"}
    assert o["kv"]["used_tokens"] == len(o["prompt_token_ids"]) + len(o["token_ids"])
