"""`waferllm explore`: a design-space sweep (device fields, models, phases, grids) on Ray, stored as it goes.

Every point is one `waferllm predict`; results go to a DuckDB store (--out) as they arrive, so a stopped
sweep resumes where it stopped. `--plot` draws the Pareto front of two columns (default: tokens/s against
SRAM per core).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from waferllm.cli.args import ArgError
from waferllm.report.tables import table

DEFAULT_OUT = "explore.duckdb"


def add_parser(sub) -> None:
    p = sub.add_parser("explore", help="design-space sweep over device fields, models, phases and grids "
                                       "(Ray; results stored as they arrive, resumable)")
    p.add_argument("--model", default="llama3-8b", help="comma-separated presets or config files")
    p.add_argument("--device", default="wse2", help="comma-separated presets or .json/.toml device files")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one device field for every point, e.g. --set clock_hz=1.2e9")
    p.add_argument("--vary", action="append", default=[], metavar="FIELD=VALUES",
                   help="sweep a device field: V1,V2,... or START:STOP:STEP (STOP included), e.g. "
                        "--vary sram_bytes_per_core=49152:491520:49152; repeat for a product")
    p.add_argument("--phase", default="decode,prefill", help="comma-separated: prefill, decode, e2e (default "
                                                             "decode,prefill)")
    p.add_argument("--grid", default="auto", help="comma-separated decode grids: auto, RxC or a side N (NxN)")
    p.add_argument("--prefill-grid", default="auto", help="comma-separated prefill grids: auto, RxC or a side N")
    p.add_argument("--dtype", default="float16", help="comma-separated: float32, bfloat16, float16")
    p.add_argument("--context", default="4096", help="decode: comma-separated tokens in the KV cache")
    p.add_argument("--input-len", default="4096", help="prefill/e2e: comma-separated prompt lengths")
    p.add_argument("--output-len", default="128", help="e2e: comma-separated generated lengths")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the DuckDB store (default {DEFAULT_OUT}); an existing "
                                                      "store is resumed: its points are not computed again")
    p.add_argument("--ray-address", metavar="ADDRESS", default=None,
                   help="an existing Ray cluster (e.g. ray://host:10001 or auto); default: a local Ray runtime")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray runtime (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="points per Ray task (default 16)")
    p.add_argument("--plot", metavar="PNG", help="plot the Pareto front of --x against --y, one series per model "
                                                 "and phase")
    p.add_argument("--x", default="sram_bytes_per_core", metavar="COLUMN[:min|max]",
                   help="Pareto x column and its better direction (default sram_bytes_per_core:min)")
    p.add_argument("--y", default="tokens_per_s", metavar="COLUMN[:min|max]",
                   help="Pareto y column and its better direction (default tokens_per_s:max)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


# --- parsing ------------------------------------------------------------------------------------------------------
def csv(text: str, what: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(v.strip() for v in str(text).split(",") if v.strip()))
    if not out:
        raise ArgError(f"{what} is empty")
    return out


def ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in csv(text, what))
    except ValueError:
        raise ArgError(f"bad {what} {text!r}; expected comma-separated integers") from None


def values_of(field: str, text: str) -> tuple:
    """The values of one --vary: 'V1,V2,...' or 'START:STOP:STEP' (STOP included), typed like the field."""
    from waferllm.spec.presets import parse_overrides

    if ":" in text:
        try:
            start, stop, step = (float(v) for v in text.split(":"))
        except ValueError:
            raise ArgError(f"bad --vary {field}={text!r}; expected START:STOP:STEP with numbers") from None
        if step <= 0 or stop < start:
            raise ArgError(f"bad --vary {field}={text!r}: STEP must be > 0 and STOP >= START")
        n = int((stop - start) / step + 1e-9) + 1
        if n > 100_000:
            raise ArgError(f"--vary {field}={text!r} gives {n} values; at most 100000")
        raw = [f"{start + i * step:.12g}" for i in range(n)]
    else:
        raw = list(csv(text, f"--vary {field}"))
    return tuple(dict.fromkeys(parse_overrides([f"{field}={v}"])[field] for v in raw))


def vary_of(items: list[str]) -> tuple[tuple[str, tuple], ...]:
    out: dict[str, tuple] = {}
    for item in items:
        if "=" not in item:
            raise ArgError(f"bad --vary {item!r}; expected FIELD=V1,V2,... or FIELD=START:STOP:STEP")
        field, text = (s.strip() for s in item.split("=", 1))
        if field == "name":
            raise ArgError("--vary name: the device name is not a number to sweep; use --device a,b")
        if field in out:
            raise ArgError(f"--vary {field} is given twice")
        out[field] = values_of(field, text)
    return tuple(out.items())


def column_of(text: str, default_dir: str) -> tuple[str, bool]:
    """'COLUMN[:min|max]' -> (column, True if smaller is better); ArgError naming the known columns."""
    from waferllm.perf.explore import columns

    name, _, way = text.partition(":")
    way = way or default_dir
    numeric = [n for n, t in columns() if t in ("DOUBLE", "BIGINT")]
    if name not in numeric:
        raise ArgError(f"unknown column {name!r}; numeric columns: {', '.join(numeric)}")
    if way not in ("min", "max"):
        raise ArgError(f"bad direction {way!r} in {text!r}; expected min or max")
    return name, way == "min"


def space_of(args):
    from waferllm.perf.explore import Space, grid_arg
    from waferllm.spec.presets import parse_overrides

    return Space(devices=csv(args.device, "--device"), overrides=tuple(sorted(parse_overrides(args.set).items())),
                 vary=vary_of(args.vary), models=csv(args.model, "--model"), phases=csv(args.phase, "--phase"),
                 grids=tuple(dict.fromkeys(grid_arg(g) for g in csv(args.grid, "--grid"))),
                 prefill_grids=tuple(dict.fromkeys(grid_arg(g, "prefill grid")
                                                   for g in csv(args.prefill_grid, "--prefill-grid"))),
                 dtypes=csv(args.dtype, "--dtype"), contexts=ints(args.context, "--context"),
                 input_lens=ints(args.input_len, "--input-len"), output_lens=ints(args.output_len, "--output-len"),
                 batches=ints(args.batch, "--batch"))


# --- running ------------------------------------------------------------------------------------------------------
def run(args) -> int:
    from waferllm.perf.explore import open_store, points, resolve

    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        raise ArgError(f"--plot {args.plot!r}: folder {str(Path(args.plot).resolve().parent)!r} does not exist")
    if args.batch_size < 1 or (args.num_cpus is not None and args.num_cpus < 1):
        raise ArgError("--batch-size and --num-cpus must be >= 1")
    x, y = column_of(args.x, "min"), column_of(args.y, "max")
    pts = points(space_of(args))
    items = resolve(pts)
    with open_store(args.out) as store, _term_as_interrupt() as arm:
        try:
            summary = _run_with_progress(items, store, args, arm)
        except KeyboardInterrupt:
            kept = len(store.keys() & {it.key for it in items})
            print(f"waferllm explore: stopped with {kept} of {len(items)} points in {args.out}; "
                  "the same command resumes", file=sys.stderr)
            raise
        rows = store.rows(it.key for it in items)
    front = _fronts(rows, x, y)
    if args.plot:
        pareto_plot(rows, front, x, y, args.plot)
    if args.json:
        print(json.dumps(dict(summary.to_dict(), plot=args.plot, x=x[0], y=y[0], front=front), indent=2, default=str))
        return 0
    _print_summary(summary, rows, front, x, y, args.plot)
    return 0


@contextlib.contextmanager
def _term_as_interrupt():
    """SIGTERM (`kill PID`) stops a sweep as Ctrl-C does: the store keeps what was written, Ray shuts down.
    Yields arm(), which installs the handler again (ray.init installs its own, which kills the process)."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    def arm() -> None:
        try:
            signal.signal(signal.SIGTERM, stop)
        except ValueError:  # not the main thread: leave signals alone
            pass

    old = signal.getsignal(signal.SIGTERM)
    arm()
    try:
        yield arm
    finally:
        try:
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
        except ValueError:
            pass


def _run_with_progress(items, store, args, arm):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from waferllm.perf.explore import explore

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*cols, transient=True, disable=args.json, console=Console(stderr=True)) as prog:
        task = prog.add_task("starting Ray", total=None, rate="")
        t = [0.0]

        def started(todo: int, resumed: int, workers: int) -> None:
            arm()
            t[0] = time.perf_counter()
            prog.update(task, total=todo, description=f"exploring ({resumed} resumed, {workers} workers)")

        def advanced(n: int) -> None:
            prog.advance(task, n)
            done = prog.tasks[0].completed
            prog.update(task, rate=f"{done / max(time.perf_counter() - t[0], 1e-9):.1f} points/s")

        return explore(items, store, address=args.ray_address, num_cpus=args.num_cpus, batch_size=args.batch_size,
                       on_start=started, on_rows=advanced)


def _fronts(rows, x, y) -> dict:
    """The Pareto front of each 'model phase' series: [{key, x, y, grid, ...}]."""
    from waferllm.perf.explore import pareto, series

    keep = ("key", "grid", "prefill_grid", "wafers", "pipeline_stages")
    return {name: [dict({k: r[k] for k in keep}, **{x[0]: r[x[0]], y[0]: r[y[0]]})
                   for r in pareto([r for r in rs if r["ok"]], x[0], y[0], x_min=x[1], y_max=not y[1])]
            for name, rs in series(rows).items()}


def pareto_plot(rows, front: dict, x, y, path) -> Path:
    """Every feasible point (faint) and each series' Pareto front (line), x against y."""
    from matplotlib.figure import Figure

    from waferllm.perf.explore import series

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for name, rs in series(rows).items():
        ok = [r for r in rs if r["ok"] and r[x[0]] is not None and r[y[0]] is not None]
        if not ok:
            continue
        (line,) = ax.plot([r[x[0]] for r in front[name]], [r[y[0]] for r in front[name]], marker="o", ms=4,
                          label=f"{name} (front of {len(ok)})")
        ax.scatter([r[x[0]] for r in ok], [r[y[0]] for r in ok], s=6, alpha=0.25, color=line.get_color())
    ax.set_xlabel(f"{x[0]} ({'lower' if x[1] else 'higher'} is better)")
    ax.set_ylabel(f"{y[0]} ({'lower' if y[1] else 'higher'} is better)")
    ax.set_title("Pareto fronts")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    return Path(path)


def _num(v) -> str:
    return "-" if v is None else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _print_summary(s, rows, front, x, y, plot) -> None:
    """The best point of each series (by y, on its Pareto front), then the counts and the rate."""
    best = []
    for name, pts in front.items():
        if pts:
            b = min(pts, key=lambda r: r[y[0]]) if y[1] else max(pts, key=lambda r: r[y[0]])
            best.append([name, _num(b[y[0]]), _num(b[x[0]]), b["grid"] or "-", b["prefill_grid"] or "-",
                         b["wafers"], b["pipeline_stages"]])
    if best:
        print(table(["series", y[0], x[0], "grid", "prefill grid", "wafers", "stages"], best))
    bad = [r["error"] for r in rows if not r["ok"]]
    print(f"{s.points} points: {s.computed} computed, {s.resumed} resumed from {s.out}, {len(bad)} infeasible; "
          f"{s.points_per_s:.1f} points/s on {s.workers} workers ({s.points_per_s / max(s.workers, 1):.1f} per core), "
          f"{s.wall_s:.1f} s" + (f"; plot: {plot}" if plot else ""))
    if bad:
        common = max(set(bad), key=bad.count)
        print(f"most common reason a point is infeasible ({bad.count(common)}x): {common[:160]}")
