"""Spreading the core grid over several JAX devices; shifts become neighbour collective-permutes."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh as DeviceMesh, NamedSharding, PartitionSpec as P

AXES = ("gy", "gx")  # device-mesh axes that split grid rows (y) and columns (x)


def device_mesh(rows: int, cols: int, devices: list | None = None) -> DeviceMesh | None:
    """A dy x dx device mesh whose factors divide the grid (most devices used), or None for one device."""
    devices = list(devices if devices is not None else jax.devices())
    best = None
    for n in range(len(devices), 1, -1):
        for dy in range(1, n + 1):
            if n % dy == 0 and rows % dy == 0 and cols % (n // dy) == 0:
                cand = (dy, n // dy)
                if best is None or abs(cand[0] - cand[1]) < abs(best[0] - best[1]):
                    best = cand
        if best:
            return DeviceMesh(np.array(devices[:n]).reshape(best), AXES)
    return None


def place(x: jax.Array, dmesh: DeviceMesh | None) -> jax.Array:
    """Lay a tiled array [R, C, ...] out over the device mesh (grid axes sharded)."""
    if dmesh is None:
        return x
    return jax.device_put(x, NamedSharding(dmesh, P(*AXES)))


def to_host(x) -> np.ndarray:
    """A device array's whole value as numpy on this process, also when it spans other processes' devices
    (multi-process runs: gathered with JAX's own collectives; every process gets the same value)."""
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def permute(x: jax.Array, axis: int, src: np.ndarray, dmesh: DeviceMesh | None) -> jax.Array:
    """out[i] = x[src[i]] along grid axis 0 (y) or 1 (x); a halo exchange between neighbour devices."""
    n = x.shape[axis]
    d = 1 if dmesh is None else dmesh.shape[AXES[axis]]
    halo = _halo(src)
    if d == 1 or halo > n // d:
        return jnp.take(x, jnp.asarray(src), axis=axis)
    return _halo_permute(x, axis, tuple(int(s) for s in src), halo, dmesh)


def _halo(src: np.ndarray) -> int:
    n = len(src)
    diff = (np.asarray(src) - np.arange(n)) % n
    return int(np.max(np.minimum(diff, n - diff))) if n else 0


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _halo_permute(x: jax.Array, axis: int, src: tuple[int, ...], halo: int, dmesh: DeviceMesh) -> jax.Array:
    n, name = len(src), AXES[axis]
    d = dmesh.shape[name]
    b = n // d
    # local index into [left halo | own block | right halo] for every (device, local row)
    g = np.arange(n)
    off = (np.asarray(src) - g + n // 2) % n - n // 2  # signed cyclic offset, |off| <= halo
    table = jnp.asarray((np.arange(b)[None, :] + halo + off.reshape(d, b)).astype(np.int32))
    left = [(i, (i + 1) % d) for i in range(d)]  # my last rows become my right neighbour's left halo
    right = [(i, (i - 1) % d) for i in range(d)]

    def body(blk):
        lo = jax.lax.slice_in_dim(blk, b - halo, b, axis=axis)
        hi = jax.lax.slice_in_dim(blk, 0, halo, axis=axis)
        from_left = jax.lax.ppermute(lo, name, left)
        from_right = jax.lax.ppermute(hi, name, right)
        ext = jnp.concatenate([from_left, blk, from_right], axis=axis)
        idx = table[jax.lax.axis_index(name)]
        return jnp.take(ext, idx, axis=axis)

    spec = P(*AXES)
    return jax.shard_map(body, mesh=dmesh, in_specs=spec, out_specs=spec)(x)
