"""The decode placement planner: grid per layer, the layer stack over the wafer, LM head, KV capacity, memory checks.

Every layer runs on an R x C grid of cores (a region). Regions are not whole squares tiled on the fabric: the
wafer, cut into bands as wide as a region (C columns, or R rows) joined end to end into a ring, forms a tape,
and the regions lie along it one stride apart (pipeline order: the layer regions, `layers_per_stage` layers
each, then the LM-head regions, which spread the vocabulary along X). When the regions outnumber what the tape
holds side by side they overlap: a core then stores the tiles of every region over it, so the layer stack,
the LM head and the KV cache together span the wafer(s), as in the paper's whole-wafer accounting. The
busiest core (the most regions over it) sets the KV slots per row; docs/decode-layout.md has the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from waferllm import WaferError
from waferllm.engine.grids import AutoGrids, Grid, GridArg, check_grid
from waferllm.engine.heads import HeadLayout, head_layout
from waferllm.model.config import ModelConfig
from waferllm.spec import DeviceSpec
from waferllm.spec.dtypes import dtype_bytes

ACC_BYTES = 4  # activations and partial sums are fp32 on the core
LM_EXTRA = 16  # LM-head region counts tried beyond the fewest that fit (thinner vocabulary tiles, more regions)
MAX_WAFERS = 4096  # the planner gives up past this many wafers


class PlanError(WaferError):
    """The model does not fit the device with the asked-for grid."""


@dataclass(frozen=True, kw_only=True, eq=False)
class DecodePlan:
    """Where every tensor of the decode lives; bytes are per core (breakdown: the busiest core)."""

    model: str
    device: str
    dtype: str
    rows: int
    cols: int
    heads: HeadLayout
    kb: int  # model dims per core row (D / R)
    fb: int  # FFN dims per core column (F / C)
    vb: int  # vocabulary entries per LM-head column
    layers_per_region: int  # the most layers stacked on one core (overlapping regions x layers_per_stage)
    layer_regions: int  # pipeline stages: layer regions along the tape
    lm_regions: int
    regions_per_wafer: int  # regions (layer and LM) laid along one wafer's tape
    wafers: int
    kv_tokens_per_row: int  # KV slots each core row has per layer
    layer_weight_bytes: int  # one layer's weights on one core
    kv_bytes_per_token: int  # per core, per layer, per token slot
    buffer_bytes: int
    lm_core_bytes: int
    layers_per_stage: int = 1  # layers of one region (consecutive layers, no hand-over between them)
    tape_rows: int = 0  # length of the tape over the plan's wafers, in cores along it
    tape_width: int = 0  # cores across the tape: C (bands of columns) or R (bands of rows)
    tape_along: str = "y"  # the bands run along y (bands of C columns) or x (bands of R rows)
    stride_rows: int = 0  # cores along the tape between consecutive regions: the hand-over distance in hops
    overlap: int = 1  # regions covering the busiest core
    kv_pooled_tokens: int = 0  # tokens the wafers' free SRAM would hold as one pool (Table 5's accounting)
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

    @property
    def handover_hops(self) -> int:
        """Hops an activation travels between consecutive regions (one stride along the tape)."""
        return self.stride_rows

    @property
    def cores(self) -> int:
        """Cores holding tiles: the tape's cores, or fewer when the regions do not cover it."""
        return min(self.tape_rows * self.tape_width, (self.layer_regions + self.lm_regions) * self.rows * self.cols)


def layer_weight_cols(cfg: ModelConfig, rows: int, heads: HeadLayout, fb: int) -> np.ndarray:
    """[C] elements of one layer's weights on a core of each column: its own q/K/V columns (n_rep + 1 per K dim,
    1 per V dim), Wo rows (n_rep per V dim), bias, FFN tiles and norms; tiles padded to kb rows and fb columns."""
    kb = math.ceil(cfg.dim / rows)
    n_k, n_v = heads.col_dims
    qkv = (heads.n_rep + 1) * n_k + n_v  # output columns of the QKV tile
    attn = kb * qkv + (qkv if cfg.qkv_bias else 0) + heads.n_rep * n_v * kb
    return attn + kb * 2 * fb + fb * kb + 2 * kb


def layer_weight_elems(cfg: ModelConfig, rows: int, heads: HeadLayout, fb: int) -> int:
    """Elements of one layer's weights on the busiest core (layer_weight_cols' largest)."""
    return int(np.max(layer_weight_cols(cfg, rows, heads, fb)))


def pooled_tokens(cfg: ModelConfig, st: _Stack, s: _Sizes, rows: int, heads: HeadLayout, fb: int, eb: int,
                  wafer_cores: int) -> int:
    """Tokens the free SRAM of the plan's wafers (wafer_cores each; weights, LM-head tiles and buffers taken
    out) would hold if the cache could use every free byte: the paper's whole-wafer accounting of Table 5, with
    this plan's tiles. A token costs each layer its K and V dims on one core row (no padding) and each core
    holding layers one score element per row slot. The busiest core, not this pool, bounds what the shift
    cache really holds (kv_capacity_tokens)."""
    cover = np.zeros((st.wafers, st.tape), np.int64), np.zeros((st.wafers, st.tape), np.int64)  # layers, LM tiles
    sizes = [min(st.per_stage, cfg.n_layers - i) for i in range(0, cfg.n_layers, st.per_stage)] + [0] * st.lm
    here = math.ceil(len(sizes) / st.wafers)
    for g, n in enumerate(sizes):
        w, j = divmod(g, here)
        at = (j * st.stride + np.arange(st.span)) % st.tape
        np.add.at(cover[0 if n else 1][w], at, n if n else 1)
    layers, lm = cover
    kv_cores = st.width * int(np.sum(layers > 0))
    weights = cfg.n_layers * rows * eb * int(np.sum(layer_weight_cols(cfg, rows, heads, fb)))  # columns differ
    free = st.wafers * wafer_cores * s.sram - weights - st.width * int(np.sum(lm)) * st.lm_bytes - kv_cores * s.fixed
    per_token = cfg.n_layers * eb * int(np.sum(sum(heads.col_dims))) + kv_cores * s.score / rows
    return int(free // per_token)


def score_bytes(heads: HeadLayout, eb: int) -> int:
    """Score-tile bytes per KV slot of a row: one query head's scores at a time in the run's dtype (eb bytes),
    twice (the authors' decode.csl holds `score` and `score_tmp` in f16, one element per slot); the query
    heads of a KV head take turns in the same tile."""
    return 2 * eb * heads.slots


def buffer_bytes(rows: int, kb: int, qkv: int, fb: int, heads: HeadLayout, tokens: int, eb: int) -> int:
    """Activations and send/receive buffers (fp32), and the score tiles of `tokens` KV slots per row."""
    vec = 3 * kb + 2 * qkv + 2 * max(2 * fb, qkv, kb) + 2 * heads.cb * heads.n_rep
    return ACC_BYTES * vec + tokens * score_bytes(heads, eb)


@dataclass(frozen=True, kw_only=True)
class _Sizes:
    """Bytes per core: SRAM, one layer's weights, one KV slot of one layer, buffers at 0 slots and per slot."""

    sram: int
    weights: int
    kv: int
    fixed: int
    score: int


@dataclass(frozen=True, kw_only=True)
class _Stack:
    """One way to lay the regions along the tape, and the KV slots per row it leaves on its busiest core."""

    wafers: int
    tape: int  # length of one wafer's tape (cores along it)
    span: int  # cores of a region along the tape (R for bands of columns, C for bands of rows)
    width: int  # cores across the tape
    along: str  # the bands run along "y" (C columns wide) or "x" (R rows tall)
    per_stage: int  # layers per layer region
    stages: int  # layer regions
    lm: int  # LM-head regions
    vb: int
    lm_bytes: int  # one LM-head tile (bytes per core)
    stride: int  # cores along the tape between consecutive regions
    overlap: int  # regions over the busiest core
    tokens: int  # KV slots per row per layer
    busiest: tuple[int, int]  # (layers, LM-head tiles) on the core that bounds `tokens`
    deepest: int  # the most layers on one core

    def key(self) -> tuple[int, int, int]:
        """Most KV slots first, then fewer pipeline stages, then thicker LM-head tiles (fewer regions)."""
        return self.tokens, self.per_stage, -self.lm


def _tokens(s: _Sizes, layers: int, lm_bytes: int) -> int | None:
    """KV slots per row left on a core holding `layers` layers and `lm_bytes` of LM head; None: they do not fit;
    s.sram when the core holds no layer (no KV cache there to bound)."""
    if layers == 0:
        return s.sram if lm_bytes <= s.sram else None
    free = s.sram - s.fixed - layers * s.weights - lm_bytes
    return None if free < 0 else free // (layers * s.kv + s.score)


def _lay(cfg: ModelConfig, s: _Sizes, band: tuple[int, int, int, str], wafers: int, g: int, lm: int,
         lm_tile: tuple[int, int]) -> _Stack | None:
    """Regions of g layers, then lm LM-head regions, shared evenly by the wafers and one stride apart on each
    wafer's ring (band: tape length, region span along it, width, direction; no region straddles two wafers): a
    core is under at most ceil(span / stride) consecutive regions; the worst such window bounds the KV slots
    (None: something does not fit)."""
    tape, span, width, along = band
    stages = math.ceil(cfg.n_layers / g)
    here = math.ceil((stages + lm) / wafers)  # regions on the fullest wafer
    stride = max(1, tape // here)
    h = min(here, math.ceil(span / stride))
    # the LM-head regions are consecutive: a window holds j of them and h - j layer regions
    windows = [(min(cfg.n_layers, (h - j) * g), j) for j in range(max(0, h - stages), min(h, lm) + 1)]
    best = None
    for layers, j in windows:
        t = _tokens(s, layers, j * lm_tile[1])
        if t is None:
            return None
        if best is None or t < best[0]:
            best = (t, (layers, j))
    return _Stack(wafers=wafers, tape=tape, span=span, width=width, along=along, per_stage=g, stages=stages, lm=lm,
                  vb=lm_tile[0], lm_bytes=lm_tile[1],
                  stride=stride, overlap=h, tokens=best[0], busiest=best[1], deepest=max(n for n, _ in windows))


def _bands(spec: DeviceSpec, rows: int, cols: int) -> list[tuple[int, int, int, str]]:
    """One wafer's tapes: (length, region span along it, width, direction) for bands of C columns running along
    y and for bands of R rows running along x; the cores beyond the last whole band are left out."""
    h, w = spec.height_cores, spec.width_cores
    return [((w // cols) * h, rows, cols, "y"), ((h // rows) * w, cols, rows, "x")]


def _stage_sizes(n_layers: int, span: int, tape: int, wafers: int) -> list[int]:
    """Layers per region worth trying: up to one more than the average stack depth, and every count that lets
    the regions lie side by side without overlap."""
    depth = math.ceil(n_layers * span / (tape * wafers))
    fits = {math.ceil(n_layers / k) for k in range(1, max(1, wafers * (tape // span)) + 1)}
    return sorted(set(range(1, min(n_layers, depth + 1) + 1)) | fits)


def _stack(cfg: ModelConfig, spec: DeviceSpec, s: _Sizes, rows: int, cols: int, eb: int, need: int) -> _Stack:
    """The fewest wafers whose tape holds the model with `need` KV slots per row, laid out for the most slots."""
    kb = math.ceil(cfg.dim / rows)
    lm0 = _lm_head(cfg, spec, rows, cols, eb, kb)[0]
    tiles = {lm: _lm_tile(cfg, cols, lm, eb, kb) for lm in range(lm0, lm0 + LM_EXTRA + 1)}
    for wafers in range(1, MAX_WAFERS + 1):
        best = None
        for band in _bands(spec, rows, cols):
            tape, span = band[:2]
            floor = _tokens(s, math.ceil(cfg.n_layers * span / (tape * wafers)), 0)  # no spread beats this
            if floor is None or floor < need:
                continue
            for g in _stage_sizes(cfg.n_layers, span, tape, wafers):
                for lm, tile in tiles.items():
                    if lm > lm0 and lm * span > tape * wafers:
                        break
                    st = _lay(cfg, s, band, wafers, g, lm, tile)
                    if st is not None and (best is None or st.key() > best.key()):
                        best = st
        if best is not None and best.tokens >= need:
            return best
    raise PlanError(f"{cfg.name or 'the model'} does not fit {MAX_WAFERS} wafers of {spec.name} on a "
                    f"{rows}x{cols} grid")


def plan_decode(cfg: ModelConfig, spec: DeviceSpec, grid: GridArg, dtype: str,
                *, min_tokens: int = 1) -> DecodePlan:
    """Place every layer on R x C regions along the tape (an explicit grid: engine/grids.resolve_grids resolves
    `auto`); GridError if the grid is not on the device, PlanError with the numbers when the model cannot fit."""
    rows, cols = check_grid(spec, grid)
    eb, sram = dtype_bytes(dtype), spec.sram_bytes_per_core
    heads = head_layout(cols, cfg.head_dim, cfg.n_kv_heads, cfg.group_size)
    kb, fb = math.ceil(cfg.dim / rows), math.ceil(cfg.ffn_dim / cols)
    qkv = heads.cb * (heads.n_rep + 2)
    w_layer = eb * layer_weight_elems(cfg, rows, heads, fb)
    s = _Sizes(sram=sram, weights=w_layer, kv=heads.kv_dims * eb, fixed=buffer_bytes(rows, kb, qkv, fb, heads, 0, eb),
               score=score_bytes(heads, eb))
    per_row_tokens = math.ceil(min_tokens / rows)
    need_one = w_layer + s.fixed + per_row_tokens * (s.kv + s.score)
    if need_one > sram:
        raise PlanError(f"grid {rows}x{cols} is too small for {cfg.name or 'the model'} on {spec.name}: one layer "
                        f"needs {need_one} bytes per core ({w_layer} weights, {per_row_tokens} KV tokens per row), "
                        f"{sram} available; use a larger --grid")
    st = _stack(cfg, spec, s, rows, cols, eb, per_row_tokens)
    layers, lm_tiles = st.busiest
    breakdown = {"weights": layers * w_layer, "kv_cache": layers * st.tokens * s.kv,
                 "buffers": buffer_bytes(rows, kb, qkv, fb, heads, st.tokens, eb)}
    if lm_tiles:
        breakdown["lm_head"] = lm_tiles * st.lm_bytes
    pooled = pooled_tokens(cfg, st, s, rows, heads, fb, eb, spec.height_cores * spec.width_cores)
    return DecodePlan(model=cfg.name, device=spec.name, dtype=dtype, rows=rows, cols=cols, heads=heads, kb=kb,
                      fb=fb, vb=st.vb, layers_per_region=st.deepest, layer_regions=st.stages, lm_regions=st.lm,
                      regions_per_wafer=math.ceil((st.stages + st.lm) / st.wafers), wafers=st.wafers,
                      kv_tokens_per_row=st.tokens, layer_weight_bytes=w_layer, kv_bytes_per_token=s.kv,
                      buffer_bytes=breakdown["buffers"], lm_core_bytes=st.lm_bytes, layers_per_stage=st.per_stage,
                      tape_rows=st.tape * st.wafers, tape_width=st.width, tape_along=st.along, stride_rows=st.stride,
                      overlap=st.overlap, kv_pooled_tokens=pooled, breakdown=breakdown)


def max_layers_per_core(cfg: ModelConfig, spec: DeviceSpec, grid: GridArg, dtype: str, *, min_tokens: int = 1) -> int:
    """The most layers one core of an R x C grid holds with min_tokens of KV cache (at most the model's layers);
    PlanError when not even one fits. ceil(layers / this) is the fewest pipeline stages the SRAM allows."""
    plan = plan_decode(cfg, spec, grid, dtype, min_tokens=min_tokens)  # raises when one layer does not fit
    h, t = plan.heads, math.ceil(min_tokens / plan.rows)
    eb = dtype_bytes(dtype)
    fixed = buffer_bytes(plan.rows, plan.kb, plan.qkv_width, plan.fb, h, t, eb)
    per_layer = plan.layer_weight_bytes + t * plan.kv_bytes_per_token
    return min(cfg.n_layers, (spec.sram_bytes_per_core - fixed) // per_layer)


def region_pieces(plan: DecodePlan, spec: DeviceSpec, g: int) -> list[tuple[int, int, int, int, int]]:
    """Where region g (pipeline order: layer regions, then LM-head regions) lies on the fabric: (wafer, y0, x0,
    height, width) rectangles, one per band it runs through (the bands form a serpentine: odd ones run back)."""
    wafer, j = divmod(g, plan.regions_per_wafer)
    tape, along = plan.tape_rows // plan.wafers, plan.tape_along
    band = spec.height_cores if along == "y" else spec.width_cores
    t, left, out = (j * plan.stride_rows) % tape, plan.rows * plan.cols // plan.tape_width, []
    while left > 0:
        b, pos = divmod(t, band)
        n = min(left, band - pos)
        lo = pos if b % 2 == 0 else band - pos - n
        w = plan.tape_width
        out.append((wafer, lo, b * w, n, w) if along == "y" else (wafer, b * w, lo, w, n))
        left, t = left - n, (t + n) % tape
    return out


def _lm_tile(cfg: ModelConfig, cols: int, n: int, eb: int, kb: int) -> tuple[int, int]:
    """(vocab per column, bytes per core) of the LM head (+ embedding when untied) over n regions."""
    copies = 1 if cfg.tie_embeddings else 2
    vb = math.ceil(cfg.vocab_size / (cols * n))
    return vb, copies * kb * vb * eb + kb * eb + ACC_BYTES * (3 * kb + 4 * vb)


def _lm_head(cfg: ModelConfig, spec: DeviceSpec, rows: int, cols: int, eb: int, kb: int) -> tuple[int, int, int]:
    """(regions, vocab per column, bytes per core) for the fewest LM-head regions whose tile fits a core."""
    for n in range(1, 4097):
        vb, need = _lm_tile(cfg, cols, n, eb, kb)
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
