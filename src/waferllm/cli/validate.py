"""`waferllm validate` and `waferllm calibrate`: the model against calibration.json."""

from __future__ import annotations

from waferllm.cli.args import add_device_args, device_from_args, json_text
from waferllm.report.tables import table


def add_parsers(sub) -> None:
    p = sub.add_parser("validate", help="every published figure of calibration.json beside the model's prediction, "
                                        "with the median and worst error per table")
    add_device_args(p)
    p.add_argument("--strict", action="store_true", help="exit 1 when any row misses its target (default: report "
                                                         "and exit 0)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--fabric", action="store_true", help="instead: the analytical ledger against the event-level "
                                                         "fabric, every kernel on 4x4..64x64 (docs/fabric-model.md)")
    p.add_argument("--plot", metavar="PNG", help="with --fabric: plot event-level / analytical cycles per kernel")
    p.add_argument("--grids", metavar="SIDES", help="with --fabric: square grid sides, e.g. 4,8 (default 4,8,16,32,64)")
    p.set_defaults(func=run_validate)
    c = sub.add_parser("calibrate", help="re-fit the latency constants to calibration.json")
    add_device_args(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_calibrate)


def run_validate(args) -> int:
    """Exit code: 0 whatever the rows say (the table is the result); with --strict, 1 when a row misses."""
    from waferllm.cli.predict import no_limits_error
    from waferllm.perf.validation import validate
    from waferllm.report.tables import fmt_error, fmt_ratio, fmt_value

    no_limits_error(args, "validate")
    spec = device_from_args(args)
    if args.fabric:
        return run_fabric(args, spec)
    v = validate(spec)
    rc = 1 if args.strict and v["n_ok"] < v["n_rows"] else 0
    if args.json:
        print(json_text(dict(v, strict=args.strict, exit_code=rc)))
        return rc
    out = [[r["table"], r["system"], r["id"], fmt_value(r["published"], r["unit"]),
            fmt_value(r["predicted"], r["unit"]), fmt_error(r["rel_error"]), fmt_ratio(r), r["target"],
            "ok" if r["ok"] else "MISS"] for r in v["rows"]]
    print(table(["table", "system", "figure", "published", "predicted", "error", "pred/pub", "target", "status"], out))
    print()
    summ = [[t["table"], t["system"], f"{t['ok']}/{t['rows']}",
             "bounds" if t["median_abs_error"] is None else f"{100 * t['median_abs_error']:.1f}%",
             "-" if t["worst_error"] is None else f"{fmt_error(t['worst_error'])} ({t['worst_id']})"]
            for t in v["tables"]]
    print(table(["table", "system", "on target", "median |error|", "worst error"], summ))
    for n in v["not_rows"]:
        print(f"not a row: {n['figure']}: {n['why']}")
    for n in v["notes"]:
        print(f"note: {n['figure']}: {n['note']}")
    print(f"{v['n_ok']}/{v['n_rows']} within target on {spec.name} ({v['dtype']}; WaferLLM kernels at 720x720, GEMV "
          "at its fastest grid, prefill/decode as the artifact measures (one layer x layers), e2e by predict() on "
          "the paper's 360x360 decode and 660x660 prefill grids; GPUs: perf/gpu.py). Exit 0 unless --strict "
          "and a row misses.")
    return rc


def run_fabric(args, spec) -> int:
    """`validate --fabric`: every kernel's ledger cycles beside the event-level fabric's (exit 1 with --strict
    when a row is off by more than 10%)."""
    from rich.progress import Progress

    from waferllm.perf import fabric_check as fc

    grids = fc.parse_grids(args.grids)
    with Progress(transient=True, disable=args.json) as prog:
        task = prog.add_task("kernels on the event-level fabric", total=fc.n_rows(grids))
        rows = fc.rows(spec, grids, progress=lambda what: prog.update(task, advance=1, description=what))
    if args.plot:
        fc.plot(rows, args.plot)
    summ = fc.summary(rows)
    rc = 1 if args.strict and summ["within"] < summ["rows"] else 0
    if args.json:
        print(json_text({"rows": rows, "summary": summ}))
        return rc
    print(table(["kernel", "regime", "grid", "shape", "analytical", "event-level", "event/analytical", "status"],
                [[r["kernel"], r["regime"], r["grid"], r["shape"], f"{r['analytical_cycles']:,.0f}",
                  f"{r['event_cycles']:,.0f}", f"{r['ratio']:.3f}", "ok" if r["within"] else "MISS"] for r in rows]))
    w = summ["worst"]
    print(f"{summ['within']}/{summ['rows']} within {100 * fc.TOLERANCE:.0f}% on {spec.name}; worst {w['kernel']} "
          f"{w['grid']} {w['shape']} at {w['ratio']:.3f}x (cycles; docs/fabric-model.md says what each model counts)")
    return rc


def run_calibrate(args) -> int:
    from rich.progress import Progress

    from waferllm.cli.predict import no_limits_error
    from waferllm.perf.baseline_fit import fit_baselines, fit_fields
    from waferllm.perf.calibrate import FIT_FIELDS, calibrate

    no_limits_error(args, "calibrate")
    spec = device_from_args(args)
    with Progress(transient=True, disable=args.json) as prog:
        task = prog.add_task("fitting (each trial costs the GEMVs and Llama3-8B layers shape-only)", total=None)
        fitted, report = calibrate(spec, progress=lambda: prog.advance(task))
        fitted, report["baselines"] = fit_baselines(fitted, progress=lambda: prog.advance(task))  # T10, Ladder
    fields = ("fp16_macs_per_cycle",) + FIT_FIELDS + fit_fields()
    if args.json:
        print(json_text({"fits": report, "values": {k: getattr(fitted, k) for k in fields}}))
        return 0
    print(table(["constant", "preset", "fitted"], [[k, getattr(spec, k), getattr(fitted, k)] for k in fields]))
    j = report["joint"]
    print(table(["figure", "residual"], [[k, f"{v:+.1f}%"] for k, v in j["residual_pct"].items()]))
    print(f"fitted to: {', '.join(j['fitted_to'])}; cost by fp16 MACs/cycle: {j['cost_by_fp16']}")
    for name, b in report.get("baselines", {}).items():  # perf/baseline_fit.py: each baseline's own rows
        print(f"{name}: " + ", ".join(f"{k} {v:+.1f}%" for k, v in b["residual_pct"].items()))
    return 0
