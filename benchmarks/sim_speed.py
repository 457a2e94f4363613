"""Speed of the mesh simulation against transformers, same model, same process, same tokens; and compile time.

Three measurements, printed as a table and, last, one JSON object. Never asserts on time.

Decode: tokens/s of Engine.decode_one_token on --grid against transformers' cached decode of the same greedy
tokens from BOS (`mesh_tokens_per_s`, `transformers_tokens_per_s`, `ratio` = mesh / transformers, higher is
better; `same_tokens`), each warmed up once, then the median of --reps runs of --tokens tokens.
transformers runs at 1 thread and at os.cpu_count() threads and the faster is kept for each of decode and
prefill (`transformers_threads`, `transformers_by_threads`): on a loaded 2-core machine torch's spinning
OpenMP threads made 2 threads about 4x slower than 1, which would flatter the mesh.

Prefill: a fixed 116-token English paragraph (`prompt_tokens`). The mesh side is Engine.prefill on
--prefill-grid (the prefill layer program on every layer, the hand-off to the decode grid, the first token
from the LM head, and its TTFT ledger); warmed up once (compiles), then the median of --reps timed calls
(`mesh_prefill_s`). The transformers side is one forward over the prompt with use_cache=True, warmed up
once, median of --reps (`transformers_prefill_s`). `prefill_ratio` = mesh / transformers (lower is better),
`same_first_token`: both argmax the same first token.

Compile: the same CLI command (`waferllm --compile-cache DIR generate --model smollm2-135m --prompt <the
paragraph> --max-new-tokens 8 --json`) in two fresh processes one after the other, DIR a fresh temporary
folder: the first fills the cache, the second reads it. Each process runs the CLI's own entry point
(waferllm.cli.main, what the `waferllm` script calls) behind a few lines that register a listener on JAX's
monitoring events (benchmarks/_common.py CompileClock): the union of the time spans JAX records for
tracing, lowering and XLA compilation (or, on a cache hit, loading the compiled program) of every program
the process builds. That is a cleaner measure than a difference of wall times, which also carries the
noise of model loading, decoding and the machine's load; both are reported:
  compile_s, compile_s_cached   JAX's compile spans of the first and the second process
  first_process_s, second_process_s   wall time of each whole subprocess (start to exit)
  first_wall_s, second_wall_s   `wall_s` from each process's JSON
  process_delta_s               first_process_s - second_process_s (what the cache saved, by wall time)
  backend_s, backend_s_cached   the XLA-compile (resp. cache-load) part of compile_s / compile_s_cached
  trace_s, lower_s (+ _cached)  the tracing and the lowering parts (the cache saves neither)
  programs, cache_hits_cached   programs built by the first process; cache hits in the second
The targets the project tracks (not asserted): ratio >= 1.0, prefill_ratio <= 10, compile_s_cached <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import PROMPT, load, median  # noqa: E402

MODEL = "smollm2-135m"

# Runs the CLI's entry point with a compile clock: argv = [out.json, *cli args].
_CLI_WITH_CLOCK = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
from _common import CompileClock
clock = CompileClock()
from waferllm.cli import main
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(clock.summary(), f)
sys.exit(rc)
"""


def cli_process(cache_dir: str, max_new: int) -> dict:
    """One fresh `waferllm --compile-cache DIR generate ... --json` process: its wall time, JSON and compile clock."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        clock_path = f.name
    argv = ["--compile-cache", cache_dir, "generate", "--model", MODEL, "--prompt", PROMPT,
            "--max-new-tokens", str(max_new), "--json"]
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _CLI_WITH_CLOCK, clock_path, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"waferllm generate failed ({run.returncode}):\n{run.stderr[-3000:]}")
    with open(clock_path) as f:
        clock = json.load(f)
    os.unlink(clock_path)
    return {"process_s": wall, "out": json.loads(run.stdout), "clock": clock}


def compile_times(max_new: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="waferllm-jax-") as d:
        a = cli_process(d, max_new)
        b = cli_process(d, max_new)
    return {"compile_s": a["clock"]["compile_s"], "compile_s_cached": b["clock"]["compile_s"],
            "first_process_s": a["process_s"], "second_process_s": b["process_s"],
            "first_wall_s": a["out"]["wall_s"], "second_wall_s": b["out"]["wall_s"],
            "process_delta_s": a["process_s"] - b["process_s"],
            "backend_s": a["clock"]["backend_s"], "backend_s_cached": b["clock"]["backend_s"],
            "trace_s": a["clock"]["trace_s"], "trace_s_cached": b["clock"]["trace_s"],
            "lower_s": a["clock"]["lower_s"], "lower_s_cached": b["clock"]["lower_s"],
            "programs": a["clock"]["programs"], "cache_hits_cached": b["clock"]["cache_hits"],
            "cli_same_tokens": a["out"]["token_ids"] == b["out"]["token_ids"]}


def mesh_side(n: int, grid: str, prefill_grid: str, prompt_ids: list[int], long_ids: list[int], reps: int,
              model) -> dict:
    import jax

    from waferllm.engine.generate import Engine
    from waferllm.spec import get_device

    cfg, w, tok = model
    eng = Engine(cfg, w, get_device("wse2"), grid=grid, max_tokens=len(prompt_ids) + n + 1, tokenizer=tok)

    def decode():
        caches = eng.new_cache()
        nxt, _, caches, _ = eng.decode_one_token(caches, prompt_ids[0], 0)
        out = []
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            nxt, _, caches, _ = eng.decode_one_token(caches, nxt, i)
            out.append(nxt)
        return n / (time.perf_counter() - t0), out

    decode()  # compiles
    runs = [decode() for _ in range(reps)]
    tps, out = median([r[0] for r in runs]), runs[0][1]
    del eng

    eng = Engine(cfg, w, get_device("wse2"), grid=grid, prefill_grid=prefill_grid,
                 max_tokens=len(long_ids) + n + 1, tokenizer=tok)

    def prefill():
        t = time.perf_counter()
        first, _, caches, _ = eng.prefill(long_ids, eng.slots)
        jax.block_until_ready(caches)
        return time.perf_counter() - t, first

    warm_s, first = prefill()  # compiles
    times = [prefill()[0] for _ in range(reps)]
    return {"tokens_per_s": tps, "tokens": out, "prefill_s": median(times), "prefill_times": times,
            "first_call_s": warm_s, "first_token": first}


def transformers_side(n: int, prompt_ids: list[int], long_ids: list[int], reps: int) -> dict:
    """Decode and prefill at 1 thread and at os.cpu_count() threads; the faster of each is kept (on a loaded
    machine torch's spinning threads can make 2 threads several times slower than 1)."""
    import torch
    from transformers import AutoModelForCausalLM

    from waferllm.model.registry import find_bundled_gguf

    path = find_bundled_gguf(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    long = torch.tensor([long_ids])

    def decode():
        res = model(torch.tensor([prompt_ids[:1]]), use_cache=True)
        past, nxt = res.past_key_values, res.logits[0, -1].argmax()
        out = []
        t0 = time.perf_counter()
        for _ in range(n):
            res = model(nxt.view(1, 1), past_key_values=past, use_cache=True)
            past, nxt = res.past_key_values, res.logits[0, -1].argmax()
            out.append(int(nxt))
        return n / (time.perf_counter() - t0), out

    def prefill():
        t = time.perf_counter()
        res = model(long, use_cache=True)
        return time.perf_counter() - t, int(res.logits[0, -1].argmax())

    by_threads = {}
    with torch.no_grad():
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            decode(), prefill()  # warm-up
            dec = [decode() for _ in range(reps)]
            pre = [prefill() for _ in range(reps)]
            by_threads[threads] = {"tokens_per_s": median([d[0] for d in dec]), "tokens": dec[0][1],
                                   "prefill_s": median([p[0] for p in pre]), "prefill_times": [p[0] for p in pre],
                                   "first_token": pre[0][1]}
    dt = max(by_threads, key=lambda k: by_threads[k]["tokens_per_s"])
    pt = min(by_threads, key=lambda k: by_threads[k]["prefill_s"])
    return {"tokens_per_s": by_threads[dt]["tokens_per_s"], "tokens": by_threads[dt]["tokens"], "decode_threads": dt,
            "prefill_s": by_threads[pt]["prefill_s"], "prefill_times": by_threads[pt]["prefill_times"],
            "first_token": by_threads[pt]["first_token"], "prefill_threads": pt,
            "by_threads": {k: {"tokens_per_s": v["tokens_per_s"], "prefill_s": v["prefill_s"]}
                           for k, v in by_threads.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=48, help="decode tokens timed (default 48)")
    ap.add_argument("--grid", default="20x20", help="decode grid (default 20x20)")
    ap.add_argument("--prefill-grid", default="20x20", help="prefill grid (default 20x20)")
    ap.add_argument("--reps", type=int, default=3, help="timed decode and prefill repetitions, median reported (default 3)")
    ap.add_argument("--cli-tokens", type=int, default=8, help="--max-new-tokens of the compile-time CLI runs")
    ap.add_argument("--no-compile", action="store_true", help="skip the two CLI processes (compile time)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args()

    load_start = load()
    # the CLI processes first, while this process holds no model (they need about 2.5 GB each)
    comp = {} if args.no_compile else compile_times(args.cli_tokens)

    from waferllm.model import load_model

    model = load_model(MODEL)
    long_ids = list(model[2].encode(PROMPT))
    prompt = [1]
    m = mesh_side(args.tokens, args.grid, args.prefill_grid, prompt, long_ids, args.reps, model)
    del model
    t = transformers_side(args.tokens, prompt, long_ids, args.reps)
    load_end = load()

    res = {"tokens": args.tokens, "grid": args.grid, "mesh_tokens_per_s": m["tokens_per_s"],
           "transformers_tokens_per_s": t["tokens_per_s"], "ratio": m["tokens_per_s"] / t["tokens_per_s"],
           "same_tokens": m["tokens"] == t["tokens"],
           "prompt_tokens": len(long_ids), "prefill_grid": args.prefill_grid,
           "mesh_prefill_s": m["prefill_s"], "transformers_prefill_s": t["prefill_s"],
           "prefill_ratio": m["prefill_s"] / t["prefill_s"], "same_first_token": m["first_token"] == t["first_token"],
           "mesh_prefill_first_call_s": m["first_call_s"],
           "mesh_prefill_times": m["prefill_times"], "transformers_prefill_times": t["prefill_times"],
           "transformers_threads": {"decode": t["decode_threads"], "prefill": t["prefill_threads"]},
           "transformers_by_threads": t["by_threads"],
           **comp, "load_start": load_start, "load_end": load_end}
    if not args.json:
        print("| measurement | mesh | transformers | mesh / transformers |\n| --- | ---: | ---: | ---: |")
        print(f"| decode tokens/s ({args.grid}, {args.tokens} tokens) | {m['tokens_per_s']:.1f} | "
              f"{t['tokens_per_s']:.1f} | {res['ratio']:.2f}x |")
        print(f"| prefill s ({args.prefill_grid}, {len(long_ids)} tokens, median of {args.reps}) | "
              f"{m['prefill_s']:.3f} | {t['prefill_s']:.3f} | {res['prefill_ratio']:.1f}x |")
        print(f"same decode tokens: {res['same_tokens']}; same first token after prefill: {res['same_first_token']}; "
              f"medians of {args.reps} runs")
        threads = ", ".join(f"{k} thread(s) {v['tokens_per_s']:.1f} tokens/s, prefill {v['prefill_s']:.3f} s"
                            for k, v in t["by_threads"].items())
        print(f"transformers: {threads}; the faster is in the table")
        if comp:
            print(f"\n| CLI process (generate, {args.cli_tokens} tokens) | process s | wall_s | JAX compile s "
                  f"| of which XLA/cache s |\n| --- | ---: | ---: | ---: | ---: |")
            print(f"| first (empty cache, {comp['programs']} programs) | {comp['first_process_s']:.1f} | "
                  f"{comp['first_wall_s']:.1f} | {comp['compile_s']:.2f} | {comp['backend_s']:.2f} |")
            print(f"| second (cache, {comp['cache_hits_cached']} hits) | {comp['second_process_s']:.1f} | "
                  f"{comp['second_wall_s']:.1f} | {comp['compile_s_cached']:.2f} | {comp['backend_s_cached']:.2f} |")
            print(f"first - second process: {comp['process_delta_s']:.1f} s")
        print(f"{load_start} (start); {load_end} (end)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
