"""ModelWeights: the one canonical in-memory form, float32, input-major (y = x @ W)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waferllm.model.config import ModelConfig
from waferllm.model.errors import ModelError

LAYER_MATRICES = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down")
LAYER_BIASES = ("bq", "bk", "bv")


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerWeights:
    """One decoder layer; Q/K columns are in the HF rotate-half RoPE order."""

    attn_norm: np.ndarray  # [D]
    wq: np.ndarray  # [D, Hq*hd]
    wk: np.ndarray  # [D, Hkv*hd]
    wv: np.ndarray  # [D, Hkv*hd]
    wo: np.ndarray  # [Hq*hd, D]
    ffn_norm: np.ndarray  # [D]
    w_gate: np.ndarray  # [D, F]
    w_up: np.ndarray  # [D, F]
    w_down: np.ndarray  # [F, D]
    bq: np.ndarray | None = None  # [Hq*hd] (qwen2)
    bk: np.ndarray | None = None  # [Hkv*hd]
    bv: np.ndarray | None = None  # [Hkv*hd]


@dataclass(frozen=True, kw_only=True, eq=False)
class ModelWeights:
    """All weights of a model; lm_head is tok_emb.T (a view) when embeddings are tied."""

    tok_emb: np.ndarray  # [V, D]
    layers: tuple[LayerWeights, ...]
    final_norm: np.ndarray  # [D]
    lm_head: np.ndarray  # [D, V]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every distinct array by a flat name ('layers.3.wq'); a tied lm_head is left out."""
        out = {"tok_emb": self.tok_emb, "final_norm": self.final_norm}
        if not np.may_share_memory(self.lm_head, self.tok_emb):
            out["lm_head"] = self.lm_head
        for i, layer in enumerate(self.layers):
            for key in LAYER_MATRICES + LAYER_BIASES:
                value = getattr(layer, key)
                if value is not None:
                    out[f"layers.{i}.{key}"] = value
        return out

    def nbytes(self) -> int:
        """Bytes held (float32), a tied lm_head counted once."""
        return sum(a.nbytes for a in self.arrays().values())

    def validate(self, config: ModelConfig) -> None:
        """Raise ModelError unless every shape and dtype matches `config`."""
        expected = expected_shapes(config)
        got = self.arrays()
        got.setdefault("lm_head", self.lm_head)
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        if missing or extra:
            raise ModelError(f"weights do not fit the config: missing {missing[:4]}, unexpected {extra[:4]}")
        for key, shape in expected.items():
            array = got[key]
            if array.shape != shape or array.dtype != np.float32:
                raise ModelError(f"weight {key}: got {array.dtype}{list(array.shape)}, expected float32{list(shape)}")


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical shape of every array by flat name (lm_head always listed)."""
    d, q, kv, f, v = config.dim, config.q_dim, config.kv_dim, config.ffn_dim, config.vocab_size
    layer = dict(attn_norm=(d,), wq=(d, q), wk=(d, kv), wv=(d, kv), wo=(q, d), ffn_norm=(d,),
                 w_gate=(d, f), w_up=(d, f), w_down=(f, d))
    if config.qkv_bias:
        layer.update(bq=(q,), bk=(kv,), bv=(kv,))
    shapes = {"tok_emb": (v, d), "final_norm": (d,), "lm_head": (d, v)}
    for i in range(config.n_layers):
        shapes.update({f"layers.{i}.{k}": s for k, s in layer.items()})
    return shapes


def build_weights(config: ModelConfig, arrays: dict[str, np.ndarray]) -> ModelWeights:
    """Assemble and validate ModelWeights from flat names; lm_head is tied when absent and tie_embeddings."""
    arrays = {k: np.asarray(a, dtype=np.float32) for k, a in arrays.items()}
    missing = missing_tensors(config, arrays)
    if missing:
        raise ModelError(f"weights lack {len(missing)} tensor(s) the config needs: {short_list(missing)}")
    lm_head = arrays.get("lm_head")
    if lm_head is None:
        if not config.tie_embeddings:
            raise ModelError("weights lack lm_head but the config does not tie embeddings")
        lm_head = arrays["tok_emb"].T
    layers = []
    for i in range(config.n_layers):
        fields = {k: arrays.get(f"layers.{i}.{k}") for k in LAYER_MATRICES + LAYER_BIASES}
        absent = [k for k in LAYER_MATRICES if fields[k] is None]
        if absent:
            raise ModelError(f"layer {i} lacks {absent}")
        layers.append(LayerWeights(**fields))
    weights = ModelWeights(tok_emb=arrays["tok_emb"], layers=tuple(layers),
                           final_norm=arrays["final_norm"], lm_head=lm_head)
    weights.validate(config)
    return weights


def missing_tensors(config: ModelConfig, names) -> list[str]:
    """Canonical names the config needs that `names` lacks, in model order (a tied lm_head is not needed)."""
    have = set(names)
    return [k for k in expected_shapes(config) if k not in have and not (k == "lm_head" and config.tie_embeddings)]


def short_list(names: list[str], limit: int = 6) -> str:
    """'a, b, c' or 'a, b, ... (N more)' for one-line messages."""
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def random_weights(config: ModelConfig, *, seed: int = 0, scale: float = 0.02) -> ModelWeights:
    """Gaussian weights (norms near 1) for tests of small configs; no checkpoint needed."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in expected_shapes(config).items():
        if key == "lm_head" and config.tie_embeddings:
            continue
        if key.endswith("norm"):
            arrays[key] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            arrays[key] = scale * rng.standard_normal(shape)
    return build_weights(config, arrays)
