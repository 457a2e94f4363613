"""RoPE frequencies and cos/sin tables (numpy float32, the way transformers computes them)."""

from __future__ import annotations

import math

import numpy as np

from waferllm.model.config import ModelConfig, RopeScaling


def base_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """Unscaled inverse frequencies [hd/2]: theta ** (-2i / hd)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
    return (1.0 / (theta ** exponents)).astype(np.float32)


def scale_inv_freq(inv_freq: np.ndarray, scaling: RopeScaling | None) -> np.ndarray:
    """Apply linear or llama3 (Llama 3.1 banded) scaling to inverse frequencies."""
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return (inv_freq / scaling.factor).astype(np.float32)
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between is blended.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def inv_freq(config: ModelConfig) -> np.ndarray:
    """The model's inverse frequencies [hd/2], scaling included."""
    return scale_inv_freq(base_inv_freq(config.head_dim, config.rope_theta), config.rope_scaling)


def rope_tables(config: ModelConfig, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, hd] for rotate-half RoPE (each frequency appears in both halves)."""
    angles = positions.astype(np.float32)[:, None] * inv_freq(config)[None, :]  # [T, hd/2]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
