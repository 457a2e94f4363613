"""Per-core matmul on tiled arrays [R, C, ..., m, k] and in-core stack bookkeeping (machine/ops.py charges)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from waferllm.machine import ops
from waferllm.machine.mesh import Array, Mesh, is_abstract

_LETTERS = "abcdefghij"


def matmul(mesh: Mesh, a: Array, b: Array, acc: Array | None = None, *, trans_b: bool = False) -> Array:
    """Per-core a[R, C, ..., m, k] @ b[R, C, ..., k, n] (or b[..., n, k]^T), plus acc; accumulates in float32.

    Leading per-core axes of a are a batch; b may lack some (broadcast: one K tile serves several heads).
    Charged as the authors' GEMM kernels run it: one vector FMAC over a's m rows per (k, n) element of b.
    """
    nb = a.ndim - 4
    bat = _LETTERS[:nb]
    bb = bat[: b.ndim - 4]  # b's batch axes are a's leading ones (a K/V head serves its query heads)
    spec = f"YX{bat}mk,YX{bb}{'nk' if trans_b else 'kn'}->YX{bat}mn"
    out_dt = acc.dtype if acc is not None else a.dtype
    c = ops.einsum(mesh, spec, a, b, out_dtype=jnp.float32, compute_dtype=a.dtype, along_m=True)  # GEMM kernels
    if is_abstract(c):
        return jax.ShapeDtypeStruct(c.shape, out_dt)
    if acc is not None:
        return (acc.astype(jnp.float32) + c).astype(acc.dtype)
    return c.astype(out_dt)


def take_slot(x: Array, j) -> Array:
    """Slot j of a stacked tile [R, C, s, ...] (a pointer move inside the core: free)."""
    return ops.free(lambda x: x[:, :, j], x)


def zeros(mesh: Mesh, shape: tuple[int, ...], dtype, abstract: bool) -> Array:
    """A zero tile of `shape` on every core ([R, C, *shape])."""
    return ops.zeros((mesh.rows, mesh.cols) + tuple(shape), dtype, abstract)
