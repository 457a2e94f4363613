"""Reference forward pass in plain JAX, float32: the oracle the mesh engine is checked against."""

# x = tok_emb[ids]; per layer: x += attn(rmsnorm(x)); x += swiglu(rmsnorm(x)); logits = rmsnorm(x) @ lm_head.
# Attention is GQA with rotate-half RoPE and a causal mask; a KV cache makes greedy decoding cheap.

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.model.config import ModelConfig
from waferllm.model.rope import rope_tables
from waferllm.model.weights import LAYER_BIASES, LAYER_MATRICES, LayerWeights, ModelWeights

CACHE_BLOCK = 64  # KV-cache capacity granularity, positions


@dataclass(frozen=True, kw_only=True, eq=False)
class KVCache:
    """Rotated keys and values per layer: k[i], v[i] are [C, Hkv, hd], of which the first `length` are filled."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    length: int = 0

    @property
    def capacity(self) -> int:
        return int(self.k[0].shape[0])

    @classmethod
    def empty(cls, config: ModelConfig, capacity: int) -> "KVCache":
        # Capacity is rounded up so decode steps share one compiled shape instead of one per length.
        capacity = -(-max(capacity, 1) // CACHE_BLOCK) * CACHE_BLOCK
        zeros = jnp.zeros((capacity, config.n_kv_heads, config.head_dim), jnp.float32)
        return cls(k=(zeros,) * config.n_layers, v=(zeros,) * config.n_layers)

    def grown(self, config: ModelConfig, capacity: int) -> "KVCache":
        """This cache with room for at least `capacity` positions."""
        if capacity <= self.capacity:
            return self
        bigger = KVCache.empty(config, capacity)
        pad = bigger.capacity - self.capacity
        grow = lambda a: jnp.pad(a, ((0, pad), (0, 0), (0, 0)))  # noqa: E731
        return KVCache(k=tuple(map(grow, self.k)), v=tuple(map(grow, self.v)), length=self.length)


def rmsnorm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * weight over the last axis."""
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_half(x: jax.Array) -> jax.Array:
    """[a, b] -> [-b, a] on the last axis (the HF RoPE pairing: i with i + hd/2)."""
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-b, a], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [T, H, hd] by position tables cos/sin [T, hd]."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


@partial(jax.jit, static_argnames=("n_heads", "n_kv_heads", "eps"))
def _layer(x, layer: dict, cos, sin, k_cache, v_cache, pos, *, n_heads: int, n_kv_heads: int, eps: float):
    """One decoder layer on new tokens x [T, D] at positions pos..pos+T-1; returns (x, k_cache, v_cache)."""
    t, hd = x.shape[0], cos.shape[-1]
    h = rmsnorm(x, layer["attn_norm"], eps)
    q = h @ layer["wq"] + layer.get("bq", 0.0)
    k = h @ layer["wk"] + layer.get("bk", 0.0)
    v = h @ layer["wv"] + layer.get("bv", 0.0)
    q = apply_rope(q.reshape(t, n_heads, hd), cos, sin)
    k = apply_rope(k.reshape(t, n_kv_heads, hd), cos, sin)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k, (pos, 0, 0))
    v_cache = jax.lax.dynamic_update_slice(v_cache, v.reshape(t, n_kv_heads, hd), (pos, 0, 0))
    x = x + attention(q, k_cache, v_cache, pos) @ layer["wo"]
    h = rmsnorm(x, layer["ffn_norm"], eps)
    x = x + (jax.nn.silu(h @ layer["w_gate"]) * (h @ layer["w_up"])) @ layer["w_down"]
    return x, k_cache, v_cache


def attention(q: jax.Array, k: jax.Array, v: jax.Array, pos) -> jax.Array:
    """Causal GQA: q [T, Hq, hd] at positions pos.., k/v [C, Hkv, hd] (slots past pos+T unused) -> [T, Hq*hd]."""
    t, n_heads, hd = q.shape
    group = n_heads // k.shape[1]
    k = jnp.repeat(k, group, axis=1)  # query head j reads kv head j // group
    v = jnp.repeat(v, group, axis=1)
    scores = jnp.einsum("thd,shd->hts", q, k) / np.sqrt(hd).astype(np.float32)
    causal = jnp.arange(k.shape[0])[None, :] <= (pos + jnp.arange(t))[:, None]  # [T, C]; hides empty slots too
    scores = jnp.where(causal[None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("hts,shd->thd", probs, v).reshape(t, n_heads * hd)


def _layer_arrays(layer: LayerWeights) -> dict[str, jax.Array]:
    """A layer as a dict of device arrays (biases only when present)."""
    names = LAYER_MATRICES + LAYER_BIASES
    return {n: jnp.asarray(getattr(layer, n)) for n in names if getattr(layer, n) is not None}


# Device copies of weights, made once per ModelWeights object (copying 0.5 GB per step would dominate).
_DEVICE_CACHE: "weakref.WeakKeyDictionary[ModelWeights, tuple]" = weakref.WeakKeyDictionary()


def _device_weights(weights: ModelWeights) -> tuple[list[dict[str, jax.Array]], jax.Array, jax.Array]:
    """(layers, final_norm, lm_head) as device arrays, cached."""
    if weights not in _DEVICE_CACHE:
        _DEVICE_CACHE[weights] = ([_layer_arrays(layer) for layer in weights.layers],
                                  jnp.asarray(weights.final_norm), jnp.asarray(weights.lm_head))
    return _DEVICE_CACHE[weights]


def forward_step(config: ModelConfig, weights: ModelWeights, token_ids: Sequence[int],
                 cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Logits [T, V] for new tokens following `cache`, and the extended cache."""
    ids = np.asarray(token_ids, dtype=np.int32)
    start = cache.length
    cache = cache.grown(config, start + len(ids))
    cos, sin = (jnp.asarray(a) for a in rope_tables(config, np.arange(start, start + len(ids))))
    x = jnp.asarray(weights.tok_emb[ids])  # [T, D]
    layers, final_norm, lm_head = _device_weights(weights)
    ks, vs = [], []
    # An oracle must not use TF32/bf16 matmul passes, which some accelerators default to for float32.
    with jax.default_matmul_precision("highest"):
        for i, layer in enumerate(layers):
            x, k, v = _layer(x, layer, cos, sin, cache.k[i], cache.v[i], jnp.int32(start),
                             n_heads=config.n_heads, n_kv_heads=config.n_kv_heads, eps=float(config.norm_eps))
            ks.append(k)
            vs.append(v)
        logits = rmsnorm(x, final_norm, config.norm_eps) @ lm_head
    return logits, KVCache(k=tuple(ks), v=tuple(vs), length=start + len(ids))


def forward(config: ModelConfig, weights: ModelWeights, token_ids: Sequence[int]) -> np.ndarray:
    """Logits [T, V] (float32) for a whole sequence from position 0."""
    logits, _ = forward_step(config, weights, token_ids, KVCache.empty(config, len(token_ids)))
    return np.asarray(logits)


def greedy(config: ModelConfig, weights: ModelWeights, token_ids: Sequence[int], n_new: int, *,
           stop_ids: Sequence[int] = ()) -> list[int]:
    """Up to n_new argmax tokens after the prompt; stops after emitting any of stop_ids."""
    cache = KVCache.empty(config, len(token_ids) + n_new)
    logits, cache = forward_step(config, weights, token_ids, cache)
    out: list[int] = []
    for _ in range(n_new):
        token = int(jnp.argmax(logits[-1]))
        out.append(token)
        if token in stop_ids or len(out) == n_new:
            break
        logits, cache = forward_step(config, weights, [token], cache)
    return out
