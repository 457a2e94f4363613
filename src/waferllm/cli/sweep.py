"""`waferllm sweep`: the autotuner's whole sweep (tokens/s against grid side) as a table and a plot,
or with --paper the paper-style tables for the four presets (predict() at the paper's grids)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from waferllm.cli.args import ArgError, add_device_args, device_from_args, json_text
from waferllm.report.tables import fmt_bytes, fmt_time, table

DEFAULT_MODEL = "llama3-8b"
LENGTHS = {"context": 4096, "input_len": 4096}  # defaults of --context / --input-len (None: not given)
UNUSED = {"decode": {"input_len": "--input-len is the prompt of the prefill sweep; --phase decode sweeps at --context "
                                  "tokens"},
          "prefill": {"context": "--context is the KV length of the decode sweep; --phase prefill sweeps a prompt of "
                                 "--input-len tokens"},
          "paper": {"phase": "--phase has no effect with --paper: its tables have prefill, decode and e2e",
                    "sides": "--sides has no effect with --paper: it uses the paper's grids (prefill 480/600/720, "
                             "decode 420/540/660)"}}


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="autotune: tokens/s against grid side (table, plot), or --paper tables")
    p.add_argument("--model", default=None, help=f"comma-separated presets or config files (default {DEFAULT_MODEL}; "
                                                 "with --paper the four paper presets)")
    add_device_args(p)
    p.add_argument("--phase", default=None, choices=["prefill", "decode", "all"], help="default all (not with --paper: "
                                                                                      "its tables have every phase)")
    p.add_argument("--sides", default=None, help="'auto' (60..wafer side, step 60; the default) or comma-separated "
                                                 "grid sides (not with --paper: it uses the paper's grids)")
    p.add_argument("--dtype", default="float16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--context", type=int, default=None, help=f"decode: tokens in the KV cache, batch 1 (default "
                                                             f"{LENGTHS['context']})")
    p.add_argument("--input-len", type=int, default=None, help=f"prefill: prompt tokens (default "
                                                               f"{LENGTHS['input_len']})")
    p.add_argument("--plot", metavar="PNG", help="also plot tokens/s against grid side, one line per model and phase")
    p.add_argument("--paper", action="store_true", help="the paper's tables: prefill 480/600/720, decode 420/540/660, "
                                                        "e2e, for llama3-8b, llama2-13b, codellama-34b, qwen2-72b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def parse_sides(text: str, spec) -> list[int]:
    """Grid sides (cores), sorted and de-duplicated; 'auto' = the autotuner's candidates."""
    from waferllm.perf.autotune import candidate_sides

    if text.strip() == "auto":
        return candidate_sides(spec)
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        out = []
    if not out or out[0] < 1:
        raise ArgError(f"bad --sides {text!r}; expected 'auto' or positive integers, e.g. 240,360,480")
    return out


def _check_plot(path: str | None) -> None:
    if path and not Path(path).resolve().parent.is_dir():  # fail before minutes of sweeping, not after
        raise ArgError(f"--plot {path!r}: folder {str(Path(path).resolve().parent)!r} does not exist")


def run(args) -> int:
    from waferllm.cli.predict import no_limits_error, unused, warn
    from waferllm.model import get_config
    from waferllm.perf.predict import check_args

    no_limits_error(args, "sweep")
    unused(args, "paper" if args.paper else (args.phase or "all"), UNUSED)
    for k, v in LENGTHS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    spec = device_from_args(args)
    _check_plot(args.plot)
    if args.paper:
        return run_paper(args, spec)
    cfgs = [get_config(m.strip()) for m in (DEFAULT_MODEL if args.model is None else args.model).split(",")
            if m.strip()]
    if not cfgs:  # `--model ""` is a mistake, not a request for the default
        raise ArgError(f"--model is empty; give a preset ({DEFAULT_MODEL}, ...) or a config file")
    phases = ["prefill", "decode"] if args.phase in (None, "all") else [args.phase]
    for cfg in cfgs:  # the same one-line errors (and context warnings) as `waferllm predict`, before any work
        for ph in phases:
            n = {"context": args.context} if ph == "decode" else {"input_len": args.input_len}
            warn(check_args(cfg, ph, **n))
    sides = parse_sides(args.sides or "auto", spec)
    t0 = time.perf_counter()
    results = sweep_models(cfgs, spec, phases, sides, args.dtype, args.context, args.input_len, quiet=args.json)
    wall = time.perf_counter() - t0
    if args.plot:
        from waferllm.report.plots import tokens_vs_grid

        tokens_vs_grid({f"{r['model']} {r['phase']}": r["points"] for r in results}, args.plot,
                       title=f"tokens/s against grid side on {spec.name} ({args.dtype})",
                       best={f"{r['model']} {r['phase']}": r["best"] for r in results})
    if args.json:
        print(json_text({"device": spec.name, "dtype": args.dtype, "context": args.context, "batch": 1,
                          "input_len": args.input_len, "wall_s": wall,
                          "results": [dict(r, points=[dict(asdict(p), best=p.side == r["best"]) for p in r["points"]])
                                      for r in results]}))
        return 0
    rows = []
    for r in results:
        for p in r["points"]:
            rows.append([r["model"], r["phase"], f"{p.side}x{p.side}",
                         f"{p.tokens_per_s:,.1f}" if p.tokens_per_s else "-", p.wafers or "-",
                         "*" if p.side == r["best"] else "", "" if p.tokens_per_s else _short(p.reason)])
    print(table(["model", "phase", "grid", "tokens/s", "wafers", "best", "note"], rows))
    print(f"{spec.name}, {args.dtype}; decode at context {args.context}, batch 1; prefill of {args.input_len} tokens. "
          f"best (*) = fastest among the grids on the fewest wafers. {len(rows)} points in {wall:.1f} s")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _short(reason: str, width: int = 72) -> str:
    """A reason cut to one table cell (the full text is in --json)."""
    return reason if len(reason) <= width else reason[:width - 3] + "..."


def _note(r: dict) -> str:
    """Why a paper cell is empty, or that its plan needs more SRAM per core than the device has."""
    if r.get("error"):
        return _short(r["error"])
    return f"over SRAM: {fmt_bytes(r['peak_core_bytes'])}/core" if r.get("over_sram") else ""


def sweep_models(cfgs, spec, phases, sides, dtype: str, context: int, input_len: int, quiet: bool) -> list[dict]:
    """autotune.sweep for every (model, phase), with a progress bar (hidden under --json)."""
    from rich.progress import Progress

    from waferllm import WaferError
    from waferllm.perf.autotune import best, decode_point, prefill_point, sweep

    out = []
    with Progress(transient=True, disable=quiet) as prog:
        task = prog.add_task("sweeping grids", total=len(cfgs) * len(phases) * len(sides))
        for cfg in cfgs:
            for ph in phases:
                prog.update(task, description=f"{cfg.name} {ph}")
                fn = ((lambda s, c=cfg: decode_point(c, spec, s, dtype, context)) if ph == "decode" else
                      (lambda s, c=cfg: prefill_point(c, spec, s, dtype, input_len)))
                pts = sweep(fn, sides, progress=lambda: prog.advance(task))
                try:
                    b = best(pts).side
                except WaferError:
                    b = None  # nothing fits: the table says why per grid
                out.append({"model": cfg.name, "phase": ph, "best": b, "points": pts})
    return out


def run_paper(args, spec) -> int:
    """Prefill at 480/600/720 and decode at 420/540/660 (predict()), then e2e at each model's tuned grids."""
    from rich.progress import Progress

    from waferllm.cli.predict import warn
    from waferllm.model import get_config
    from waferllm.perf.predict import check_args
    from waferllm.report.html import E2E_INPUT, E2E_OUTPUT, PAPER_MODELS, paper_tables

    models = list(PAPER_MODELS) if args.model is None else [m.strip() for m in args.model.split(",") if m.strip()]
    if not models:
        raise ArgError("--model is empty; give presets, or leave it out for the paper's models")
    for m in models:  # unknown names fail here in one line; lengths past a model's context are warnings
        cfg = get_config(m)
        for ph, n in (("prefill", {"input_len": args.input_len}), ("decode", {"context": args.context}),
                      ("e2e", {"input_len": E2E_INPUT, "output_len": E2E_OUTPUT})):
            warn(check_args(cfg, ph, **n))
    t0 = time.perf_counter()
    with Progress(transient=True, disable=args.json) as prog:
        task = prog.add_task("paper tables", total=1)
        pt = paper_tables(spec, models, args.dtype, args.context, args.input_len,
                          progress=lambda d, n, what: prog.update(task, completed=d, total=n, description=what))
    pt["wall_s"] = time.perf_counter() - t0
    if args.plot:
        from waferllm.report.plots import tokens_vs_grid

        tokens_vs_grid(_paper_points(pt), args.plot, title=f"paper grids on {spec.name} ({args.dtype})")
    if args.json:
        print(json_text(pt))
        return 0
    for phase, what in (("prefill", f"prefill of {args.input_len} tokens"),
                        ("decode", f"decode at context {args.context}, batch 1")):
        print(f"{phase.capitalize()} ({what}, {args.dtype}, {spec.name}; predict(): engine tokens/s and the paper "
              "artifact's definition, one layer x layer count)")
        rows = [[name, phase, r["grid"], _num(r.get("tokens_per_s")), _num(r.get("paper_tokens_per_s")),
                 r.get("wafers") or "-", "*" if r.get("best") else "", _note(r)]
                for name, m in pt["models"].items() for r in m[phase]]
        print(table(["model", "phase", "grid", "tokens/s", "artifact t/s", "wafers", "best", "note"], rows) + "\n")
    print(f"End to end (input {E2E_INPUT}, output {E2E_OUTPUT}, batch 1): decode on the best decode grid above, "
          f"prefill grid tuned among {'/'.join(str(r['side']) for r in next(iter(pt['models'].values()))['prefill'])} "
          f"at {E2E_INPUT} tokens")
    rows = [[name, "e2e", e.get("decode_grid") or "-", e.get("prefill_grid") or "-", _num(e.get("tokens_per_s")),
             fmt_time(e["time_s"]) if e.get("time_s") else "-", e.get("wafers") or "-",
             _note(e)] for name, m in pt["models"].items()
            for e in [m["e2e"]]]
    print(table(["model", "phase", "decode grid", "prefill grid", "tokens/s", "total time", "wafers", "note"], rows))
    print(f"computed in {pt['wall_s']:.1f} s" + (f"; plot: {args.plot}" if args.plot else ""))
    return 0


def _num(v) -> str:
    return f"{v:,.1f}" if v else "-"


def _paper_points(pt: dict) -> dict:
    """Table rows as autotune.Point-like objects, one series per (model, phase), for tokens_vs_grid."""
    from waferllm.perf.autotune import Point

    return {f"{name} {ph}": [Point(side=r["side"], phase=ph, tokens_per_s=r["tokens_per_s"], wafers=r.get("wafers"))
                             for r in m[ph]] for name, m in pt["models"].items() for ph in ("prefill", "decode")}
