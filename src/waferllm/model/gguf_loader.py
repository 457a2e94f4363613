"""Load a llama/qwen2 GGUF file (via the `gguf` package) into ModelConfig + ModelWeights + Tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from waferllm.model.config import ModelConfig
from waferllm.model.errors import ModelError, known_list
from waferllm.model.gguf_config import config_from_gguf
from waferllm.model.weights import LAYER_BIASES, LAYER_MATRICES, ModelWeights, build_weights

# GGUF tensor name -> canonical name (per layer: blk.{i}.<key>).
GLOBAL_NAMES = {"token_embd.weight": "tok_emb", "output_norm.weight": "final_norm", "output.weight": "lm_head"}
LAYER_NAMES = {
    "attn_norm.weight": "attn_norm", "attn_q.weight": "wq", "attn_k.weight": "wk", "attn_v.weight": "wv",
    "attn_output.weight": "wo", "ffn_norm.weight": "ffn_norm", "ffn_gate.weight": "w_gate",
    "ffn_up.weight": "w_up", "ffn_down.weight": "w_down",
    "attn_q.bias": "bq", "attn_k.bias": "bk", "attn_v.bias": "bv",
}
# Dequantised with gguf.quants (numpy); other types (IQ*, TQ*, ...) are refused up front.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# Architectures whose llama.cpp converter permutes Q/K rows for its interleaved (GPT-J style) RoPE.
PERMUTED_QK_ARCHS = ("llama",)


def open_gguf(path: str | Path):
    """A gguf.GGUFReader, or ModelError for a missing, truncated or corrupt file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as err:  # the reader raises ValueError, struct/numpy errors, ... on bad bytes
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"{path}: not a readable GGUF file (truncated or corrupt: {reason})") from None


def read_metadata(reader) -> dict[str, Any]:
    """Every key/value of the file as plain Python values (strings, numbers, lists)."""
    meta = {}
    for key, field in reader.fields.items():
        try:
            meta[key] = field.contents()
        except Exception as err:
            raise ModelError(f"GGUF metadata key {key!r} is unreadable ({err})") from None
    return meta


def load_gguf_config(path: str | Path) -> ModelConfig:
    """Only the ModelConfig of a GGUF file."""
    reader = open_gguf(path)
    return config_from_gguf(read_metadata(reader), _tensor_names(reader), name=_name(path))


def load_gguf_weights(path: str | Path, reader=None) -> tuple[ModelConfig, ModelWeights, dict[str, Any]]:
    """(config, weights, metadata) of a GGUF file; Q/K are returned in the HF rotate-half layout."""
    reader = reader if reader is not None else open_gguf(path)
    meta = read_metadata(reader)
    config = config_from_gguf(meta, _tensor_names(reader), name=_name(path))
    arrays = _read_tensors(reader, config)
    if config.arch in PERMUTED_QK_ARCHS:
        for i in range(config.n_layers):
            for key, heads in (("wq", config.n_heads), ("wk", config.n_kv_heads)):
                arrays[f"layers.{i}.{key}"] = unpermute_qk_rows(arrays[f"layers.{i}.{key}"], heads)
    return config, build_weights(config, _to_input_major(arrays)), meta


def load_gguf(path: str | Path):
    """(config, weights, tokenizer) from one GGUF file."""
    from waferllm.model.tokenizer import Tokenizer

    reader = open_gguf(path)
    config, weights, meta = load_gguf_weights(path, reader)
    return config, weights, Tokenizer.from_gguf_metadata(meta)


def unpermute_qk_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation on an [out, in] matrix (or [out] bias), per head."""
    # llama.cpp's converter reorders each head's rows from (half, pair) to (pair, half) so that its
    # interleaved RoPE rotates (x[2i], x[2i+1]); HF's rotate-half RoPE pairs (x[i], x[i + hd/2]).
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _name(path: str | Path) -> str:
    return Path(path).stem


def _tensor_names(reader) -> frozenset[str]:
    return frozenset(t.name for t in reader.tensors)


def _canonical_name(name: str) -> str | None:
    """Canonical flat name of a GGUF tensor name, or None when unknown."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
    return None


def _expected_count(config: ModelConfig, names: frozenset[str]) -> int:
    """How many tensors a file of this config holds (rope_freqs counted when present)."""
    per_layer = len(LAYER_MATRICES) + (len(LAYER_BIASES) if config.qkv_bias else 0)
    return 2 + (0 if config.tie_embeddings else 1) + config.n_layers * per_layer + ("rope_freqs.weight" in names)


def _read_tensors(reader, config: ModelConfig) -> dict[str, np.ndarray]:
    """Dequantise every tensor to float32 in the file's [out, in] layout, keyed by canonical name."""
    names = _tensor_names(reader)
    if len(reader.tensors) != _expected_count(config, names):
        raise ModelError(f"GGUF holds {len(reader.tensors)} tensors, expected {_expected_count(config, names)} "
                         f"for {config.n_layers} layers")
    arrays = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            _check_rope_freqs(config, _dequantize(tensor))
            continue
        key = _canonical_name(tensor.name)
        if key is None:
            raise ModelError(f"unexpected GGUF tensor {tensor.name!r}")
        arrays[key] = _dequantize(tensor)
    return arrays


def _dequantize(tensor) -> np.ndarray:
    """One tensor as float32 with numpy shape = reversed ggml shape."""
    from gguf.quants import dequantize

    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise ModelError(f"tensor {tensor.name}: type {kind} not supported; supported: {known_list(SUPPORTED_TYPES)}")
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
        return np.asarray(values, dtype=np.float32).reshape(shape)
    except Exception as err:  # truncated data shows up here as a short buffer
        raise ModelError(f"tensor {tensor.name}: cannot read {kind}{list(shape)} ({err})") from None


def _check_rope_freqs(config: ModelConfig, stored: np.ndarray) -> None:
    """The file's rope_freqs (base / scaled inverse frequency) must match our llama3 scaling."""
    from waferllm.model.rope import base_inv_freq, inv_freq

    ours = base_inv_freq(config.head_dim, config.rope_theta) / inv_freq(config)
    if stored.shape != ours.shape or not np.allclose(stored, ours, rtol=1e-3):
        raise ModelError("GGUF rope_freqs do not match llama3 RoPE scaling with the file's factor; unsupported")


def _to_input_major(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Transpose matrices from the file's [out, in] to [in, out]; tok_emb [V, D] stays."""
    out = {}
    for key, a in arrays.items():
        out[key] = np.ascontiguousarray(a.T) if a.ndim == 2 and key != "tok_emb" else a
    return out
