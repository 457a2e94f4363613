"""Costing the decode program: the same functions run under jax.eval_shape with the true occupancy.

A step = embedding lookup + every layer + activation hand-over between regions + final norm, LM head
and argmax. All layers have the same shapes, so one layer is traced and charged layer-count times.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from waferllm.engine.decode import DecodeProgram
from waferllm.engine.tiles import DTYPES
from waferllm.machine import Ledger, Mesh, noc


def _struct(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def weight_structs(prog: DecodeProgram) -> dict:
    """Shape-only stand-ins for one layer's tiles and the head tiles (no weights needed)."""
    p, cfg = prog.plan, prog.cfg
    dt = DTYPES[p.dtype]
    R, C, kb, fb, qkv = p.rows, p.cols, p.kb, p.fb, p.qkv_width
    S = jax.ShapeDtypeStruct
    layer = {"attn_norm": S((R, kb), jnp.float32), "wqkv": S((R, kb, C, qkv), dt),
             "wo": S((C, p.heads.cb * p.heads.n_rep, R, kb), dt), "ffn_norm": S((R, kb), jnp.float32),
             "wgu": S((R, kb, C, 2 * fb), dt), "wdown": S((C, fb, R, kb), dt)}
    if cfg.qkv_bias:
        layer["bqkv"] = S((C, qkv), jnp.float32)
    return layer


def layer_ledger(prog: DecodeProgram, n: int, slots: int, p: int = 0) -> Ledger:
    """Cost of one layer with n tokens already cached, p from the prefill (KV arrays of `slots` per row)."""
    return _layer_ledger(prog, n, slots, p)


_CACHE: dict[tuple, Ledger] = {}


def _layer_ledger_cached(prog: DecodeProgram, t_row: int, moves: bool, slots: int, n_example: int,
                         p: int) -> Ledger:
    """Charges depend on n only through the busiest row's tokens and whether rows shift: cache on those."""
    key = (id(prog), t_row, moves, slots)
    if key not in _CACHE:
        _CACHE[key] = _trace_layer(prog, slots, n_example, p)  # p: prompt tokens from the prefill
    return _CACHE[key]


def _trace_layer(prog: DecodeProgram, slots: int, n_example: int, p_tokens: int) -> Ledger:
    led = Ledger(clock_hz=prog.spec.clock_hz)
    mesh = prog.mesh(led)
    p = prog.plan
    dt = DTYPES[p.dtype]
    cache = jax.ShapeDtypeStruct((p.rows, slots, p.cols, p.heads.cb), dt)
    x = jax.ShapeDtypeStruct((p.rows, p.kb), jnp.float32)
    with mesh.hold(**{k: v for k, v in p.breakdown.items()}), _routes(mesh):
        jax.eval_shape(lambda w, kc, vc, x: prog.layer(mesh, w, kc, vc, x, 0, n_example, n_cost=n_example,
                                                       p=p_tokens, p_cost=p_tokens),
                       weight_structs(prog), cache, cache, x)
    return led


def _key(prog: DecodeProgram, n: int, p: int) -> tuple[int, bool]:
    """(busiest row after inserting token n, whether the shift policy moves rows)."""
    from waferllm.engine import kv

    R = prog.plan.rows
    q, rem = divmod(n, R)
    moves = prog.policy == "shift" and q > 0 and rem < R - 1
    return kv.busiest_row(prog.policy, n, p, R), moves


def _layer_ledger(prog: DecodeProgram, n: int, slots: int, p: int = 0) -> Ledger:
    t_row, moves = _key(prog, n, p)
    return _layer_ledger_cached(prog, t_row, moves, max(slots, t_row), n, p)


class _routes:
    """Routes a decode region configures: K-tree along Y and X (3 each), the KV shift link, the hand-over."""

    def __init__(self, mesh: Mesh):
        self.ctx = [mesh.routes("ktree y", 3), mesh.routes("ktree x", 3), mesh.routes("kv shift", 1),
                    mesh.routes("region hand-over", 1)]

    def __enter__(self):
        for c in self.ctx:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.ctx):
            c.__exit__(*exc)


def handover_ledger(prog: DecodeProgram) -> Ledger:
    """Moving the activation x_y [R, kb] between consecutive regions (snake order: neighbours)."""
    led = Ledger(clock_hz=prog.spec.clock_hz)
    mesh = prog.mesh(led)
    p = prog.plan
    per_row = prog.spec.width_cores // p.cols
    hops = p.cols if per_row > 1 else p.rows
    with mesh.phase("handover"):
        mesh.charge_comm(noc.transfer_cycles(mesh, 4 * p.kb, hops), hops=hops)
    return led


def head_ledger(prog: DecodeProgram) -> Ledger:
    """Embedding lookup, final norm, LM head and argmax, shape-only."""
    led = Ledger(clock_hz=prog.spec.clock_hz)
    lm = prog.lm_mesh(led)
    p = prog.plan
    dt = DTYPES[p.dtype]
    S = jax.ShapeDtypeStruct
    from waferllm.engine.tiles import MeshWeights

    mw = MeshWeights(layers=(), final_norm=S((p.rows, p.kb), jnp.float32), lm_head=S((p.rows, p.kb, p.lm_cols, p.vb), dt),
                     embed=S((p.rows, p.kb, p.lm_cols, p.vb), dt))
    with lm.hold(lm_head=p.lm_core_bytes):
        def run(mw, tok):
            with lm.phase("embed"):
                x = prog.embed(lm, mw, tok)
            return prog.argmax(lm, prog.head(lm, mw, x))
        jax.eval_shape(run, mw, S((), jnp.int32))
    return led


def step_ledger(prog: DecodeProgram, n: int, slots: int = 0, p: int = 0) -> Ledger:
    """The whole decode step with n tokens cached before this one (cached on what the cost depends on)."""
    key = ("step", id(prog)) + _key(prog, n, p) + (slots,)
    if key not in _CACHE:
        _CACHE[key] = _step_ledger(prog, n, slots, p)
    return _CACHE[key]


def _step_ledger(prog: DecodeProgram, n: int, slots: int, p_tokens: int) -> Ledger:
    led = Ledger(clock_hz=prog.spec.clock_hz)
    p = prog.plan
    led.merge(head_ledger(prog), "decode/")
    led.merge(layer_ledger(prog, n, slots, p_tokens), "decode/layer/", times=prog.cfg.n_layers)
    led.merge(handover_ledger(prog), "decode/", times=p.layer_regions + p.lm_regions - 1)
    return led


def sampling_ledger(prog: DecodeProgram, params) -> Ledger:
    """Extra cost of a sampled (not greedy) token on the LM-head grid."""
    from waferllm.engine.sampling import on_mesh
    from waferllm.machine import local

    led = Ledger(clock_hz=prog.spec.clock_hz)
    lm = prog.lm_mesh(led)
    p = prog.plan
    with lm.phase("sample"):
        if on_mesh(params):  # each core: scale, draw, log(-log u), add; the argmax is already charged
            local.charge_elementwise(lm, p.vb, special=2, ops=3)
        else:  # every column streams its logits to the sampling core, which sorts out top-k/top-p
            v = p.vb * p.lm_cols
            lm.charge_comm(noc.transfer_cycles(lm, 4 * v, p.lm_cols - 1), hops=p.lm_cols - 1)
            local.charge_elementwise(lm, v, special=1, ops=4)
    return led
