"""`waferllm bench gemv|gemm`: cost kernels shape-only and compare algorithms (paper Figures 9, 10)."""

from __future__ import annotations

import json

from waferllm.cli import add_device_args, device_from_args
from waferllm.machine import parse_grid
from waferllm.perf.kernel_bench import algos_for, parse_shape, run_kernel, speedups, sweep_sides
from waferllm.report.tables import fmt_bytes, fmt_time, table

DEFAULT_SHAPE = {"gemv": "16384x16384", "gemm": "2048x2048x2048"}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="cost GEMV/GEMM algorithms on a grid")
    p.add_argument("kernel", choices=["gemv", "gemm"])
    add_device_args(p)
    p.add_argument("--grid", default="720x720", help="ROWSxCOLS cores (default 720x720)")
    p.add_argument("--shape", default=None, help="gemv: KxN (x[K] @ W[K,N]); gemm: MxKxN")
    p.add_argument("--algo", default="all", help="gemv: meshgemv|pipeline|ring|all; gemm: meshgemm|summa|cannon|all")
    p.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per algorithm")
    p.add_argument("--plot", metavar="PNG", help="also plot latency against grid side for each algorithm")
    p.set_defaults(func=run)


def run(args) -> int:
    spec = device_from_args(args)
    grid = parse_grid(args.grid)
    shape = parse_shape(args.kernel, args.shape or DEFAULT_SHAPE[args.kernel])
    algos = algos_for(args.kernel, args.algo)
    from waferllm.spec.device import check_dtype

    check_dtype(args.dtype)
    from waferllm.machine import Mesh

    Mesh(spec, *grid)  # validates the grid against the device before any work
    results = [run_kernel(spec, args.kernel, a, grid, shape, args.dtype, limits=not args.no_limits) for a in algos]
    ups = speedups(results)
    if args.plot:
        _plot(args.plot, spec, args.kernel, algos, grid, shape, args.dtype, quiet=args.json)
    if args.json:
        print(json.dumps([dict(r.to_dict(), speedup=u) for r, u in zip(results, ups)], indent=2))
        return 0
    rows = [[r.algo, r.grid, r.shape, f"{r.cycles:,.0f}", fmt_time(r.time_s),
             f"{100 * r.compute_cycles / r.cycles:.1f}%", f"{100 * r.comm_cycles / r.cycles:.1f}%",
             f"{r.compute_efficiency:.3f}", fmt_bytes(r.peak_core_bytes), r.routes_per_core, f"{u:.2f}x"]
            for r, u in zip(results, ups)]
    print(table(["algorithm", "grid", "shape", "cycles", "time", "compute %", "comm %", "compute eff",
                 "peak/core", "routes/core", f"speed-up vs {algos[0]}"], rows))
    print(f"device {spec.name}, {args.dtype}, clock {spec.clock_hz / 1e9:.2f} GHz")
    for r in results:
        for e in r.excess:
            print(f"  over limit ({r.algo}): {e}")
    return 0


def _plot(path, spec, kernel, algos, grid, shape, dtype, quiet) -> None:
    """Latency vs square grid side, one line per algorithm, with a progress bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.progress import Progress

    sides = sweep_sides(min(grid))
    lat = {a: [] for a in algos}
    with Progress(transient=True, disable=quiet) as prog:
        task = prog.add_task("sweeping grids", total=len(sides) * len(algos))
        for s in sides:
            for a in algos:
                lat[a].append(run_kernel(spec, kernel, a, (s, s), shape, dtype, limits=False).time_s * 1e6)
                prog.advance(task)
    fig, ax = plt.subplots(figsize=(6, 4))
    for a in algos:
        ax.plot(sides, lat[a], marker="o", label=a)
    ax.set_xlabel("grid side (cores)")
    ax.set_ylabel("latency (us)")
    ax.set_yscale("log")
    ax.set_title(f"{kernel.upper()} {'x'.join(map(str, shape))} on {spec.name} ({dtype})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
