"""`waferllm bench gemv|gemm`: cost kernels shape-only and compare algorithms (paper Figures 9, 10)."""

from __future__ import annotations


from waferllm.cli.args import ArgError, add_device_args, device_from_args, flags_given, json_text
from waferllm.machine import parse_grid
from waferllm.perf.kernel_bench import algos_for, parse_shape, run_kernel, speedups, sweep_sides
from waferllm.report.tables import fmt_bytes, fmt_time, table

DEFAULT_SHAPE = {"gemv": "16384x16384", "gemm": "2048x2048x2048"}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="cost GEMV/GEMM algorithms on a grid, or load-test a server (bench serve)")
    p.add_argument("kernel", choices=["gemv", "gemm", "serve"])
    add_device_args(p)
    p.add_argument("--grid", default="720x720", help="ROWSxCOLS cores (default 720x720)")
    p.add_argument("--shape", default=None, help="gemv: KxN (x[K] @ W[K,N]); gemm: MxKxN")
    p.add_argument("--algo", default="all", help="gemv: meshgemv|pipeline|ring|all; gemm: meshgemm|summa|cannon|all")
    p.add_argument("--dtype", default="float16", help="float16 | bfloat16 | float32")
    p.add_argument("--groups", type=int, default=None,
                   help="gemv meshgemv: the K-tree's group count (default: the authors' for the grid, else "
                        "round(sqrt(side))); the other algorithms have no groups")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per algorithm")
    p.add_argument("--plot", metavar="PNG", help="also plot latency against grid side for each algorithm")
    p.add_argument("--fabric", choices=["analytic", "events"], default="analytic",
                   help="cost model: analytic (the PLMR ledger) or events (the event-level fabric replaying the same "
                        "program's schedule, docs/fabric-model.md; grids up to 128x128); --json keys are the same")
    s = p.add_argument_group("bench serve (against a running `waferllm serve`)")
    s.add_argument("--base-url", default="http://127.0.0.1:8000", help="server address")
    s.add_argument("--model", default=None, help="model id (default: the server's first model)")
    s.add_argument("--num-prompts", type=int, default=16)
    s.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (Poisson); inf = all at once")
    s.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (EOS ignored)")
    s.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


# flags only one mode reads: given to the other they would be silently ignored
KERNEL_ONLY = ("--device", "--set", "--no-limits", "--grid", "--shape", "--algo", "--dtype", "--plot", "--fabric",
               "--groups")
SERVE_ONLY = ("--base-url", "--model", "--num-prompts", "--request-rate", "--max-tokens", "--seed")


def run(args) -> int:
    wrong = [f for f in (KERNEL_ONLY if args.kernel == "serve" else SERVE_ONLY) if f in flags_given(args)]
    if wrong:
        verb = "does" if len(wrong) == 1 else "do"
        other = "gemv|gemm" if args.kernel == "serve" else "serve"
        raise ArgError(f"{', '.join(wrong)} {verb} not apply to `waferllm bench {args.kernel}` (only to `waferllm "
                       f"bench {other}`)")
    if args.kernel == "serve":
        return run_serve(args)
    spec = device_from_args(args)
    grid = parse_grid(args.grid)
    shape = parse_shape(args.kernel, args.shape or DEFAULT_SHAPE[args.kernel])
    algos = algos_for(args.kernel, args.algo)
    from waferllm.spec.device import check_dtype

    check_dtype(args.dtype)
    _check_groups(args, algos, grid)
    from waferllm.machine import Mesh

    Mesh(spec, *grid)  # validates the grid against the device before any work
    results = _results(args, spec, algos, grid, shape)
    ups = speedups(results)
    if args.plot:
        _plot(args.plot, spec, args.kernel, algos, grid, shape, args.dtype, quiet=args.json)
    if args.json:
        print(json_text([dict(r.to_dict(), speedup=u, fabric=args.fabric) for r, u in zip(results, ups)]))
        return 0
    rows = [[r.algo, r.grid, r.shape, f"{r.cycles:,.0f}", fmt_time(r.time_s),
             f"{100 * r.compute_cycles / r.cycles:.1f}%", f"{100 * r.comm_cycles / r.cycles:.1f}%",
             f"{r.compute_efficiency:.3f}", fmt_bytes(r.peak_core_bytes), r.routes_per_core, f"{u:.2f}x"]
            for r, u in zip(results, ups)]
    print(table(["algorithm", "grid", "shape", "cycles", "time", "compute %", "comm %", "compute eff",
                 "peak/core", "routes/core", f"speed-up vs {algos[0]}"], rows))
    tree = f", meshgemv K-tree groups {args.groups}" if args.groups else ""
    print(f"device {spec.name}, {args.dtype}, clock {spec.clock_hz / 1e9:.2f} GHz, cost model: {args.fabric}{tree}")
    for r in results:
        for e in r.excess:
            print(f"  over limit ({r.algo}): {e}")
    return 0


def _check_groups(args, algos, grid) -> None:
    """--groups names MeshGEMV's K-tree group count: an error anywhere it would be ignored or cannot apply."""
    if args.groups is None:
        return
    if args.kernel != "gemv" or "meshgemv" not in algos:
        raise ArgError("--groups applies to `waferllm bench gemv` with --algo meshgemv or all (the K-tree's group "
                       "count); the other algorithms have none")
    if args.plot:
        raise ArgError("--groups fixes one K-tree group count, which --plot's sweep over grid sides cannot keep; "
                       "give one or the other")
    if not 1 <= args.groups <= grid[0]:  # MeshGEMV's allreduce runs along a column of grid[0] cores
        raise ArgError(f"--groups {args.groups} is not a group count for a line of {grid[0]} cores; valid: 1 to "
                       f"{grid[0]}")


def _groups(args, algo):
    return args.groups if algo == "meshgemv" else None


def _results(args, spec, algos, grid, shape) -> list:
    """Each algorithm's KernelResult from the chosen cost model (a progress bar for the event-level fabric)."""
    from rich.progress import Progress

    from waferllm.perf.fabric_check import check_grid, run_kernel_fabric

    if args.fabric == "analytic":
        return [run_kernel(spec, args.kernel, a, grid, shape, args.dtype, limits=not args.no_limits,
                           groups=_groups(args, a)) for a in algos]
    check_grid(grid)
    with Progress(transient=True, disable=args.json) as prog:
        tasks = {a: prog.add_task(f"{a}: event-level fabric", total=None) for a in algos}
        return [run_kernel_fabric(spec, args.kernel, a, grid, shape, args.dtype, not args.no_limits, "events",
                                  progress=lambda d, t, a=a: prog.update(tasks[a], completed=d, total=t),
                                  groups=_groups(args, a))
                for a in algos]


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


def run_serve(args) -> int:
    """Load-test a server and print vLLM-style metrics, wall-clock and predicted on the wafer."""
    import asyncio

    import httpx
    from rich.progress import Progress

    from waferllm.server.bench import auth_headers, run_bench, summarize

    if args.num_prompts < 1 or args.max_tokens < 1 or not args.request_rate > 0:
        raise ArgError("--num-prompts and --max-tokens must be >= 1 and --request-rate > 0")
    url = args.base_url.rstrip("/")
    try:
        models = httpx.get(url + "/v1/models", headers=auth_headers(), timeout=10).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError) as e:
        raise ArgError(f"no waferllm server at {url} ({type(e).__name__}); start one with `waferllm serve`") from None
    model = args.model or models[0]["id"]
    with Progress(transient=True, disable=args.json) as prog:
        task = prog.add_task("requests", total=args.num_prompts)
        stats, dur = asyncio.run(run_bench(url, model, args.num_prompts, args.request_rate, args.max_tokens,
                                           args.seed, progress=lambda: prog.advance(task)))
    res = summarize(stats, dur)
    res["predicted_decode_tokens_per_s"] = httpx.get(url + "/health", timeout=10).json().get(
        "predicted_decode_tokens_per_s", 0.0)
    if args.json:
        print(json_text(res))
        return 0 if res["completed"] else 1
    print(f"{res['completed']} of {args.num_prompts} requests in {res['duration_s']:.2f} s; request throughput "
          f"{res['request_throughput']:.2f} req/s, output throughput {res['output_throughput']:.1f} tok/s (wall); "
          f"predicted aggregate decode {res['predicted_decode_tokens_per_s']:,.0f} tok/s on the wafer")
    rows = [[m.upper(), *(f"{res[f'{k}{s}_{m}_ms']:.3f}" for k in ("", "predicted_") for s in ("mean", "median", "p99"))]
            for m in ("ttft", "tpot", "itl", "e2el")]
    print(table(["metric (ms)", "mean", "median", "p99", "pred. mean", "pred. median", "pred. p99"], rows))
    for e in res["errors"]:
        print(f"  failed: {e}")
    return 0 if res["completed"] else 1
