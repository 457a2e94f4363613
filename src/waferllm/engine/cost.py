"""Costing the decode program: the same functions run under jax.eval_shape with the true occupancy.

A step = embedding lookup + every layer + activation hand-over between regions + final norm, LM head
and argmax. All layers have the same shapes, so one layer is traced and charged layer-count times.
A traced layer (and LM head, and prefill layer) is shared by every program of the same shapes and device
cost constants, whatever its SRAM size or clock (shared_ledger): a sweep traces each shape once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.engine import kv
from waferllm.engine import trace_store
from waferllm.engine.decode import DecodeProgram
from waferllm.engine.tiles import DTYPES
from waferllm.machine import Ledger, Mesh, PhaseCost, noc, ops
from waferllm.spec import DeviceSpec


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


def _batch(ns, ps) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ns, ps as tuples of ints (an int is a batch of one; ps defaults to no prefill)."""
    one = lambda v: (int(v),) if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)  # noqa: E731
    ns = one(ns)
    return ns, (0,) * len(ns) if ps is None else one(ps)


def _occupancy(prog: DecodeProgram, ns, ps, slots: int) -> tuple[int, int, int]:
    """(busiest row's tokens summed over the batch, sequences whose rows shift, KV slots per lane)."""
    t_row, moving = kv.step_load(prog.policy, ns, ps, prog.plan.rows)
    lane = max(kv.busiest_row(prog.policy, n, p, prog.plan.rows) for n, p in zip(ns, ps))
    return t_row, moving, max(slots, lane)


def layer_ledger(prog: DecodeProgram, ns, slots: int, ps) -> Ledger:
    """Cost of one layer for a batch: sequence b has ns[b] tokens cached, ps[b] of them from its prefill."""
    ns, ps = _batch(ns, ps)
    return _layer_ledger(prog, len(ns), *_occupancy(prog, ns, ps, slots))


_CACHE: dict[tuple, Ledger] = {}


def _layer_ledger(prog: DecodeProgram, B: int, t_row: int, moving: int, slots: int) -> Ledger:
    """Charges depend on the occupancy only through the busiest row and the moving count: cache on those,
    shared by every program of the same layer shapes (shared_ledger)."""
    p = prog.plan
    what = ("decode layer", prog.cfg, _plan_shapes(p), prog.policy, prog.strategy, B, t_row, moving, slots)
    return shared_ledger(what, prog, (p.rows, p.cols), dict(p.breakdown),
                         lambda spec, held, led: _trace_layer(dataclasses.replace(prog, spec=spec), B, slots,
                                                              (t_row, moving), held, led))


def _trace_layer(prog: DecodeProgram, B: int, slots: int, load: tuple[int, int], held: dict[str, int],
                 led: Ledger) -> None:
    mesh = prog.mesh(led)
    p = prog.plan
    dt = DTYPES[p.dtype]
    S = jax.ShapeDtypeStruct
    cache = S((B, p.rows, slots, p.cols, p.heads.cb), dt)
    x, vec, ivec = S((B, p.rows, p.kb), jnp.float32), S((B,), jnp.float32), S((B,), jnp.int32)
    with mesh.hold(**held), _routes(mesh):
        jax.eval_shape(lambda w, kc, vc, x, pos, n, pp: prog.layer(mesh, w, kc, vc, x, pos, n, pp, load=load),
                       weight_structs(prog), cache, cache, x, vec, ivec, ivec)


def _plan_shapes(p, head: bool = False) -> tuple:
    """What a decode plan's layer trace reads besides the held bytes (grid, dtype, tiles, head layout); with
    head, what the LM head's trace reads too (vocabulary per column, LM-head regions)."""
    h = p.heads
    shapes = (p.rows, p.cols, p.dtype, p.kb, p.fb, h.cols, h.head_dim, h.n_kv, h.n_rep, h.aligned, h.cb)
    return shapes + (p.vb, p.lm_regions) if head else shapes


# --- traced ledgers shared between programs of equal shapes ------------------------------------------------------
#: Device fields that never enter a traced layer's or LM head's phases: the clock only turns cycles into seconds
#: (Ledger.clock_hz), the SRAM size and the name only the limit messages (Ledger.excess, replayed below), and the
#: rest are read outside these traces (placement, hand-overs, inter-wafer hops, energy, utilization). A field
#: added to DeviceSpec is traced (part of the key) unless it is listed here.
UNTRACED_FIELDS = frozenset({"name", "sources", "clock_hz", "sram_bytes_per_core", "width_cores", "height_cores",
                             "power_w", "sram_bytes_per_cycle_per_core", "interwafer_bytes_per_s",
                             "interwafer_latency_s"})
_UNLIMITED_SRAM = 1 << 40  # bytes per core: a shared trace records its memory checks, never a limit message
_SHARING = [True]

Trace = Callable[[DeviceSpec, dict, Ledger], None]  # (device, bytes held the whole trace long, ledger to charge)


@dataclass
class _Recording(Ledger):
    """A ledger that also keeps every memory check (where, live tensors and their bytes per core), to replay
    them on another device."""

    checks: list = field(default_factory=list)

    def note_memory(self, total: int, where: str, tensors: dict[str, int]) -> None:
        self.checks.append((where, dict(tensors)))
        super().note_memory(total, where, tensors)


def trace_key(spec: DeviceSpec) -> tuple:
    """The device fields a traced layer's cycles depend on: (name, value) of every field not in UNTRACED_FIELDS."""
    return tuple((f.name, getattr(spec, f.name)) for f in dataclasses.fields(spec) if f.name not in UNTRACED_FIELDS)


def share_traces(on: bool) -> bool:
    """Turn sharing traced ledgers between programs on or off (off: each program traces its own, as before);
    returns the previous setting. For measuring what sharing saves: the ledgers are equal either way."""
    was, _SHARING[0] = _SHARING[0], bool(on)
    return was


def shared_ledger(what: tuple, prog, grid: tuple[int, int], held: dict[str, int], trace: Trace,
                  cache: dict | None = None) -> Ledger:
    """A traced ledger shared by every program whose trace has the same `what` (hashable shapes) and device
    trace_key, equal to tracing it afresh: `trace` runs once on an unlimited-SRAM copy of the device, with
    `held` (tensors live the whole trace long, bytes per core) as zero-byte placeholders; each caller gets a
    copy at its own clock whose memory checks are replayed on its device (`grid` is the traced mesh) with the
    held bytes, so its peak and its SRAM messages are its own. A device over its route limit (the message names
    it) traces its own. Kept in `cache` (default this module's); the result is the caller's to change."""
    cache, spec = _CACHE if cache is None else cache, prog.spec

    def run(on: DeviceSpec, hold: dict) -> _Recording:
        led = _Recording(clock_hz=on.clock_hz)
        trace(on, hold, led)
        return led

    if not _SHARING[0]:
        return _copy(_cached(cache, ("own", prog, what), lambda: run(spec, held)))  # the program keeps its id unique
    base = _cached(cache, ("shared", what, trace_key(spec)),
                   lambda: run(spec.replace(sram_bytes_per_core=_UNLIMITED_SRAM), dict.fromkeys(held, 0)))
    if base.excess:
        return _copy(_cached(cache, ("exact", what, spec, tuple(held.items())), lambda: run(spec, held)))
    led = _copy(base, spec.clock_hz)
    led.peak_core_bytes, led.peak_where, led.peak_tensors = 0, "", {}
    mesh = Mesh(spec, *grid, ledger=led, limits=False, check_fit=False)
    for where, tensors in base.checks:
        with contextlib.ExitStack() as labels:
            for part in ([] if where == mesh.label else where.split("/")):
                labels.enter_context(mesh.phase(part))
            with mesh.hold(**{k: held.get(k, v) for k, v in tensors.items()}):
                pass
    return led


def _cached(cache: dict, key: tuple, make: Callable[[], Ledger]) -> Ledger:
    """cache[key], else the trace store's entry (traces kept on disk by an earlier run), else make() (stored)."""
    if key not in cache:
        led = trace_store.load(key) if key[0] != "own" else None
        if led is None:
            led = make()
            if key[0] != "own":
                trace_store.save(key, led)
        cache[key] = led
    return cache[key]


def _copy(led: Ledger, clock_hz: float | None = None) -> Ledger:
    """A plain ledger equal to `led` (at another clock if given) that its caller may change freely."""
    return Ledger(clock_hz=led.clock_hz if clock_hz is None else clock_hz,
                  phases={k: PhaseCost(**vars(v)) for k, v in led.phases.items()},
                  peak_core_bytes=led.peak_core_bytes, peak_where=led.peak_where, peak_tensors=dict(led.peak_tensors),
                  routes_per_core=led.routes_per_core, routes_where=led.routes_where, excess=list(led.excess))


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


def handover_ledger(prog: DecodeProgram, batch: int = 1) -> Ledger:
    """Moving the activations x_y [B, R, kb] between consecutive regions (one stride along the placement's tape)."""
    led = Ledger(clock_hz=prog.spec.clock_hz)
    mesh = prog.mesh(led)
    p = prog.plan
    with mesh.phase("handover"):
        noc.transfer(mesh, jax.ShapeDtypeStruct((batch, p.rows, p.kb), jnp.float32), "bYk", p.handover_hops)
    return led


def interwafer_ledger(prog: DecodeProgram, rows_of_activations: int, wafers: int | None = None) -> Ledger:
    """Pipeline hops between wafers (plan.wafers, or `wafers`, > 1): each sends `rows_of_activations` x D
    fp32 values over the inter-wafer link (spec.interwafer_bytes_per_s, spec.interwafer_latency_s)."""
    led = Ledger(clock_hz=prog.spec.clock_hz)
    mesh = prog.mesh(led)
    with mesh.phase("interwafer"):
        acts = jax.ShapeDtypeStruct((rows_of_activations, prog.cfg.dim), jnp.float32)
        noc.interwafer(mesh, acts, times=(wafers or prog.plan.wafers) - 1)
    return led


def head_ledger(prog: DecodeProgram, batch: int = 1) -> Ledger:
    """Embedding lookup, final norm, LM head and argmax for `batch` sequences, shape-only (shared_ledger: one
    trace for every program with the same model, plan shapes and device trace_key)."""
    p = prog.plan
    what = ("lm head", prog.cfg, _plan_shapes(p, head=True), prog.strategy, batch)
    return shared_ledger(what, prog, (p.rows, p.lm_cols), {"lm_head": p.lm_core_bytes},
                         lambda spec, held, led: _trace_head(dataclasses.replace(prog, spec=spec), batch, held, led))


def _trace_head(prog: DecodeProgram, batch: int, held: dict[str, int], led: Ledger) -> None:
    lm = prog.lm_mesh(led)
    p = prog.plan
    dt = DTYPES[p.dtype]
    S = jax.ShapeDtypeStruct
    from waferllm.engine.tiles import MeshWeights

    mw = MeshWeights(layers=(), final_norm=S((p.rows, p.kb), jnp.float32), lm_head=S((p.rows, p.kb, p.lm_cols, p.vb), dt),
                     embed=S((p.rows, p.kb, p.lm_cols, p.vb), dt))
    with lm.hold(**held):
        def run(mw, tok):
            with lm.phase("embed"):
                x = prog.embed(lm, mw, tok)
            return prog.argmax(lm, prog.head(lm, mw, x))
        jax.eval_shape(run, mw, S((batch,), jnp.int32))


def step_ledger(prog: DecodeProgram, ns, slots: int = 0, ps=None) -> Ledger:
    """One decode step of a batch: sequence b has ns[b] tokens cached before this one, ps[b] (default 0)
    from its prefill. An int n is a batch of one. Cached on what the cost depends on."""
    ns, ps = _batch(ns, ps)
    key = ("step", prog, len(ns)) + _occupancy(prog, ns, ps, slots)
    if key not in _CACHE:
        _CACHE[key] = _step_ledger(prog, ns, slots, ps)
    return _CACHE[key]


def _step_ledger(prog: DecodeProgram, ns, slots: int, ps) -> Ledger:
    led = Ledger(clock_hz=prog.spec.clock_hz)
    p = prog.plan
    led.merge(head_ledger(prog, len(ns)), "decode/")
    led.merge(layer_ledger(prog, ns, slots, ps), "decode/layer/", times=prog.cfg.n_layers)
    led.merge(handover_ledger(prog, len(ns)), "decode/", times=p.layer_regions + p.lm_regions - 1)
    led.merge(interwafer_ledger(prog, len(ns)), "decode/")
    return led


def sampling_ledger(prog: DecodeProgram, params) -> Ledger:
    """Extra cost of a sampled (not greedy) token on the LM-head grid (one sequence's logits_x [C_lm, vb])."""
    from waferllm.engine.sampling import gumbel_scores, nucleus_probs, on_mesh

    led = Ledger(clock_hz=prog.spec.clock_hz)
    lm = prog.lm_mesh(led)
    p = prog.plan
    logits = jax.ShapeDtypeStruct((p.lm_cols, p.vb), jnp.float32)
    t = max(params.temperature, 1e-6)
    with lm.phase("sample"):
        if on_mesh(params):  # each core: scale, draw, log(-log u), add; the argmax is already charged
            draws = logits  # one uniform draw per logit, laid out alike
            ops.map(lm, "Xv", lambda z, u: gumbel_scores(z, u, t), logits, draws, special=2, ops=3)
        else:  # every column streams its logits to the sampling core, which sorts out top-k/top-p
            line = noc.gather_line(lm, logits, "Xv", "X")  # [C_lm, vb] on one core
            ops.map(lm, "cv", lambda z: nucleus_probs(z, t), line, special=1, ops=4)
    return led
