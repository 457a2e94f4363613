"""The decode placement: regions along a tape over every usable core, the busiest core sets the KV capacity."""

from __future__ import annotations

import math

import pytest

from waferllm.engine.placement import PlanError, buffer_bytes, plan_decode, score_bytes
from waferllm.model import get_config


def _core_bytes(plan, tokens: int) -> list[int]:
    """Bytes on every tape row's cores of one wafer, laid out by brute force: regions one stride apart on a ring
    (the layer regions, then the LM-head regions), each core holding the tiles of every region over it."""
    p, cfg = plan, get_config(plan.model)
    tape, span = p.tape_rows // p.wafers, p.rows * p.cols // p.tape_width
    regions = [min(p.layers_per_stage, cfg.n_layers - i) for i in range(0, cfg.n_layers, p.layers_per_stage)]
    regions += [0] * p.lm_regions  # 0 layers: an LM-head region
    here = math.ceil(len(regions) / p.wafers)
    assert p.stride_rows == max(1, tape // here)
    worst = []
    for first in range(0, len(regions), here):  # every wafer's share of the regions, in pipeline order
        layers, lm = [0] * tape, [0] * tape
        for j, n in enumerate(regions[first:first + here]):
            for r in range(span):
                t = (j * p.stride_rows + r) % tape
                layers[t] += n
                lm[t] += 0 if n else 1
        for n, k in set(zip(layers, lm)):
            buf = buffer_bytes(p.rows, p.kb, p.qkv_width, p.fb, p.heads, tokens, 2) if n else 0
            worst.append(n * (p.layer_weight_bytes + tokens * p.kv_bytes_per_token) + k * p.lm_core_bytes + buf)
    return worst


@pytest.mark.parametrize("model, side", [("llama3-8b", 360), ("llama3-8b", 540), ("llama2-13b", 375),
                                         ("qwen2-72b", 420), ("codellama-34b", 360)])
def test_every_core_fits_and_the_busiest_one_is_full(wse2, model, side):
    """Weights + KV + buffers (+ LM-head tiles) of every core stay within its SRAM at the plan's capacity, the
    busiest core is the plan's breakdown, and one more KV slot per row would overflow some core."""
    plan = plan_decode(get_config(model), wse2, (side, side), "float16", min_tokens=4096)
    sram = wse2.sram_bytes_per_core
    at_cap = _core_bytes(plan, plan.kv_tokens_per_row)
    assert max(at_cap) <= sram and max(at_cap) == sum(plan.breakdown.values()) == plan.peak_core_bytes
    assert max(_core_bytes(plan, plan.kv_tokens_per_row + 1)) > sram
    assert plan.kv_tokens_per_row >= math.ceil(4096 / side)


def test_llama3_8b_stack_spans_the_wafer(wse2):
    """Table 5's setting (360x360, 16 bit): the 32 layers and the LM head spread over two 360-column bands of
    the wafer (every core but the 30 columns left over), so the busiest core stacks ceil(regions x rows / tape
    rows) regions, not the 11 layers of 2 x 2 square tiling."""
    cfg = get_config("llama3-8b")
    plan = plan_decode(cfg, wse2, (360, 360), "float16")
    tape = (wse2.width_cores // 360) * wse2.height_cores
    regions = plan.layer_regions + plan.lm_regions
    assert (plan.wafers, plan.tape_rows, plan.cores) == (1, tape, tape * 360)
    assert plan.overlap == math.ceil(360 / (tape // regions)) and plan.layers_per_region <= plan.overlap
    assert plan.layers_per_region < 11  # the square tiling's 11 layers per region
    # the whole-wafer accounting, tile by tile: every layer's weights and KV, the LM head, each core's buffers
    used = (cfg.n_layers * 360 * 360 * (plan.layer_weight_bytes + plan.kv_tokens_per_row * plan.kv_bytes_per_token)
            + plan.lm_regions * 360 * 360 * plan.lm_core_bytes)
    assert used <= plan.cores * (wse2.sram_bytes_per_core - plan.buffer_bytes)
    cap = plan.kv_capacity_tokens()
    assert cap == {"shift": 360 * plan.kv_tokens_per_row, "concat": plan.kv_tokens_per_row}
    assert cap["shift"] > 5 * 9000  # the square tiling held 9,000


def test_score_tiles_and_kv_bound_the_slots(wse2):
    """The capacity is the busiest core's free bytes over its per-slot bytes (KV of its layers + score tiles)."""
    plan = plan_decode(get_config("llama3-8b"), wse2, (360, 360), "float16")
    b, h = plan.breakdown, plan.heads
    layers = b["weights"] // plan.layer_weight_bytes  # the busiest core's layers
    assert layers <= plan.layers_per_region  # (another core may hold more layers and no LM-head tile)
    per_slot = layers * plan.kv_bytes_per_token + score_bytes(h, 2)  # fp16 scores, one query head at a time
    fixed = buffer_bytes(plan.rows, plan.kb, plan.qkv_width, plan.fb, h, 0, 2)
    free = wse2.sram_bytes_per_core - fixed - b["weights"] - b.get("lm_head", 0)
    assert plan.kv_tokens_per_row == free // per_slot


def test_multi_wafer_models_take_the_fewest_wafers(wse2):
    """A model too big for one wafer takes the fewest wafers that hold it: on one fewer, no layout (any layers
    per region, LM-head regions, band direction) leaves the asked-for KV slots; none straddles two wafers."""
    from waferllm.engine import placement as pl

    cfg = get_config("qwen2-72b")
    plan = plan_decode(cfg, wse2, (420, 420), "float16", min_tokens=4096)
    assert plan.wafers >= 2
    assert math.ceil((plan.layer_regions + plan.lm_regions) / plan.wafers) == plan.regions_per_wafer
    h, need = plan.heads, math.ceil(4096 / 420)
    sizes = pl._Sizes(sram=wse2.sram_bytes_per_core, weights=plan.layer_weight_bytes, kv=plan.kv_bytes_per_token,
                      fixed=buffer_bytes(420, plan.kb, plan.qkv_width, plan.fb, h, 0, 2),
                      score=score_bytes(h, 2))
    lm0 = pl._lm_head(cfg, wse2, 420, 420, 2, plan.kb)[0]
    for band in pl._bands(wse2, 420, 420):
        for g in range(1, cfg.n_layers + 1):
            for lm in range(lm0, lm0 + pl.LM_EXTRA + 1):
                st = pl._lay(cfg, sizes, band, plan.wafers - 1, g, lm, pl._lm_tile(cfg, 420, lm, 2, plan.kb))
                assert st is None or st.tokens < need


def test_a_layer_too_big_for_the_grid_still_says_so(wse2):
    with pytest.raises(PlanError, match="grid 360x360 is too small for llama3.1-405b"):
        plan_decode(get_config("llama3.1-405b"), wse2, (360, 360), "float16")


def test_handovers_follow_the_placement(wse2):
    """The step ledger moves the activations once per region boundary, one stride along the tape."""
    from waferllm.engine.cost import handover_ledger, step_ledger
    from waferllm.engine.decode import DecodeProgram

    cfg = get_config("llama3-8b")
    prog = DecodeProgram(cfg=cfg, plan=plan_decode(cfg, wse2, (360, 360), "float16"), spec=wse2)
    p = prog.plan
    one = handover_ledger(prog).phases["handover"]
    assert one.hops == p.stride_rows
    led = step_ledger(prog, 100)
    assert led.phases["decode/handover"].cycles == pytest.approx(one.cycles * (p.layer_regions + p.lm_regions - 1))


@pytest.mark.parametrize("model, side", [("llama3-8b", 360), ("llama3-8b", 420), ("qwen2-72b", 420)])
def test_regions_on_the_fabric(wse2, model, side):
    """region_pieces puts every region on R x C cores of its wafer (in pieces where it bends over a band seam);
    summing the tiles core by core over the fabric gives the plan's busiest core, within the SRAM."""
    import numpy as np

    from waferllm.engine.placement import region_pieces

    cfg = get_config(model)
    p = plan_decode(cfg, wse2, (side, side), "float16")
    imgs = np.zeros((p.wafers, wse2.height_cores, wse2.width_cores))
    layers = np.zeros_like(imgs)
    per_layer = p.layer_weight_bytes + p.kv_tokens_per_row * p.kv_bytes_per_token
    for g in range(p.layer_regions + p.lm_regions):
        pieces = region_pieces(p, wse2, g)
        assert sum(h * w for _, _, _, h, w in pieces) == side * side
        n = min(p.layers_per_stage, cfg.n_layers - g * p.layers_per_stage) if g < p.layer_regions else 0
        for wafer, y, x, h, w in pieces:
            assert 0 <= y and y + h <= wse2.height_cores and 0 <= x and x + w <= wse2.width_cores
            imgs[wafer, y:y + h, x:x + w] += n * per_layer if n else p.lm_core_bytes
            layers[wafer, y:y + h, x:x + w] += n
    imgs += np.where(layers > 0, p.buffer_bytes, 0)
    assert imgs.max() == p.peak_core_bytes <= wse2.sram_bytes_per_core
    assert layers.max() == p.layers_per_region <= p.overlap * p.layers_per_stage


@pytest.mark.parametrize("model, side", [("llama3-8b", 360), ("qwen2-72b", 420), ("llama2-13b", 375)])
def test_pooled_free_sram_counted_core_by_core(wse2, model, side):
    """kv_pooled_tokens (Table 5's whole-wafer accounting) is the SRAM of every core of the plan's wafers less the
    tiles and buffers placed there, over what a token stores (its real K and V dims in every layer, one score
    element per row slot on each core holding layers); counted here over the fabric, the weights read off the
    tiles' index maps."""
    import numpy as np

    from waferllm.engine.placement import region_pieces
    from waferllm.engine.tiles import _q_columns, _qkv_columns

    cfg = get_config(model)
    p = plan_decode(cfg, wse2, (side, side), "float16")
    layers = np.zeros((p.wafers, wse2.height_cores, wse2.width_cores), np.int64)
    lm = np.zeros_like(layers)
    for g in range(p.layer_regions + p.lm_regions):
        n = min(p.layers_per_stage, cfg.n_layers - g * p.layers_per_stage) if g < p.layer_regions else 0
        for wafer, y, x, h, w in region_pieces(p, wse2, g):
            (layers if n else lm)[wafer, y:y + h, x:x + w] += n if n else 1
    qkv, wo = _qkv_columns(cfg, p) >= 0, _q_columns(cfg, p, p.heads.dim_v) >= 0
    ffn = p.kb * 3 * p.fb + 2 * p.kb  # gate, up, down tiles and the two norms, on every core
    region = side * (p.kb * (qkv.sum() + wo.sum()) + (qkv.sum() if cfg.qkv_bias else 0) + side * ffn) * 2
    kv_cores = int((layers > 0).sum())
    fixed = buffer_bytes(p.rows, p.kb, p.qkv_width, p.fb, p.heads, 0, 2)
    free = (layers.size * wse2.sram_bytes_per_core - cfg.n_layers * region
            - int(lm.sum()) * p.lm_core_bytes - kv_cores * fixed)
    per_token = cfg.n_layers * 2 * cfg.kv_dim * 2 + kv_cores * score_bytes(p.heads, 2) / side
    assert p.kv_pooled_tokens == int(free // per_token)
    assert p.kv_capacity_tokens()["shift"] <= p.kv_pooled_tokens
