"""`waferllm generate`: run a real checkpoint on the simulated wafer, stream text, report predicted speed."""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext

from waferllm.cli.args import (ArgError, add_device_args, add_model_args, device_from_args, json_text,
                              load_model_from_args)
import waferllm.cli.distributed as distributed
from waferllm.report.tables import fmt_bytes, fmt_time

DEFAULT_PROMPT = "What is a wafer-scale computer? Answer in two sentences."


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a real model on the simulated wafer")
    add_model_args(p)
    p.add_argument("--prompt", action="append", help="prompt text (repeat for several prompts)")
    p.add_argument("--chat", action="store_true", help="apply the checkpoint's chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    add_device_args(p)
    p.add_argument("--grid", default="auto", help="decode grid ROWSxCOLS per layer region, or auto (the smallest "
                                                  "square holding a layer and the KV cache for the request)")
    p.add_argument("--prefill-grid", default="auto",
                   help="prefill grid ROWSxCOLS, auto (square, the decode grid's shorter side), "
                        "or none (the prompt goes through the decode path)")
    p.add_argument("--kv", default="shift", choices=["shift", "concat"], help="KV cache policy")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object (a list for several prompts)")
    distributed.add_distributed_args(p)
    p.set_defaults(func=run)


def sampling_from_args(args):
    from waferllm.engine.sampling import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))


def _status(msg: str, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(msg)


def run(args) -> int:
    from waferllm.engine.generate import CapacityError, Engine, check_context, plural
    from waferllm.engine.grids import check_grid_args
    from waferllm.engine.textgen import generate_batch_text, generate_text, prompt_ids

    # everything that needs no model is checked before the (slow) load: sampling ranges, device, grids
    distributed.check(args)
    if distributed.launching(args):  # N local processes of this same command; process 0 prints
        return distributed.launch_local(args.argv, args.num_processes)
    distributed.join(args)  # before anything touches a JAX backend
    params = sampling_from_args(args)
    spec = device_from_args(args)
    check_grid_args(spec, grid=args.grid, prefill_grid=args.prefill_grid)
    prompts = args.prompt or [DEFAULT_PROMPT]
    with _status(f"loading {args.model}", args.json):
        cfg, weights, tok = load_model_from_args(args)
    ids = [prompt_ids(tok, p, chat=args.chat, system=args.system) for p in prompts]
    if min(len(i) for i in ids) == 0:
        raise ArgError("empty prompt: give some text with --prompt")
    longest = max(len(i) for i in ids)
    check_context(cfg, longest, params.max_new_tokens)  # the model's context binds before any grid does
    need = longest + params.max_new_tokens
    with _status(f"placing {cfg.name} on {spec.name}", args.json):
        try:
            engine = Engine(cfg, weights, spec, grid=args.grid, dtype=args.dtype,
                            max_tokens=64 * math.ceil(need / 64), tokenizer=tok, kv_policy=args.kv,
                            prefill_grid=args.prefill_grid, devices="all" if args.coordinator else None)
        except CapacityError as e:  # the auto grid found none: say what the request asked for
            raise CapacityError(f"prompt ({plural(longest, 'token')}) + --max-new-tokens ({params.max_new_tokens}) = "
                                f"{need} tokens: {e}") from None
    if len(ids) > 1:  # decoded together: one lane each, skinny GEMMs instead of GEMVs
        engine.check_batch([(i, params) for i in ids])  # every prompt checked before any work
        with _status(f"decoding {len(ids)} prompts together", args.json):
            results, agg = generate_batch_text(engine, ids, params)
        outs = [_result_json(engine, args, r, agg, len(ids)) for r in results]
        if args.json:
            print(json_text(outs))
            return 0
        for p, r in zip(prompts, results):
            print(p if not args.chat else f"[chat] {p}", end="\n---\n")
            print(r.text, end="\n---\n")
            _print_stats(engine, r)
        print(f"batch of {len(ids)}: {agg:,.0f} predicted decode tok/s aggregate")
        return 0
    engine.check_capacity(len(ids[0]), params.max_new_tokens)
    if not args.json:
        print(prompts[0] if not args.chat else f"[chat] {prompts[0]}", end="\n---\n", flush=True)
    res = generate_text(engine, ids[0], params, on_text=None if args.json else _echo)
    if args.json:
        print(json_text(_result_json(engine, args, res, res.timing.decode_tokens_per_s, 1)))
    else:
        print("\n---")
        _print_stats(engine, res)
    return 0


def _echo(text: str) -> None:
    print(text, end="", flush=True)


def _result_json(engine, args, res, decode_tps: float, batch: int) -> dict:
    plan, led = engine.plan, engine.ledger
    return {
        "model": engine.cfg.name, "device": engine.spec.name, "grid": plan.grid, "dtype": engine.dtype,
        "prompt_token_ids": res.prompt_token_ids, "token_ids": res.token_ids, "text": res.text,
        "finish_reason": res.finish_reason, "wall_s": res.wall_s, **distributed.world(engine.devices),
        "predicted": {"ttft_s": res.timing.ttft_s, "tpot_s": res.timing.tpot_s,
                      "decode_tokens_per_s": decode_tps, "batch_size": batch},
        "peak_core_bytes": max(plan.peak_core_bytes, led.peak_core_bytes), "routes_per_core": led.routes_per_core,
        "plan": {"layers_per_region": plan.layers_per_region, "layer_regions": plan.layer_regions,
                 "lm_regions": plan.lm_regions, "wafers": plan.wafers, "head_layout":
                 "aligned" if plan.heads.aligned else "flat"},
        "prefill_grid": f"{engine.pre.rows}x{engine.pre.cols}" if engine.pre else None,
        "kv": {"policy": engine.policy, "capacity_tokens": plan.kv_capacity_tokens()[engine.policy],
               "capacity_by_policy": plan.kv_capacity_tokens(),
               "used_tokens": len(res.prompt_token_ids) + len(res.token_ids)},
    }


def _print_stats(engine, res) -> None:
    plan, t = engine.plan, res.timing
    n = len(res.token_ids)
    pre = f"prefilled on {engine.pre.rows}x{engine.pre.cols}" if engine.pre else "fed through the decode path"
    print(f"simulation: {len(res.prompt_token_ids)} prompt tokens {pre}, {n} generated, {res.wall_s:.2f} s wall "
          f"({n / max(res.wall_s, 1e-9):.1f} tok/s)")
    print(f"predicted on {engine.spec.name}: TTFT {fmt_time(t.ttft_s)}, TPOT {fmt_time(t.tpot_s)}, "
          f"{t.decode_tokens_per_s:,.0f} decode tok/s")
    print(f"decode grid {plan.grid} x {plan.layer_regions} regions (up to {plan.layers_per_region} layers a core) + "
          f"{plan.lm_regions} LM-head regions on {plan.wafers} wafer(s); peak "
          f"{fmt_bytes(max(plan.peak_core_bytes, engine.ledger.peak_core_bytes))}/core of "
          f"{fmt_bytes(engine.spec.sram_bytes_per_core)}, {engine.ledger.routes_per_core} routes/core")
