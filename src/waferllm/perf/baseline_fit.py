"""The fit of the baselines' constants (machine/baselines.py) to the Llama3-8B T10 and Ladder rows of
calibration.json (paper Tables 3 and 4), with every WaferLLM constant held at its preset.

Each baseline has two constants, fitted by least squares on log errors to its six rows (prefill at 480/600/720,
decode at 420/540/660): a fixed cost per exchange or access, and a cost per relayed hop. Table 2's end-to-end
rows are not fitted: they compose the same phases and are validated (perf/validation.py).
"""

from __future__ import annotations

import math
from typing import Callable

from scipy.optimize import least_squares

from waferllm.spec import DeviceSpec

FIELDS = {"t10": ("t10_exchange_cycles", "t10_relay_cycles_per_hop"),
          "ladder": ("ladder_access_cycles", "ladder_relay_cycles_per_hop")}
LOWER, UPPER = (0.0, 0.0), (1e7, 1e4)


def _targets(strategy: str):
    from waferllm.perf.validation import baseline_targets

    return [t for t in baseline_targets() if t.id.split("_")[3] == strategy]


def fit_baseline(spec: DeviceSpec, strategy: str, progress: Callable[[], None] | None = None) -> tuple[DeviceSpec, dict]:
    """Fit FIELDS[strategy] to that baseline's Llama3-8B rows; returns the spec with them set and a report."""
    from waferllm.engine import handoff

    fields, targets = FIELDS[strategy], _targets(strategy)
    # the log-error residuals are near-linear in log(constant): fit there, from the preset
    x0 = [math.log(max(getattr(spec, f), 1.0)) for f in fields]

    def resid(p):
        handoff.clear_caches()  # every trial spec is a new program; keep memory flat
        if progress:
            progress()
        s = spec.replace(**{f: math.exp(v) for f, v in zip(fields, p)})
        return [math.log(t.predict(s) / float(t.published)) for t in targets]

    lo, hi = [math.log(max(v, 1e-3)) for v in LOWER], [math.log(v) for v in UPPER]
    res = least_squares(resid, x0, bounds=(lo, hi), diff_step=0.01, max_nfev=40)
    vals = {f: round(math.exp(float(v)), 1) for f, v in zip(fields, res.x)}
    fitted = spec.replace(**vals, sources={f: spec.source(f) for f in fields})
    return fitted, {**vals, "fitted_to": [t.id for t in targets],
                    "residual_pct": {t.id: round(100 * (math.exp(r) - 1), 2) for t, r in zip(targets, res.fun)}}


def fit_baselines(spec: DeviceSpec, progress: Callable[[], None] | None = None) -> tuple[DeviceSpec, dict]:
    """Both baselines' constants, each fitted to its own rows (they share no constant)."""
    report = {}
    for strategy in FIELDS:
        spec, report[strategy] = fit_baseline(spec, strategy, progress)
    return spec, report


def fit_fields() -> tuple[str, ...]:
    return tuple(f for fs in FIELDS.values() for f in fs)
