"""`waferllm validate` and `waferllm calibrate`: the model against calibration.json."""

from __future__ import annotations

import json

from waferllm.cli import add_device_args, device_from_args
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
    print(f"{n_ok}/{len(rows)} within target on {spec.name} (WSE-2 figures at 720x720, fp16)")
    return 0


def run_calibrate(args) -> int:
    from waferllm.perf.calibrate import calibrate

    spec = device_from_args(args)
    fitted, report = calibrate(spec)
    changed = {k: (getattr(spec, k), getattr(fitted, k)) for k in ("beta_cycles_per_relay", "relay_cycles_per_element",
                                                                   "step_overhead_cycles")}
    if args.json:
        print(json.dumps({"fits": report, "values": {k: v[1] for k, v in changed.items()}}, indent=2))
        return 0
    print(table(["constant", "preset", "fitted", "fitted to"],
                [[k, a, b, ", ".join(_fitted_to(report, k))] for k, (a, b) in changed.items()]))
    return 0


def _fitted_to(report: dict, key: str) -> list[str]:
    for part in report.values():
        if key in part:
            return part["fitted_to"]
    return []
