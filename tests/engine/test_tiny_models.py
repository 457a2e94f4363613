"""Random-weight Llama and Qwen2 checkpoints (GQA, MHA, MQA, odd sizes) on the mesh: logits within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.engine.generate import Engine
from waferllm.model.hf_loader import load_hf_weights

BASE = dict(hidden_size=40, intermediate_size=70, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, rms_norm_eps=1e-5)
CASES = {
    "llama-gqa": ("llama", dict(BASE, num_key_value_heads=2, vocab_size=211), "3x5"),
    "llama-mha": ("llama", dict(BASE, num_key_value_heads=4, vocab_size=97, tie_word_embeddings=True), "4x4"),
    "llama-mqa-hd12": ("llama", dict(BASE, num_key_value_heads=1, head_dim=12, vocab_size=101), "2x7"),
    "qwen2-bias": ("qwen2", dict(BASE, num_key_value_heads=2, vocab_size=150), "5x3"),
    "qwen2-6heads": ("qwen2", dict(BASE, hidden_size=48, num_attention_heads=6, num_key_value_heads=3,
                                   vocab_size=131, tie_word_embeddings=True), "3x6"),
}


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_mesh_logits_match_transformers(case, tmp_path, build_hf_model, roomy):
    arch, kwargs, grid = CASES[case]
    model = build_hf_model(arch, kwargs, seed=7)
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, weights = load_hf_weights(tmp_path)
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, 13).tolist()
    want = _logits(model, ids)
    eng = Engine(cfg, weights, roomy, grid=grid, max_tokens=16)
    caches = eng.new_cache()
    for n, tok in enumerate(ids):  # every position's logits, through the decode path and the KV cache
        _, logits, caches, _ = eng.decode_one_token(caches, tok, n)
        np.testing.assert_allclose(eng.logits_vector(logits), want[n], atol=1e-4, rtol=0)
    assert np.abs(want).max() > 1.0  # the comparison is not between near-zero vectors
