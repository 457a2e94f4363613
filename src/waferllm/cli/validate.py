"""`waferllm validate` and `waferllm calibrate`: the model against calibration.json."""

from __future__ import annotations

import json

from waferllm.cli.args import add_device_args, device_from_args
from waferllm.report.tables import table


def add_parsers(sub) -> None:
    p = sub.add_parser("validate", help="calibration figures beside the model's predictions")
    add_device_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_validate)
    c = sub.add_parser("calibrate", help="re-fit the latency constants to calibration.json")
    add_device_args(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_calibrate)


def _fmt(v, unit: str) -> str:
    if isinstance(v, str):
        return v
    if unit == "s":
        return f"{v * 1e6:.3f} us" if v < 1e-3 else f"{v:.4g} s"
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:.4g}"


def run_validate(args) -> int:
    from waferllm.perf.calibrate import validate_rows

    spec = device_from_args(args)
    rows = validate_rows(spec)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = [[r["id"], _fmt(r["published"], r["unit"]), _fmt(r["predicted"], r["unit"]),
            "" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f}%", r["target"],
            "ok" if r["ok"] else "MISS"] for r in rows]
    print(table(["figure", "published", "predicted", "error", "target", "status"], out))
    n_ok = sum(r["ok"] for r in rows)
    print(f"{n_ok}/{len(rows)} within target on {spec.name} (fp16; kernel ratios and efficiencies at 720x720, "
          "GEMV at its fastest grid, Llama3-8B as the artifact measures: one layer x 32)")
    return 0


def run_calibrate(args) -> int:
    from rich.progress import Progress

    from waferllm.perf.calibrate import FIT_FIELDS, calibrate

    spec = device_from_args(args)
    with Progress(transient=True, disable=args.json) as prog:
        task = prog.add_task("fitting (each trial costs the GEMVs and Llama3-8B layers shape-only)", total=None)
        fitted, report = calibrate(spec, progress=lambda: prog.advance(task))
    fields = ("fp16_macs_per_cycle",) + FIT_FIELDS
    if args.json:
        print(json.dumps({"fits": report, "values": {k: getattr(fitted, k) for k in fields}}, indent=2))
        return 0
    print(table(["constant", "preset", "fitted"], [[k, getattr(spec, k), getattr(fitted, k)] for k in fields]))
    j = report["joint"]
    print(table(["figure", "residual"], [[k, f"{v:+.1f}%"] for k, v in j["residual_pct"].items()]))
    print(f"fitted to: {', '.join(j['fitted_to'])}; cost by fp16 MACs/cycle: {j['cost_by_fp16']}")
    return 0
