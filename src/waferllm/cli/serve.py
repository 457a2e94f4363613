"""`waferllm serve`: an OpenAI-compatible server for a real checkpoint on the simulated wafer."""

from __future__ import annotations

import sys

from waferllm.cli.args import ArgError, add_device_args, add_model_args, device_from_args, load_model_from_args

DEFAULT_MAX_MODEL_LEN = 256


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (continuous batching)")
    add_model_args(p)
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model)")
    add_device_args(p)
    p.add_argument("--grid", default="auto", help="decode grid ROWSxCOLS, or auto (smallest square holding "
                                                  "max-batch x max-model-len tokens of KV cache)")
    p.add_argument("--prefill-grid", default="auto", help="prefill grid ROWSxCOLS, auto (square, the decode grid's "
                                                           "shorter side) or none")
    p.add_argument("--kv", default="shift", choices=["shift", "concat"], help="KV cache policy")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (lanes)")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    p.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN,
                   help="prompt + completion tokens per request")
    p.set_defaults(func=run)


def build(args):
    """(scheduler, app) for the parsed arguments; the model loads once, here."""
    from waferllm.engine.generate import Engine
    from waferllm.engine.grids import resolve_grids
    from waferllm.engine.placement import smallest_fit
    from waferllm.engine.scheduler import Scheduler
    from waferllm.server.app import create_app

    for name in ("max_batch", "max_queue", "max_model_len"):
        if getattr(args, name) < 1:
            raise ArgError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port < 65536:
        raise ArgError(f"--port must be in 0..65535, got {args.port}")
    spec = device_from_args(args)
    cfg, weights, tok = load_model_from_args(args)
    # auto: the engine's meaning, with KV room for every lane (max-batch x max-model-len tokens)
    grids = resolve_grids(spec, grid=args.grid, prefill_grid=args.prefill_grid,
                          auto=smallest_fit(cfg, spec, args.dtype, args.max_batch * args.max_model_len))
    engine = Engine(cfg, weights, spec, grid=grids.decode, dtype=args.dtype, max_tokens=args.max_model_len,
                    tokenizer=tok, kv_policy=args.kv, prefill_grid=grids.prefill)
    per_lane = engine.lane_slots(args.max_batch)
    if per_lane < 1:
        raise ArgError(f"grid {engine.plan.grid} holds {engine.plan.kv_tokens_per_row} KV slots per row: too few "
                       f"for --max-batch {args.max_batch}; use a larger --grid or a smaller --max-batch")
    sched = Scheduler(engine, max_batch=args.max_batch, max_queue=args.max_queue, max_tokens=args.max_model_len)
    return sched, create_app(sched, args.served_model_name or args.model)


def run(args) -> int:
    import uvicorn

    sched, app = build(args)
    p = sched.engine.plan
    print(f"waferllm: serving {sched.engine.cfg.name} on {sched.engine.spec.name}, decode grid {p.grid}, "
          f"{args.max_batch} lanes x {sched.batch.slots} KV slots/row, http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        sched.close()
    return 0
