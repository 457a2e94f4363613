"""Host <-> mesh: cut global arrays into per-core tiles [R, C, ...] and put them back.

order='ring' places block b on the core whose interleaved-ring position is b (Cannon-family
operands); order='natural' places block b on core b.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine import shard
from waferllm.machine.mesh import Array, Mesh, is_abstract
from waferllm.machine.rings import interleave_order, ring_pos


def blocks(n: int, parts: int) -> int:
    """Block size when n is cut into `parts` (the last blocks are padded)."""
    return max(1, math.ceil(n / parts))


def core_of_block(parts: int, order: str) -> np.ndarray:
    """core_of_block[b] = physical index of the core holding block b."""
    return np.array(interleave_order(parts)) if order == "ring" else np.arange(parts)


def block_of_core(parts: int, order: str) -> np.ndarray:
    """block_of_core[i] = which block physical core i holds."""
    return ring_pos(parts) if order == "ring" else np.arange(parts)


def pad_to(a, shape):
    """Zero-pad a 2D array up to shape."""
    pads = [(0, t - s) for s, t in zip(a.shape, shape)]
    return jnp.pad(jnp.asarray(a), pads)


ALIGN_BYTES = 64  # XLA's CPU client adopts a host buffer without copying when it is aligned to this


def aligned_empty(shape, dtype, fill: bool = False) -> np.ndarray:
    """An array of shape and dtype whose data starts on an ALIGN_BYTES boundary (to_device then copies
    nothing); uninitialised unless fill (zeros)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = (np.zeros if fill else np.empty)(nbytes + ALIGN_BYTES, np.uint8)
    off = -buf.ctypes.data % ALIGN_BYTES
    return buf[off:off + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape, dtype) -> np.ndarray:
    """np.zeros(shape, dtype), aligned as aligned_empty."""
    return aligned_empty(shape, dtype, fill=True)


def to_device(a: np.ndarray, dtype=None) -> Array:
    """A host tile array as a device array of `dtype`: adopted without a copy on CPU when it is contiguous,
    aligned and already of that dtype (a placement's own fresh arrays), else one copy. The caller never
    writes to `a` afterwards."""
    dtype = np.dtype(a.dtype if dtype is None else dtype)
    if not (a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % ALIGN_BYTES == 0):
        out = aligned_empty(a.shape, dtype)
        out[...] = a  # every element written: no need to zero it first
        a = out
    return jax.device_put(a)


def take_padded(a: np.ndarray, idx: np.ndarray, axis: int = -1) -> np.ndarray:
    """np.take(a, idx, axis) where idx < 0 gives zeros; idx of any shape replaces that axis. A new array.

    Host-side weight placement: an index that is 0..n-1 then padding (the common case) is one copy, no gather.
    """
    axis %= a.ndim
    flat = idx.reshape(-1)
    valid = flat >= 0
    n = int(np.count_nonzero(valid))
    shape = a.shape[:axis] + idx.shape + a.shape[axis + 1:]
    lead = (slice(None),) * axis
    flat_shape = a.shape[:axis] + (flat.size,) + a.shape[axis + 1:]
    if np.array_equal(flat[:n], np.arange(n)):  # the n valid entries come first, in order
        out = aligned_zeros(flat_shape, a.dtype)
        out[lead + (slice(0, n),)] = a[lead + (slice(0, n),)]
        return out.reshape(shape)
    out = np.take(a, np.where(valid, flat, 0), axis=axis, out=aligned_empty(flat_shape, a.dtype))
    out[lead + (~valid,)] = 0
    return out.reshape(shape)


def scatter(mesh: Mesh, a, *, stack: int = 1, row_order: str = "natural", col_order: str = "natural",
            dtype=None) -> Array:
    """A[Mg, Ng] -> tiles [R, C, mb, nb] (stack=1) or [R, C, s, mb, nb/s]: rows over Y, columns over X.

    With stack=s the columns are cut into C*s blocks and core x holds blocks x*s .. x*s+s-1 (in the
    chosen order of cores); shape-only inputs give shape-only tiles.
    """
    R, C = mesh.shape
    M, N = a.shape
    mb, kb = blocks(M, R), blocks(N, C * stack)
    dt = np.dtype(dtype or a.dtype)
    shape = (R, C, mb, kb) if stack == 1 else (R, C, stack, mb, kb)
    if is_abstract(a):
        return jax.ShapeDtypeStruct(shape, dt)
    t = pad_to(a, (R * mb, C * stack * kb)).astype(dt)
    t = t.reshape(R, mb, C, stack, kb).transpose(0, 2, 3, 1, 4)  # [R(block), C(block), s, mb, kb]
    t = jnp.take(t, jnp.asarray(block_of_core(R, row_order)), axis=0)
    t = jnp.take(t, jnp.asarray(block_of_core(C, col_order)), axis=1)
    t = t if stack > 1 else t[:, :, 0]
    return shard.place(t, mesh.devices)


def gather(mesh: Mesh, t: jax.Array, shape: tuple[int, int], *, row_order: str = "natural",
           col_order: str = "natural") -> jax.Array:
    """Inverse of scatter: tiles [R, C, (s,) mb, nb] -> A[shape] (padding dropped)."""
    R, C = mesh.shape
    if t.ndim == 4:
        t = t[:, :, None]
    s, mb, kb = t.shape[2:]
    t = jnp.take(t, jnp.asarray(core_of_block(R, row_order)), axis=0)
    t = jnp.take(t, jnp.asarray(core_of_block(C, col_order)), axis=1)
    full = t.transpose(0, 3, 1, 2, 4).reshape(R * mb, C * s * kb)
    return full[: shape[0], : shape[1]]


def scatter_vector(mesh: Mesh, v, axis: str, *, order: str = "natural", dtype=None) -> Array:
    """v[N] -> tiles [R, C, nb]: split along `axis` ('x' or 'y'), replicated along the other axis."""
    R, C = mesh.shape
    n = v.shape[0]
    parts = C if axis == "x" else R
    nb = blocks(n, parts)
    dt = np.dtype(dtype or v.dtype)
    if is_abstract(v):
        return jax.ShapeDtypeStruct((R, C, nb), dt)
    t = jnp.pad(jnp.asarray(v), (0, parts * nb - n)).astype(dt).reshape(parts, nb)
    t = jnp.take(t, jnp.asarray(block_of_core(parts, order)), axis=0)
    t = jnp.broadcast_to(t[None] if axis == "x" else t[:, None], (R, C, nb))
    return shard.place(t, mesh.devices)


def gather_vector(mesh: Mesh, t: jax.Array, n: int, axis: str, *, order: str = "natural") -> jax.Array:
    """Inverse of scatter_vector (reads line 0 of the replicated axis)."""
    parts = mesh.cols if axis == "x" else mesh.rows
    line = t[0] if axis == "x" else t[:, 0]
    line = jnp.take(line, jnp.asarray(core_of_block(parts, order)), axis=0)
    return line.reshape(-1)[:n]
