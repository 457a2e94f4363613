"""`waferllm serve`: an OpenAI-compatible server for a real checkpoint on the simulated wafer."""

from __future__ import annotations

import os
import signal
import socket
import sys

import waferllm.cli.distributed as distributed
from waferllm import WaferError
from waferllm.cli.args import ArgError, add_device_args, add_model_args, device_from_args, load_model_from_args

DEFAULT_MAX_MODEL_LEN = 256
DEFAULT_MAX_BODY_BYTES = 1 << 20


class BindError(WaferError):
    """The server cannot listen on the address asked for."""


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
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a lane; beyond busy lanes plus this many, 429")
    p.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN,
                   help="prompt + completion tokens per request")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body; larger ones get 413 (default 1 MiB)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes "
                                                   "(default: $WAFERLLM_API_KEY)")
    p.add_argument("--api-key-file", default=None, metavar="PATH", help="read the API key from a file")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve on a non-loopback host without an API key")
    distributed.add_distributed_args(p)
    p.set_defaults(func=run)


def check_args(args, environ=os.environ) -> str | None:
    """Validate the serving arguments before any work; returns the API key (None: none)."""
    from waferllm.server.auth import ApiKeyError, is_loopback, resolve_api_key

    for name in ("max_batch", "max_queue", "max_model_len", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise ArgError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port < 65536:
        raise ArgError(f"--port must be in 0..65535, got {args.port}")
    try:
        key = resolve_api_key(args.api_key, args.api_key_file, environ)
    except ApiKeyError as e:
        raise ArgError(str(e)) from None
    if key is None and not is_loopback(args.host) and not args.allow_unauthenticated:
        raise ArgError(f"--host {args.host} is reachable from other machines: give an API key (--api-key, "
                       "--api-key-file or $WAFERLLM_API_KEY) or pass --allow-unauthenticated")
    return key


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or BindError (before any model is loaded)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise BindError(f"cannot resolve --host {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def build_engine(args):
    """The placed model for the parsed arguments (every process of a multi-process run builds the same)."""
    from waferllm.engine.generate import Engine
    from waferllm.engine.grids import resolve_grids
    from waferllm.engine.placement import smallest_fit

    spec = device_from_args(args)
    cfg, weights, tok = load_model_from_args(args)
    # auto: the engine's meaning, with KV room for every lane (max-batch x max-model-len tokens)
    grids = resolve_grids(spec, grid=args.grid, prefill_grid=args.prefill_grid,
                          auto=smallest_fit(cfg, spec, args.dtype, args.max_batch * args.max_model_len))
    engine = Engine(cfg, weights, spec, grid=grids.decode, dtype=args.dtype, max_tokens=args.max_model_len,
                    tokenizer=tok, kv_policy=args.kv, prefill_grid=grids.prefill,
                    devices="all" if args.coordinator else None)
    per_lane = engine.lane_slots(args.max_batch)
    if per_lane < 1:
        raise ArgError(f"grid {engine.plan.grid} holds {engine.plan.kv_tokens_per_row} KV slots per row: too few "
                       f"for --max-batch {args.max_batch}; use a larger --grid or a smaller --max-batch")
    return engine


def build(args, api_key: str | None = None):
    """(scheduler, app) for the parsed arguments; the model loads once, here."""
    from waferllm.engine.lockstep import Channel
    from waferllm.engine.scheduler import Scheduler
    from waferllm.server.app import ServerConfig, create_app

    engine = build_engine(args)
    channel = Channel(leader=True) if args.coordinator else None  # the other processes replay the batch
    sched = Scheduler(engine, max_batch=args.max_batch, max_queue=args.max_queue, max_tokens=args.max_model_len,
                      channel=channel)
    config = ServerConfig(max_body_bytes=args.max_body_bytes, api_key=api_key)
    return sched, create_app(sched, args.served_model_name or args.model, config)


def follow(args) -> int:
    """A process other than 0 of a multi-process server: replays process 0's batch until it stops."""
    from waferllm.engine import lockstep
    from waferllm.engine.scheduler import batch_slots

    engine = build_engine(args)
    slots = batch_slots(engine, args.max_batch, args.max_model_len)
    lockstep.follow(engine, args.max_batch, slots, lockstep.Channel(leader=False))
    return 0


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def serve_until_stopped(app, sock: socket.socket) -> None:
    """uvicorn on `sock` until SIGINT or SIGTERM. uvicorn shuts down gracefully, then raises the signal again;
    it is caught here so that the caller still closes the scheduler (which stops the other processes)."""
    import uvicorn

    caught = lambda signum, frame: None  # noqa: E731
    old = {sig: signal.signal(sig, caught) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run(args) -> int:
    distributed.check(args)
    key = check_args(args)
    if distributed.launching(args):  # N local processes of this same command; process 0 serves
        return distributed.launch_local(args.argv, args.num_processes)
    if not distributed.join(args):
        return follow(args)
    sock = bind(args.host, args.port)
    sched = None
    try:
        sched, app = build(args, key)
        p, world = sched.engine.plan, distributed.world(sched.engine.devices)
        spread = f" over {world['processes']} processes" if world["processes"] > 1 else ""
        print(f"waferllm: serving {sched.engine.cfg.name} on {sched.engine.spec.name}, decode grid {p.grid}{spread}, "
              f"{args.max_batch} lanes x {sched.batch.slots} KV slots/row, {url(sock)}"
              f"{'' if key else ' (no API key)'}", file=sys.stderr, flush=True)
        serve_until_stopped(app, sock)
    finally:
        if sched is not None:
            sched.close()
        sock.close()
    return 0
