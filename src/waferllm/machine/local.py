"""Local (per-core) compute on tiled arrays [R, C, ...], charged as MAC cycles on the critical path."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine.mesh import Array, Mesh, is_abstract


def dtype_name(x: Array) -> str:
    return np.dtype(x.dtype).name


def matmul_cycles(mesh: Mesh, m: int, k: int, n: int, dtype: str, batch: int = 1) -> float:
    """Cycles for C[m,n] += A[m,k] B[k,n] on one core: vector FMACs along the longer of m and n."""
    rate = mesh.spec.macs_per_cycle(dtype)
    v = mesh.spec.vector_op_overhead_cycles
    return batch * min(m * k * (n / rate + v), n * k * (m / rate + v))


def matmul(mesh: Mesh, a: Array, b: Array, acc: Array | None = None, *, trans_b: bool = False) -> Array:
    """Per-core a[..., m, k] @ b[..., k, n] (or b[..., n, k]^T), plus acc; accumulates in float32."""
    m, k = a.shape[-2:]
    n = b.shape[-2] if trans_b else b.shape[-1]
    batch = int(math.prod(a.shape[2:-2]))
    dt = dtype_name(a)
    mesh.charge_compute(matmul_cycles(mesh, m, k, n, dt, batch), macs=batch * m * k * n)
    out_shape = a.shape[:-1] + (n,)
    if is_abstract(a):
        return jax.ShapeDtypeStruct(out_shape, acc.dtype if acc is not None else a.dtype)
    bb = jnp.swapaxes(b, -1, -2) if trans_b else b
    c = jnp.matmul(a, bb, preferred_element_type=jnp.float32)
    if acc is not None:
        return (acc.astype(jnp.float32) + c).astype(acc.dtype)
    return c.astype(a.dtype)


def zeros(mesh: Mesh, shape: tuple[int, ...], dtype, abstract: bool) -> Array:
    """A zero tile of `shape` on every core ([R, C, *shape])."""
    full = (mesh.rows, mesh.cols) + tuple(shape)
    if abstract:
        return jax.ShapeDtypeStruct(full, np.dtype(dtype))
    return jnp.zeros(full, dtype)


def take_slot(x: Array, j: int) -> Array:
    """Slot j of a stacked tile [R, C, s, ...] (a pointer move inside the core: free)."""
    if is_abstract(x):
        return jax.ShapeDtypeStruct(x.shape[:2] + x.shape[3:], x.dtype)
    return x[:, :, j]


def push_slot(x: Array, item: Array, front: bool) -> Array:
    """Drop one end of a stack [R, C, s, ...] and append item at the other end (free)."""
    if is_abstract(x):
        return x
    item = item[:, :, None]
    return jnp.concatenate([item, x[:, :, :-1]] if front else [x[:, :, 1:], item], axis=2)


def charge_elementwise(mesh: Mesh, elems: int, dtype: str = "float32", *, special: int = 0, ops: int = 1) -> None:
    """`ops` vector passes over `elems` elements per core, plus `special` exp/rsqrt-class calls per element."""
    if elems <= 0:
        return
    s = mesh.spec
    cycles = ops * (elems / s.macs_per_cycle(dtype) + s.vector_op_overhead_cycles)
    cycles += special * elems * s.special_function_cycles
    mesh.charge_compute(cycles)
