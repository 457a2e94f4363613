"""Load a Hugging Face folder: config.json, model.safetensors (single or sharded), tokenizer files."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from waferllm.model.config import ModelConfig, load_hf_config_file
from waferllm.model.errors import ModelError
from waferllm.model.weights import ModelWeights, build_weights, missing_tensors, short_list

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype -> numpy dtype read from the file; BF16 is widened by hand (numpy has no bfloat16).
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}

GLOBAL_NAMES = {"model.embed_tokens.weight": "tok_emb", "model.norm.weight": "final_norm", "lm_head.weight": "lm_head"}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "wq", "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv", "self_attn.o_proj.weight": "wo", "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "w_gate", "mlp.up_proj.weight": "w_up", "mlp.down_proj.weight": "w_down",
    "self_attn.q_proj.bias": "bq", "self_attn.k_proj.bias": "bk", "self_attn.v_proj.bias": "bv",
}
# Buffers some checkpoints carry that are recomputed here, not weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def is_hf_folder(path: Path) -> bool:
    """A folder with config.json and safetensors weights."""
    return path.is_dir() and (path / "config.json").is_file() and \
        ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())


def load_hf_weights(folder: str | Path) -> tuple[ModelConfig, ModelWeights]:
    """(config, weights) of a HF Llama/Qwen2 folder; matrices transposed to input-major."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    config = load_hf_config_file(folder / "config.json")
    arrays: dict[str, np.ndarray] = {}
    for file in safetensors_files(folder):
        for name, array in read_safetensors(file).items():
            key = _canonical_name(name)
            if key is None:
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                raise ModelError(f"{file.name}: unexpected tensor {name!r}")
            arrays[key] = np.ascontiguousarray(array.T) if array.ndim == 2 and key != "tok_emb" else array
    if "lm_head" in arrays and config.tie_embeddings:
        del arrays["lm_head"]  # tied checkpoints may still store a copy; the embedding is the truth
    missing = missing_tensors(config, arrays)
    if missing:
        raise ModelError(f"{folder}: the safetensors lack {len(missing)} tensor(s) config.json needs: "
                         f"{short_list([hf_name(k) for k in missing])}")
    return config, build_weights(config, arrays)


def hf_name(key: str) -> str:
    """The Hugging Face name of a canonical tensor name: 'layers.3.wq' -> 'model.layers.3.self_attn.q_proj.weight'."""
    for hf, ours in GLOBAL_NAMES.items():
        if ours == key:
            return hf
    _, i, leaf = key.split(".", 2)
    return f"model.layers.{i}." + next(hf for hf, ours in LAYER_NAMES.items() if ours == leaf)


def load_hf(folder: str | Path):
    """(config, weights, tokenizer) from a HF folder."""
    from waferllm.model.tokenizer import Tokenizer

    config, weights = load_hf_weights(folder)
    return config, weights, Tokenizer.from_hf_folder(folder)


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files: the single file, or every shard named by the index."""
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    index = folder / INDEX_FILE
    if not index.is_file():
        raise ModelError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"{index}: not a readable safetensors index ({err})") from None
    shards = [folder / name for name in dict.fromkeys(weight_map.values())]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise ModelError(f"{folder}: index names missing shards {missing}")
    return shards


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as float32 (header: u64 length, JSON; then raw little-endian data)."""
    try:
        blob = np.memmap(path, dtype=np.uint8, mode="r")
        (header_len,) = struct.unpack("<Q", bytes(blob[:8]))
        header = json.loads(bytes(blob[8:8 + header_len]).decode("utf-8"))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: not a readable safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: not a readable safetensors file (its header is not a JSON object)")
    data = blob[8 + header_len:]
    header.pop("__metadata__", None)
    return {name: _tensor(path, name, info, data) for name, info in header.items()}


def _tensor(path: Path, name: str, info: dict, data: np.ndarray) -> np.ndarray:
    """One tensor from its header entry {dtype, shape, data_offsets}."""
    try:
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        start, end = (int(v) for v in info["data_offsets"])
        shape = tuple(int(v) for v in info["shape"])
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ModelError(f"{path.name}: tensor {name} has a malformed header entry {info!r:.80}") from None
    if dtype is None:
        raise ModelError(f"{path.name}: tensor {name} has dtype {info.get('dtype')}; "
                         f"supported: {', '.join(SAFETENSORS_DTYPES)}")
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if not 0 <= start <= end <= data.shape[0] or min(shape, default=0) < 0 or end - start != size:
        raise ModelError(f"{path.name}: tensor {name} data is truncated or inconsistent")
    raw = np.frombuffer(data[start:end], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if info["dtype"] == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _canonical_name(name: str) -> str | None:
    """Canonical flat name of a HF tensor name, or None when unknown."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and parts[3] in LAYER_NAMES:
        return f"layers.{parts[2]}.{LAYER_NAMES[parts[3]]}"
    return None
