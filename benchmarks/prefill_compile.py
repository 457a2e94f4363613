"""Compile time and peak memory of the prefill layer program against the prefill grid.

The compute-shift GEMMs of a prefill layer take lcm(R, C) steps on an R x C grid (22x30: 330 steps).
With the steps in one compiled loop, compile time should stay flat as that count grows; this benchmark
shows it. For each grid it builds smollm2-135m's engine (Engine(..., grid=--decode-grid, prefill_grid=G)),
embeds a fixed 116-token prompt into activation tiles
    x = jnp.asarray(prefill_tiles.embed_tiles(engine.pre.layout(T), engine.tok_emb, ids))
and times engine._pre_layer(engine.pre_weights[0], x) (one layer; the same program serves every layer):
  compile_s     first call minus second call (both waited for): the compile time
  jax_compile_s JAX's own spans for the first call (tracing + lowering + XLA compile, benchmarks/_common.py
                CompileClock): a cross-check of compile_s
  layer_s       warm time of one layer: median of --reps calls after the first
  peak_rss_mb   the process's peak resident memory (getrusage ru_maxrss), loading the model included
                (dequantising the GGUF to fp32 peaks at about 2.2 GB, above any compile seen so far)
  rss_before_mb resident memory just before the first call (model, weights, engine)
  compile_peak_rss_mb  peak resident memory during the first call (compile + run) alone: the peak
                (/proc VmHWM) is reset just before it by writing 5 to /proc/self/clear_refs (Linux);
                compile_peak_rss_mb - rss_before_mb is what compiling and running one layer added
Each grid runs in its own fresh subprocess, --runs times (every number is the median over those runs; the
lists compile_s_runs and layer_times are kept), so peak RSS is per grid; a grid that runs past --timeout
is reported as such and the next one runs. JAX's persistent compilation cache is off so compiles are real.
The default grids take about 2-3 minutes on a 2-core machine; --grids 16x24 adds another non-square one.
Prints a llama-bench-style table, or with --json one JSON object {"grids": [...], "load_start", "load_end"}.
Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import PROMPT, load, median  # noqa: E402

MODEL = "smollm2-135m"
GRIDS = "8x8,20x20,22x30,40x40"


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _status_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(grid: str, decode_grid: str, reps: int) -> dict:
    """One grid, in this (fresh) process."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from _common import CompileClock

    clock = CompileClock()
    import jax.numpy as jnp

    from waferllm.engine.generate import Engine
    from waferllm.engine.prefill_tiles import embed_tiles
    from waferllm.model import load_model
    from waferllm.spec import get_device

    cfg, w, tok = load_model(MODEL)
    ids = tok.encode(PROMPT)
    T = len(ids)
    t = time.perf_counter()
    eng = Engine(cfg, w, get_device("wse2"), grid=decode_grid, prefill_grid=grid, max_tokens=T + 9, tokenizer=tok)
    build_s = time.perf_counter() - t
    x = jnp.asarray(embed_tiles(eng.pre.layout(T), eng.tok_emb, ids))
    w0 = eng.pre_weights[0]
    jax.block_until_ready((x, w0))
    peak_before = _maxrss_mb()
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak()

    def call() -> float:
        t = time.perf_counter()
        jax.block_until_ready(eng._pre_layer(w0, x))
        return time.perf_counter() - t

    clock.reset()
    first = call()
    jc = clock.summary()
    call_peak = _status_mb("VmHWM") if reset else None
    warm = [call() for _ in range(max(reps, 1))]
    R, C = eng.pre.rows, eng.pre.cols
    return {"grid": f"{R}x{C}", "steps": math.lcm(R, C), "tokens": T, "compile_s": first - warm[0],
            "jax_compile_s": jc["compile_s"], "xla_compile_s": jc["backend_s"], "programs": jc["programs"],
            "first_call_s": first, "layer_s": median(warm), "layer_times": warm,
            "peak_rss_mb": max(_maxrss_mb(), peak_before), "rss_before_mb": rss_before,
            "compile_peak_rss_mb": call_peak, "engine_build_s": build_s}


def run_once(grid: str, decode_grid: str, reps: int, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", grid, "--decode-grid", decode_grid,
           "--reps", str(reps)]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"grid": grid, "error": f"timeout after {timeout:.0f} s"}
    wall = time.perf_counter() - t
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"grid": grid, "error": f"exit {p.returncode}: {tail}"}
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "process_s": wall}


def run_grid(grid: str, decode_grid: str, reps: int, timeout: float, runs: int) -> dict:
    """`runs` fresh processes for one grid; every number is the median over them (the lists are kept)."""
    done = []
    for _ in range(max(runs, 1)):
        r = run_once(grid, decode_grid, reps, timeout)
        if "error" in r:
            return r
        done.append(r)
    out = dict(done[0])
    for k, v in done[0].items():
        if isinstance(v, float) and all(d.get(k) is not None for d in done):
            out[k] = median([d[k] for d in done])
    out["runs"] = len(done)
    out["compile_s_runs"] = [d["compile_s"] for d in done]
    out["layer_times"] = [t for d in done for t in d["layer_times"]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", default=GRIDS, help=f"comma-separated prefill grids RxC (default {GRIDS}; "
                                                   "16x24 is another)")
    ap.add_argument("--decode-grid", default="20x20", help="the engine's decode grid (default 20x20)")
    ap.add_argument("--reps", type=int, default=3, help="warm layer calls, median reported (default 3)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per grid, medians reported (default 3)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per grid before it is stopped (default 300)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.decode_grid, args.reps)))
        return

    load_start = load()
    rows = []
    if not args.json:
        print(f"| grid | steps | compile_s | jax_compile_s | layer_s | peak_rss_mb | rss_before_mb | "
              f"compile_peak_rss_mb |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for g in [g.strip() for g in args.grids.split(",") if g.strip()]:
        r = run_grid(g, args.decode_grid, args.reps, args.timeout, args.runs)
        rows.append(r)
        if args.json:
            continue
        if "error" in r:
            print(f"| {g} | {math.lcm(*map(int, g.lower().split('x')))} | {r['error']} | | | | | |", flush=True)
        else:
            print(f"| {r['grid']} | {r['steps']} | {r['compile_s']:.2f} | {r['jax_compile_s']:.2f} | "
                  f"{r['layer_s']:.4f} | {r['peak_rss_mb']:.0f} | {_mb(r['rss_before_mb'])} | "
                  f"{_mb(r['compile_peak_rss_mb'])} |", flush=True)
    load_end = load()
    if not args.json:
        print(f"prompt {PROMPT_TOKENS_NOTE}; decode grid {args.decode_grid}; compile cache off; medians of "
              f"{args.runs} processes per grid, layer_s of {args.reps} calls in each\n{load_start} (start); {load_end} (end)")
    print(json.dumps({"grids": rows, "decode_grid": args.decode_grid, "load_start": load_start, "load_end": load_end}))


def _mb(v) -> str:
    return "n/a" if v is None else f"{v:.0f}"


PROMPT_TOKENS_NOTE = "116 tokens (benchmarks/_common.py PROMPT)"

if __name__ == "__main__":
    main()
