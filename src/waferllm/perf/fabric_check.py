"""The analytical ledger against the event-level fabric (machine/fabric.py): `waferllm validate --fabric` and
`waferllm bench --fabric events`.

One program, two cost models: every kernel runs once, shape-only, on a Mesh that records its schedule; the
ledger's cycles come from that run and the fabric's from replaying the recorded schedule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import jax
import numpy as np

from waferllm import WaferError
from waferllm.engine import kv
from waferllm.kernels import gemm, gemm_t, gemv
from waferllm.machine import Mesh, noc
from waferllm.machine.fabric_run import simulate
from waferllm.machine.schedule import capture
from waferllm.perf.kernel_bench import KernelResult, run_kernel
from waferllm.spec import DeviceSpec

GRIDS = (4, 8, 16, 32, 64)  # square grid sides of the table
TOLERANCE = 0.10  # the analytical model must be within 10% of the event-level one
MAX_FLITS = 16  # flits per message in the fabric (0: every wavelet on its own; see machine/fabric.py)
MAX_EVENT_CORES = 128 * 128  # larger grids take minutes to hours per kernel on the event-level fabric
FABRICS = ("analytic", "events")


class FabricError(WaferError):
    """A request the event-level fabric cannot serve in reasonable time."""


@dataclass(frozen=True)
class Case:
    """One kernel at one size: a shape-only program on a Mesh."""

    kernel: str
    shape: str
    regime: str
    program: Callable[[Mesh], object]


def _s(*shape, dtype=np.float16) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _kv_shift(m: Mesh) -> None:
    """The decode step's shift of the KV cache: one sequence whose rows rebalance (engine/kv.py)."""
    cb, T = max(1, 1024 // m.cols), 8  # Llama3-8B's 8 KV heads x 128 dims over the columns, 8 slots per row
    kc = _s(1, m.rows, T, m.cols, cb)
    new = _s(1, m.cols, cb)
    n = jax.ShapeDtypeStruct((1,), np.int32)
    kv.insert_kv(m, "shift", kc, kc, new, new, n, n, moving=1)


def cases(side: int) -> list[Case]:
    """Every kernel on a side x side grid: GEMMs with 32x32 tiles (2048^3 at 64x64; compute-bound) and 4x4 tiles
    (latency-bound, as the paper's 2K GEMM at 720x720), GEMVs of Llama3-8B's 4096 x 4096, a K-tree allreduce of 64
    fp32 per core, and the KV shift."""
    out = []
    for tile, regime in ((32, "compute-bound"), (4, "latency-bound")):
        d = tile * side
        for name, algo in (("MeshGEMM", "meshgemm"), ("Cannon", "cannon"), ("SUMMA", "summa")):
            out.append(Case(name, f"{d}x{d}x{d}", regime, lambda m, d=d, a=algo: gemm(m, _s(d, d), _s(d, d), a)))
        out.append(Case("dist-GEMM-T", f"{d}x{d}x{d}", regime, lambda m, d=d: gemm_t(m, _s(d, d), _s(d, d))))
    for name, algo in (("MeshGEMV", "meshgemv"), ("pipeline GEMV", "pipeline"), ("ring GEMV", "ring")):
        out.append(Case(name, "4096x4096", "decode", lambda m, a=algo: gemv(m, _s(4096), _s(4096, 4096), a)))
    out.append(Case("K-tree allreduce", "64 fp32/core", "decode",
                    lambda m: noc.allreduce(m, _s(m.rows, m.cols, 64, dtype=np.float32), "y", "ktree")))
    out.append(Case("KV shift", "1 token, 1024 dims", "decode", _kv_shift))
    return out


def compare(spec: DeviceSpec, case: Case, side: int, max_flits: int = MAX_FLITS) -> dict:
    """One row: the case's ledger cycles beside the fabric's replay of the same run's schedule."""
    mesh = Mesh(spec, side, side, limits=False)
    with mesh.record() as sched:
        case.program(mesh)
    ev = simulate(spec, sched, max_flits=max_flits)
    an = mesh.ledger.cycles
    return {"kernel": case.kernel, "grid": f"{side}x{side}", "shape": case.shape, "regime": case.regime,
            "analytical_cycles": an, "event_cycles": ev.cycles, "ratio": ev.cycles / an if an else math.nan,
            "within": abs(ev.cycles - an) <= TOLERANCE * an, "steps": ev.steps, "simulated_steps": ev.simulated,
            "routes_per_core": ev.routes_per_core, "ledger_routes_per_core": mesh.ledger.routes_per_core,
            "queue_cycles": ev.queues["queue_cycles"], "reordered_flits": ev.queues["reordered_flits"],
            "flow_control_worst_cycles": ev.queues["flow_control_worst_cycles"],
            "held_wavelets_worst": ev.queues["held_wavelets_worst"], "wall_s": ev.wall_s}


def rows(spec: DeviceSpec, grids=GRIDS, *, max_flits: int = MAX_FLITS,
         progress: Callable[[str], None] | None = None) -> list[dict]:
    """The whole table: every case on every grid; progress(label) after each row."""
    out = []
    for side in grids:
        for case in cases(side):
            out.append(compare(spec, case, side, max_flits))
            if progress:
                progress(f"{case.kernel} {side}x{side}")
    return out


def parse_grids(text: str | None) -> tuple[int, ...]:
    """'4,8,16' -> (4, 8, 16); None -> GRIDS."""
    if not text:
        return GRIDS
    try:
        sides = tuple(int(t) for t in text.split(","))
    except ValueError:
        sides = ()
    if not sides or min(sides) < 1 or max(sides) ** 2 > MAX_EVENT_CORES:
        raise FabricError(f"bad --grids {text!r}: comma-separated square grid sides from 1 to 128, e.g. 4,8,16")
    return sides


def n_rows(grids=GRIDS) -> int:
    return sum(len(cases(s)) for s in grids)


def summary(table: list[dict]) -> dict:
    """How many rows agree within TOLERANCE, and the worst."""
    worst = max(table, key=lambda r: abs(r["ratio"] - 1.0))
    return {"rows": len(table), "within": sum(r["within"] for r in table), "tolerance": TOLERANCE,
            "worst": {k: worst[k] for k in ("kernel", "grid", "shape", "ratio")}}


def plot(table: list[dict], path: str) -> None:
    """Event-level over analytical cycles against grid side, one line per kernel and regime, with the 10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    panels = ("compute-bound", "latency-bound", "decode")
    for ax, regime in zip(axes, panels):
        for kernel in dict.fromkeys(r["kernel"] for r in table if r["regime"] == regime):
            pts = [(int(r["grid"].split("x")[0]), r["ratio"]) for r in table
                   if r["kernel"] == kernel and r["regime"] == regime]
            ax.plot(*zip(*pts), marker="o", label=kernel)
        ax.axhspan(1 - TOLERANCE, 1 + TOLERANCE, color="green", alpha=0.08)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("grid side (cores)")
        ax.set_title(regime)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("event-level / analytical cycles")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_grid(grid: tuple[int, int]) -> None:
    """FabricError for grids too large for the event-level fabric."""
    if grid[0] * grid[1] > MAX_EVENT_CORES:
        raise FabricError(f"--fabric events simulates every link and wavelet: grid {grid[0]}x{grid[1]} has "
                          f"{grid[0] * grid[1]:,} cores, more than the {MAX_EVENT_CORES:,} (128x128) it handles in "
                          "reasonable time; use a smaller --grid or --fabric analytic")


def run_kernel_fabric(spec: DeviceSpec, kernel: str, algo: str, grid: tuple[int, int], shape: tuple[int, ...],
                      dtype: str = "float16", limits: bool = True, fabric: str = "analytic",
                      progress: Callable[[int, int], None] | None = None, groups: int | None = None) -> KernelResult:
    """perf/kernel_bench.run_kernel with its cycles from the chosen cost model (the same program either way)."""
    if fabric not in FABRICS:
        raise FabricError(f"unknown fabric {fabric!r}; known: {', '.join(FABRICS)}")
    if fabric == "analytic":
        return run_kernel(spec, kernel, algo, grid, shape, dtype, limits, groups)
    check_grid(grid)
    with capture() as got:
        res = run_kernel(spec, kernel, algo, grid, shape, dtype, limits, groups)
    ev = simulate(spec, got[0], progress=progress)
    eff = res.compute_efficiency * res.cycles / ev.cycles if ev.cycles else 0.0
    return dataclasses.replace(res, cycles=ev.cycles, time_s=ev.time_s, comm_cycles=ev.cycles - res.compute_cycles,
                               compute_efficiency=eff)
