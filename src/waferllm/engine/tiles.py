"""Weights in their decode placement: per-core tiles in the compact layout (engine/placement.py).

Layouts (core (y, x) of an R x C region): norms [R, kb]; fused QKV [R, kb, C, cb*(n_rep+2)] with in=y,
out=x (q slots, then k, then v per column); O projection [C, cb*n_rep, R, kb] with in=x, out=y; fused
gate/up [R, kb, C, 2*fb]; down [C, fb, R, kb]; LM head [R, kb, C_lm, vb]. Stacked over layers. Core
(y, x) owns w[y, :, x, :] of an in=y matrix and w[x, :, y, :] of an in=x one.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.engine.placement import DecodePlan
from waferllm.machine import layout
from waferllm.model.config import ModelConfig
from waferllm.model.weights import LayerWeights, ModelWeights
from waferllm.spec.dtypes import ARRAY_DTYPES, array_dtype

DTYPES = ARRAY_DTYPES  # an alias of spec.dtypes.ARRAY_DTYPES for older imports; new code: spec.dtypes.array_dtype


@jax.tree_util.register_dataclass
@dataclass(frozen=True, kw_only=True, eq=False)
class MeshWeights:
    """Per-layer tile dicts (kept apart: XLA reads them in place, a stacked scan would copy slices)."""

    layers: tuple[dict, ...]  # attn_norm, wqkv, (bqkv), wo, ffn_norm, wgu, wdown per layer
    final_norm: jax.Array  # [R, kb]
    lm_head: jax.Array  # [R, kb, C_lm, vb]
    embed: jax.Array  # [R, kb, C_lm, vb] (the LM head's tiles when embeddings are tied)


def _pad(a: np.ndarray, shape) -> np.ndarray:
    if a.shape == tuple(shape):  # nothing to pad: a reshape of the caller's array is enough
        return a
    out = layout.aligned_zeros(shape, a.dtype)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


def _split_rows(a: np.ndarray, rows: int, kb: int) -> np.ndarray:
    """[D, ...] -> [R, kb, ...] (zero padded)."""
    return _pad(a, (rows * kb,) + a.shape[1:]).reshape((rows, kb) + a.shape[1:])


def _q_columns(cfg: ModelConfig, plan: DecodePlan, d: np.ndarray) -> np.ndarray:
    """[C, cb * n_rep] HF query index of each (slot, rep) over the K/V dim slots d [C, cb] (-1 = padding)."""
    g, dd, reps = d // cfg.head_dim, d % cfg.head_dim, np.arange(plan.heads.n_rep)
    q = (g[:, :, None] * plan.heads.n_rep + reps) * cfg.head_dim + dd[:, :, None]  # [C, cb, n_rep]
    return np.where(d[:, :, None] >= 0, q, -1).reshape(plan.cols, -1)


def _qkv_columns(cfg: ModelConfig, plan: DecodePlan) -> np.ndarray:
    """[C, qkv] index into concat(q, k, v) output columns for each slot (-1 = zero padding): q and K on K's dim
    slots, V on its own (heads.dim_v)."""
    d, dv = plan.heads.dim, plan.heads.dim_v  # [C, cb] HF kv-dim index
    k = np.where(d >= 0, cfg.q_dim + d, -1)
    v = np.where(dv >= 0, cfg.q_dim + cfg.kv_dim + dv, -1)
    return np.concatenate([_q_columns(cfg, plan, d), k, v], axis=1)


def layer_tiles(cfg: ModelConfig, plan: DecodePlan, lw: LayerWeights) -> dict[str, np.ndarray]:
    """One layer's weights cut into tiles (numpy float32)."""
    R, C, kb, fb = plan.rows, plan.cols, plan.kb, plan.fb
    cols = _qkv_columns(cfg, plan)  # [C, qkv]
    wcat = np.concatenate([lw.wq, lw.wk, lw.wv], axis=1)  # [D, q+2kv]
    wqkv = _split_rows(layout.take_padded(wcat, cols), R, kb)  # [R, kb, C, qkv]
    out = {"attn_norm": _split_rows(lw.attn_norm, R, kb), "ffn_norm": _split_rows(lw.ffn_norm, R, kb),
           "wqkv": wqkv}
    if cfg.qkv_bias:
        out["bqkv"] = layout.take_padded(np.concatenate([lw.bq, lw.bk, lw.bv]), cols)  # [C, qkv]
    qrows = _q_columns(cfg, plan, plan.heads.dim_v)  # [C, cb*n_rep] rows of wo: the output o sits on V's slots
    wo = layout.take_padded(lw.wo.T, qrows)  # [D, C, cb*n_rep]
    out["wo"] = _split_rows(wo, R, kb).transpose(2, 3, 0, 1)  # [C, cb*n_rep, R, kb]
    f = np.arange(C * fb)
    fidx = np.where(f < cfg.ffn_dim, f, -1).reshape(C, fb)
    gu = np.concatenate([layout.take_padded(lw.w_gate, fidx), layout.take_padded(lw.w_up, fidx)], axis=-1)  # [D, C, 2fb]
    out["wgu"] = _split_rows(gu, R, kb)
    wd = layout.take_padded(lw.w_down.T, fidx)  # [D, C, fb]
    out["wdown"] = _split_rows(wd, R, kb).transpose(2, 3, 0, 1)  # [C, fb, R, kb]
    return out


def vocab_tiles(mat_dv: np.ndarray, plan: DecodePlan) -> np.ndarray:
    """[D, V] -> [R, kb, C_lm, vb]."""
    cl, vb = plan.lm_cols, plan.vb
    v = np.arange(cl * vb)
    vidx = np.where(v < mat_dv.shape[1], v, -1).reshape(cl, vb)
    return _split_rows(layout.take_padded(mat_dv, vidx), plan.rows, plan.kb)


def mesh_weights(cfg: ModelConfig, weights: ModelWeights, plan: DecodePlan) -> MeshWeights:
    """Place a model's weights (canonical float32) onto the decode layout in the plan's dtype."""
    dt = array_dtype(plan.dtype)
    f32 = ("attn_norm", "ffn_norm", "bqkv")  # norms and biases stay fp32, like the activations
    put = layout.to_device  # fresh aligned host tiles become device arrays without another copy (CPU)
    layers = tuple({k: put(v, jnp.float32 if k in f32 else dt) for k, v in layer_tiles(cfg, plan, lw).items()}
                   for lw in weights.layers)
    lm = vocab_tiles(weights.lm_head, plan)
    tied = np.may_share_memory(weights.lm_head, weights.tok_emb) or cfg.tie_embeddings
    lm_j = put(lm, dt)
    emb = lm_j if tied else put(vocab_tiles(weights.tok_emb.T, plan), dt)
    return MeshWeights(layers=layers, lm_head=lm_j, embed=emb,
                       final_norm=put(_split_rows(weights.final_norm, plan.rows, plan.kb), jnp.float32))


# grid axes of every tile array: which array axis runs over core rows (gy) and columns (gx)
_GRID_AXES = {"attn_norm": (0, None), "ffn_norm": (0, None), "wqkv": (0, 2), "bqkv": (None, 0), "wo": (2, 0),
              "wgu": (0, 2), "wdown": (2, 0)}


def _spec(ndim: int, gy: int | None, gx: int | None):
    from jax.sharding import PartitionSpec as P

    axes = [None] * ndim
    if gy is not None:
        axes[gy] = "gy"
    if gx is not None:
        axes[gx] = "gx"
    return P(*axes)


def shard_weights(mw: MeshWeights, dmesh) -> MeshWeights:
    """Spread every tile array over a device mesh along its grid axes (the LM head along rows only)."""
    from jax.sharding import NamedSharding

    def put(a, gy, gx):
        return jax.device_put(a, NamedSharding(dmesh, _spec(a.ndim, gy, gx)))

    layers = tuple({k: put(v, *_GRID_AXES[k]) for k, v in lw.items()} for lw in mw.layers)
    return MeshWeights(layers=layers, final_norm=put(mw.final_norm, 0, None), lm_head=put(mw.lm_head, 0, None),
                       embed=put(mw.embed, 0, None))


def shard_cache(c: jax.Array, dmesh) -> jax.Array:
    """A KV cache [lanes, R, T, C, cb] over the device mesh (rows on gy, columns on gx)."""
    from jax.sharding import NamedSharding

    return jax.device_put(c, NamedSharding(dmesh, _spec(c.ndim, 1, 3)))
