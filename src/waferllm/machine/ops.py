"""Charged local ops: every op computes its numbers and charges its cost from per-core shapes, in one call.

Arrays hold per-core tiles of the whole grid. A layout string names every array axis with one letter:
`Y` is the grid's row axis, `X` its column axis, lowercase letters are axes inside a core. A letter that
is absent means the array is replicated along that grid axis (stored once: `bYk` is a batch of vectors
split along Y and replicated along X). Per-core work is the product of the lowercase extents, so the
cost follows the tile a core holds, not how the host stores it.

`live={"t": n}` charges axis t at extent n when the buffer is padded beyond the data a core really
holds (KV slots, a row's cached tokens). Shape-only inputs (jax.ShapeDtypeStruct) pass through: the op
returns a shape-only result and charges the same cycles.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine.mesh import Array, Mesh, is_abstract

F32 = jnp.float32
GRID = "YX"


def dtype_name(x: Array) -> str:
    return np.dtype(x.dtype).name


def matmul_cycles(mesh: Mesh, m: int, k: int, n: int, dtype: str, batch: int = 1, *, along_m: bool = False) -> float:
    """Cycles for C[m,n] += A[m,k] B[k,n] on one core: vector FMACs along the longer of m and n, or, along_m, one
    FMAC over A's m rows per (k, n) element of B (the authors' GEMM kernels: a `@map` over B's row issuing one
    `@fmach` of the tile's token rows each, so the instruction count k*n does not shrink with the prompt)."""
    rate = mesh.spec.macs_per_cycle(dtype)
    v = mesh.spec.vector_op_overhead_cycles
    if along_m and m > 1:
        return batch * n * k * (m / rate + v)
    return batch * min(m * k * (n / rate + v), n * k * (m / rate + v))


def elementwise_cycles(mesh: Mesh, elems: float, dtype: str = "float32", *, ops: int = 1, special: int = 0) -> float:
    """`ops` vector passes over `elems` elements, plus `special` exp/rsqrt-class calls per element."""
    if elems <= 0:
        return 0.0
    s = mesh.spec
    return ops * (elems / s.macs_per_cycle(dtype) + s.vector_op_overhead_cycles) + special * elems * s.special_function_cycles


def any_abstract(*xs) -> bool:
    return any(is_abstract(x) for x in xs if x is not None)


def _sizes(letters: str, shape: tuple[int, ...], into: dict[str, int]) -> None:
    if len(letters) != len(shape):
        raise ValueError(f"layout {letters!r} does not match an array of shape {shape}")
    for c, n in zip(letters, shape):
        if into.setdefault(c, n) != n and n != 1 and into[c] != 1:
            raise ValueError(f"axis {c!r} is {into[c]} in one operand and {n} in another")
        into[c] = max(into[c], n)


def per_core(letters: str, sizes: dict[str, int], live: dict[str, int] | None = None) -> int:
    """Elements one core holds of an array laid out as `letters` (grid letters drop out)."""
    live = live or {}
    return int(math.prod(live.get(c, sizes[c]) for c in letters if c not in GRID))


# --- matmul-class work ---------------------------------------------------------------
def einsum(mesh: Mesh, spec: str, a: Array, b: Array, *, live: dict[str, int] | None = None,
           out_dtype=F32, compute_dtype=None, along_m: bool = False) -> Array:
    """Per-core contraction of two tiled operands, e.g. `bYk,YkXn->YXbn` (a skinny GEMM on every core).

    Lowercase letters in both inputs but not the output are contracted (k); in both and the output they
    are a batch; the rest are m (from a) and n (from b). Both operands are read in compute_dtype (default:
    b's, the stored weights'), products accumulate in float32; charged as matmul cycles at b's rate
    (along_m: vectors along a's rows, matmul_cycles).
    """
    ins, out = spec.replace(" ", "").split("->")
    la, lb = ins.split(",")
    sizes: dict[str, int] = {}
    _sizes(la, a.shape, sizes)
    _sizes(lb, b.shape, sizes)
    A, B, O = set(la), set(lb), set(out)
    if (A - B - O) or (B - A - O) or (A | B) & set(GRID) - O:
        raise ValueError(f"einsum {spec!r}: only axes shared by both operands may be contracted, and never a grid axis")
    live = live or {}
    size = lambda cs: int(math.prod(live.get(c, sizes[c]) for c in cs if c not in GRID))  # noqa: E731
    k, batch, m, n = size(A & B - O), size(A & B & O), size(A - B), size(B - A)
    mesh.charge_compute(matmul_cycles(mesh, m, k, n, dtype_name(b), batch, along_m=along_m), macs=batch * m * k * n)
    if any_abstract(a, b):
        return jax.ShapeDtypeStruct(tuple(sizes[c] for c in out), np.dtype(out_dtype))
    cdt = compute_dtype or b.dtype
    return _dot(la, lb, out, a.astype(cdt), b.astype(cdt)).astype(out_dtype)


# --- elementwise work ----------------------------------------------------------------
def map(mesh: Mesh, layout: str, fn: Callable, *xs, ops: int = 1, special: int = 0,
        live: dict[str, int] | None = None):
    """fn(*xs) on every core, charged as `ops` vector passes (+ `special` calls per element) over the
    result's per-core elements; `layout` names the result's axes."""
    out = jax.eval_shape(fn, *xs) if any_abstract(*xs) else fn(*xs)
    sizes: dict[str, int] = {}
    _sizes(layout, out.shape, sizes)
    mesh.charge_compute(elementwise_cycles(mesh, per_core(layout, sizes, live), dtype_name(out), ops=ops,
                                           special=special))
    return out


def reduce(mesh: Mesh, layout: str, x: Array, over: str, op: str = "sum", *, live: dict[str, int] | None = None,
           pre: Callable | None = None):
    """Sum or max over the per-core axes `over` (one vector pass over the input's per-core elements).

    op="argmax" (one axis) returns (max, first index of the max) from the same pass. pre: an elementwise
    fn fused into the pass (jnp.square for a sum of squares), free because the pass reads every element.
    """
    axes = tuple(layout.index(c) for c in over)
    if any(c in GRID for c in over):
        raise ValueError("a reduction over a grid axis is a collective: use machine.noc.allreduce")
    if op == "argmax" and len(axes) != 1:
        raise ValueError("argmax reduces exactly one axis")
    sizes: dict[str, int] = {}
    _sizes(layout, x.shape, sizes)
    mesh.charge_compute(elementwise_cycles(mesh, per_core(layout, sizes, live), dtype_name(x)))
    if is_abstract(x):
        shape = tuple(n for i, n in enumerate(x.shape) if i not in axes)
        val = jax.ShapeDtypeStruct(shape, x.dtype)
        return (val, jax.ShapeDtypeStruct(shape, np.dtype(np.int32))) if op == "argmax" else val
    x = pre(x) if pre is not None else x
    if op == "argmax":
        return jnp.max(x, axis=axes), jnp.argmax(x, axis=axes[0]).astype(jnp.int32)
    return {"sum": jnp.sum, "max": jnp.max}[op](x, axis=axes)


def free(fn: Callable, *xs):
    """In-core bookkeeping that moves no data and does no arithmetic (slices, reshapes, views of a tile)."""
    return jax.eval_shape(fn, *xs) if any_abstract(*xs) else fn(*xs)


def zeros(shape: tuple[int, ...], dtype, abstract: bool) -> Array:
    """A zero buffer of the given (whole-grid) shape; allocation is free, holding it is counted by Mesh.hold."""
    if abstract:
        return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
    return jnp.zeros(shape, dtype)


# --- loops ---------------------------------------------------------------------------
@contextmanager
def times(mesh: Mesh, n: int) -> Iterator[None]:
    """Every charge inside counts n times (a loop body traced once)."""
    saved = mesh._times
    mesh._times = saved * n
    try:
        yield
    finally:
        mesh._times = saved


def loop(mesh: Mesh, n: int, body: Callable, carry):
    """body(i, carry) -> carry for i in 0..n-1 with identical costs: traced and charged once, times n.

    Numeric runs are one lax.fori_loop (compile time independent of n); shape-only runs trace once.
    """
    if n <= 0:
        return carry
    with times(mesh, n):
        if any_abstract(*jax.tree_util.tree_leaves(carry)):
            return body(0, carry)
        if n == 1:
            return body(jnp.int32(0), carry)
        return jax.lax.fori_loop(0, n, body, carry)


def elems(layout: str, x: Array, live: dict[str, int] | None = None) -> int:
    """Elements one core holds of x laid out as `layout`, live extents applied (what a message carries)."""
    sizes: dict[str, int] = {}
    _sizes(layout, x.shape, sizes)
    return per_core(layout, sizes, live)


def _runs(letters: str, keep: set[str]) -> list[str]:
    """Maximal runs of consecutive letters that are all in `keep` (other letters as runs of one)."""
    runs: list[str] = []
    for c in letters:
        if runs and c in keep and runs[-1][-1] in keep:
            runs[-1] += c
        else:
            runs.append(c)
    return runs


def _dot(la: str, lb: str, out: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum(la,lb->out) as one dot_general with a as the left operand and each operand's adjacent free
    axes merged (a free reshape): XLA CPU then runs a weight [Y, k, X, n] as one plain row-major GEMM per
    batch instead of transposing it first (jnp.einsum puts b on the left: 15x slower for decode's GEMVs)."""
    size = dict(zip(la, a.shape)) | dict(zip(lb, b.shape))
    if any(size[c] != n for c, n in zip(la, a.shape)):  # a size-1 axis broadcast against the other operand
        return jnp.einsum(f"{la},{lb}->{out}", a, b, preferred_element_type=F32)
    fa, fb = set(la) - set(lb), set(lb) - set(la)
    ra, rb = _runs(la, fa), _runs(lb, fb)
    a2 = a.reshape([math.prod(size[c] for c in r) for r in ra])
    b2 = b.reshape([math.prod(size[c] for c in r) for r in rb])
    batch = [c for c in la if c in lb and c in out]
    con = [c for c in la if c in lb and c not in out]
    dims = (([ra.index(c) for c in con], [rb.index(c) for c in con]),
            ([ra.index(c) for c in batch], [rb.index(c) for c in batch]))
    y = jax.lax.dot_general(a2, b2, dims, preferred_element_type=F32)
    got = "".join(batch) + "".join(r for r in ra if r[0] in fa) + "".join(r for r in rb if r[0] in fb)
    y = y.reshape([size[c] for c in got])
    return jnp.transpose(y, [got.index(c) for c in out])
