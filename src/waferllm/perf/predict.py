"""Predictions from shape-only runs of the engine's own programs (no weights needed).

decode: one decode step of a batch (every layer, the hand-overs between regions and wafers, the LM head)
at a context of N tokens; prefill: the prefill program over N input tokens (one layer traced, charged
layer-count times) plus inter-wafer hops and the first token; e2e: prefill then output_len decode steps.
The same functions produced the verified tokens; here they run on jax.ShapeDtypeStruct stand-ins.
"""

from __future__ import annotations

from dataclasses import dataclass

from waferllm import WaferError
from waferllm.engine import handoff
from waferllm.engine.cost import layer_ledger, step_ledger
from waferllm.engine.decode import DecodeProgram
from waferllm.engine.grids import GridArg, resolve_grids
from waferllm.engine.prefill import PrefillProgram
from waferllm.engine.prefill import layer_ledger as prefill_layer_ledger
from waferllm.machine import Ledger
from waferllm.machine.mesh import STRATEGIES
from waferllm.model.config import ModelConfig
from waferllm.model.registry import get_config
from waferllm.perf.autotune import autotuned
from waferllm.perf.programs import decode_program, prefill_program
from waferllm.spec import DeviceSpec, dtype_bytes

PHASES = ("prefill", "decode", "e2e")


class PredictError(WaferError):
    """Impossible prediction arguments."""


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """Predicted figures for one phase (times in seconds at the device clock)."""

    phase: str
    strategy: str
    cycles: float
    time_s: float
    tokens_per_s: float
    paper_tokens_per_s: float | None  # the artifact's definition: one layer's cycles x layer count, nothing else
    grid: str
    prefill_grid: str | None
    batch: int
    breakdown: dict
    peak_core_bytes: int
    peak_where: str
    routes_per_core: int
    kv_capacity_tokens: dict
    wafers: int
    fits: bool
    layers_per_region: int
    utilization: dict
    ttft_s: float | None = None
    tpot_s: float | None = None
    warnings: tuple[str, ...] = ()  # check_args: e.g. a length past the model's context (costed anyway)
    pipeline_stages: int = 0  # decode layer regions a token passes through (engine/placement.py)
    kv_pooled_tokens: int = 0  # the wafers' free SRAM as one pool, in KV tokens (Table 5's accounting; a bound)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def breakdown(led: Ledger, depth: int = 3) -> dict:
    """Cycles by phase label truncated to `depth` parts, split into compute and communication."""
    out: dict[str, dict] = {}
    for k, p in led.phases.items():
        key = "/".join(k.split("/")[:depth])
        d = out.setdefault(key, {"cycles": 0.0, "compute_cycles": 0.0, "comm_cycles": 0.0})
        d["cycles"] += p.cycles
        d["compute_cycles"] += p.compute_cycles
        d["comm_cycles"] += p.comm_cycles
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cycles"]))


def check_args(cfg: ModelConfig, phase: str, **lengths: int) -> list[str]:
    """PredictError for an unknown phase or a length <= 0; returns the warnings (lengths past the model's context).

    A shape-only run costs any length, so a prompt or cache longer than the checkpoint's context is a warning,
    never a refusal (the paper ran Llama2-13B with its 4K limit removed); `generate` and `serve` still refuse.
    """
    if phase not in PHASES:
        raise PredictError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
    for name, v in lengths.items():
        if v <= 0:
            raise PredictError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    longest = {"decode": lengths.get("context", 1), "prefill": lengths.get("input_len", 1)}.get(
        phase, lengths.get("input_len", 1) + lengths.get("output_len", 0))
    if longest <= cfg.max_seq_len:
        return []
    return [f"{longest} tokens is beyond {cfg.name}'s context of {cfg.max_seq_len} tokens; costed anyway (shape-only: "
            "no weights run; `generate` and `serve` refuse it)"]


def prefill_ledger(dec: DecodeProgram, pre: PrefillProgram, n_tokens: int, batch: int = 1,
                   wafers: int | None = None) -> Ledger:
    """TTFT's costs exactly as the engine charges them (handoff.ttft_ledger), once per prompt of the batch."""
    led = Ledger(clock_hz=dec.spec.clock_hz)
    led.merge(handoff.ttft_ledger(dec, pre, n_tokens, wafers), times=batch)
    return led


def predict(cfg: ModelConfig, spec: DeviceSpec, *, phase: str, grid: GridArg = "auto", prefill_grid: GridArg = "auto",
            context: int = 4096, input_len: int = 4096, output_len: int = 128, batch: int = 1,
            dtype: str = "float16", policy: str = "shift", strategy: str = "waferllm") -> Prediction:
    """Shape-only prediction for a model on a device (see the module docstring for the phases).

    grid / prefill_grid: 'RxC', (R, C) or 'auto' = the autotuner (perf/autotune.autotuned)."""
    warnings = check_args(cfg, phase, context=context, input_len=input_len, output_len=output_len, batch=batch)
    tokens = context if phase == "decode" else (input_len + output_len if phase == "e2e" else 1)
    if strategy not in STRATEGIES:
        raise PredictError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    grids = resolve_grids(spec, grid=grid, prefill_grid=None if phase == "decode" else prefill_grid,
                          auto=autotuned(cfg, spec, phase=phase, dtype=dtype, tokens=tokens, input_len=input_len,
                                         batch=batch, policy=policy, strategy=strategy))
    dec = decode_program(cfg, spec, grids.decode, dtype, tokens, policy, strategy)
    plan = dec.plan
    cap = plan.kv_capacity_tokens()
    pre, ttft, tpot = None, None, None
    if phase == "decode":
        led = step_ledger(dec, [context - 1] * batch, 0, [context - 1] * batch)
        t = led.time_s
        tps = batch / t
        paper = artifact_decode_tps(dec, context)
        tpot = t
    else:
        pre = prefill_program(cfg, spec, grids.prefill, dtype, strategy)
        pre_wafers = pre.wafers_needed(input_len, plan.wafers)
        led = prefill_ledger(dec, pre, input_len, batch, pre_wafers)
        ttft = led.time_s / batch
        paper = artifact_prefill_tps(pre, input_len)
        if phase == "prefill":
            t, tps = led.time_s, input_len * batch / led.time_s
        else:
            for i in range(1, output_len):  # decode steps at growing contexts (cached per busiest row)
                n = input_len + i - 1
                led.merge(step_ledger(dec, [n] * batch, 0, [input_len] * batch))
            t = led.time_s
            tps = output_len * batch / t
            tpot = (t - ttft * batch) / max(output_len - 1, 1)
            paper = None  # the artifact measured single phases only
    peak, where = plan.peak_core_bytes, f"decode region ({', '.join(f'{k} {v}' for k, v in plan.breakdown.items())})"
    if led.peak_core_bytes > peak:
        peak, where = led.peak_core_bytes, led.peak_where
    pre_fits, wafers = True, plan.wafers
    if pre is not None:
        w = pre_wafers or plan.wafers
        resident = pre.resident_bytes(w)
        pre_peak = pre.peak_core_bytes(input_len, w)
        pre_fits = pre_wafers is not None
        wafers = max(wafers, w)
        if pre_peak > peak:
            peak, where = pre_peak, f"prefill grid {pre.rows}x{pre.cols} (resident weights {resident} + working tiles)"
    return Prediction(phase=phase, strategy=strategy, cycles=led.cycles, time_s=t, tokens_per_s=tps, paper_tokens_per_s=paper,
                      grid=plan.grid, prefill_grid=f"{pre.rows}x{pre.cols}" if pre else None, batch=batch,
                      breakdown=breakdown(led), peak_core_bytes=peak, peak_where=where,
                      routes_per_core=led.routes_per_core, kv_capacity_tokens=cap, wafers=wafers,
                      fits=wafers == 1 and tokens * batch <= cap[policy] and pre_fits,
                      layers_per_region=plan.layers_per_region, pipeline_stages=plan.layer_regions,
                      kv_pooled_tokens=plan.kv_pooled_tokens,
                      utilization=utilization(cfg, spec, plan, pre, phase, led, tokens, input_len, batch),
                      ttft_s=ttft, tpot_s=tpot, warnings=tuple(warnings))


def utilization(cfg, spec, plan, pre, phase: str, led: Ledger, context: int, input_len: int, batch: int) -> dict:
    """Achieved MACs / peak MACs of the cores in use, and SRAM bytes read / peak SRAM bandwidth.

    Decode reads every weight and cached K/V once per token; in prefill every core reads each operand
    tile that passes it (weights and activations, grid-side times over a MeshGEMM).
    """
    eb = dtype_bytes(plan.dtype)
    w = cfg.n_layers * cfg.layer_matrix_params()
    head = cfg.dim * cfg.vocab_size
    if phase == "decode":
        kv = cfg.n_layers * context * cfg.kv_dim
        macs = batch * (w + head + cfg.n_layers * 2 * context * cfg.q_dim)
        read = (w + head + 2 * batch * kv) * eb
        cores = plan.cores
    else:
        T, side = input_len, max(pre.rows, pre.cols)
        macs = batch * (T * w + cfg.n_layers * T * T * cfg.q_dim)
        act = cfg.n_layers * T * (2 * cfg.dim + cfg.q_dim + 2 * cfg.kv_dim + 2 * cfg.ffn_dim)
        read = batch * side * (w + act) * eb
        cores = pre.rows * pre.cols
    peak_macs = cores * spec.macs_per_cycle(plan.dtype) * led.cycles
    peak_bytes = cores * spec.sram_bytes_per_cycle_per_core * led.cycles
    return {"cores": cores, "mac": macs / peak_macs, "sram_bandwidth": read / peak_bytes}


def artifact_decode_tps(dec: DecodeProgram, context: int) -> float:
    """Decode tokens/s as the paper's artifact measures it: one layer's cycles x layer count."""
    return dec.spec.clock_hz / (layer_ledger(dec, [context - 1], 0, [context - 1]).cycles * dec.cfg.n_layers)


def artifact_prefill_tps(pre: PrefillProgram, input_len: int) -> float:
    """Prefill tokens/s as the artifact measures it: input tokens / (one layer's cycles x layer count)."""
    return input_len * pre.spec.clock_hz / (prefill_layer_ledger(pre, input_len).cycles * pre.cfg.n_layers)


def paper_decode_tps(spec: DeviceSpec, model: str, side: int, context: int = 4096, dtype: str = "float16") -> float:
    """artifact_decode_tps for a preset model on a side x side decode grid."""
    return artifact_decode_tps(decode_program(get_config(model), spec, (side, side), dtype, context), context)


def paper_prefill_tps(spec: DeviceSpec, model: str, side: int, input_len: int = 4096, dtype: str = "float16") -> float:
    """artifact_prefill_tps for a preset model on a side x side prefill grid."""
    pre = prefill_program(get_config(model), spec, (side, side), dtype)
    return artifact_prefill_tps(pre, input_len)
