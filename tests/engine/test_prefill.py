"""Prefill on the mesh + hand-off + shift/concat KV caches: greedy tokens equal transformers'."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from waferllm.engine.generate import CapacityError, Engine, Timing
from waferllm.engine.sampling import SamplingParams
from waferllm.engine.textgen import prompt_ids
from waferllm.spec import get_device

LONG = ("Wafer-scale processors place hundreds of thousands of small cores on a single silicon wafer. Each core "
        "has a little SRAM and talks to its four neighbours over a mesh network, so moving data far away is slow "
        "while moving it next door is fast. Large language models must therefore be cut into tiles that fit the "
        "cores, and every matrix multiplication must be arranged so that data only travels short distances. "
        "Explain, in simple words, why the distance between cores matters for inference speed, and give one "
        "example of an algorithm that keeps communication local.")
N_NEW = 24


@pytest.fixture(scope="module")
def long_ids(smollm):
    ids = prompt_ids(smollm[2], LONG, chat=True)
    assert 100 <= len(ids) <= 300
    return ids


@pytest.fixture(scope="module")
def hf_long(hf_gguf_model, hf_greedy, long_ids):
    return hf_greedy(hf_gguf_model, long_ids, 40)


def _engine(smollm, grid, prefill_grid, policy, sram=None, max_tokens=256):
    cfg, w, tok = smollm
    spec = get_device("wse2") if sram is None else get_device("wse2").replace(sram_bytes_per_core=sram)
    return Engine(cfg, w, spec, grid=grid, prefill_grid=prefill_grid, kv_policy=policy, max_tokens=max_tokens,
                  tokenizer=tok)


@pytest.mark.slow
@pytest.mark.parametrize("grid, prefill_grid, policy", [
    ("20x20", "auto", "shift"),  # prefill on the decode grid
    ("23x29", "16x24", "concat"),  # different, rectangular prefill grid; non-dividing decode grid; concat
])
def test_prefill_then_decode_equals_transformers(smollm, long_ids, hf_long, grid, prefill_grid, policy):
    eng = _engine(smollm, grid, prefill_grid, policy)
    t = Timing()
    ours = [e.token_id for e in eng.generate(long_ids, SamplingParams(max_new_tokens=N_NEW, ignore_eos=True), t)]
    assert ours == hf_long[:N_NEW]
    assert "handoff/kv" in eng.ledger.phases and any(k.startswith("prefill/layer") for k in eng.ledger.phases)
    if prefill_grid != "auto":
        assert "handoff/weights" in eng.ledger.phases  # the grids differ: weights move over the NoC
    assert t.ttft_s > 0 and t.tpot_s > 0


@pytest.mark.slow
def test_kv_cache_survives_many_shifts(smollm, long_ids, hf_long):
    """3 decode rows: every new token shifts rows, 40 tokens = 13 rebalancing rounds; tokens still match."""
    eng = _engine(smollm, "3x3", "4x4", "shift", sram=1 << 23)
    ours = [e.token_id for e in eng.generate(long_ids, SamplingParams(max_new_tokens=40, ignore_eos=True))]
    assert ours == hf_long
    assert eng.ledger.phases["decode/layer/kv_insert"].hops > 0  # rows really passed tokens up


def test_prefill_is_parallel():
    """Predicted TTFT for a 256-token prompt is far below 256 x TPOT (shape-only, the engine's programs)."""
    from waferllm.model import get_config
    from waferllm.perf.predict import predict

    cfg, spec = get_config("smollm2-135m"), get_device("wse2")
    pre = predict(cfg, spec, phase="prefill", grid="20x20", prefill_grid="80x80", input_len=256, dtype="float32")
    dec = predict(cfg, spec, phase="decode", grid="20x20", context=256, dtype="float32")
    assert pre.time_s < 0.2 * 256 * dec.time_s


def test_capacity_error_before_work_names_both_policies(smollm):
    eng = _engine(smollm, "20x20", "auto", "concat", max_tokens=4096)
    cap = eng.plan.kv_capacity_tokens()
    with pytest.raises(CapacityError, match=f"shift policy {cap['shift']}, concat policy {cap['concat']}"):
        next(eng.generate(list(range(1, 30)), SamplingParams(max_new_tokens=cap["concat"] + 10)))
    assert not eng.ledger.phases  # nothing was run or costed
    with pytest.raises(CapacityError, match="empty prompt"):
        next(eng.generate([], SamplingParams(max_new_tokens=4)))


def test_predict_reports_kv_capacity_for_both_policies():
    res = subprocess.run([sys.executable, "-m", "waferllm.cli", "predict", "--model", "llama3-8b", "--device", "wse2",
                          "--phase", "decode", "--grid", "360x360", "--context", "4096", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    cap = out["kv_capacity_tokens"]
    assert set(cap) == {"shift", "concat"} and cap["shift"] == 360 * cap["concat"] > 0
    for key in ("tokens_per_s", "time_s", "cycles", "grid", "breakdown", "peak_core_bytes", "routes_per_core",
                "wafers", "fits"):
        assert key in out
