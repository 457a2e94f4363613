"""Sampling parameters and token choice: greedy on the mesh; temperature / top-k / top-p on the host."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from waferllm import WaferError


class SamplingError(WaferError):
    """Sampling parameters out of range."""


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to choose tokens and when to stop. temperature 0 = greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # NaN passes every comparison's negation, so each range is checked as "finite and inside"
        if not _real(self.temperature) or not self.temperature >= 0:
            raise SamplingError(f"temperature must be >= 0 and finite, got {self.temperature!r}")
        if not _real(self.top_p) or not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _integer(self.top_k) or self.top_k < 0:
            raise SamplingError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _integer(self.seed) or self.seed < 0:
            raise SamplingError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not _integer(self.max_new_tokens) or self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.stop, (tuple, list)) or not all(isinstance(s, str) for s in self.stop):
            raise SamplingError(f"stop must be a sequence of strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _real(v) -> bool:
    """A finite real number (bools are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def on_mesh(params: SamplingParams) -> bool:
    """Pure temperature sampling runs distributed (Gumbel-max); top-k / top-p gather the logits to one core."""
    return params.top_k == 0 and params.top_p >= 1.0


def gumbel_scores(logits, u, temperature: float):
    """What each core computes for Gumbel-max over its own logits (then the distributed argmax): scale,
    perturb with -log(-log u) for uniform draws u. Layout-free; the costing runs it on logits_x [C, vb]."""
    return logits / temperature - jnp.log(-jnp.log(u))


def nucleus_probs(logits, temperature: float):
    """The gathering core's pass for top-k / top-p: temperature softmax over every logit (the ordering it
    then needs touches the same elements)."""
    z = logits / temperature
    e = jnp.exp(z - jnp.max(z))
    return e / jnp.sum(e)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token from fp32 logits [V]: Gumbel-max for pure temperature (each core perturbs its own logits,
    then the distributed argmax), else temperature, top-k, then top-p (nucleus) on the gathering core."""
    if on_mesh(params):
        g = -np.log(-np.log(rng.uniform(np.finfo(np.float64).tiny, 1.0, size=logits.shape)))
        return int(np.argmax(logits.astype(np.float64) / params.temperature + g))
    z = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # max first: a tiny temperature gives -inf, never inf - inf = NaN
        z = (z - z.max()) / params.temperature
    if params.top_k and params.top_k < z.size:  # top_k >= the vocabulary keeps every token
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z)
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, params.top_p) + 1)]
        mask = np.zeros_like(p, bool)
        mask[keep] = True
        p = np.where(mask, p, 0)
        p /= p.sum()
    return int(rng.choice(len(p), p=p))
