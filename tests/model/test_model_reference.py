"""The JAX reference: KV-cache decoding equals full recomputation; weights helpers."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.model import ModelConfig, ModelError, random_weights
from waferllm.model.reference import CACHE_BLOCK, KVCache, forward, forward_step, greedy

TINY = ModelConfig(name="tiny", arch="qwen2", vocab_size=97, dim=40, n_layers=2, n_heads=4, n_kv_heads=2,
                   head_dim=12, ffn_dim=56, norm_eps=1e-6, rope_theta=10000.0, max_seq_len=512, qkv_bias=True,
                   tie_embeddings=True)


@pytest.fixture(scope="module")
def tiny():
    return TINY, random_weights(TINY, seed=3, scale=0.3)


def test_chunked_prefill_with_cache_growth_equals_full_forward(tiny):
    config, weights = tiny
    ids = np.random.default_rng(0).integers(0, config.vocab_size, CACHE_BLOCK + 30).tolist()
    full = forward(config, weights, ids)
    cache, parts = KVCache.empty(config, 1), []
    for chunk in (ids[:20], ids[20:21], ids[21:CACHE_BLOCK + 5], ids[CACHE_BLOCK + 5:]):
        logits, cache = forward_step(config, weights, chunk, cache)
        parts.append(np.asarray(logits))
    assert cache.length == len(ids) and cache.capacity >= len(ids)
    np.testing.assert_allclose(np.concatenate(parts), full, atol=1e-4, rtol=0)


def test_greedy_equals_argmax_of_full_forward(tiny):
    config, weights = tiny
    seq = [5, 17, 3]
    want = []
    for _ in range(6):
        want.append(int(forward(config, weights, seq + want)[-1].argmax()))
    assert greedy(config, weights, seq, 6) == want
    stop = want[2]
    assert greedy(config, weights, seq, 6, stop_ids=[stop]) == want[:want.index(stop) + 1]


def test_weights_layout_and_size(tiny):
    config, weights = tiny
    assert weights.layers[0].wq.shape == (config.dim, config.q_dim)  # input-major: x @ W
    assert weights.lm_head.shape == (config.dim, config.vocab_size)
    assert "lm_head" not in weights.arrays()  # tied
    assert weights.nbytes() == 4 * config.param_count()


def test_validate_rejects_other_config(tiny):
    import dataclasses

    config, weights = tiny
    with pytest.raises(ModelError, match="ffn_dim|w_gate"):
        weights.validate(dataclasses.replace(config, ffn_dim=64))
