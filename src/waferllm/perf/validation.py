"""Every figure of calibration.json that has a number, beside the model's prediction (`waferllm validate`, the
report's validation section and scatter plot).

Rows are grouped by the paper's table and by system: WaferLLM (our programs), T10 and Ladder (the paper's
mesh-oblivious baselines, `--strategy t10|ladder`), SGLang on A100s and the A100 GEMV (perf/gpu.py's model).
A row is on target within 10% of its published figure (or on the right side of a published bound). Nothing
here is fitted; the fits live in calibrate.py (WaferLLM's constants) and baseline_fit.py (T10's and Ladder's
two constants each, fitted to their Table 3 and 4 rows only: their Table 2 rows are a check).

How each row is predicted:
- Table 6 and the kernel claims, Llama3-8B prefill (Table 3) and decode (Table 4) of WaferLLM: calibrate.py
  (the figures the latency constants are fitted to);
- T10 / Ladder prefill and decode: the same artifact definition as WaferLLM's rows (one layer x layer count)
  on the paper's grids, with the baseline's placement;
- Table 2 end to end: predict(phase='e2e'), output tokens / (prefill + every decode step). WaferLLM decodes on
  360x360 and prefills on 660x660 (paper s7.1: its autotuner's grids). T10 and Ladder have no per-phase grid
  tuning and run both phases on the 660x660 region: solving Table 2's two output lengths per input length for
  (prefill time, time per token) gives 3.7-3.8 ms (T10) and 89 ms (Ladder) per token, their Table 4 660x660
  steps (3.77 and 87.7 ms), not a 360x360 step (which would be faster than their 420x420 one);
- Table 5 KV capacity: the decode plan on 360x360 cores, shift and concat;
- SGLang: gpu_predict on 1 / 8 / 16 (2x8) A100-80GB; its end to end composes the prefill and every decode
  step at the growing context, as Table 2 defines it.
"""

from __future__ import annotations

import statistics
from functools import lru_cache

from waferllm.model.registry import get_config
from waferllm.perf.calibrate import Target, calibration, figure, kernel_targets, llama_targets
from waferllm.spec import DeviceSpec

MODEL = "llama3-8b"
DTYPE = "float16"
PREFILL_SIDES, DECODE_SIDES = (480, 600, 720), (420, 540, 660)  # paper Tables 3 and 4
E2E_DECODE, E2E_PREFILL = (360, 360), (660, 660)  # paper s7.1: Llama3-8B's autotuned grids
E2E_BASELINE_DECODE = E2E_PREFILL  # T10 and Ladder decode where they prefill (see the module docstring)
E2E_LENGTHS = ((2048, 128), (4096, 128), (2048, 2048), (4096, 4096))  # paper Table 2's columns
SGLANG_GPUS = {"1xA100": 1, "8xA100": 8, "2x8xA100": 16}
BASELINES = {"t10": "T10", "ladder": "Ladder"}

# calibration.json entries that are not one number to predict, and why (validate lists them).
NOT_ROWS = {
    "baseline_claims": "the paper's averages over four models, three of which are the maintainers' blind test; "
                       "the Llama3-8B T10/Ladder rows of Tables 2-4 are validated one by one instead",
    "llama2_13b_context": "a note (Llama2-13B ran with its 4K limit removed): `waferllm predict` warns past a "
                          "model's context and costs it anyway",
}

# Order of the tables in reports: the paper's order of figures, then systems.
TABLE_ORDER = ("Table 6 GEMV", "kernel claims (s7.2-7.3)", "Table 3 prefill", "Table 4 decode", "Table 2 e2e",
               "Table 5 KV capacity")
SYSTEM_ORDER = ("WaferLLM", "concat", "T10", "Ladder", "SGLang", "A100")


def _strategy_decode_tps(spec: DeviceSpec, strategy: str, side: int) -> float:
    from waferllm.perf.predict import artifact_decode_tps
    from waferllm.perf.programs import decode_program

    return artifact_decode_tps(decode_program(get_config(MODEL), spec, (side, side), DTYPE, 4096, strategy=strategy),
                               4096)


def _strategy_prefill_tps(spec: DeviceSpec, strategy: str, side: int) -> float:
    from waferllm.perf.predict import artifact_prefill_tps
    from waferllm.perf.programs import prefill_program

    return artifact_prefill_tps(prefill_program(get_config(MODEL), spec, (side, side), DTYPE, strategy), 4096)


def baseline_targets() -> list[Target]:
    """T10 and Ladder prefill (Table 3) and decode (Table 4), Llama3-8B on WSE-2 at the paper's grids."""
    phases = (("prefill", PREFILL_SIDES, "4096 tokens", "Table 3 prefill", _strategy_prefill_tps),
              ("decode", DECODE_SIDES, "4K context", "Table 4 decode", _strategy_decode_tps))
    out = []
    for strategy, name in BASELINES.items():
        for phase, sides, setting, table, fn in phases:
            f = figure(f"{phase}_llama3_8b_{strategy}")
            for side, v in zip(sides, f["value"]):
                out.append(Target(id=f"{f['id']}_{side}", what=f"{name} {phase} tokens/s, {MODEL}, {setting}, "
                                  f"{side}x{side} (one layer x layers)", published=v, unit="tok/s", check="within10",
                                  table=table, system=name, figure=f["id"],
                                  predict=lambda s, st=strategy, g=side, fn=fn: fn(s, st, g)))
    return out


@lru_cache(maxsize=64)
def _e2e_tps(spec: DeviceSpec, strategy: str, input_len: int, output_len: int) -> float:
    from waferllm.perf.predict import predict

    grid = E2E_DECODE if strategy == "waferllm" else E2E_BASELINE_DECODE
    return predict(get_config(MODEL), spec, phase="e2e", grid=grid, prefill_grid=E2E_PREFILL,
                   input_len=input_len, output_len=output_len, dtype=DTYPE, strategy=strategy).tokens_per_s


def e2e_targets() -> list[Target]:
    """Table 2: WaferLLM, T10 and Ladder end to end (prefill 660x660; decode 360x360, the baselines' 660x660)."""
    out = []
    for strategy, name, fid in (("waferllm", "WaferLLM", "e2e_llama3_8b"), ("t10", "T10", "e2e_llama3_8b_t10"),
                                ("ladder", "Ladder", "e2e_llama3_8b_ladder")):
        dec = "x".join(map(str, E2E_DECODE if strategy == "waferllm" else E2E_BASELINE_DECODE))
        for (i, o), v in zip(E2E_LENGTHS, figure(fid)["value"]):
            out.append(Target(id=f"{fid}_{i}_{o}", what=f"{name} end-to-end tokens/s, {MODEL}, input {i}, output "
                              f"{o}, decode {dec}, prefill 660x660", published=v, unit="tok/s", check="within10",
                              table="Table 2 e2e", system=name, figure=fid,
                              predict=lambda s, st=strategy, i=i, o=o: _e2e_tps(s, st, i, o)))
    return out


def _table5_plan(spec: DeviceSpec):
    """The decode plan of Table 5's setting (the end-to-end runs' 360x360 decode grid)."""
    from waferllm.engine.placement import plan_decode

    return plan_decode(get_config(MODEL), spec, E2E_DECODE, DTYPE)


def _kv_capacity(spec: DeviceSpec, policy: str) -> float:
    """Table 5's accounting: the wafer's free SRAM as one pool of KV tokens (concat: one core row's share)."""
    p = _table5_plan(spec)
    return float(p.kv_pooled_tokens if policy == "shift" else p.kv_pooled_tokens // p.rows)


def kv_notes(spec: DeviceSpec) -> list[dict]:
    """Beside Table 5's rows: what the placed shift cache holds (its busiest core bounds every row)."""
    p = _table5_plan(spec)
    pub, cap = figure("kv_capacity_llama3_8b")["value"]["shift"], p.kv_capacity_tokens()
    return [{"figure": "kv_capacity_llama3_8b",
             "note": f"Table 5's rows count the wafer's free SRAM as one pool, as the paper does; the placed shift "
                     f"cache holds what its busiest core allows, {cap['shift']:,} tokens "
                     f"({(cap['shift'] - pub) / pub:+.1%}; concat {cap['concat']:,}), the capacity `predict` "
                     "reports and `generate` enforces (docs/cost-model.md)"}]


def kv_targets() -> list[Target]:
    """Table 5: KV-cache capacity (maximum decode length) on the 360x360 decode grid, shift vs concat, in the
    paper's whole-wafer accounting (DecodePlan.kv_pooled_tokens; the note beside gives the placed capacity)."""
    f = figure("kv_capacity_llama3_8b")
    return [Target(id=f"{f['id']}_{policy}", what=f"KV capacity in tokens, {policy}-based cache, {MODEL} on "
                   "360x360 decode regions, the wafer's free SRAM as one pool", published=f["value"][policy],
                   unit="tokens", check="within10",
                   table="Table 5 KV capacity", system="WaferLLM" if policy == "shift" else "concat",
                   figure=f["id"], predict=lambda s, p=policy: _kv_capacity(s, p))
            for policy in ("shift", "concat")]


def _gpu(name: str | None = None):
    from waferllm.perf.gpu import FIT_GPU, get_gpu

    return get_gpu(name or FIT_GPU)


def _sglang_phase(phase: str, n: int) -> float:
    from waferllm.perf.gpu import gpu_predict

    return gpu_predict(get_config(MODEL), _gpu(), n, phase=phase, input_len=4096, context=4096).tokens_per_s


@lru_cache(maxsize=64)
def _sglang_e2e(n: int, input_len: int, output_len: int) -> float:
    """output tokens / (prefill of input_len + output_len - 1 decode steps at contexts input_len .. end)."""
    from waferllm.perf.gpu import gpu_predict

    cfg, gpu = get_config(MODEL), _gpu()
    t = gpu_predict(cfg, gpu, n, phase="prefill", input_len=input_len).time_s
    t += sum(gpu_predict(cfg, gpu, n, phase="decode", context=input_len + i).time_s for i in range(output_len - 1))
    return output_len / t


def gpu_targets() -> list[Target]:
    """SGLang on A100s (Tables 2-4) and the A100 GEMV (Table 6), from perf/gpu.py's model."""
    out = []
    for fid, table, phase in (("gpu_prefill_llama3_8b", "Table 3 prefill", "prefill"),
                              ("gpu_decode_llama3_8b", "Table 4 decode", "decode")):
        for (label, n), v in zip(SGLANG_GPUS.items(), figure(fid)["value"]):
            out.append(Target(id=f"{fid}_{label}", what=f"SGLang {phase} tokens/s, {MODEL}, 4096 tokens, {label} "
                              "(perf.gpu model, A100-80GB)", published=v, unit="tok/s", check="within10",
                              table=table, system="SGLang", figure=fid,
                              predict=lambda s, ph=phase, n=n: _sglang_phase(ph, n)))
    f = figure("e2e_llama3_8b_sglang")
    for label, values in f["value"].items():
        n = SGLANG_GPUS[label]
        for (i, o), v in zip(E2E_LENGTHS, values):
            out.append(Target(id=f"{f['id']}_{label}_{i}_{o}", what=f"SGLang end-to-end tokens/s on {label}, input "
                              f"{i}, output {o} (perf.gpu prefill + decode steps)", published=v, unit="tok/s",
                              check="within10", table="Table 2 e2e", system="SGLang", figure=f["id"],
                              predict=lambda s, n=n, i=i, o=o: _sglang_e2e(n, i, o)))
    for fid, n in (("gemv_16k_a100", 16384), ("gemv_32k_a100", 32768)):
        out.append(Target(id=fid, what=f"GEMV [1,{n}] x [{n},{n}] fp16 on one A100 (perf.gpu model)",
                          published=figure(fid)["value"], unit="s", check="within10", table="Table 6 GEMV",
                          system="A100", predict=lambda s, n=n: _gpu_gemv(n)))
    return out


def _gpu_gemv(n: int) -> float:
    from waferllm.perf.gpu import gpu_gemv_time

    return gpu_gemv_time(n, _gpu())


def all_targets() -> list[Target]:
    return kernel_targets() + llama_targets() + baseline_targets() + e2e_targets() + kv_targets() + gpu_targets()


def figure_ids() -> list[str]:
    return [f["id"] for f in calibration()["figures"]]


def _order(row: dict) -> tuple:
    t = TABLE_ORDER.index(row["table"]) if row["table"] in TABLE_ORDER else len(TABLE_ORDER)
    s = next((i for i, name in enumerate(SYSTEM_ORDER) if row["system"].startswith(name)), len(SYSTEM_ORDER))
    return t, s


def summarize(rows: list[dict]) -> list[dict]:
    """Per (table, system): rows, rows on target, median |error| and the worst (signed) error, for rows with one."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(rows, key=_order):
        groups.setdefault((r["table"], r["system"]), []).append(r)
    out = []
    for (table, system), rs in groups.items():
        errs = [r for r in rs if r["rel_error"] is not None]
        worst = max(errs, key=lambda r: abs(r["rel_error"])) if errs else None
        out.append({"table": table, "system": system, "rows": len(rs), "ok": sum(r["ok"] for r in rs),
                    "median_abs_error": statistics.median(abs(r["rel_error"]) for r in errs) if errs else None,
                    "worst_error": worst["rel_error"] if worst else None, "worst_id": worst["id"] if worst else None})
    return out


def validate(spec: DeviceSpec) -> dict:
    """Every row beside its prediction, the per-table summary, and what calibration.json holds that is no row.

    Raises if a figure of calibration.json is neither a row nor in NOT_ROWS (a new figure must be covered)."""
    targets = all_targets()
    covered = {t.figure or t.id for t in targets} | set(NOT_ROWS)
    missing = [f for f in figure_ids() if f not in covered]
    if missing:
        raise RuntimeError(f"calibration.json figures with no validation row: {', '.join(missing)}")
    rows = sorted((t.evaluate(spec) for t in targets), key=_order)
    return {"device": spec.name, "dtype": DTYPE, "model": MODEL, "rows": rows, "tables": summarize(rows),
            "n_rows": len(rows), "n_ok": sum(r["ok"] for r in rows),
            "not_rows": [{"figure": k, "why": v} for k, v in NOT_ROWS.items()], "notes": kv_notes(spec)}
