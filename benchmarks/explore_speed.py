"""Points per second per core: `waferllm sweep` against `waferllm explore`, trace sharing off and on.

One space for both: every --sram size x model (--models) x phase x grid side (--sides); a decode point is
the decode grid side x side at --context tokens, a prefill point the prefill grid side x side over
--input-len tokens (decode grid: the smallest that fits). `sweep` takes one device per run, so it runs
once per SRAM size (what a user would loop over); `explore` takes the whole space in one run.

Modes, measured one after the other in this run:
  sweep before    cli.sweep.sweep_models in this process, engine/cost.share_traces(False): every program
                  traces its own layers (the engine before shared traces)
  sweep after     the same with sharing on: equal layer shapes share one trace
  explore before  perf.explore.explore on a local Ray runtime of --num-cpus CPUs, sharing off in the workers
  explore after   the same with sharing on
  large sweep / large explore   sharing on, over --large-sram (default 109 sizes: 2,616 points), where
                  Ray's start-up and each worker's first traces are spread over many points
  paper before/after  the paper's tables (`waferllm sweep --paper`, report/html.paper_tables)
Per mode: points, wall_s, points_per_s, points_per_s_per_core (wall clock; explore divides by its CPUs and
counts Ray's start-up and the workers' imports) and points_per_cpu_s (CPU seconds: this process's for sweep,
the workers' per-point CPU time for explore). Ratios compare modes measured side by side; the machine's
load is printed before and after. An explore point is a whole `predict` (TTFT, utilization, the artifact's
rate), a sweep point only its tokens/s, so explore does more per point. Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import load  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="llama3-8b,qwen2-72b")
    p.add_argument("--sides", default="360,420,480,540,600,660")
    p.add_argument("--sram", default="49152,98304,147456,196608,245760", help="SRAM bytes per core, one device each")
    p.add_argument("--large-sram", default="49152:491520:4096", help="START:STOP:STEP for the large modes")
    p.add_argument("--no-large", action="store_true", help="skip the large modes")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--input-len", type=int, default=4096)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--no-paper", action="store_true", help="skip the paper tables")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def srams(text: str) -> list[int]:
    """'a,b,c' or 'START:STOP:STEP' (STOP included) -> SRAM sizes."""
    if ":" in text:
        a, b, c = (int(v) for v in text.split(":"))
        return list(range(a, b + 1, c))
    return [int(v) for v in text.split(",")]


def run_sweep(args, share: bool, sram: str) -> dict:
    """sweep_models once per SRAM size, in this process."""
    from waferllm.cli.sweep import sweep_models
    from waferllm.engine import cost, handoff
    from waferllm.model import get_config
    from waferllm.spec import load_device

    cost.share_traces(share)
    handoff.clear_caches()
    cfgs = [get_config(m) for m in args.models.split(",")]
    sides = [int(s) for s in args.sides.split(",")]
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for size in srams(sram):
        spec = load_device("wse2", {"sram_bytes_per_core": size})
        res = sweep_models(cfgs, spec, ["decode", "prefill"], sides, "float16", args.context, args.input_len,
                           quiet=True)
        n += sum(len(r["points"]) for r in res)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cost.share_traces(True)
    return {"points": n, "wall_s": wall, "points_per_s": n / wall, "points_per_s_per_core": n / wall,
            "points_per_cpu_s": n / cpu, "cores": 1}


def run_explore(args, share: bool, sram: str) -> dict:
    """The same points through explore on a local Ray runtime (a fresh store each time)."""
    from waferllm.perf import explore as ex

    common = dict(models=tuple(args.models.split(",")), vary=(("sram_bytes_per_core", tuple(srams(sram))),),
                  contexts=(args.context,), input_lens=(args.input_len,))
    sides = tuple(f"{s}x{s}" for s in args.sides.split(","))
    pts = ex.points(ex.Space(phases=("decode",), grids=sides, **common)) + \
        ex.points(ex.Space(phases=("prefill",), grids=("auto",), prefill_grids=sides, **common))
    t0 = time.perf_counter()
    items = ex.resolve(pts)
    with tempfile.TemporaryDirectory() as d, ex.open_store(Path(d) / "bench.duckdb") as store:
        s = ex.explore(items, store, num_cpus=args.num_cpus, share=share)
    wall = time.perf_counter() - t0
    return {"points": s.computed, "wall_s": wall, "compute_s": s.compute_s, "points_per_s": s.computed / wall,
            "points_per_s_after_start": s.points_per_s,
            "points_per_s_per_core": s.computed / wall / s.workers, "points_per_cpu_s": s.computed / s.cpu_s,
            "cores": s.workers, "infeasible": s.infeasible}


def run_paper(share: bool) -> dict:
    from waferllm.engine import cost, handoff
    from waferllm.report.html import PAPER_MODELS, paper_tables
    from waferllm.spec import load_device

    cost.share_traces(share)
    handoff.clear_caches()
    t0, c0 = time.perf_counter(), time.process_time()
    pt = paper_tables(load_device("wse2"), list(PAPER_MODELS), "float16", 4096, 4096)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cost.share_traces(True)
    rows = sum(len(m[ph]) for m in pt["models"].values() for ph in ("prefill", "decode")) + len(pt["models"])
    return {"points": rows, "wall_s": wall, "points_per_s": rows / wall, "points_per_s_per_core": rows / wall,
            "points_per_cpu_s": rows / cpu, "cores": 1}


def main() -> int:
    args = parse()
    from waferllm.model import get_config
    from waferllm.perf.predict import predict
    from waferllm.spec import load_device

    out = {"load_start": load(), "models": args.models, "sides": args.sides, "sram": args.sram,
           "large_sram": None if args.no_large else args.large_sram, "num_cpus": args.num_cpus}
    predict(get_config("llama3-8b"), load_device("wse2"), phase="prefill", grid="360x360", prefill_grid="360x360")
    modes = {}  # JAX warmed up above: the first mode pays no one-off compile the others skip
    small, large = args.sram, args.large_sram
    for name, fn in [("sweep before", lambda: run_sweep(args, False, small)),
                     ("sweep after", lambda: run_sweep(args, True, small)),
                     ("explore before", lambda: run_explore(args, False, small)),
                     ("explore after", lambda: run_explore(args, True, small))] + \
            ([] if args.no_large else [("large sweep", lambda: run_sweep(args, True, large)),
                                       ("large explore", lambda: run_explore(args, True, large))]) + \
            ([] if args.no_paper else [("paper before", lambda: run_paper(False)),
                                       ("paper after", lambda: run_paper(True))]):
        print(f"{name} ...", file=sys.stderr, flush=True)
        modes[name] = fn()
    per = lambda m, k="points_per_s_per_core": modes[m][k]  # noqa: E731
    ratios = {"sweep after/before (per core)": per("sweep after") / per("sweep before"),
              "explore after/before (per core)": per("explore after") / per("explore before"),
              "explore/sweep, after (per core)": per("explore after") / per("sweep after"),
              "explore/sweep, before (per core)": per("explore before") / per("sweep before"),
              "explore/sweep, after (per CPU-s)": per("explore after", "points_per_cpu_s") /
              per("sweep after", "points_per_cpu_s"),
              "explore after / sweep before (per core)": per("explore after") / per("sweep before")}
    if not args.no_large:
        ratios["large: explore/sweep (per core)"] = per("large explore") / per("large sweep")
        ratios["large: explore/sweep (per CPU-s)"] = per("large explore", "points_per_cpu_s") / \
            per("large sweep", "points_per_cpu_s")
        ratios["large: explore/sweep (points/s, all cores)"] = per("large explore", "points_per_s") / \
            per("large sweep", "points_per_s")
        ratios["large explore / sweep before (per core)"] = per("large explore") / per("sweep before")
    if not args.no_paper:
        ratios["paper tables after/before (wall)"] = modes["paper before"]["wall_s"] / modes["paper after"]["wall_s"]
    out |= {"modes": modes, "ratios": ratios, "load_end": load()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.models} x sides {args.sides} x SRAM {args.sram} (large: {args.large_sram}); decode at "
          f"{args.context}, prefill of {args.input_len} tokens; explore on {args.num_cpus} Ray CPUs")
    print(f"{'mode':16} {'points':>7} {'wall s':>8} {'points/s':>9} {'per core':>9} {'per CPU-s':>10}")
    for name, m in modes.items():
        print(f"{name:16} {m['points']:7d} {m['wall_s']:8.1f} {m['points_per_s']:9.2f} "
              f"{m['points_per_s_per_core']:9.2f} {m['points_per_cpu_s']:10.2f}")
    for k, v in ratios.items():
        print(f"{k:42} {v:8.2f}x")
    print(f"{out['load_start']} at the start, {out['load_end']} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
