"""Logical rings embedded in a physical line of cores (the paper's interleaving, Algorithm 1)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def interleave_order(n: int) -> tuple[int, ...]:
    """Ring order over n cores: evens upward, then odds downward (n=6: 0 2 4 5 3 1); each link <= 2 hops."""
    return tuple(range(0, n, 2)) + tuple(range(n - 1 - (n % 2 == 1), 0, -2)) if n > 1 else (0,)


@lru_cache(maxsize=None)
def ring_pos(n: int) -> np.ndarray:
    """pos[i] = position of physical core i in the interleaved ring (inverse of interleave_order)."""
    pos = np.empty(n, dtype=np.int64)
    pos[list(interleave_order(n))] = np.arange(n)
    return pos


@lru_cache(maxsize=None)
def ring_src(n: int, kind: str, direction: int) -> np.ndarray:
    """src[i] = the physical core whose tile core i receives in one shift of a ring of n cores.

    direction=+1 moves content forward along the ring (core receives from its ring predecessor);
    direction=-1 moves it backward (core receives from its ring successor). kind: interleaved | wrap.
    """
    if kind == "interleaved":
        order, pos = np.array(interleave_order(n)), ring_pos(n)
        return order[(pos - direction) % n]
    if kind == "wrap":
        return (np.arange(n) - direction) % n
    if kind == "line":  # neighbour shift without the wrap edge: the end core receives nothing (src -1)
        src = np.arange(n) - direction
        return np.where((src >= 0) & (src < n), src, -1)
    raise ValueError(f"unknown ring kind {kind!r}; known: interleaved, wrap, line")


def ring_hops(n: int, kind: str) -> int:
    """Hops on the longest link of one shift: 2 for the interleaved ring, n-1 for the wrap-around edge."""
    if n <= 1:
        return 0
    if kind == "interleaved":
        return min(2, n - 1)
    if kind == "line":
        return 1
    return n - 1


# Group counts the authors' decode configs use for the two-phase K-tree (P cores -> G groups): every
# Decode/WSE-{2,3}/model_config/*.json of MeshInfra/WaferLLM (llama8B and qwen72B agree where both exist).
ARTIFACT_GROUPS = {240: 15, 256: 16, 300: 15, 360: 18, 420: 20, 480: 20, 512: 32, 540: 20, 600: 24, 660: 22,
                   720: 24}


def default_groups(p: int) -> int:
    """G for a K=2 tree over p cores: the artifact's choice where it has one, else round(sqrt(p))."""
    return ARTIFACT_GROUPS.get(p, max(1, int(round(p ** 0.5))))
