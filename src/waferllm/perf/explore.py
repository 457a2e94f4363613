"""Design-space sweeps: predict() over devices (fields varied), models, phases, grids, dtypes and lengths.

A point is one predict() call: a device (preset or file, plus field overrides), a model, a phase, the grids
(`auto` = the autotuner), dtype, lengths and batch. Its key is a hash of its canonical JSON: the resolved
device fields and model config (an override equal to the preset's value is the same point) and a hash of
the code that computes it (code_fingerprint: another version of the cost model gives other keys). Points are
computed in batches on Ray (a local runtime, or a cluster's address); the driver writes each batch's rows
to the store (perf/store.py) as it arrives, and skips keys already stored, so a stopped sweep resumes where
it stopped. Batches group points that share layer shapes and device cost constants, so a worker traces a
layer once for the whole group (engine/cost.shared_ledger). Infeasible points are results: stored with
their error message.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import waferllm
from waferllm import WaferError
from waferllm.engine import handoff
from waferllm.engine.cost import share_traces, trace_key
from waferllm.engine.grids import AUTO, parse_grid_arg
from waferllm.engine.placement import max_layers_per_core
from waferllm.machine.mesh import STRATEGIES
from waferllm.model.config import ModelConfig
from waferllm.model.registry import get_config
from waferllm.perf.predict import PHASES, predict
from waferllm.perf.store import Store
from waferllm.spec import DeviceSpec, SpecError, check_dtype, load_device

LENGTHS = {"decode": ("context",), "prefill": ("input_len",), "e2e": ("input_len", "output_len")}
CLEAR_EVERY = 2000  # points a worker evaluates between clearing its per-program ledger caches (memory)


class ExploreError(WaferError):
    """A sweep that cannot run (bad space, unreachable cluster)."""


@dataclass(frozen=True, kw_only=True)
class Point:
    """One predict() call. Lengths a phase does not use are None (decode: context; prefill: input_len;
    e2e: input_len and output_len); so is the prefill grid of a decode point."""

    device: str
    overrides: tuple[tuple[str, Any], ...] = ()  # (field, value), sorted by field
    model: str
    phase: str
    grid: str = AUTO
    prefill_grid: str | None = AUTO
    dtype: str = "float16"
    context: int | None = None
    input_len: int | None = None
    output_len: int | None = None
    batch: int = 1
    kv: str = "shift"
    strategy: str = "waferllm"

    def predict_kwargs(self) -> dict:
        """predict()'s keywords (unused lengths at predict()'s defaults)."""
        kw = dict(phase=self.phase, grid=self.grid, prefill_grid=self.prefill_grid or AUTO, batch=self.batch,
                  dtype=self.dtype, policy=self.kv, strategy=self.strategy)
        return kw | {k: getattr(self, k) for k in ("context", "input_len", "output_len") if getattr(self, k)}


@dataclass(frozen=True, kw_only=True)
class Space:
    """The product of every list; `vary` = ((device field, values), ...) on top of the fixed `overrides`."""

    devices: tuple[str, ...] = ("wse2",)
    overrides: tuple[tuple[str, Any], ...] = ()
    vary: tuple[tuple[str, tuple], ...] = ()
    models: tuple[str, ...] = ("llama3-8b",)
    phases: tuple[str, ...] = ("decode", "prefill")
    grids: tuple[str, ...] = (AUTO,)
    prefill_grids: tuple[str, ...] = (AUTO,)
    dtypes: tuple[str, ...] = ("float16",)
    contexts: tuple[int, ...] = (4096,)
    input_lens: tuple[int, ...] = (4096,)
    output_lens: tuple[int, ...] = (128,)
    batches: tuple[int, ...] = (1,)
    kvs: tuple[str, ...] = ("shift",)
    strategies: tuple[str, ...] = ("waferllm",)


@dataclass(frozen=True, kw_only=True)
class Item:
    """A point ready for a worker: its key, the resolved device (to_dict; None if invalid) and model."""

    key: str
    point: Point
    device: dict | None
    device_error: str | None
    model: ModelConfig


def grid_arg(text: str, what: str = "grid") -> str:
    """'auto', 'RxC' or a side N (N x N) -> 'auto' or 'RxC'; GridError otherwise."""
    text = str(text).strip()
    if text.isdigit():
        text = f"{text}x{text}"
    g = parse_grid_arg(text, what)
    return AUTO if g == AUTO else f"{g[0]}x{g[1]}"


def points(space: Space) -> list[Point]:
    """Every point of the space, in order, without repeats (lengths a phase does not use are dropped)."""
    for ph in space.phases:
        if ph not in PHASES:
            raise ExploreError(f"unknown phase {ph!r}; known: {', '.join(PHASES)}")
    for dt in space.dtypes:
        check_dtype(dt)
    _check_known("kv policy", space.kvs, ("shift", "concat"))
    _check_known("strategy", space.strategies, STRATEGIES)
    _check_known("device field", [f for f, _ in space.overrides + space.vary],
                 [f.name for f in dataclasses.fields(DeviceSpec) if f.name != "sources"])
    for name, values in (("context", space.contexts), ("input-len", space.input_lens),
                         ("output-len", space.output_lens), ("batch", space.batches)):
        if any(v <= 0 for v in values):
            raise ExploreError(f"--{name} values must be > 0, got {', '.join(map(str, values))}")
    fields = [f for f, _ in space.vary]
    out: dict[Point, None] = {}
    for dev, values, model, phase, grid, pgrid, dtype, ctx, inp, outl, batch, kv, strat in itertools.product(
            space.devices, itertools.product(*(v for _, v in space.vary)), space.models, space.phases, space.grids,
            space.prefill_grids, space.dtypes, space.contexts, space.input_lens, space.output_lens, space.batches,
            space.kvs, space.strategies):
        used = LENGTHS[phase]
        ov = tuple(sorted({**dict(space.overrides), **dict(zip(fields, values))}.items()))
        p = Point(device=dev, overrides=ov, model=model, phase=phase, grid=grid,
                  prefill_grid=None if phase == "decode" else pgrid, dtype=dtype,
                  context=ctx if "context" in used else None, input_len=inp if "input_len" in used else None,
                  output_len=outl if "output_len" in used else None, batch=batch, kv=kv, strategy=strat)
        out.setdefault(p, None)
    return list(out)


def _check_known(what: str, names: Iterable[str], known: Sequence[str]) -> None:
    for n in names:
        if n not in known:
            raise ExploreError(f"unknown {what} {n!r}; known: {', '.join(known)}")


def resolve(pts: Sequence[Point]) -> list[Item]:
    """Each point with its key and resolved device and model (devices and models resolved once each). An
    unknown device or model is an error; overrides that make a contradictory device give an infeasible point."""
    bases: dict[str, DeviceSpec] = {}
    devices: dict[tuple, tuple[DeviceSpec | None, str | None]] = {}
    models: dict[str, ModelConfig] = {}
    items = []
    for p in pts:
        if p.device not in bases:
            bases[p.device] = load_device(p.device)
        if (p.device, p.overrides) not in devices:
            try:
                devices[p.device, p.overrides] = bases[p.device].replace(**dict(p.overrides)), None
            except SpecError as e:  # a contradictory combination is an infeasible point, not a bad command
                devices[p.device, p.overrides] = None, str(e)
        spec, err = devices[p.device, p.overrides]
        if p.model not in models:
            models[p.model] = get_config(p.model)
        items.append(Item(key=point_key(p, spec, models[p.model]), point=p, device=spec.to_dict() if spec else None,
                          device_error=err, model=models[p.model]))
    return items


def point_key(p: Point, spec: DeviceSpec | None, cfg: ModelConfig) -> str:
    """A stable hash of the point's canonical JSON: resolved device fields (or the preset and overrides when
    they do not make a device), model config, the rest of the point and the code's fingerprint."""
    dev = {k: v for k, v in spec.to_dict().items() if k != "sources"} if spec else \
        {"base": p.device, "set": dict(p.overrides)}
    rest = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("device", "overrides", "model")}
    text = json.dumps({"device": dev, "model": dataclasses.asdict(cfg), "code": code_fingerprint(), **rest},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of the sources a prediction runs (waferllm's spec, machine, kernels, model, engine and perf
    packages), read once per process: a worker running other code than the driver is caught."""
    root = Path(waferllm.__file__).parent
    h = hashlib.sha256()
    for sub in ("spec", "machine", "kernels", "model", "engine", "perf"):
        for f in sorted((root / sub).rglob("*")):
            if f.suffix in (".py", ".json") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


# --- the store's columns ----------------------------------------------------------------------------------------
def device_columns() -> list[tuple[str, str]]:
    """One column per DeviceSpec number (the resolved device of the point)."""
    return [(f.name, "BIGINT" if f.type == "int" else "DOUBLE") for f in dataclasses.fields(DeviceSpec)
            if f.name not in ("name", "sources")]


POINT_COLUMNS = [("key", "VARCHAR"), ("device", "VARCHAR"), ("overrides", "VARCHAR"), ("model", "VARCHAR"),
                 ("phase", "VARCHAR"), ("grid_arg", "VARCHAR"), ("prefill_grid_arg", "VARCHAR"), ("dtype", "VARCHAR"),
                 ("context", "BIGINT"), ("input_len", "BIGINT"), ("output_len", "BIGINT"), ("batch", "BIGINT"),
                 ("kv", "VARCHAR"), ("strategy", "VARCHAR")]
RESULT_COLUMNS = [("ok", "BOOLEAN"), ("error", "VARCHAR"), ("tokens_per_s", "DOUBLE"), ("time_s", "DOUBLE"),
                  ("cycles", "DOUBLE"), ("ttft_s", "DOUBLE"), ("tpot_s", "DOUBLE"), ("paper_tokens_per_s", "DOUBLE"),
                  ("grid", "VARCHAR"), ("grid_rows", "BIGINT"), ("grid_cols", "BIGINT"), ("prefill_grid", "VARCHAR"),
                  ("prefill_rows", "BIGINT"), ("prefill_cols", "BIGINT"), ("wafers", "BIGINT"), ("fits", "BOOLEAN"),
                  ("layers_per_region", "BIGINT"), ("pipeline_stages", "BIGINT"), ("min_pipeline_stages", "BIGINT"),
                  ("n_layers", "BIGINT"),
                  ("peak_core_bytes", "BIGINT"), ("routes_used_per_core", "BIGINT"), ("kv_capacity_shift", "BIGINT"),
                  ("kv_capacity_concat", "BIGINT"), ("cores", "BIGINT"), ("mac_utilization", "DOUBLE"),
                  ("sram_bandwidth_utilization", "DOUBLE"), ("warnings", "VARCHAR"), ("compute_s", "DOUBLE"),
                  ("cpu_s", "DOUBLE"), ("code", "VARCHAR"), ("run_id", "VARCHAR"), ("computed_at", "DOUBLE")]


def columns() -> list[tuple[str, str]]:
    """The store's columns (the first, `key`, is its primary key)."""
    return POINT_COLUMNS + device_columns() + RESULT_COLUMNS


def open_store(path) -> Store:
    return Store(path, columns())


# --- evaluating points (in Ray workers) ---------------------------------------------------------------------------
_EVALUATED = [0]


def evaluate(item: Item) -> dict:
    """The store row of one point: its parameters, its device, and predict()'s figures or why it cannot run."""
    p = item.point
    row = {"key": item.key, "device": p.device, "overrides": json.dumps(dict(p.overrides), sort_keys=True),
           "model": p.model, "phase": p.phase, "grid_arg": p.grid, "prefill_grid_arg": p.prefill_grid,
           "dtype": p.dtype, "context": p.context, "input_len": p.input_len, "output_len": p.output_len,
           "batch": p.batch, "kv": p.kv, "strategy": p.strategy, "n_layers": item.model.n_layers}
    t0, c0 = time.perf_counter(), time.process_time()
    if item.device is None:
        row.update(ok=False, error=item.device_error)
    else:
        spec = DeviceSpec(**item.device)
        row.update({k: v for k, v in item.device.items() if k not in ("name", "sources")})
        try:
            row.update(_figures(predict(item.model, spec, **p.predict_kwargs()), item.model))
            row["min_pipeline_stages"] = min_stages(item.model, spec, p, row["grid_rows"], row["grid_cols"])
        except WaferError as e:
            row.update(ok=False, error=str(e))
    row.update(compute_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
    return row


def _figures(pr, cfg: ModelConfig) -> dict:
    rows, cols = (int(v) for v in pr.grid.split("x"))
    pre = [int(v) for v in pr.prefill_grid.split("x")] if pr.prefill_grid else [None, None]
    return dict(ok=True, error=None, tokens_per_s=pr.tokens_per_s, time_s=pr.time_s, cycles=pr.cycles,
                ttft_s=pr.ttft_s, tpot_s=pr.tpot_s, paper_tokens_per_s=pr.paper_tokens_per_s, grid=pr.grid,
                grid_rows=rows, grid_cols=cols, prefill_grid=pr.prefill_grid, prefill_rows=pre[0],
                prefill_cols=pre[1], wafers=pr.wafers, fits=pr.fits, layers_per_region=pr.layers_per_region,
                pipeline_stages=pr.pipeline_stages, peak_core_bytes=pr.peak_core_bytes,
                routes_used_per_core=pr.routes_per_core, kv_capacity_shift=pr.kv_capacity_tokens["shift"],
                kv_capacity_concat=pr.kv_capacity_tokens["concat"], cores=pr.utilization["cores"],
                mac_utilization=pr.utilization["mac"], sram_bandwidth_utilization=pr.utilization["sram_bandwidth"],
                warnings="; ".join(getattr(pr, "warnings", ())) or None)


def min_stages(cfg: ModelConfig, spec: DeviceSpec, p: Point, rows: int, cols: int) -> int | None:
    """The fewest decode regions (pipeline stages) the grid's SRAM allows: the planner's own count on a wafer of
    one rows x cols region, where it must put as many layers on a region as fit (1: every layer on the same
    cores, full tensor parallelism); None if one layer does not fit."""
    tokens = {"decode": p.context or 1, "e2e": (p.input_len or 0) + (p.output_len or 0), "prefill": 1}[p.phase]
    try:
        most = max_layers_per_core(cfg, spec.replace(width_cores=cols, height_cores=rows), (rows, cols), p.dtype,
                                   min_tokens=tokens * p.batch)
    except WaferError:
        return None
    return math.ceil(cfg.n_layers / most)


def evaluate_batch(items: Sequence[Item], run_id: str, share: bool = True) -> list[dict]:
    """Rows of a batch of points (a Ray task). The worker's ledger caches carry shared traces from batch to
    batch; they are cleared every CLEAR_EVERY points, since per-program entries only grow. share=False
    turns trace sharing off (engine/cost.share_traces), to measure what it saves."""
    share_traces(share)
    if _EVALUATED[0] >= CLEAR_EVERY:
        handoff.clear_caches()
        _EVALUATED[0] = 0
    rows = [evaluate(it) for it in items]
    _EVALUATED[0] += len(rows)
    now, code = time.time(), code_fingerprint()
    return [dict(r, code=code, run_id=run_id, computed_at=now) for r in rows]


def batches(items: Sequence[Item], size: int) -> list[list[Item]]:
    """Items in batches of at most `size`, points that share traced layers together: sorted by model, dtype,
    device cost constants (engine/cost.trace_key), phase and grids, then cut."""
    def group(it: Item) -> str:
        p = it.point
        dev = trace_key(DeviceSpec(**it.device)) if it.device else ()
        return repr((p.model, p.dtype, p.strategy, p.kv, dev, p.phase, p.grid, p.prefill_grid, p.batch, p.context,
                     p.input_len))

    ordered = sorted(items, key=group)
    return [ordered[i:i + size] for i in range(0, len(ordered), max(1, size))]


# --- the driver ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Summary:
    """What a run did: points in the space, computed now, found in the store; seconds and workers."""

    points: int
    computed: int
    resumed: int
    infeasible: int
    workers: int  # Ray CPUs the batches ran on (0: nothing to compute)
    wall_s: float  # the whole run, Ray's start included
    compute_s: float  # from the first batch submitted to the last result stored
    cpu_s: float  # CPU seconds the workers spent on the computed points
    out: str
    run_id: str

    @property
    def points_per_s(self) -> float:
        return self.computed / self.compute_s if self.compute_s > 0 else 0.0

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), points_per_s=self.points_per_s,
                    points_per_s_per_core=self.points_per_s / max(self.workers, 1),
                    points_per_cpu_s=self.computed / self.cpu_s if self.cpu_s > 0 else 0.0)


def explore(items: Sequence[Item], store: Store, *, address: str | None = None, num_cpus: int | None = None,
            batch_size: int = 16, on_start: Callable[[int, int, int], None] | None = None,
            on_rows: Callable[[int], None] | None = None, executor: str = "ray", share: bool = True) -> Summary:
    """Compute every item whose key is not in the store, writing rows as batches arrive.

    executor 'ray': Ray tasks (a local runtime with num_cpus, or the cluster at `address`); 'local': in this
    process, one batch at a time (tests). on_start(todo, resumed, workers) once the workers are ready;
    on_rows(n) after each write; share: engine/cost.share_traces in the workers."""
    t0 = time.perf_counter()
    items = list({it.key: it for it in items}.values())  # a point listed twice is computed once
    done = store.keys()
    todo = [it for it in items if it.key not in done]
    resumed = len(items) - len(todo)
    run_id = uuid.uuid4().hex[:12]
    work = batches(todo, batch_size)
    computed = infeasible = 0
    cpu = 0.0
    with _pool(executor, address, num_cpus, bool(work)) as pool:
        if on_start:
            on_start(len(todo), resumed, pool.workers)
        t1 = time.perf_counter()
        for rows in pool.map(work, run_id, share):
            _same_code(rows)
            computed += store.write(rows)
            infeasible += sum(1 for r in rows if not r["ok"])
            cpu += sum(r["cpu_s"] for r in rows)
            if on_rows:
                on_rows(len(rows))
        t2 = time.perf_counter()
    return Summary(points=len(items), computed=computed, resumed=resumed, infeasible=infeasible, workers=pool.workers,
                   wall_s=time.perf_counter() - t0, compute_s=t2 - t1, cpu_s=cpu, out=str(store.path), run_id=run_id)


def _same_code(rows: list[dict]) -> None:
    """ExploreError when a worker ran other sources than this process keyed its points with."""
    other = {r["code"] for r in rows} - {code_fingerprint()}
    if other:
        raise ExploreError(f"a worker runs other waferllm sources (code {', '.join(sorted(other))}) than this "
                           f"process ({code_fingerprint()}): its results would be stored under the wrong keys; "
                           "run the same version everywhere (was a file edited during the run?)")


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """ExploreError unless something answers on the address's host:port (ray://host:port or host:port)."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except ValueError:
        raise ExploreError(f"bad --ray-address {address!r}; expected HOST:PORT, ray://HOST:PORT or auto") from None
    except OSError as e:
        raise ExploreError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


class _pool:
    """Where batches run: `map` yields each batch's rows as it completes (Ray: at most two batches a worker in
    flight, so a stopped run loses little work)."""

    def __init__(self, executor: str, address: str | None, num_cpus: int | None, needed: bool):
        if executor not in ("ray", "local"):
            raise ExploreError(f"unknown executor {executor!r}; known: ray, local")
        self.ray = None
        self.started = False
        self.workers = 1 if needed else 0
        if executor == "ray" and needed:
            self._start_ray(address, num_cpus)

    def _start_ray(self, address: str | None, num_cpus: int | None) -> None:
        import logging

        import ray

        if not ray.is_initialized():
            if address not in (None, "auto", "local"):
                _probe(address)  # Ray itself retries an unreachable address for minutes
            opts = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            if address is None:
                opts |= dict(num_cpus=num_cpus, object_store_memory=128 * 1024 ** 2)
            try:
                with warnings.catch_warnings():  # Ray starts its processes with fork+exec: JAX's threads are safe
                    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                    ray.init(address=address, **opts)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ExploreError(f"cannot start or reach Ray at {address or 'a local runtime'}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            self.started = True
        self.ray = ray
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, work: list[list[Item]], run_id: str, share: bool) -> Iterator[list[dict]]:
        if self.ray is None:
            was = share_traces(share)
            try:
                for b in work:
                    yield evaluate_batch(b, run_id, share)
            finally:
                share_traces(was)
            return
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=0)(evaluate_batch)
        queue, pending = iter(work), {}

        def submit(n: int) -> None:
            for b in itertools.islice(queue, n):
                pending[task.remote(b, run_id, share)] = b

        submit(2 * self.workers)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    pending.pop(ref)
                    rows = ray.get(ref)
                    submit(1)
                    yield rows
        finally:
            for ref in pending:  # stopped: cancel what is still queued or running
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 (Ray already shut down: nothing left to cancel)
                    pass

    def __enter__(self) -> "_pool":
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()


# --- reading results back ------------------------------------------------------------------------------------------
def pareto(rows: Iterable[dict], x: str, y: str, x_min: bool = True, y_max: bool = True) -> list[dict]:
    """The rows no other row beats on both columns (x smaller if x_min, y larger if y_max), sorted by x;
    rows without both numbers are left out."""
    sx, sy = (1 if x_min else -1), (1 if y_max else -1)
    ok = sorted((r for r in rows if r.get(x) is not None and r.get(y) is not None),
                key=lambda r: (sx * r[x], -sy * r[y]))
    front, best = [], None
    for r in ok:
        if best is None or sy * r[y] > best:
            front.append(r)
            best = sy * r[y]
    return front


def series(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """Rows by 'model phase' (what a plot draws as one series)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(f"{r['model']} {r['phase']}", []).append(r)
    return out
