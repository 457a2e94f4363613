"""ModelConfig fields from GGUF metadata (llama.cpp key names)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from waferllm.model.config import ARCHS, ModelConfig, RopeScaling
from waferllm.model.errors import ModelError, known_list

# llama.cpp stores Llama 3.1 scaling as a `rope_freqs` tensor; these are the Llama 3.1/3.2 defaults.
LLAMA3_DEFAULTS = dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def gguf_arch(meta: Mapping[str, Any]) -> str:
    """general.architecture, if supported."""
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise ModelError(f"unsupported GGUF architecture {arch!r}; supported: {known_list(ARCHS)}")
    return arch


def config_from_gguf(meta: Mapping[str, Any], tensor_names: frozenset[str] = frozenset(), *,
                     name: str = "") -> ModelConfig:
    """A ModelConfig from GGUF key/values (llama or qwen2) and the names of the file's tensors."""
    return ModelConfig(**config_kwargs_from_gguf(meta, tensor_names, name=name))


def config_kwargs_from_gguf(meta: Mapping[str, Any], tensor_names: frozenset[str], *, name: str = "") -> dict:
    """Keyword arguments for ModelConfig from GGUF key/values and tensor names."""
    arch = gguf_arch(meta)

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelError(f"GGUF metadata lacks {arch}.{key}")
        return value

    dim, heads = int(get("embedding_length")), int(get("attention.head_count"))
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or ())
    return dict(
        name=name or str(meta.get("general.name", "")),
        arch=arch,
        vocab_size=int(vocab),
        dim=dim,
        n_layers=int(get("block_count")),
        n_heads=heads,
        n_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", dim // heads)),
        ffn_dim=int(get("feed_forward_length")),
        norm_eps=_f32(get("attention.layer_norm_rms_epsilon")),
        rope_theta=_f32(get("rope.freq_base", 10000.0)),
        rope_scaling=_gguf_rope_scaling(meta, arch, tensor_names),
        max_seq_len=int(get("context_length")),
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        tie_embeddings="output.weight" not in tensor_names,
        bos_token_id=_opt_int(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token_ids=_eos_ids(meta),
    )


def _gguf_rope_scaling(meta: Mapping[str, Any], arch: str, tensor_names: frozenset[str]) -> RopeScaling | None:
    """linear from rope.scaling.*, llama3 when a rope_freqs tensor exists (checked against it on load)."""
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = float(meta.get(f"{arch}.rope.scaling.factor", 0.0) or 0.0)
    if "rope_freqs.weight" in tensor_names:
        original = int(meta.get(f"{arch}.rope.scaling.original_context_length", 0) or 8192)
        defaults = dict(LLAMA3_DEFAULTS, original_max_position_embeddings=original)
        return RopeScaling(kind="llama3", factor=factor or 8.0, **defaults)
    if kind in ("none", "") or factor in (0.0, 1.0):
        return None
    if kind != "linear":
        raise ModelError(f"unsupported GGUF RoPE scaling {kind!r}; supported: none, linear, llama3 (rope_freqs)")
    return RopeScaling(kind="linear", factor=factor)


def _f32(value: Any) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.99999974e-06), as the source config had it."""
    return float(str(np.float32(value)))


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _eos_ids(meta: Mapping[str, Any]) -> tuple[int, ...]:
    """End-of-sequence ids: eos, then end-of-turn/message when the file names them."""
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return tuple(ids)
