"""`waferllm predict`: shape-only predictions for any model (presets, config.json) on any device."""

from __future__ import annotations

import json

from waferllm.cli.args import add_device_args, device_from_args
from waferllm.report.tables import fmt_bytes, fmt_time, table


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict prefill/decode speed and memory without weights")
    p.add_argument("--model", required=True, help="preset (llama3-8b, llama2-13b, codellama-34b, qwen2-72b, "
                                                  "smollm2-135m), a config.json, a HF folder or a .gguf")
    add_device_args(p)
    p.add_argument("--phase", default="decode", choices=["prefill", "decode", "e2e"])
    p.add_argument("--grid", default="auto", help="decode grid ROWSxCOLS, or auto (the autotuner: the fastest on "
                                                  "the fewest wafers; with --phase prefill the smallest that fits)")
    p.add_argument("--prefill-grid", default="auto", help="prefill grid ROWSxCOLS, or auto (the autotuner)")
    p.add_argument("--context", type=int, default=4096, help="decode: tokens in the KV cache")
    p.add_argument("--input-len", type=int, default=4096, help="prefill/e2e: prompt tokens")
    p.add_argument("--output-len", type=int, default=128, help="e2e: generated tokens")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--kv", default="shift", choices=["shift", "concat"])
    p.add_argument("--strategy", default="waferllm", choices=["waferllm", "t10", "ladder"],
                   help="waferllm (mesh-aware), t10 (cores as a crossbar memory) or ladder (shared memory); "
                        "see docs/cost-model.md")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from waferllm.model import get_config
    from waferllm.perf.predict import predict

    spec = device_from_args(args)
    cfg = get_config(args.model)
    pr = predict(cfg, spec, phase=args.phase, grid=args.grid, prefill_grid=args.prefill_grid, context=args.context,
                 input_len=args.input_len, output_len=args.output_len, batch=args.batch, dtype=args.dtype,
                 policy=args.kv, strategy=args.strategy)
    if args.json:
        print(json.dumps(dict(pr.to_dict(), model=cfg.name, device=spec.name, dtype=args.dtype), indent=2))
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
          f", {pr.layers_per_region} layer(s)/region, {pr.wafers} wafer(s); peak {fmt_bytes(pr.peak_core_bytes)}/core"
          f", {pr.routes_per_core} routes/core; KV capacity shift {pr.kv_capacity_tokens['shift']:,} / concat "
          f"{pr.kv_capacity_tokens['concat']:,} tokens")
    rows = [[k, f"{v['cycles']:,.0f}", f"{100 * v['cycles'] / pr.cycles:.1f}%",
             f"{100 * v['compute_cycles'] / max(v['cycles'], 1e-9):.0f}%"] for k, v in list(pr.breakdown.items())[:15]]
    print(table(["phase", "cycles", "share", "compute"], rows))
    return 0
