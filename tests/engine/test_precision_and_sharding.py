"""16-bit storage agreement with fp32, and the whole decode sharded over 4 forced CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from waferllm.engine.sampling import SamplingParams
from waferllm.engine.textgen import prompt_ids

AGREEMENT_PROMPTS = [("What is the capital of France?", True), ("List three prime numbers.", True),
                     ("The sun rises in the", False), ("def fibonacci(n):", False)]
N_NEW = 24


@pytest.mark.slow
def test_bfloat16_token_agreement_with_fp32(engine_for, smollm, record_property):
    """bf16 weights and KV (fp32 accumulation) against fp32 on fixed prompts; the rate is recorded."""
    tok = smollm[2]
    f32, b16 = engine_for("20x20"), engine_for("20x20", dtype="bfloat16")
    same = total = 0
    first_token = []
    for text, chat in AGREEMENT_PROMPTS:
        ids = prompt_ids(tok, text, chat=chat)
        p = SamplingParams(max_new_tokens=N_NEW, ignore_eos=True)
        a = [e.token_id for e in f32.generate(ids, p)]
        b = [e.token_id for e in b16.generate(ids, p)]
        # agreement = tokens matching up to the first divergence (after it, the contexts differ)
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        same, total = same + k, total + len(a)
        first_token.append(a[0] == b[0])
    rate = same / total
    record_property("bf16_fp32_prefix_agreement", rate)
    print(f"\nbf16 vs fp32 greedy prefix agreement: {rate:.3f} over {total} tokens")
    assert b16.plan.kv_bytes_per_token * 2 == f32.plan.kv_bytes_per_token  # 16-bit KV really is half
    assert sum(first_token) >= len(first_token) - 1 and rate > 0.3


SHARD_SCRIPT = textwrap.dedent("""
    import json, jax
    from waferllm.model import load_model
    from waferllm.spec import get_device
    from waferllm.engine.generate import Engine
    from waferllm.engine.sampling import SamplingParams
    from waferllm.engine.textgen import prompt_ids
    from waferllm.machine.shard import device_mesh
    assert len(jax.devices()) == 4
    cfg, w, tok = load_model("smollm2-135m")
    ids = prompt_ids(tok, "What is the capital of France?", chat=True)
    out = {}
    for devices in (None, device_mesh(20, 20)):
        eng = Engine(cfg, w, get_device("wse2"), grid="20x20", max_tokens=64, tokenizer=tok, devices=devices)
        toks = [e.token_id for e in eng.generate(ids, SamplingParams(max_new_tokens=16, ignore_eos=True))]
        out["sharded" if devices is not None else "single"] = toks
        if devices is not None:
            out["spec"] = str(eng.weights.layers[0]["wqkv"].sharding.spec)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_decode_sharded_over_four_devices_gives_same_tokens():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["single"] == out["sharded"]
    assert "gy" in out["spec"] and "gx" in out["spec"]
