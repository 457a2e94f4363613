"""Predictions from shape-only runs of the engine's own programs (no weights needed).

decode: one decode step (every layer, the hand-overs between regions, the LM head) at a context of N
tokens; prefill: the prefill program over N input tokens plus the first token. The same functions
produced the verified tokens; here they run on jax.ShapeDtypeStruct stand-ins.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from waferllm import WaferError
from waferllm.engine.cost import step_ledger
from waferllm.engine.decode import DecodeProgram
from waferllm.engine.placement import auto_grid, plan_decode
from waferllm.engine.prefill import PrefillProgram, weight_shapes
from waferllm.engine.tiles import DTYPES
from waferllm.machine import Ledger, Mesh, parse_grid
from waferllm.model.config import ModelConfig
from waferllm.spec import DeviceSpec


class PredictError(WaferError):
    """Impossible prediction arguments."""


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """Predicted figures for one phase (times in seconds at the device clock)."""

    phase: str
    cycles: float
    time_s: float
    tokens_per_s: float
    grid: str
    prefill_grid: str | None
    breakdown: dict
    peak_core_bytes: int
    routes_per_core: int
    kv_capacity_tokens: dict
    wafers: int
    fits: bool
    layers_per_region: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _breakdown(led: Ledger, depth: int = 3) -> dict:
    """Cycles by phase label truncated to `depth` parts, split into compute and communication."""
    out: dict[str, dict] = {}
    for k, p in led.phases.items():
        key = "/".join(k.split("/")[:depth])
        d = out.setdefault(key, {"cycles": 0.0, "compute_cycles": 0.0, "comm_cycles": 0.0})
        d["cycles"] += p.cycles
        d["compute_cycles"] += p.compute_cycles
        d["comm_cycles"] += p.comm_cycles
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cycles"]))


def predict(cfg: ModelConfig, spec: DeviceSpec, *, phase: str, grid: str = "auto", prefill_grid: str = "auto",
            context: int = 1, input_len: int = 128, batch: int = 1, dtype: str = "float16",
            policy: str = "shift") -> Prediction:
    """Shape-only prediction for a model on a device."""
    if phase not in ("decode", "prefill"):
        raise PredictError(f"unknown phase {phase!r}; known: prefill, decode")
    for name, v in (("context", context), ("input-len", input_len), ("batch", batch)):
        if v <= 0:
            raise PredictError(f"--{name} must be > 0, got {v}")
    if context > cfg.max_seq_len or input_len > cfg.max_seq_len:
        raise PredictError(f"length beyond the model's context of {cfg.max_seq_len} tokens")
    rc = auto_grid(cfg, spec, dtype, context) if grid == "auto" else parse_grid(grid)
    Mesh(spec, *rc)
    plan = plan_decode(cfg, spec, rc, dtype, min_tokens=context if phase == "decode" else 1)
    prog = DecodeProgram(cfg=cfg, plan=plan, spec=spec, policy=policy)
    cap = plan.kv_capacity_tokens()
    if phase == "decode":
        led = step_ledger(prog, context - 1, 0)
        t = led.time_s
        tps = batch / t
        pg = None
    else:
        pr = (min(rc),) * 2 if prefill_grid == "auto" else parse_grid(prefill_grid)  # as the engine's auto
        Mesh(spec, *pr)
        pre = PrefillProgram(cfg=cfg, spec=spec, rows=pr[0], cols=pr[1], dtype=dtype)
        led = Ledger(clock_hz=spec.clock_hz)
        pre.run(pre.mesh(led), weight_shapes(cfg, DTYPES[dtype]), jax.ShapeDtypeStruct((input_len, cfg.dim),
                                                                                       np.float32))
        t = led.time_s
        tps = input_len * batch / t
        pg = f"{pr[0]}x{pr[1]}"
    return Prediction(phase=phase, cycles=led.cycles, time_s=t, tokens_per_s=tps, grid=plan.grid, prefill_grid=pg,
                      breakdown=_breakdown(led), peak_core_bytes=max(plan.peak_core_bytes, led.peak_core_bytes),
                      routes_per_core=led.routes_per_core, kv_capacity_tokens=cap, wafers=plan.wafers,
                      fits=plan.wafers == 1 and context <= cap[policy], layers_per_region=plan.layers_per_region)
