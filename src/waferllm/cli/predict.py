"""`waferllm predict`: shape-only predictions for any model (presets, config.json) on any device.

Every flag takes effect or is an error naming the flag that does: lengths and grids that a phase does not
use are refused (unused()), and a length past the model's context is a warning on stderr, never a refusal.
"""

from __future__ import annotations

import sys

from waferllm.cli.args import ArgError, add_device_args, device_from_args, json_text
from waferllm.report.tables import fmt_bytes, fmt_time, table

# Defaults of the flags whose default is None on the command line, so that a flag given explicitly is known.
DEFAULTS = {"context": 4096, "input_len": 4096, "output_len": 128}

# What each phase reads, and the error for a flag it does not read (the flag that would take effect).
UNUSED = {
    "decode": {"input_len": "--input-len is the prompt of --phase prefill/e2e; --phase decode costs one step at "
                            "--context tokens",
               "output_len": "--output-len is for --phase e2e; --phase decode costs one step at --context tokens",
               "prefill_grid": "--prefill-grid is unused by --phase decode: it runs on --grid"},
    "prefill": {"context": "--context is the KV length of --phase decode; --phase prefill costs a prompt of "
                           "--input-len tokens",
                "output_len": "--output-len is for --phase e2e; --phase prefill ends at the first token"},
    "e2e": {"context": "--context is the KV length of --phase decode; --phase e2e grows the cache from --input-len "
                       "to --input-len + --output-len tokens"},
}


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict prefill/decode speed and memory without weights")
    p.add_argument("--model", required=True, help="preset (llama3-8b, llama3.1-8b/70b/405b, llama2-13b, codellama-34b, "
                                                  "qwen2-72b, smollm2-135m), a config.json, a HF folder or a .gguf")
    add_device_args(p)
    p.add_argument("--phase", default="decode", choices=["prefill", "decode", "e2e"])
    p.add_argument("--grid", default=None,
                   help="the grid the phase runs on, ROWSxCOLS or auto (default: the autotuner, the fastest on the "
                        "fewest wafers): decode/e2e: the decode grid; prefill: the prefill grid, or, when "
                        "--prefill-grid is also given, the decode grid the KV cache and weights are handed to")
    p.add_argument("--prefill-grid", default=None, help="prefill/e2e: prefill grid ROWSxCOLS, or auto (the autotuner, "
                                                        "the default)")
    p.add_argument("--context", type=int, default=None, help=f"decode: tokens in the KV cache (default "
                                                             f"{DEFAULTS['context']})")
    p.add_argument("--input-len", type=int, default=None, help=f"prefill/e2e: prompt tokens (default "
                                                               f"{DEFAULTS['input_len']})")
    p.add_argument("--output-len", type=int, default=None, help=f"e2e: generated tokens (default "
                                                                f"{DEFAULTS['output_len']})")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--kv", default="shift", choices=["shift", "concat"])
    p.add_argument("--strategy", default="waferllm", choices=["waferllm", "t10", "ladder"],
                   help="waferllm (mesh-aware), t10 (cores as a crossbar memory) or ladder (shared memory); "
                        "see docs/cost-model.md")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def no_limits_error(args, command: str) -> None:
    """--no-limits (from add_device_args) only changes `bench gemv|gemm`; elsewhere it would be ignored."""
    if getattr(args, "no_limits", False):
        raise ArgError(f"--no-limits has no effect on `waferllm {command}` (it reports SRAM/route excess in "
                       "`waferllm bench gemv|gemm`); predictions already report peak bytes per core and fits")


def unused(args, phase: str, table_: dict[str, dict[str, str]] = UNUSED) -> None:
    """ArgError for the first flag given explicitly (not None) that `phase` does not read."""
    for name, msg in table_.get(phase, {}).items():
        if getattr(args, name, None) is not None:
            raise ArgError(msg)


def warn(lines) -> None:
    """One stderr line per warning (the run goes on)."""
    for w in lines:
        print(f"waferllm: warning: {w}", file=sys.stderr)


def resolve(args) -> dict:
    """predict()'s keyword arguments from the flags, after refusing the ones the phase would ignore."""
    no_limits_error(args, "predict")
    unused(args, args.phase)
    lengths = {k: DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in DEFAULTS}
    grid, prefill_grid = args.grid or "auto", args.prefill_grid or "auto"
    if args.phase == "prefill" and args.grid is not None and args.prefill_grid is None:
        grid, prefill_grid = "auto", args.grid  # the phase's grid is the prefill grid; decode (hand-off): auto
    return dict(phase=args.phase, grid=grid, prefill_grid=prefill_grid, batch=args.batch, dtype=args.dtype,
                policy=args.kv, strategy=args.strategy, **lengths)


def run(args) -> int:
    from waferllm.model import get_config
    from waferllm.perf.predict import check_args, predict

    kw = resolve(args)
    spec = device_from_args(args)
    cfg = get_config(args.model)
    warn(check_args(cfg, kw["phase"], context=kw["context"], input_len=kw["input_len"], output_len=kw["output_len"],
                    batch=kw["batch"]))  # before the work, which may still fail (e.g. no grid holds the cache)
    pr = predict(cfg, spec, **kw)  # its .warnings (in --json) are the lines printed above
    if args.json:
        print(json_text(dict(pr.to_dict(), model=cfg.name, device=spec.name, dtype=args.dtype)))
        return 0
    print(f"{cfg.name} on {spec.name}, {args.phase}, batch {pr.batch}, {args.dtype}: {fmt_time(pr.time_s)} "
          f"({pr.tokens_per_s:,.1f} tokens/s), {pr.cycles:,.0f} cycles")
    if pr.paper_tokens_per_s:
        print(f"  as the paper's artifact measures (one layer x {cfg.n_layers}, no LM head or hand-overs): "
              f"{pr.paper_tokens_per_s:,.1f} tokens/s")
    if pr.ttft_s is not None or pr.tpot_s is not None:
        print("  " + ", ".join(f"{k} {fmt_time(v)}" for k, v in (("TTFT", pr.ttft_s), ("TPOT", pr.tpot_s)) if v))
    u = pr.utilization
    print(f"  utilization of {u['cores']:,} cores: MACs {100 * u['mac']:.2f}% of peak, SRAM reads "
          f"{100 * u['sram_bandwidth']:.2f}% of peak bandwidth")
    print(f"grid {pr.grid}" + (f", prefill grid {pr.prefill_grid}" if pr.prefill_grid else "") +
          f", at most {pr.layers_per_region} layer(s) a core, {pr.wafers} wafer(s); peak "
          f"{fmt_bytes(pr.peak_core_bytes)}/core, {pr.routes_per_core} routes/core; KV capacity shift "
          f"{pr.kv_capacity_tokens['shift']:,} / concat {pr.kv_capacity_tokens['concat']:,} tokens (the wafer's "
          f"free SRAM as one pool, Table 5's accounting: {pr.kv_pooled_tokens:,})")
    rows = [[k, f"{v['cycles']:,.0f}", f"{100 * v['cycles'] / pr.cycles:.1f}%",
             f"{100 * v['compute_cycles'] / max(v['cycles'], 1e-9):.0f}%"] for k, v in list(pr.breakdown.items())[:15]]
    print(table(["phase", "cycles", "share", "compute"], rows))
    return 0
