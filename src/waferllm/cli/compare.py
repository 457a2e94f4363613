"""`waferllm compare`: the wafer against 1 / 8 / 16 GPUs (tokens/s, speed-up, J/token), or one GEMV (Table 6)."""

from __future__ import annotations


from waferllm.cli.args import ArgError, add_device_args, device_from_args, json_text
from waferllm.report.tables import fmt_time, table

# Grids when --grid / --prefill-grid are not given (pass the paper's 420x420 / 660x660 to reproduce its tables).
DECODE_GRID, PREFILL_GRID = "auto", "auto"  # the autotuner's choices (fastest on the fewest wafers)
MODEL_DEFAULTS = {"model": "llama3-8b", "prefill_grid": PREFILL_GRID, "input_len": 4096, "context": 4096,
                  "gpus": "1,8,16"}
MODEL_ONLY = tuple(MODEL_DEFAULTS)  # flags only the model comparison reads
PUBLISHED_GEMV = {16384: ("gemv_16k", "gemv_16k_a100"), 32768: ("gemv_32k", "gemv_32k_a100")}


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="wafer vs GPUs: tokens/s, speed-up and energy per token (or one GEMV)")
    p.add_argument("--model", default=None, help="preset, a config.json, a HF folder or a .gguf (default llama3-8b)")
    add_device_args(p)
    p.add_argument("--grid", default=None, help=f"wafer decode grid (default {DECODE_GRID}: the autotuner's; "
                                                "with --gemv the fastest GEMV grid)")
    p.add_argument("--prefill-grid", default=None, help=f"wafer prefill grid (default {PREFILL_GRID})")
    p.add_argument("--input-len", type=int, default=None, help="prefill: prompt tokens (default 4096)")
    p.add_argument("--context", type=int, default=None, help="decode: tokens in the KV cache (default 4096)")
    p.add_argument("--gpu", default="a100-80gb", help="GPU preset: a100-40gb, a100-80gb, h100, h200")
    p.add_argument("--gpus", default=None, help="GPU counts, comma-separated (default 1,8,16)")
    p.add_argument("--gemv", type=int, default=None, metavar="N",
                   help="kernel level instead: [1,N] x [N,N] fp16 GEMV, MeshGEMV vs GPU (paper Table 6)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _counts(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise ArgError(f"bad --gpus {text!r}; expected positive integers, e.g. 1,8,16")
    return out


def _x(v: float) -> str:
    return f"{v:,.1f}x"


def run(args) -> int:
    from waferllm.perf.gpu import get_gpu

    if args.no_limits:
        raise ArgError("--no-limits has no effect on `waferllm compare` (it reports SRAM/route excess in "
                       "`waferllm bench gemv|gemm`)")
    if args.gemv is not None:
        if args.gemv < 1:
            raise ArgError(f"--gemv must be a positive matrix size, got {args.gemv}")
        given = [f"--{n.replace('_', '-')}" for n in MODEL_ONLY if getattr(args, n) is not None]
        if given:
            verb = "does" if len(given) == 1 else "do"
            raise ArgError(f"{', '.join(given)} {verb} not apply to --gemv (one GEMV against one GPU); drop "
                           "--gemv to compare a model")
    for name, default in MODEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    gpu = get_gpu(args.gpu)
    spec = device_from_args(args)
    return _gemv(args, spec, gpu) if args.gemv is not None else _model(args, spec, gpu)


def _power_lines(spec, gpu) -> list[str]:
    return [f"power: {spec.name} {spec.power_w:,.0f} W per wafer ({spec.sources.get('power_w', 'no source')})",
            f"power: {gpu.name} {gpu.power_w:,.0f} W per GPU ({gpu.sources['power_w']}); GPU boards only, "
            "no hosts or switches, as the paper's energy ratios"]


def _model(args, spec, gpu) -> int:
    from waferllm.model import get_config
    from waferllm.perf.gpu import DEFAULT_EFFICIENCY, gpu_predict
    from waferllm.perf.predict import predict

    counts = _counts(args.gpus)
    cfg = get_config(args.model)
    grid = args.grid or DECODE_GRID
    dec = predict(cfg, spec, phase="decode", grid=grid, context=args.context)
    # prefill runs on --prefill-grid; its decode grid only sets the wafer count, so take the smallest layout's
    pre = predict(cfg, spec, phase="prefill", grid="auto", prefill_grid=args.prefill_grid, input_len=args.input_len)
    wafer = {"system": f"{spec.name} (decode {dec.grid} on {dec.wafers} wafer{'s' * (dec.wafers > 1)}, prefill "
                       f"{pre.prefill_grid})", "kind": "wafer", "n_gpus": 0, "wafers": dec.wafers,
             "prefill_tokens_per_s": pre.tokens_per_s, "decode_tokens_per_s": dec.tokens_per_s,
             "power_w": spec.power_w * dec.wafers, "power_source": spec.sources.get("power_w", ""),
             # energy: each phase at its own wafer count (the plan spreads large models over several wafers)
             "prefill_energy_j_per_token": spec.power_w * pre.wafers / pre.tokens_per_s,
             "decode_energy_j_per_token": spec.power_w * dec.wafers / dec.tokens_per_s, "fits": dec.fits}
    rows = [wafer]
    for n in counts:
        gp = gpu_predict(cfg, gpu, n, phase="prefill", input_len=args.input_len)
        gd = gpu_predict(cfg, gpu, n, phase="decode", context=args.context)
        rows.append({"system": f"{n} x {gpu.name}", "kind": "gpu", "n_gpus": n,
                     "prefill_tokens_per_s": gp.tokens_per_s, "decode_tokens_per_s": gd.tokens_per_s,
                     "power_w": gd.power_w, "power_source": gpu.sources["power_w"],
                     "prefill_energy_j_per_token": gp.energy_j_per_token,
                     "decode_energy_j_per_token": gd.energy_j_per_token, "fits": gd.fits})
    for r in rows:
        r["prefill_speedup"] = wafer["prefill_tokens_per_s"] / r["prefill_tokens_per_s"]
        r["decode_speedup"] = wafer["decode_tokens_per_s"] / r["decode_tokens_per_s"]
    eff = DEFAULT_EFFICIENCY
    if args.json:
        print(json_text({"model": cfg.name, "device": spec.name, "gpu": gpu.name, "input_len": args.input_len,
                         "context": args.context, "rows": rows, "gpu_efficiency": dict(eff.__dict__)}))
        return 0
    print(f"{cfg.name}: prefill {args.input_len} tokens, decode at context {args.context}, batch 1, fp16")
    print(table(["system", "prefill t/s", "decode t/s", "prefill speed-up", "decode speed-up", "prefill J/t",
                 "decode J/t", "power W", "fits"],
                [[r["system"], f"{r['prefill_tokens_per_s']:,.1f}", f"{r['decode_tokens_per_s']:,.1f}",
                  _x(r["prefill_speedup"]), _x(r["decode_speedup"]), f"{r['prefill_energy_j_per_token']:.4g}",
                  f"{r['decode_energy_j_per_token']:.4g}", f"{r['power_w']:,.0f}", "yes" if r["fits"] else "no"]
                 for r in rows]))
    for line in _power_lines(spec, gpu):
        print(line)
    print(f"GPU model: roofline + tensor-parallel allreduce, eff_mem {eff.eff_mem:.3f}, eff_flops "
          f"{eff.eff_flops:.3f}, eff_net {eff.eff_net:.3f}, overhead {fmt_time(eff.step_overhead_s)}/step, "
          f"allreduce {fmt_time(eff.allreduce_latency_s)} (+{fmt_time(eff.internode_latency_s)} across nodes); "
          f"{eff.source}")
    return 0


def _gemv(args, spec, gpu) -> int:
    from waferllm.engine.grids import AUTO, check_grid
    from waferllm.perf.calibrate import figure
    from waferllm.perf.gpu import DEFAULT_EFFICIENCY, GEMV_LAUNCH_S, gpu_gemv_time
    from waferllm.perf.kernel_bench import run_kernel

    n = args.gemv
    if args.grid and args.grid.strip() != AUTO:
        grid = check_grid(spec, args.grid)
        groups = None
    else:  # the grid and K-tree groups the figure was fitted at: the fastest (Table 6 names neither)
        from waferllm.perf.calibrate import best_gemv

        _, side, groups = best_gemv(spec, n)
        grid = (side, side)
    kr = run_kernel(spec, "gemv", "meshgemv", grid, (n, n), "float16", limits=False, groups=groups)
    tree = f", {groups} K-tree groups" if groups else ""
    wafer = {"system": f"{spec.name} MeshGEMV {kr.grid}{tree}", "kind": "wafer", "time_s": kr.time_s,
             "power_w": spec.power_w, "power_source": spec.sources.get("power_w", ""), "note": "model"}
    rows = [wafer, {"system": f"1 x {gpu.name} GEMV", "kind": "gpu", "time_s": gpu_gemv_time(n, gpu),
                    "power_w": gpu.power_w, "power_source": gpu.sources["power_w"],
                    "note": f"model: 2 n^2 B at eff_mem {DEFAULT_EFFICIENCY.eff_mem:.3f} + "
                            f"{fmt_time(GEMV_LAUNCH_S)} launch"}]
    if n in PUBLISHED_GEMV:  # the paper's Table 6 beside the models; the A100's power is 400 W for both memories
        wid, gid = PUBLISHED_GEMV[n]
        rows.append({"system": "wse2 MeshGEMV (published)", "kind": "published_wafer",
                     "time_s": figure(wid)["value"], "power_w": None, "power_source": "",
                     "note": f"{figure(wid)['source']} ({wid})"})
        rows.append({"system": "1 x A100 GEMV (published)", "kind": "published_gpu", "time_s": figure(gid)["value"],
                     "power_w": 400.0, "power_source": "vendor datasheet (calibration.json hardware.a100_*)",
                     "note": f"{figure(gid)['source']} ({gid})"})
    for r in rows:
        r["speedup"] = r["time_s"] / wafer["time_s"]
        r["energy_j"] = r["time_s"] * r["power_w"] if r["power_w"] else None
        r["energy_ratio"] = r["energy_j"] / (wafer["time_s"] * spec.power_w) if r["energy_j"] else None
    if args.json:
        print(json_text({"gemv": n, "device": spec.name, "gpu": gpu.name, "grid": kr.grid, "groups": groups,
                         "rows": rows}))
        return 0
    print(f"GEMV [1,{n}] x [{n},{n}], fp16: speed-up and energy ratio are the row's time / energy over the wafer's")
    print(table(["system", "time", "speed-up", "energy J", "energy ratio", "power W", "note"],
                [[r["system"], fmt_time(r["time_s"]), _x(r["speedup"]),
                  "-" if r["energy_j"] is None else f"{r['energy_j']:.3g}",
                  "-" if r["energy_ratio"] is None else _x(r["energy_ratio"]),
                  "-" if r["power_w"] is None else f"{r['power_w']:,.0f}", r["note"]] for r in rows]))
    for line in _power_lines(spec, gpu):
        print(line)
    return 0
