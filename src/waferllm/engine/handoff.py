"""Prefill -> decode hand-off, costed as mesh traffic: the prompt's K/V into the decode cache layout,
the last hidden state to the LM head, and the weights into their decode placement when the grids differ.
"""

from __future__ import annotations

import math

import numpy as np

from waferllm.engine import kv
from waferllm.engine.decode import DecodeProgram
from waferllm.engine.prefill import PrefillProgram
from waferllm.machine import Ledger, noc
from waferllm.spec.device import dtype_bytes


def prompt_cache(prog: DecodeProgram, k_tokens: np.ndarray, slots: int) -> np.ndarray:
    """One layer's prompt K or V [P, Hkv*hd] (HF order) -> decode cache [R, slots, C, cb] for the policy."""
    dim = prog.plan.heads.dim
    per_core = np.where(dim[None] >= 0, k_tokens[:, np.maximum(dim, 0)], 0.0)  # [P, C, cb]
    return kv.place_prompt_kv(prog.policy, per_core.astype(k_tokens.dtype), prog.plan.rows, slots)


def handoff_ledger(dec: DecodeProgram, pre: PrefillProgram, n_prompt: int, elem_bytes: int) -> Ledger:
    """Cost of the hand-off for an n_prompt-token prompt (all regions move in parallel)."""
    led = Ledger(clock_hz=dec.spec.clock_hz)
    mesh = dec.mesh(led)
    p = dec.plan
    dist = max(pre.rows, pre.cols)  # prefill region to decode regions, a neighbourhood away
    busiest = int(np.max(kv.counts(dec.policy, n_prompt, n_prompt, p.rows, np)))
    with mesh.phase("handoff/kv"):
        nbytes = p.layers_per_region * busiest * 2 * p.heads.cb * elem_bytes
        mesh.charge_comm(noc.transfer_cycles(mesh, nbytes, dist), hops=dist)
    with mesh.phase("handoff/hidden"):
        mesh.charge_comm(noc.transfer_cycles(mesh, 4 * p.kb, dist), hops=dist)
    if (pre.rows, pre.cols) != (p.rows, p.cols):
        hops = abs(pre.rows - p.rows) + abs(pre.cols - p.cols) + 1
        with mesh.phase("handoff/weights"):  # every core's decode tiles rebuilt from prefill tiles nearby
            mesh.charge_comm(noc.transfer_cycles(mesh, p.breakdown["weights"], hops), hops=hops)
    return led


def embed_ledger(dec: DecodeProgram, pre: PrefillProgram, n_prompt: int) -> Ledger:
    """The prompt's embedding rows travel from the embedding tiles to the prefill grid ([L_y, E_x] tiles)."""
    led = Ledger(clock_hz=dec.spec.clock_hz)
    mesh = pre.mesh(led)
    mb, nb = math.ceil(n_prompt / pre.rows), math.ceil(dec.cfg.dim / pre.cols)
    hops = dec.plan.lm_cols + max(pre.rows, pre.cols)
    with mesh.phase("prefill/embed"):
        mesh.charge_comm(noc.transfer_cycles(mesh, 4 * mb * nb, hops), hops=hops)
    return led


_LAYERS: dict[tuple, Ledger] = {}


def prefill_layer_ledger(pre: PrefillProgram, n_tokens: int) -> Ledger:
    """One prefill layer over n_tokens, shape-only (every layer has the same shapes); cached, since the
    TTFT, the artifact-style rate and the memory check all need it. Callers must not mutate it."""
    key = (pre, n_tokens)  # the program itself: keeps it alive, so its id is never reused
    if key not in _LAYERS:
        _LAYERS[key] = _trace_prefill_layer(pre, n_tokens)
    return _LAYERS[key]


def _trace_prefill_layer(pre: PrefillProgram, n_tokens: int) -> Ledger:
    import jax

    from waferllm.engine.prefill import weight_shapes
    from waferllm.engine.tiles import DTYPES

    led = Ledger(clock_hz=pre.spec.clock_hz)
    pre.run(pre.mesh(led), weight_shapes(pre.cfg, DTYPES[pre.dtype])[:1],
            jax.ShapeDtypeStruct((n_tokens, pre.cfg.dim), np.float32))
    return led


def ttft_ledger(dec: DecodeProgram, pre: PrefillProgram, n_prompt: int, wafers: int | None = None) -> Ledger:
    """Everything before the first token: embedding rows to the prefill grid, every layer (one traced,
    charged layer-count times), the hand-off, inter-wafer hops (over `wafers`, default the decode plan's),
    final norm + LM head + argmax."""
    from waferllm.engine.cost import head_ledger, interwafer_ledger

    led = Ledger(clock_hz=dec.spec.clock_hz)
    led.merge(embed_ledger(dec, pre, n_prompt))
    led.merge(prefill_layer_ledger(pre, n_prompt), times=dec.cfg.n_layers)
    eb = dtype_bytes(pre.dtype)
    led.merge(handoff_ledger(dec, pre, n_prompt, eb))
    led.merge(interwafer_ledger(dec, n_prompt, wafers), "prefill/")
    first = head_ledger(dec)
    first.phases.pop("embed", None)  # the first token's input comes from the prefill, not the embedding
    led.merge(first, "first_token/")
    return led
