"""The decode placement planner: grid per layer, layers per region, LM head, KV capacity, memory checks.

One decode region is an R x C grid holding `layers_per_region` layers (the paper's answer to 48 KB
cores); regions tile the wafer row-major. The LM head (and the embedding, which shares its tiles when
tied) spreads the vocabulary over `lm_regions` further regions side by side along X.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from waferllm import WaferError
from waferllm.engine.grids import AutoGrids, Grid, GridArg, check_grid
from waferllm.engine.heads import HeadLayout, head_layout
from waferllm.model.config import ModelConfig
from waferllm.spec import DeviceSpec
from waferllm.spec.dtypes import dtype_bytes

ACC_BYTES = 4  # activations and partial sums are fp32 on the core


class PlanError(WaferError):
    """The model does not fit the device with the asked-for grid."""


@dataclass(frozen=True, kw_only=True, eq=False)
class DecodePlan:
    """Where every tensor of the decode lives; bytes are per core."""

    model: str
    device: str
    dtype: str
    rows: int
    cols: int
    heads: HeadLayout
    kb: int  # model dims per core row (D / R)
    fb: int  # FFN dims per core column (F / C)
    vb: int  # vocabulary entries per LM-head column
    layers_per_region: int
    layer_regions: int
    lm_regions: int
    regions_per_wafer: int
    wafers: int
    kv_tokens_per_row: int  # KV slots each core row has per layer
    layer_weight_bytes: int  # one layer's weights on one core
    kv_bytes_per_token: int  # per core, per layer, per token slot
    buffer_bytes: int
    lm_core_bytes: int
    breakdown: dict = field(default_factory=dict)

    @property
    def grid(self) -> str:
        return f"{self.rows}x{self.cols}"

    @property
    def peak_core_bytes(self) -> int:
        return max(sum(self.breakdown.values()), self.lm_core_bytes)

    def kv_capacity_tokens(self) -> dict[str, int]:
        """Tokens the cache holds: shift spreads them over all rows; concat grows only the tail row."""
        return {"shift": self.rows * self.kv_tokens_per_row, "concat": self.kv_tokens_per_row}

    @property
    def qkv_width(self) -> int:
        return self.heads.cb * (self.heads.n_rep + 2)

    @property
    def lm_cols(self) -> int:
        return self.cols * self.lm_regions


def layer_weight_elems(cfg: ModelConfig, rows: int, heads: HeadLayout, fb: int) -> int:
    """Elements of one layer's weights on one core (padded tiles)."""
    kb = math.ceil(cfg.dim / rows)
    qkv = heads.cb * (heads.n_rep + 2)
    bias = qkv if cfg.qkv_bias else 0
    return kb * qkv + bias + heads.cb * heads.n_rep * kb + kb * 2 * fb + fb * kb + 2 * kb


def buffer_bytes(rows: int, kb: int, qkv: int, fb: int, heads: HeadLayout, tokens: int) -> int:
    """Activations, send/receive buffers and the per-row score tile (fp32)."""
    vec = 3 * kb + 2 * qkv + 2 * max(2 * fb, qkv, kb) + 2 * heads.cb * heads.n_rep
    scores = 2 * tokens * heads.slots * heads.n_rep
    return ACC_BYTES * (vec + scores)


def plan_decode(cfg: ModelConfig, spec: DeviceSpec, grid: GridArg, dtype: str,
                *, min_tokens: int = 1) -> DecodePlan:
    """Place every layer on R x C regions (an explicit grid: engine/grids.resolve_grids resolves `auto`);
    GridError if the grid is not on the device, PlanError with the numbers when the model cannot fit."""
    rows, cols = check_grid(spec, grid)
    eb, sram = dtype_bytes(dtype), spec.sram_bytes_per_core
    heads = head_layout(cols, cfg.head_dim, cfg.n_kv_heads, cfg.group_size)
    kb, fb = math.ceil(cfg.dim / rows), math.ceil(cfg.ffn_dim / cols)
    qkv = heads.cb * (heads.n_rep + 2)
    w_layer = eb * layer_weight_elems(cfg, rows, heads, fb)
    kv_tok = 2 * heads.cb * eb
    per_row_tokens = math.ceil(min_tokens / rows)
    fixed_buf = buffer_bytes(rows, kb, qkv, fb, heads, 0)
    regions = (spec.height_cores // rows) * (spec.width_cores // cols)
    need_one = w_layer + fixed_buf + per_row_tokens * (kv_tok + 2 * ACC_BYTES * heads.slots * heads.n_rep)
    if need_one > sram:
        raise PlanError(f"grid {rows}x{cols} is too small for {cfg.name or 'the model'} on {spec.name}: one layer "
                        f"needs {need_one} bytes per core ({w_layer} weights, {per_row_tokens} KV tokens per row), "
                        f"{sram} available; use a larger --grid")
    lm_regions, vb, lm_bytes = _lm_head(cfg, spec, rows, cols, eb, kb)
    # the fewest layers per region that still leaves room for the KV cache
    max_per_region = (sram - fixed_buf - per_row_tokens * 2 * ACC_BYTES * heads.slots * heads.n_rep) // \
        (w_layer + per_row_tokens * kv_tok)
    per_region = max(1, math.ceil(cfg.n_layers / max(1, regions - lm_regions)))
    if per_region > max_per_region:
        per_region = max(1, min(cfg.n_layers, max_per_region))
    layer_regions = math.ceil(cfg.n_layers / per_region)
    wafers = math.ceil((layer_regions + lm_regions) / regions)
    free = sram - fixed_buf - per_region * w_layer
    tokens = int(free // (per_region * kv_tok + 2 * ACC_BYTES * heads.slots * heads.n_rep))
    breakdown = {"weights": per_region * w_layer, "kv_cache": per_region * tokens * kv_tok,
                 "buffers": buffer_bytes(rows, kb, qkv, fb, heads, tokens)}
    return DecodePlan(model=cfg.name, device=spec.name, dtype=dtype, rows=rows, cols=cols, heads=heads, kb=kb,
                      fb=fb, vb=vb, layers_per_region=per_region, layer_regions=layer_regions,
                      lm_regions=lm_regions, regions_per_wafer=regions, wafers=wafers, kv_tokens_per_row=tokens,
                      layer_weight_bytes=w_layer, kv_bytes_per_token=kv_tok, buffer_bytes=breakdown["buffers"],
                      lm_core_bytes=lm_bytes, breakdown=breakdown)


def _lm_head(cfg: ModelConfig, spec: DeviceSpec, rows: int, cols: int, eb: int, kb: int) -> tuple[int, int, int]:
    """(regions, vocab per column, bytes per core) for the LM head (+ embedding when untied)."""
    copies = 1 if cfg.tie_embeddings else 2
    for n in range(1, 4097):
        vb = math.ceil(cfg.vocab_size / (cols * n))
        need = copies * kb * vb * eb + kb * eb + ACC_BYTES * (3 * kb + 4 * vb)
        if need <= spec.sram_bytes_per_core:
            return n, vb, need
    raise PlanError(f"the LM head of {cfg.name} does not fit {rows}x{cols} regions on {spec.name}")


def auto_grid(cfg: ModelConfig, spec: DeviceSpec, dtype: str, min_tokens: int = 1) -> Grid:
    """The smallest square grid on which one layer fits with room for min_tokens of KV cache."""
    for side in range(2, min(spec.height_cores, spec.width_cores) + 1):
        try:
            plan = plan_decode(cfg, spec, (side, side), dtype, min_tokens=min_tokens)
        except PlanError:
            continue
        # one layer fitting is not enough: with layers stacked per region the cache must still hold the request
        if plan.kv_capacity_tokens()["shift"] >= min_tokens:
            return side, side
    raise PlanError(f"{cfg.name} does not fit {spec.name} at any square grid")


def smallest_fit(cfg: ModelConfig, spec: DeviceSpec, dtype: str, tokens: int) -> AutoGrids:
    """The engine's `auto`: decode = the smallest square grid holding a layer and the KV cache for `tokens`
    (auto_grid); prefill = the square of the decode grid's shorter side."""
    return AutoGrids(name="smallest fit", decode=lambda: auto_grid(cfg, spec, dtype, tokens),
                     prefill=lambda rc: (min(rc),) * 2)
