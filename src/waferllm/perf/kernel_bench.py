"""Kernel benchmarks: cost one GEMV/GEMM algorithm shape-only on a grid and summarise its ledger."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np

from waferllm import WaferError
from waferllm.kernels import GEMM_ALGOS, GEMV_ALGOS, gemm, gemv
from waferllm.machine import Mesh
from waferllm.spec import DeviceSpec
from waferllm.spec.device import check_dtype

# The first baseline each kernel's speed-up is measured against (the paper's comparisons).
BASELINE = {"gemv": "pipeline", "gemm": "summa"}
ALGOS = {"gemv": GEMV_ALGOS, "gemm": GEMM_ALGOS}


class BenchError(WaferError):
    """Bad benchmark arguments."""


def parse_shape(kernel: str, text: str) -> tuple[int, ...]:
    """gemv: 'KxN' (x[K] @ W[K, N]); gemm: 'MxKxN'; every dimension >= 1."""
    want = 2 if kernel == "gemv" else 3
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != want or min(dims) < 1:
        form = "KxN, e.g. 16384x16384" if kernel == "gemv" else "MxKxN, e.g. 2048x2048x2048"
        raise BenchError(f"bad {kernel} shape {text!r}; expected {form} with positive integers")
    return dims


def algos_for(kernel: str, algo: str) -> list[str]:
    """'all' -> baseline first, then the rest; else the named algorithm (checked)."""
    known = ALGOS[kernel]
    if algo == "all":
        return [BASELINE[kernel]] + [a for a in known if a != BASELINE[kernel]]
    if algo not in known:
        raise BenchError(f"unknown {kernel} algorithm {algo!r}; known: {', '.join(known)}, all")
    return [algo]


@dataclass(frozen=True, kw_only=True)
class KernelResult:
    """One algorithm's cost on one grid (shape-only run)."""

    kernel: str
    algo: str
    device: str
    grid: str
    shape: str
    dtype: str
    cycles: float
    time_s: float
    compute_cycles: float
    comm_cycles: float
    compute_efficiency: float  # ideal MAC cycles / total cycles
    peak_core_bytes: int
    routes_per_core: int
    hops: float
    stages: float
    excess: tuple[str, ...] = ()
    groups: int | None = None  # MeshGEMV's K-tree group count when one was given

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["excess"] = list(self.excess)
        return d


def run_kernel(spec: DeviceSpec, kernel: str, algo: str, grid: tuple[int, int], shape: tuple[int, ...],
               dtype: str = "float16", limits: bool = True, groups: int | None = None) -> KernelResult:
    """Cost one kernel shape-only on an R x C grid of `spec`; groups: MeshGEMV's K-tree group count (None: the
    artifact's for the line's length, else round(sqrt))."""
    check_dtype(dtype)
    if groups is not None and (kernel, algo) != ("gemv", "meshgemv"):
        raise ValueError(f"a K-tree group count applies to gemv meshgemv only, not {kernel} {algo}")
    dt = np.dtype(dtype) if dtype != "bfloat16" else jax.numpy.bfloat16
    mesh = Mesh(spec, *grid, limits=limits)
    S = lambda *s: jax.ShapeDtypeStruct(s, dt)  # noqa: E731
    if kernel == "gemv":
        K, N = shape
        gemv(mesh, S(K), S(K, N), algo, groups=groups)
        macs = K * N
    else:
        M, K, N = shape
        gemm(mesh, S(M, K), S(K, N), algo)
        macs = M * K * N
    led = mesh.ledger
    ideal = macs / (grid[0] * grid[1] * spec.macs_per_cycle(dtype))
    return KernelResult(
        kernel=kernel, algo=algo, device=spec.name, grid=f"{grid[0]}x{grid[1]}", shape="x".join(map(str, shape)),
        dtype=dtype, cycles=led.cycles, time_s=led.time_s, compute_cycles=led.compute_cycles,
        comm_cycles=led.comm_cycles, compute_efficiency=ideal / led.cycles if led.cycles else 0.0,
        peak_core_bytes=led.peak_core_bytes, routes_per_core=led.routes_per_core, hops=led.hops,
        stages=led.stages, excess=tuple(led.excess), groups=groups)


def sweep_sides(max_side: int) -> list[int]:
    """Square grid sides for a latency-vs-grid plot: multiples of 60 up to the chosen side (as the paper)."""
    step = 60 if max_side >= 120 else max(1, max_side // 6)
    sides = list(range(step, max_side + 1, step))
    return sides if sides and sides[-1] == max_side else sides + [max_side]


def speedups(results: list[KernelResult]) -> list[float]:
    """Baseline cycles / cycles for each result (the first result is the baseline)."""
    base = results[0].cycles
    return [base / r.cycles if r.cycles else math.inf for r in results]
