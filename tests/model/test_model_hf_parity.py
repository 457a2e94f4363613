"""Tiny random Llama/Qwen2 checkpoints saved by transformers: our loader + JAX reference == transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from waferllm.model import ModelError, load_model
from waferllm.model.hf_loader import load_hf_weights
from waferllm.model.reference import forward, greedy

BASE = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
            max_position_embeddings=256, rms_norm_eps=1e-5)
CASES = {
    "llama-gqa": ("llama", dict(BASE, num_key_value_heads=2, vocab_size=257)),
    "llama-mha-tied": ("llama", dict(BASE, num_key_value_heads=6, vocab_size=131, tie_word_embeddings=True)),
    "llama-kv3-hd16-llama3rope": ("llama", dict(
        BASE, num_key_value_heads=3, head_dim=16, vocab_size=199,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=64))),
    "llama-linear-rope": ("llama", dict(BASE, num_key_value_heads=2, vocab_size=101,
                                        rope_parameters=dict(rope_type="linear", rope_theta=5000.0, factor=2.0))),
    "qwen2-bias": ("qwen2", dict(BASE, num_key_value_heads=2, vocab_size=300)),
    "qwen2-mha-tied": ("qwen2", dict(BASE, num_key_value_heads=6, vocab_size=160, tie_word_embeddings=True)),
}
SAVES = {"single": {}, "sharded": {"max_shard_size": "20KB"}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, build_hf_model):
    """case -> (transformers model, {save style -> folder})."""
    out = {}
    for case, (arch, kwargs) in CASES.items():
        model = build_hf_model(arch, kwargs, seed=len(out))
        folders = {}
        for style, opts in SAVES.items():
            folder = tmp_path_factory.mktemp(f"{case}-{style}")
            model.save_pretrained(folder, safe_serialization=True, **opts)
            folders[style] = folder
        out[case] = (model, folders)
    return out


def hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def prompt(vocab: int, n: int = 19, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


@pytest.mark.parametrize("style", sorted(SAVES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(checkpoints, case, style):
    model, folders = checkpoints[case]
    config, weights = load_hf_weights(folders[style])
    assert config.arch == CASES[case][0] and config.qkv_bias == (config.arch == "qwen2")
    ids = prompt(config.vocab_size)
    ours, theirs = forward(config, weights, ids), hf_logits(model, ids)
    assert ours.shape == theirs.shape == (len(ids), config.vocab_size)
    assert np.abs(theirs).max() > 1.0  # the comparison below is not vacuous
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_sharded_save_really_is_sharded(checkpoints):
    folder = checkpoints["llama-gqa"][1]["sharded"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (folder / "model.safetensors").exists()


@pytest.mark.parametrize("case", ["llama-gqa", "qwen2-bias"])
def test_greedy_matches_transformers(checkpoints, case):
    import torch

    model, folders = checkpoints[case]
    config, weights = load_hf_weights(folders["single"])
    ids = prompt(config.vocab_size, n=7, seed=3)
    x, want = torch.tensor([ids]), []
    with torch.no_grad():
        for _ in range(12):
            want.append(int(model(x).logits[0, -1].argmax()))
            x = torch.cat([x, torch.tensor([[want[-1]]])], dim=1)
    assert greedy(config, weights, ids, 12) == want


def test_bf16_checkpoint_is_widened_exactly(tmp_path, build_hf_model):
    import torch
    from transformers import AutoModelForCausalLM

    build_hf_model(*CASES["qwen2-bias"]).to(torch.bfloat16).save_pretrained(tmp_path)
    config, weights = load_hf_weights(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
    want = model.state_dict()["model.layers.1.self_attn.k_proj.weight"].numpy().T
    np.testing.assert_array_equal(weights.layers[1].wk, want)
    ids = prompt(config.vocab_size)
    np.testing.assert_allclose(forward(config, weights, ids), hf_logits(model.eval(), ids), atol=1e-4, rtol=0)


def test_load_model_on_folder_with_tokenizer(checkpoints, hf_tokenizer, tmp_path):
    import shutil

    folder = tmp_path / "tiny"
    shutil.copytree(checkpoints["llama-gqa"][1]["single"], folder)
    hf_tokenizer.save_pretrained(folder)
    config, weights, tok = load_model(folder)
    assert config.name == "tiny" and len(weights.layers) == 2
    assert tok.encode("Hello world") == hf_tokenizer("Hello world")["input_ids"]


def test_folder_without_tokenizer_is_a_clear_error(checkpoints):
    with pytest.raises(ModelError, match="no tokenizer.json"):
        load_model(checkpoints["llama-gqa"][1]["single"])
