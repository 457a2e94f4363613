"""Prefill -> decode hand-off as mesh traffic: the prompt's embedding rows to the prefill grid, its K/V
into the decode cache layout, the last hidden state to the LM head, and the weights into their decode
placement when the grids differ. The engine moves the numbers with these functions; ttft_ledger costs
the same functions shape-only.
"""

from __future__ import annotations

import jax
import numpy as np

from waferllm.engine import kv
from waferllm.engine.decode import DecodeProgram
from waferllm.engine.prefill import PrefillProgram, layer_ledger
from waferllm.engine.prefill_tiles import PrefillLayout
from waferllm.machine import Ledger, Mesh, noc
from waferllm.machine.rings import interleave_order
from waferllm.spec import array_dtype

S = jax.ShapeDtypeStruct


def distance(pre: PrefillProgram) -> int:
    """Hops from the prefill region to the decode regions (a neighbourhood away)."""
    return max(pre.rows, pre.cols)


def embed_prompt(mesh: Mesh, dec: DecodeProgram, x):
    """The prompt's embedding rows, cut into activation tiles x [R, C, mb, w_d], arrive from the embedding
    tiles (the LM head's columns) on the prefill grid `mesh`."""
    with mesh.phase("prefill/embed"):
        return noc.transfer(mesh, x, "YXmd", dec.plan.lm_cols + max(mesh.rows, mesh.cols))


def hidden_to_decode(mesh: Mesh, dec: DecodeProgram, lay: PrefillLayout, x):
    """The last prompt token's hidden state, tiles x [R', C', mb, w_d] -> x_y [1, R, kb] on the decode grid."""
    p = dec.plan
    with mesh.phase("handoff/hidden"):
        return noc.relayout(mesh, x, (1, p.rows, p.kb), "bYk", max(lay.rows, lay.cols),
                            lambda: _hidden_index(dec, lay, x.shape))


def kv_to_decode(mesh: Mesh, dec: DecodeProgram, lay: PrefillLayout, kvs, slots: int):
    """Every layer's prompt K and V, kvs [2, layers, R', C', mb, cb] (the prefill's head layout) -> the decode caches
    [2, layers, R, slots, C, cb] laid out as the KV policy keeps them. A decode core receives its region's
    layers (layers_per_region) and its busiest row's tokens."""
    p = dec.plan
    n_layers, T = kvs.shape[1], lay.tokens
    busiest = int(np.max(kv.counts(dec.policy, T, T, p.rows, np)))
    out = (2, n_layers, p.rows, slots, p.cols, p.heads.cb)
    with mesh.phase("handoff/kv"):
        return noc.relayout(mesh, kvs, out, "vlYsXc", max(lay.rows, lay.cols),
                            lambda: _kv_index(dec, lay, kvs.shape, slots), dtype=array_dtype(p.dtype),
                            live={"l": p.layers_per_region, "s": busiest})


def weights_to_decode(mesh: Mesh, dec: DecodeProgram, pre: PrefillProgram) -> None:
    """When the grids differ, every core's decode tiles are rebuilt from prefill tiles nearby."""
    p = dec.plan
    if (pre.rows, pre.cols) != (p.rows, p.cols):
        hops = abs(pre.rows - p.rows) + abs(pre.cols - p.cols) + 1
        with mesh.phase("handoff/weights"):
            noc.transfer(mesh, S((p.rows, p.cols, p.breakdown["weights"]), np.uint8), "YXb", hops)


# --- index maps (numeric runs only) ---------------------------------------------------------------
def _src_rows(lay: PrefillLayout, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(physical core row, local row) of each token."""
    order = np.asarray(interleave_order(lay.rows))
    return order[tokens // lay.mb], tokens % lay.mb


def _src_cols(lay: PrefillLayout, colmap: np.ndarray, feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(physical core column, slot) of each feature index under a column map (ring positions)."""
    inv = np.full(int(colmap.max()) + 1, -1, np.int64)
    pos, slot = np.nonzero(colmap >= 0)
    inv[colmap[pos, slot]] = pos * colmap.shape[1] + slot
    where = inv[np.clip(feature, 0, len(inv) - 1)]  # features past the map are masked by the caller
    order = np.asarray(interleave_order(lay.cols))
    return order[where // colmap.shape[1]], where % colmap.shape[1]


def _hidden_index(dec: DecodeProgram, lay: PrefillLayout, shape) -> np.ndarray:
    R, C, mb, w = shape
    p = dec.plan
    y, i = _src_rows(lay, np.array(lay.tokens - 1))
    d = np.arange(p.rows * p.kb)
    x, j = _src_cols(lay, lay.dim_map, d)
    idx = ((y * C + x) * mb + i) * w + j
    return np.where(d < dec.cfg.dim, idx, -1).reshape(1, p.rows, p.kb)


def _kv_index(dec: DecodeProgram, lay: PrefillLayout, shape, slots: int) -> np.ndarray:
    two, n_layers, R, C, mb, w = shape
    p, T = dec.plan, lay.tokens
    cnt = kv.counts(dec.policy, T, T, p.rows, np)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    s = np.arange(slots)
    tok = np.where(s[None, :] < cnt[:, None], start[:, None] + s[None, :], -1)  # [R_d, slots]
    y, i = _src_rows(lay, np.maximum(tok, 0))
    per = []
    for dim in (p.heads.dim, p.heads.dim_v):  # [C_d, cb] HF K (then V) index of each decode slot
        x, j = _src_cols(lay, lay.kv_map, dim)
        idx = ((y[:, :, None, None] * C + x[None, None]) * mb + i[:, :, None, None]) * w + j[None, None]
        per.append(np.where((tok >= 0)[:, :, None, None] & (dim >= 0)[None, None], idx, -1))  # [R_d, slots, C_d, cb]
    idx = np.stack(per)[:, None]  # [2, 1, R_d, slots, C_d, cb]
    layer = (np.arange(two)[:, None] * n_layers + np.arange(n_layers)[None, :]) * (R * C * mb * w)
    return np.where(idx >= 0, idx + layer[:, :, None, None, None, None], -1)


# --- costing ------------------------------------------------------------------------------------------
def ttft_ledger(dec: DecodeProgram, pre: PrefillProgram, n_prompt: int, wafers: int | None = None) -> Ledger:
    """Everything before the first token, shape-only through the same functions the engine runs: embedding
    rows to the prefill grid, every layer (one traced, charged layer-count times), the hand-off, inter-wafer
    hops (over `wafers`, default the decode plan's), final norm + LM head + argmax. Cached; do not mutate."""
    key = (dec, pre, n_prompt, wafers)  # the programs themselves: kept alive, so their ids are never reused
    if key not in _TTFT:
        _TTFT[key] = _ttft_ledger(dec, pre, n_prompt, wafers)
    return _TTFT[key]


_TTFT: dict[tuple, Ledger] = {}


def clear_caches() -> None:
    """Forget every cached ledger (decode steps, prefill layers, TTFTs): a calibration's trial devices are
    new programs each time, and keeping their ledgers would only grow memory."""
    from waferllm.engine import cost, prefill

    cost._CACHE.clear()
    prefill._LAYERS.clear()
    _TTFT.clear()


def _ttft_ledger(dec: DecodeProgram, pre: PrefillProgram, n_prompt: int, wafers: int | None) -> Ledger:
    from waferllm.engine.cost import head_ledger, interwafer_ledger

    led = Ledger(clock_hz=dec.spec.clock_hz)
    lay = pre.layout(n_prompt)
    x = S((pre.rows, pre.cols, lay.mb, lay.dim_map.shape[1]), np.float32)
    embed_prompt(pre.mesh(led), dec, x)
    led.merge(layer_ledger(pre, n_prompt), times=dec.cfg.n_layers)
    mesh = dec.mesh(led)
    kvs = S((2, dec.cfg.n_layers, pre.rows, pre.cols, lay.mb, lay.kv_map.shape[1]), np.float32)
    slots = int(np.max(kv.counts(dec.policy, n_prompt, n_prompt, dec.plan.rows, np)))
    kv_to_decode(mesh, dec, lay, kvs, slots)
    hidden_to_decode(mesh, dec, lay, x)
    weights_to_decode(mesh, dec, pre)
    led.merge(interwafer_ledger(dec, n_prompt, wafers), "prefill/")
    first = head_ledger(dec)
    first.phases.pop("embed", None)  # the first token's input comes from the prefill, not the embedding
    led.merge(first, "first_token/")
    return led
