"""Calibration targets from calibration.json and the fit of the latency constants (the validation of every
figure, fitted or not, is perf/validation.py).

Only the figures in perf/data/calibration.json (a copy of the project's reference file) are used; the
paper's other published numbers are a blind test and never appear here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

from scipy.optimize import least_squares

from waferllm.perf.kernel_bench import run_kernel
from waferllm.spec import DeviceSpec

GRID_720 = (720, 720)
# calibration.json gives no grid for the GEMV figures; like the paper's autotuner we take the fastest of
# these (the artifact's MeshGEMV scripts sweep grids up to 512; the paper's other grids reach 720)
GEMV_GRIDS = (360, 420, 480, 512, 600, 660, 720)


def gemv_group_counts(p: int) -> range:
    """K-tree group counts tried for a bare MeshGEMV over p cores: the artifact's MeshGEMV script takes the
    count as a free argument (run_wse2.sh P M N group_num) and Table 6 states none, so the fastest is taken, as
    for the grid; sqrt(p)/2 .. 2 sqrt(p) brackets where the tree's two phases balance, and every count the
    authors' decode configs chose (15-32 for 240-720 cores)."""
    r = math.sqrt(p)
    return range(max(1, math.ceil(r / 2)), min(p, math.floor(2 * r)) + 1)


@lru_cache(maxsize=1)
def calibration() -> dict:
    """The reference calibration file shipped with the package."""
    return json.loads(resources.files("waferllm.perf").joinpath("data/calibration.json").read_text())


def figure(fid: str) -> dict:
    for f in calibration()["figures"]:
        if f["id"] == fid:
            return f
    raise KeyError(fid)


@dataclass(frozen=True, kw_only=True)
class Target:
    """One published figure, how to predict it, and what counts as agreement."""

    id: str
    what: str
    published: float | str
    predict: Callable[[DeviceSpec], float]
    check: str  # 'within10' | '>=X' | '<X'
    unit: str = ""
    table: str = ""  # the paper's table (or section) the figure is from: validation groups rows by it
    system: str = "WaferLLM"  # whose figure: WaferLLM, T10, Ladder, SGLang, A100
    figure: str = ""  # the calibration.json id it comes from (default: id)

    def evaluate(self, spec: DeviceSpec) -> dict:
        pred = self.predict(spec)
        row = {"id": self.id, "table": self.table, "system": self.system, "figure": self.figure or self.id,
               "what": self.what, "published": self.published, "predicted": pred, "unit": self.unit,
               "target": self.check}
        if self.check == "within10":
            err = (pred - float(self.published)) / float(self.published)
            row.update(rel_error=err, ok=abs(err) <= BAND)
        elif self.check.startswith(">="):
            row.update(rel_error=None, ok=pred >= float(self.check[2:]))
        else:
            row.update(rel_error=None, ok=pred < float(self.check[1:]))
        return row


def _cycles(spec, kernel, algo, shape, grid=GRID_720) -> float:
    return run_kernel(spec, kernel, algo, grid, shape, "float16", limits=False).cycles


def _time(spec, kernel, algo, shape) -> float:
    return _cycles(spec, kernel, algo, shape) / spec.clock_hz


def best_gemv(spec: DeviceSpec, n: int) -> tuple[float, int, int]:
    """(seconds, grid side, K-tree groups) of the fastest MeshGEMV [1, n] x [n, n] over GEMV_GRIDS and
    gemv_group_counts."""
    return min((run_kernel(spec, "gemv", "meshgemv", (p, p), (n, n), "float16", limits=False, groups=g).time_s, p, g)
               for p in GEMV_GRIDS for g in gemv_group_counts(p))


def _eff(spec, algo, n) -> float:
    """The paper's "computational efficiency": the share of the kernel's time spent computing. The paper states
    no per-core fp16 peak to measure against, so it is compute time / total time, the local kernels' own
    instruction overheads counted as computing (KernelResult.compute_efficiency is ideal MACs / total)."""
    r = run_kernel(spec, "gemm", algo, GRID_720, (n, n, n), "float16", limits=False)
    return r.compute_cycles / r.cycles if r.cycles else 0.0


KERNEL_CLAIMS = "kernel claims (s7.2-7.3)"


def kernel_targets() -> list[Target]:
    """The kernel-level figures of calibration.json on WSE-2 in fp16: the GEMV times at their fastest grid and
    group count (best_gemv), the ratios and efficiencies at 720x720."""
    t = []
    for fid, n in (("gemv_16k", 16384), ("gemv_32k", 32768)):
        f = figure(fid)
        t.append(Target(id=fid, what=f["what"] + " (fastest grid 360..720 and K-tree group count)",
                        published=f["value"], unit="s", check="within10", predict=lambda s, n=n: best_gemv(s, n)[0],
                        table="Table 6 GEMV"))
    for n in (2048, 8192, 16384):
        t.append(Target(id=f"meshgemv_vs_pipeline_{n // 1024}k", what=f"pipeline / MeshGEMV time, GEMV {n // 1024}K",
                        published=figure("meshgemv_vs_pipeline")["value"], unit="x", check=">=4",
                        table=KERNEL_CLAIMS, figure="meshgemv_vs_pipeline",
                        predict=lambda s, n=n: _cycles(s, "gemv", "pipeline", (n, n)) /
                        _cycles(s, "gemv", "meshgemv", (n, n))))
    for base in ("summa", "cannon"):
        t.append(Target(id=f"meshgemm_vs_{base}_2k", what=f"{base} / MeshGEMM time, GEMM 2K",
                        published=figure("meshgemm_vs_summa_cannon")["value"], unit="x", check=">=2",
                        table=KERNEL_CLAIMS, figure="meshgemm_vs_summa_cannon",
                        predict=lambda s, b=base: _cycles(s, "gemm", b, (2048,) * 3) /
                        _cycles(s, "gemm", "meshgemm", (2048,) * 3)))
    t.append(Target(id="meshgemm_efficiency_8k", what="MeshGEMM compute efficiency, GEMM 8K",
                    published=figure("meshgemm_efficiency")["value"], check=">=0.70", table=KERNEL_CLAIMS,
                    figure="meshgemm_efficiency",
                    predict=lambda s: _eff(s, "meshgemm", 8192)))
    for base in ("summa", "cannon"):
        t.append(Target(id=f"{base}_efficiency_8k", what=f"{base} compute efficiency, GEMM 8K",
                        published=figure("summa_cannon_efficiency_720")["value"], check="<0.50",
                        table=KERNEL_CLAIMS, figure="summa_cannon_efficiency_720",
                        predict=lambda s, b=base: _eff(s, b, 8192)))
    return t


def llama_targets() -> list[Target]:
    """Llama3-8B decode (420/540/660) and prefill (480/600/720) on WSE-2, fp16, 4K context / 4K prompt.

    Predicted as the artifact measures them: one layer of the engine's own program (shape-only) times
    the layer count, with no embedding, LM head or hand-overs (waferllm.md s7).
    """
    from waferllm.perf.predict import paper_decode_tps, paper_prefill_tps

    t = []
    for g in (420, 540, 660):
        f = figure(f"decode_llama3_8b_{g}")
        t.append(Target(id=f["id"], what=f"decode tokens/s, Llama3-8B, 4K context, {g}x{g}", published=f["value"],
                        unit="tok/s", check="within10", predict=lambda s, g=g: paper_decode_tps(s, "llama3-8b", g),
                        table="Table 4 decode"))
    for g in (480, 600, 720):
        f = figure(f"prefill_llama3_8b_{g}")
        t.append(Target(id=f["id"], what=f"prefill tokens/s, Llama3-8B, 4096 tokens, {g}x{g}", published=f["value"],
                        unit="tok/s", check="within10", predict=lambda s, g=g: paper_prefill_tps(s, "llama3-8b", g),
                        table="Table 3 prefill"))
    return t


# --- the joint fit ----------------------------------------------------------------------------------
# Latency and overhead constants, fitted together to every "within 10%" WaferLLM figure of Tables 2-4 and 6
# (log errors), with the kernel claims (MeshGEMM's >= 0.70 efficiency floor, the speed-up ratios) and each
# figure's 10% band as penalties. beta is fitted as alpha + extra (a relay is never cheaper than a hop). fp16
# MACs per cycle is discrete: each of FP16_OPTIONS is fitted, the better kept.
FIT_FIELDS = ("alpha_cycles_per_hop", "beta_cycles_per_relay", "relay_cycles_per_element",
              "collective_overhead_cycles", "vector_op_overhead_cycles", "step_overhead_cycles",
              "message_overhead_cycles", "special_function_cycles")
LOWER = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
UPPER = (4.0, 50.0, 10.0, 3000.0, 60.0, 2000.0, 500.0, 200.0)
FP16_OPTIONS = (2.0, 4.0)
PENALTY = 5.0
MARGIN = 0.01  # bounds are met with 1% to spare, so rounding the fitted values keeps them
BAND = 0.10  # a "within10" figure's target: least squares alone would trade one figure out of it for a smaller
# total (it did: gemv_16k at +10.5%), so a figure outside the band, less MARGIN, also pays the penalty
FIT_TOL = 1e-3  # stop when a step changes the cost or the constants by under 0.1%: the presets keep 3-4 digits,
# and scipy's default (1e-8) spent most of an hour on 2 cores moving them in the fourth digit


def _violation(t: Target, spec: DeviceSpec) -> float:
    """How far (log ratio) a '>=X' / '<X' figure is on the wrong side of its bound; 0 when met."""
    pred = t.predict(spec)
    if t.check.startswith(">="):
        return max(0.0, math.log(float(t.check[2:]) * (1 + MARGIN) / pred))
    return max(0.0, math.log(pred / (float(t.check[1:]) * (1 - MARGIN))))


def _outside_band(ratio: float) -> float:
    """How far (log ratio) predicted / published lies outside +-BAND, less MARGIN; 0 inside."""
    x = math.log(ratio)
    return max(0.0, x - math.log((1 + BAND) * (1 - MARGIN)), math.log((1 - BAND) * (1 + MARGIN)) - x)


def _apply(spec: DeviceSpec, fp16: float, p) -> DeviceSpec:
    vals = dict(zip(FIT_FIELDS, (float(v) for v in p)))
    vals["beta_cycles_per_relay"] += vals["alpha_cycles_per_hop"]
    return spec.replace(fp16_macs_per_cycle=fp16, **vals)


def _x0(spec: DeviceSpec):
    x = [getattr(spec, f) for f in FIT_FIELDS]
    x[1] = max(0.0, x[1] - x[0])
    return [min(max(v, lo), hi) for v, lo, hi in zip(x, LOWER, UPPER)]


E2E_DECODE, E2E_PREFILL = (360, 360), (660, 660)  # paper s7.1: Llama3-8B's autotuned grids
E2E_LENGTHS = ((2048, 128), (4096, 128), (2048, 2048), (4096, 4096))  # paper Table 2's columns


@lru_cache(maxsize=64)
def _e2e_tps(spec: DeviceSpec, input_len: int, output_len: int) -> float:
    from waferllm.model.registry import get_config
    from waferllm.perf.predict import predict

    return predict(get_config("llama3-8b"), spec, phase="e2e", grid=E2E_DECODE, prefill_grid=E2E_PREFILL,
                   input_len=input_len, output_len=output_len, dtype="float16").tokens_per_s


def e2e_targets() -> list[Target]:
    """Table 2's WaferLLM rows (Llama3-8B end to end, output tokens / (prefill + every decode step)): the only
    figures of calibration.json at a prompt other than 4096 tokens, so the only ones that say how prefill grows
    with the prompt. (perf/validation.py validates the same rows beside T10's and Ladder's.)"""
    f = figure("e2e_llama3_8b")
    return [Target(id=f"{f['id']}_{i}_{o}", what=f"WaferLLM end-to-end tokens/s, llama3-8b, input {i}, output {o}",
                   published=v, unit="tok/s", check="within10", table="Table 2 e2e", figure=f["id"],
                   predict=lambda s, i=i, o=o: _e2e_tps(s, i, o)) for (i, o), v in zip(E2E_LENGTHS, f["value"])]


def fit_joint(spec: DeviceSpec, progress: Callable[[], None] | None = None,
              fp16_options: tuple[float, ...] = FP16_OPTIONS) -> tuple[DeviceSpec, dict]:
    """Fit FIT_FIELDS (and pick fp16 MACs/cycle) to the GEMV, Llama3-8B and short-output end-to-end figures of
    calibration.json: least squares in log error, plus penalties for a kernel bound missed or a figure outside
    its 10% band."""
    from waferllm.engine import handoff

    # the 128-token-output rows pin how prefill grows with the prompt; the long-output rows are decode-dominated
    # (the decode rows are fitted already) and cost 6x more per trial to predict: validated, not fitted
    e2e = [t for t in e2e_targets() if t.id.endswith("_128")]
    targets = [t for t in kernel_targets() if t.check == "within10"] + llama_targets() + e2e
    bounds = [t for t in kernel_targets() if t.check != "within10"]  # ratios and efficiencies: penalties

    def resid(fp16, p):
        handoff.clear_caches()  # every trial spec is a new program; keep memory flat
        s = _apply(spec, fp16, p)
        if progress:
            progress()
        ratios = [t.predict(s) / float(t.published) for t in targets]
        return ([math.log(q) for q in ratios] + [PENALTY * _outside_band(q) for q in ratios]
                + [PENALTY * _violation(t, s) for t in bounds])

    fits = []
    for fp16 in fp16_options:
        res = least_squares(lambda p: resid(fp16, p), _x0(spec), bounds=(LOWER, UPPER), diff_step=0.02, max_nfev=80,
                            ftol=FIT_TOL, xtol=FIT_TOL)
        fits.append((float(res.cost), fp16, res))
    _, fp16, res = min(fits, key=lambda f: f[0])
    fitted = _apply(spec, fp16, [round(float(v), 3) for v in res.x])
    report = {f: getattr(fitted, f) for f in FIT_FIELDS}
    report.update(fp16_macs_per_cycle=fp16, fitted_to=[t.id for t in targets],
                  bounds=[f"{t.id} {t.check}" for t in bounds],
                  residual_pct={t.id: round(100 * (math.exp(r) - 1), 2) for t, r in zip(targets, res.fun)},
                  cost_by_fp16={str(f): round(c, 5) for c, f, _ in fits})
    return fitted, report


def calibrate(spec: DeviceSpec, progress: Callable[[], None] | None = None,
              fp16_options: tuple[float, ...] = FP16_OPTIONS) -> tuple[DeviceSpec, dict]:
    """The joint fit; returns the fitted spec and a report of values, residuals and what they fit. fp16_options:
    the MACs/cycle values tried (each a full fit: `waferllm calibrate` tries every one)."""
    fitted, report = fit_joint(spec, progress, fp16_options)
    return fitted, {"joint": report}
