"""Hostile model inputs: a Hugging Face folder whose safetensors lack tensors, malformed headers, text the
tokenizer cannot take. Each is a ModelError (one line, exit code 2), never a KeyError or TypeError."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from waferllm.model import ModelError
from waferllm.model.hf_loader import load_hf_weights
from waferllm.model.tokenizer import Tokenizer, bytes_to_unicode

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
          "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
          "vocab_size": 10, "max_position_embeddings": 32, "tie_word_embeddings": True}


def write_safetensors(path, tensors: dict, header_extra: dict | None = None) -> None:
    """A .safetensors file by hand (u64 header length, JSON header, raw little-endian F32 data)."""
    header, blobs, at = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    header.update(header_extra or {})
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def hf_folder(tmp_path, tensors: dict, header_extra: dict | None = None):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    write_safetensors(tmp_path / "model.safetensors", tensors, header_extra)
    return tmp_path


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and excinfo.value.exit_code == 2
    return msg


def test_folder_missing_tensors_names_them(tmp_path):
    folder = hf_folder(tmp_path, {"model.norm.weight": np.ones(16, np.float32)})
    with pytest.raises(ModelError, match="lack 10 tensor") as excinfo:
        load_hf_weights(folder)
    msg = one_line(excinfo)
    # Hugging Face names, so the user can look for them in the checkpoint; the tied lm_head is not asked for
    assert "model.embed_tokens.weight" in msg and "model.layers.0.input_layernorm.weight" in msg
    assert "(4 more)" in msg and "lm_head" not in msg and "model.norm.weight" not in msg


def test_folder_missing_one_layer_tensor(tmp_path):
    d, f, kv = 16, 24, 8
    shapes = {"model.embed_tokens.weight": (10, d), "model.norm.weight": (d,),
              "model.layers.0.input_layernorm.weight": (d,), "model.layers.0.post_attention_layernorm.weight": (d,),
              "model.layers.0.self_attn.q_proj.weight": (d, d), "model.layers.0.self_attn.k_proj.weight": (kv, d),
              "model.layers.0.self_attn.v_proj.weight": (kv, d), "model.layers.0.self_attn.o_proj.weight": (d, d),
              "model.layers.0.mlp.gate_proj.weight": (f, d), "model.layers.0.mlp.down_proj.weight": (d, f)}
    folder = hf_folder(tmp_path, {k: np.zeros(s, np.float32) for k, s in shapes.items()})
    with pytest.raises(ModelError, match=r"lack 1 tensor\(s\) config.json needs: model.layers.0.mlp.up_proj.weight$"):
        load_hf_weights(folder)
    shapes["model.layers.0.mlp.up_proj.weight"] = (f, d)  # complete: it loads
    write_safetensors(folder / "model.safetensors", {k: np.zeros(s, np.float32) for k, s in shapes.items()})
    assert load_hf_weights(folder)[1].layers[0].w_up.shape == (d, f)


def test_cli_folder_missing_tensors_one_line(tmp_path, capsys):
    from waferllm.cli import main

    folder = hf_folder(tmp_path, {"model.norm.weight": np.ones(16, np.float32)})
    assert main(["generate", "--model", str(folder), "--prompt", "hi", "--checkpoint-cache", "off"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1 and "Traceback" not in cap.err
    assert cap.err.startswith(f"waferllm: error: {folder}: the safetensors lack 10 tensor(s)")
    assert "model.embed_tokens.weight" in cap.err


@pytest.mark.parametrize("entry", [{"dtype": "F32", "shape": [2]},
                                   {"dtype": "F32", "shape": "x", "data_offsets": [0, 8]},
                                   {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, 7])
def test_malformed_header_entry(tmp_path, entry):
    folder = hf_folder(tmp_path, {"model.norm.weight": np.ones(16, np.float32)}, {"model.embed_tokens.weight": entry})
    with pytest.raises(ModelError, match="model.embed_tokens.weight") as excinfo:
        load_hf_weights(folder)
    one_line(excinfo)


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE over the 256 byte symbols (no merges): any UTF-8 text encodes."""
    return Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2",
                                         "tokenizer.ggml.tokens": list(bytes_to_unicode().values())})


@pytest.mark.parametrize("text, match", [
    ("a\udfffb", r"lone surrogate '\\udfff' at character 1"),
    ("\udcff", r"lone surrogate '\\udcff' at character 0"),  # what a non-UTF-8 byte in sys.argv becomes
    (b"bytes", "text must be a string, got bytes"),
    (None, "text must be a string, got NoneType"),
])
def test_tokenizer_rejects_unencodable_text(byte_tokenizer, text, match):
    with pytest.raises(ModelError, match=match) as excinfo:
        byte_tokenizer.encode(text)
    one_line(excinfo)


def test_tokenizer_still_encodes_unicode(byte_tokenizer):
    text = "wafer \u00e9\u4e2d\U0001f600"  # astral characters are fine: only lone surrogates are refused
    assert byte_tokenizer.decode(byte_tokenizer.encode(text)) == text
