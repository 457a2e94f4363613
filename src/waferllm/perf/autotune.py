"""The offline autotuner (paper section 7.1): sweep candidate grids, keep the fastest plan that fits.

Decode and prefill want different grids: decode slows down on big grids (allreduce latency grows while
per-core work shrinks), prefill speeds up until per-step overheads win. Candidates are square grids
(the engine's programs are costed on any R x C, but the paper's autotuner, and ours, sweeps squares).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from waferllm import WaferError
from waferllm.engine.cost import step_ledger
from waferllm.engine.grids import AutoGrids, Grid, resolve_grids
from waferllm.engine.handoff import ttft_ledger
from waferllm.engine.placement import PlanError, auto_grid, smallest_fit
from waferllm.machine import GridError
from waferllm.model.config import ModelConfig
from waferllm.perf.programs import decode_program, prefill_program
from waferllm.spec import DeviceSpec

STEP = 60  # candidate sides: multiples of 60 cores (the paper's grids 240..720 are all on it)


def candidate_sides(spec: DeviceSpec, lo: int = 60) -> list[int]:
    top = min(spec.width_cores, spec.height_cores)
    return list(range(lo, top + 1, STEP))


@dataclass(frozen=True, kw_only=True)
class Point:
    """One grid of a sweep: its predicted speed, or why it cannot run."""

    side: int
    phase: str
    tokens_per_s: float | None
    wafers: int | None
    reason: str = ""


def decode_point(cfg: ModelConfig, spec: DeviceSpec, side: int, dtype: str, context: int, batch: int = 1,
                 policy: str = "shift", strategy: str = "waferllm") -> Point:
    try:
        dec = decode_program(cfg, spec, (side, side), dtype, context * batch, policy, strategy)
    except (PlanError, GridError) as e:
        return Point(side=side, phase="decode", tokens_per_s=None, wafers=None, reason=str(e))
    t = step_ledger(dec, [context - 1] * batch, 0, [context - 1] * batch).time_s
    if not _usable(t):
        return Point(side=side, phase="decode", tokens_per_s=None, wafers=None, reason=_bad_time(side, t))
    return Point(side=side, phase="decode", tokens_per_s=batch / t, wafers=dec.plan.wafers)


def _usable(t: float) -> bool:
    """A step time a speed can be made of (a device with absurd figures can give 0, inf or NaN)."""
    return math.isfinite(t) and t > 0


def _bad_time(side: int, t: float) -> str:
    return f"grid {side}x{side}: the cost model gave a step time of {t!r} s; check the device's figures"


def prefill_point(cfg: ModelConfig, spec: DeviceSpec, side: int, dtype: str, input_len: int,
                  decode_side: int | None = None, strategy: str = "waferllm") -> Point:
    """Prefill on side x side (the decode plan, which sets the wafer count, on decode_side or the smallest fit)."""
    try:
        grids = resolve_grids(spec, grid=(decode_side,) * 2 if decode_side else "auto", prefill_grid=(side, side),
                              auto=smallest_fit(cfg, spec, dtype, input_len))
        dec = decode_program(cfg, spec, grids.decode, dtype, input_len)
        pre = prefill_program(cfg, spec, grids.prefill, dtype, strategy)
    except (PlanError, GridError) as e:
        return Point(side=side, phase="prefill", tokens_per_s=None, wafers=None, reason=str(e))
    wafers = pre.wafers_needed(input_len, dec.plan.wafers)
    if wafers is None:
        return Point(side=side, phase="prefill", tokens_per_s=None, wafers=None,
                     reason=f"prefill on {side}x{side}: one layer's weights and working tiles need "
                            f"{pre.peak_core_bytes(input_len, 64)} bytes per core, {spec.sram_bytes_per_core} available")
    led = ttft_ledger(dec, pre, input_len, wafers)
    if not _usable(led.time_s):
        return Point(side=side, phase="prefill", tokens_per_s=None, wafers=None,
                     reason=_bad_time(side, led.time_s))
    return Point(side=side, phase="prefill", tokens_per_s=input_len / led.time_s, wafers=wafers)


def best(points: Sequence[Point]) -> Point:
    """The fastest point among those on the fewest wafers (fits one wafer whenever any grid does)."""
    ok = [p for p in points if p.tokens_per_s]
    if not ok:
        raise WaferError("no candidate grid fits: " + (points[-1].reason if points else "no candidates"))
    fewest = min(p.wafers for p in ok)
    return max((p for p in ok if p.wafers == fewest), key=lambda p: p.tokens_per_s)


def sweep(fn: Callable[[int], Point], sides: Sequence[int], progress: Callable[[], None] | None = None) -> list[Point]:
    out = []
    for s in sides:
        out.append(fn(s))
        if progress:
            progress()
    return out


def tune_decode(cfg, spec, dtype: str, context: int, batch: int = 1, policy: str = "shift",
                strategy: str = "waferllm") -> Point:
    return best(sweep(lambda s: decode_point(cfg, spec, s, dtype, context, batch, policy, strategy),
                      candidate_sides(spec)))


def tune_prefill(cfg, spec, dtype: str, input_len: int, decode_side: int | None = None,
                 strategy: str = "waferllm") -> Point:
    return best(sweep(lambda s: prefill_point(cfg, spec, s, dtype, input_len, decode_side, strategy),
                      candidate_sides(spec)))


def autotuned(cfg: ModelConfig, spec: DeviceSpec, *, phase: str, dtype: str, tokens: int, input_len: int,
              batch: int = 1, policy: str = "shift", strategy: str = "waferllm") -> AutoGrids:
    """Predictions' `auto` (engine/grids.resolve_grids): the autotuner, the fastest grid on the fewest wafers.

    decode: tune_decode at `tokens` of context (for phase 'prefill' the decode grid only sets the wafer
    count: the smallest square that fits, placement.auto_grid); prefill: tune_prefill over `input_len`
    tokens, on the decode grid's row count when the decode grid is in use (phase 'e2e').
    """
    def decode() -> Grid:
        if phase == "prefill":
            return auto_grid(cfg, spec, dtype, tokens)
        side = tune_decode(cfg, spec, dtype, tokens, batch, policy, strategy).side
        return side, side

    def prefill(decode_rc: Grid) -> Grid:
        side = tune_prefill(cfg, spec, dtype, input_len, decode_rc[0] if phase == "e2e" else None, strategy).side
        return side, side

    return AutoGrids(name="autotuner", decode=decode, prefill=prefill)
