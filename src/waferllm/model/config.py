"""ModelConfig: the shape of a Llama/Qwen2 decoder, from a preset, a HF config.json or GGUF metadata.

presets.py, gguf_config.py and load_hf_config_file build one; registry.get_config finds one by name or path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from waferllm.model.errors import ModelError, known_list
from waferllm.spec.dtypes import storage_bytes
from waferllm.spec.errors import SpecError

ARCHS = ("llama", "qwen2")
HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
ROPE_KINDS = ("linear", "llama3")


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling: 'linear' (divide by factor) or 'llama3' (banded, Llama 3.1)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.kind not in ROPE_KINDS:
            raise ModelError(f"unknown RoPE scaling {self.kind!r}; known: {known_list(ROPE_KINDS)}")
        if self.factor <= 0:
            raise ModelError(f"RoPE scaling factor must be positive, got {self.factor}")
        if self.kind == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ModelError("llama3 RoPE scaling needs high_freq_factor > low_freq_factor")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder (pre-norm, RoPE, GQA, SwiGLU)."""

    name: str = ""
    arch: str
    vocab_size: int
    dim: int  # model width D
    n_layers: int
    n_heads: int  # query heads Hq
    n_kv_heads: int  # key/value heads Hkv (Hq % Hkv == 0)
    head_dim: int  # hd; Hq * hd need not equal D
    ffn_dim: int  # SwiGLU hidden width F
    norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None = None
    max_seq_len: int
    qkv_bias: bool = False
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ModelError(f"unsupported architecture {self.arch!r}; supported: {known_list(ARCHS)}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ModelError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"model config: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ModelError(f"model config: head_dim {self.head_dim} must be even for RoPE")

    @property
    def q_dim(self) -> int:
        """Width of the query projection output, Hq * hd."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projection outputs, Hkv * hd."""
        return self.n_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def layer_matrix_params(self) -> int:
        """Weights of one layer's matrices (Q, K, V, O, gate, up, down): its MACs per token."""
        d, q, kv, f = self.dim, self.q_dim, self.kv_dim, self.ffn_dim
        return d * q + 2 * d * kv + q * d + 3 * d * f

    def layer_param_count(self) -> int:
        """Parameters in one decoder layer (norms, attention, SwiGLU)."""
        bias = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return 2 * self.dim + self.layer_matrix_params() + bias

    def param_count(self) -> int:
        """All parameters; tied embeddings are counted once."""
        emb = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else emb
        return emb + head + self.n_layers * self.layer_param_count() + self.dim

    def weight_bytes(self, dtype: str = "bfloat16") -> int:
        """Bytes to store every parameter in `dtype` (spec/dtypes.py STORAGE_BYTES)."""
        return math.ceil(self.param_count() * dtype_bytes(dtype))

    def kv_bytes_per_token(self, dtype: str = "bfloat16") -> int:
        """KV-cache bytes one token adds across all layers."""
        return math.ceil(2 * self.n_layers * self.kv_dim * dtype_bytes(dtype))

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], *, name: str = "") -> "ModelConfig":
        """From a Hugging Face config.json dict (LlamaForCausalLM or Qwen2ForCausalLM)."""
        arch = _hf_arch(cfg)
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelError(f"model config: hidden_act {cfg['hidden_act']!r} is not supported; supported: silu")
        if arch == "llama" and (cfg.get("attention_bias") or cfg.get("mlp_bias")):
            raise ModelError("model config: Llama with attention_bias/mlp_bias is not supported")
        if arch == "qwen2" and cfg.get("use_sliding_window"):
            raise ModelError("model config: Qwen2 with use_sliding_window is not supported")
        try:
            heads = int(cfg["num_attention_heads"])
            dim = int(cfg["hidden_size"])
            rope = _hf_rope(cfg)
            return cls(
                name=name or str(cfg.get("_name_or_path") or ""),
                arch=arch,
                vocab_size=int(cfg["vocab_size"]),
                dim=dim,
                n_layers=int(cfg["num_hidden_layers"]),
                n_heads=heads,
                n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or dim // heads),
                ffn_dim=int(cfg["intermediate_size"]),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=rope[0],
                rope_scaling=rope[1],
                max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
                qkv_bias=arch == "qwen2",
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                bos_token_id=_opt_int(cfg.get("bos_token_id")),
                eos_token_ids=_int_tuple(cfg.get("eos_token_id")),
            )
        except KeyError as err:
            raise ModelError(f"model config: missing key {err.args[0]!r}") from None


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a storage dtype name (spec/dtypes.py: block formats include their scales)."""
    try:
        return storage_bytes(dtype)
    except SpecError as err:
        raise ModelError(str(err)) from None


def _opt_int(value: Any) -> int | None:
    """An int, or None; a list (some configs list several) gives its first."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def _int_tuple(value: Any) -> tuple[int, ...]:
    """An int, a list of ints or None as a tuple."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _hf_arch(cfg: Mapping[str, Any]) -> str:
    """'llama' or 'qwen2' from `architectures` (or `model_type` when that is absent)."""
    archs = cfg.get("architectures") or []
    supported = known_list(HF_ARCHITECTURES)
    if archs:
        if archs[0] not in HF_ARCHITECTURES:
            raise ModelError(f"unsupported architecture {archs[0]!r}; supported: {supported}")
        return HF_ARCHITECTURES[archs[0]]
    model_type = cfg.get("model_type")
    if model_type not in ARCHS:
        raise ModelError(f"unsupported model_type {model_type!r} (no architectures); supported: {supported}")
    return model_type


def _hf_rope(cfg: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ROPE_KINDS:
        raise ModelError(f"unsupported RoPE scaling {kind!r}; supported: default, {known_list(ROPE_KINDS)}")
    extra = {}
    if kind == "llama3":
        extra = dict(low_freq_factor=float(params["low_freq_factor"]),
                     high_freq_factor=float(params["high_freq_factor"]),
                     original_max_position_embeddings=int(params["original_max_position_embeddings"]))
    return theta, RopeScaling(kind=kind, factor=float(params["factor"]), **extra)


def load_hf_config_file(path: Path) -> ModelConfig:
    """A ModelConfig from a config.json file (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelError(f"no config.json at {path}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: not a readable JSON config ({err})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: config is not a JSON object")
    return ModelConfig.from_hf_config(cfg, name=path.parent.name)
