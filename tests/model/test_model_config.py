"""ModelConfig: presets, HF config.json parsing, sizes."""

from __future__ import annotations

import json

import pytest

from waferllm.model import PRESETS, ModelConfig, ModelError, RopeScaling, get_config

# Published parameter counts (billions) of each preset's checkpoint.
PUBLISHED_B = {"llama3-8b": 8.03, "llama2-13b": 13.02, "codellama-34b": 33.74, "qwen2-72b": 72.71,
               "smollm2-135m": 0.1345, "llama3.1-8b": 8.03, "llama3.1-70b": 70.55, "llama3.1-405b": 405.85}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_param_counts(name):
    config = get_config(name)
    assert config.name == name
    assert config.param_count() / 1e9 == pytest.approx(PUBLISHED_B[name], rel=2e-3)
    assert config.weight_bytes("bf16") == 2 * config.param_count()
    assert config.weight_bytes("float32") == 4 * config.param_count()


def test_sizes_of_llama3_8b():
    c = get_config("llama3-8b")
    assert (c.q_dim, c.kv_dim, c.group_size) == (4096, 1024, 4)
    assert c.kv_bytes_per_token("bf16") == 2 * 32 * 1024 * 2  # K and V, 32 layers, 1024 wide, 2 bytes
    assert c.weight_bytes("q4_1") < c.weight_bytes("q8_0") < c.weight_bytes("fp16")


def test_unknown_dtype_lists_known():
    with pytest.raises(ModelError, match=r"unknown dtype 'fp8'; known: .*bf16.*q4_1"):
        get_config("llama3-8b").weight_bytes("fp8")


HF_LLAMA31 = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": False,
}


def test_from_hf_config_transformers4_style():
    c = ModelConfig.from_hf_config(HF_LLAMA31)
    assert c.arch == "llama" and c.head_dim == 128 and c.rope_theta == 500000.0
    assert c.rope_scaling == RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=8192)
    assert c.eos_token_ids == (128001, 128008, 128009) and not c.qkv_bias


def test_from_hf_config_transformers5_style():
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=321, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}).to_dict()
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    c = ModelConfig.from_hf_config(cfg)
    assert (c.arch, c.qkv_bias, c.tie_embeddings, c.head_dim, c.rope_theta) == ("qwen2", True, True, 16, 1e6)
    assert c.rope_scaling == RopeScaling(kind="linear", factor=4.0)


def test_get_config_from_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HF_LLAMA31))
    assert get_config(tmp_path) == get_config(tmp_path / "config.json")
    assert get_config(tmp_path).vocab_size == 128256


@pytest.mark.parametrize("change,match", [
    ({"architectures": ["MistralForCausalLM"]}, "unsupported architecture 'MistralForCausalLM'; supported: Llama"),
    ({"architectures": None, "model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported RoPE scaling 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"num_key_value_heads": 5}, "not a multiple of n_kv_heads"),
    ({"vocab_size": None}, "missing key|vocab_size"),
])
def test_bad_hf_configs(change, match):
    cfg = {k: v for k, v in {**HF_LLAMA31, **change}.items() if v is not None or k == "vocab_size"}
    if cfg.get("vocab_size") is None:
        del cfg["vocab_size"]
    with pytest.raises(ModelError, match=match):
        ModelConfig.from_hf_config(cfg)


def test_bad_config_values():
    with pytest.raises(ModelError, match="unsupported architecture 'gptj'; supported: llama, qwen2"):
        ModelConfig(**{**_fields(PRESETS["smollm2-135m"]), "arch": "gptj"})
    with pytest.raises(ModelError, match="dim must be a positive integer"):
        ModelConfig(**{**_fields(PRESETS["smollm2-135m"]), "dim": 0})
    with pytest.raises(ModelError, match="unknown RoPE scaling 'ntk'; known: linear, llama3"):
        RopeScaling(kind="ntk", factor=2.0)


def _fields(config: ModelConfig) -> dict:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
