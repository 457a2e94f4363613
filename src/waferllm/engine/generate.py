"""Generation on the simulated wafer: place a model, feed the prompt, decode token by token, cost it all.

gpt-fast's phases: prefill (MeshGEMM on the prefill grid, or the prompt through the decode path token
by token), decode_one_token, generate (a generator of token ids); every step is also costed. Several
sequences decode together through engine.batch(...) (see engine/batch.py).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from waferllm import WaferError
from waferllm.engine import handoff, kv
from waferllm.engine.batch import Batch, Timing, TokenEvent
from waferllm.engine.cost import step_ledger
from waferllm.engine.decode import DecodeProgram, make_decode_step
from waferllm.engine.grids import AutoGrids, Grid, GridArg, resolve_grids
from waferllm.engine.placement import DecodePlan, PlanError, plan_decode, smallest_fit
from waferllm.engine.sampling import SamplingParams
from waferllm.engine.prefill import PrefillProgram
from waferllm.engine.prefill_tiles import embed_tiles, place_weights
from waferllm.engine.tiles import mesh_weights, shard_cache, shard_weights
from waferllm.machine import Ledger
from waferllm.machine.shard import device_mesh, to_host
from waferllm.model.config import ModelConfig
from waferllm.model.weights import ModelWeights
from waferllm.spec import DeviceSpec, array_dtype, check_dtype


class CapacityError(WaferError):
    """The request needs more KV cache than the plan holds."""


class Engine:
    """A model placed on a device: weights tiled on the decode grid, a jitted decode step, a cost model."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, spec: DeviceSpec, *, grid: GridArg = "auto",
                 dtype: str = "float32", max_tokens: int = 512, tokenizer=None, devices=None,
                 prefill_grid: GridArg | None = "auto", kv_policy: str = "shift"):
        """grid / prefill_grid: 'auto', 'RxC' or (R, C), resolved by engine/grids.resolve_grids with the
        engine's meaning of auto (placement.smallest_fit for max_tokens); prefill_grid None or 'none': the
        prompt goes through the decode path token by token."""
        check_dtype(dtype)
        if not isinstance(max_tokens, numbers.Integral) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise CapacityError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if kv_policy not in kv.POLICIES:
            raise WaferError(f"unknown KV policy {kv_policy!r}; known: {', '.join(kv.POLICIES)}")
        self.cfg, self.spec, self.dtype, self.tokenizer = cfg, spec, dtype, tokenizer
        self.grids = resolve_grids(spec, grid=grid, prefill_grid=prefill_grid,
                                   auto=_engine_auto(cfg, spec, dtype, max_tokens))
        self.plan: DecodePlan = _plan(cfg, spec, self.grids.decode, dtype, max_tokens)
        self.policy = kv_policy
        self.prog = DecodeProgram(cfg=cfg, plan=self.plan, spec=spec, policy=kv_policy)
        self.pre = None
        if self.grids.prefill is not None:
            pr, pc = self.grids.prefill
            self.pre = PrefillProgram(cfg=cfg, spec=spec, rows=pr, cols=pc, dtype=dtype)
            scratch = Ledger(clock_hz=1.0)  # numeric runs charge a scratch ledger; costs come from ttft_ledger
            self.pre_weights = place_weights(cfg, weights, self.pre.mesh(scratch), array_dtype(dtype))
            self._pre_layer = jax.jit(lambda w, x: self.pre.layer(self.pre.mesh(scratch), w, x))
            self._handoff = jax.jit(lambda mw, x, ks, vs, T, slots: _handoff_head(self.prog, self.pre, mw, x, ks, vs,
                                                                                   T, slots), static_argnums=(4, 5))
        self.tok_emb = weights.tok_emb
        self.weights = mesh_weights(cfg, weights, self.plan)
        if isinstance(devices, str):  # "all": every device of every process (multi-process runs)
            if devices != "all":
                raise WaferError(f"devices must be a jax.sharding.Mesh, None or 'all', got {devices!r}")
            devices = device_mesh(self.plan.rows, self.plan.cols) if jax.device_count() > 1 else None
        self.devices = devices  # a jax.sharding.Mesh with axes (gy, gx) over the grid, or None
        if devices is not None:
            self.weights = shard_weights(self.weights, devices)
        self.max_tokens = max_tokens
        # the busiest row's worst case: shift spreads tokens evenly; concat piles them on the tail row
        self.slots = -(-max_tokens // self.plan.rows) if kv_policy == "shift" else max_tokens
        self._step = make_decode_step(self.prog)
        self._put = jax.jit(_put_lane, donate_argnums=0)
        self.eos_ids = frozenset(cfg.eos_token_ids) | frozenset(getattr(tokenizer, "eos_ids", ()) or ())
        self.ledger = Ledger(clock_hz=spec.clock_hz)  # every costed step of the last generation

    # --- capacity ----------------------------------------------------------------
    def lane_slots(self, lanes: int) -> int:
        """KV slots per row each of `lanes` sequences gets when they share the plan's cache memory."""
        return self.plan.kv_tokens_per_row // lanes

    def check_capacity(self, n_prompt: int, max_new: int, *, lanes: int = 1, slots: int | None = None) -> None:
        """Raise CapacityError before any work if the request cannot fit, naming the binding limit first: the
        model's context, then the KV cache (with both policies' capacities), then the engine's max_tokens.
        Exact in Python integers, so an absurd max_new (10**30) is refused, not overflowed."""
        check_context(self.cfg, n_prompt, max_new)
        need = n_prompt + max_new
        per_lane = self.lane_slots(lanes) if slots is None else min(slots, self.lane_slots(lanes))
        if self._busiest(n_prompt, max_new) > per_lane:
            cap = {k: v * per_lane // self.plan.kv_tokens_per_row for k, v in self.plan.kv_capacity_tokens().items()}
            share = f" per sequence ({lanes} sequences share the cache)" if lanes > 1 else ""
            raise CapacityError(f"{_request(n_prompt, max_new)} exceeds the KV capacity{share} of this plan: "
                                f"shift policy {cap['shift']}, concat policy {cap['concat']} tokens (engine limit "
                                f"{self.max_tokens}, model context {self.cfg.max_seq_len}) on grid {self.plan.grid}")
        if need > self.max_tokens:
            raise CapacityError(f"{_request(n_prompt, max_new)} exceeds this engine's limit of {self.max_tokens} "
                                f"tokens (the max_tokens it was placed for; model context {self.cfg.max_seq_len})")

    def slots_for(self, n_prompt: int, max_new: int, lanes: int = 1) -> int:
        """KV slots per row a request needs at its busiest row (rounded to 16 to share compiled steps)."""
        return min(16 * math.ceil(self._busiest(n_prompt, max_new) / 16), max(self.lane_slots(lanes), 1))

    def _busiest(self, n_prompt: int, max_new: int) -> int:
        """Tokens on the fullest KV row at the end of a request (prompt K/V from the prefill, if any)."""
        p = n_prompt if self.pre is not None else 0
        return kv.fullest_row(self.policy, n_prompt + max_new, p, self.plan.rows)

    # --- numeric steps -------------------------------------------------------------
    def new_cache(self, lanes: int = 1, slots: int | None = None):
        """Zeroed K and V caches, one [lanes, R, slots, C, cb] array per layer."""
        p = self.plan
        shape = (lanes, p.rows, slots or self.slots, p.cols, p.heads.cb)
        z = [jnp.zeros(shape, array_dtype(self.dtype)) for _ in range(2 * self.cfg.n_layers)]
        if self.devices is not None:
            z = [shard_cache(c, self.devices) for c in z]
        return tuple(z[: self.cfg.n_layers]), tuple(z[self.cfg.n_layers:])

    def step(self, caches, tokens, ns, ps, active):
        """One numeric decode step over every lane: (greedy tokens [B], logits_x [B, C_lm, vb], caches)."""
        kc, vc = caches
        nxt, logits, kc, vc = self._step(self.weights, kc, vc, jnp.asarray(tokens, jnp.int32),
                                         jnp.asarray(ns, jnp.float32), jnp.asarray(ns, jnp.int32),
                                         jnp.asarray(ps, jnp.int32), jnp.asarray(active, bool))
        return to_host(nxt), logits, (kc, vc)

    def decode_one_token(self, caches, token: int, n: int, p: int = 0):
        """A batch of one: feed token at position n (n cached, p from a prefill) -> (id, logits_x, caches, s)."""
        nxt, logits, caches = self.step(caches, [token], [n], [p], [True])
        led = step_ledger(self.prog, n, caches[0][0].shape[2], p)
        self.ledger.merge(led)
        return int(nxt[0]), logits[0], caches, led.time_s

    def fill_lane(self, caches, lane: int, prompt_ids: Sequence[int], slots: int):
        """Put a prompt into one lane: (first greedy token, its logits_x, caches, predicted TTFT s, prefill count)."""
        if self.pre is not None:
            nxt, logits, (kc, vc), ttft = self.prefill(prompt_ids, slots)
            return nxt, logits, self._put(caches, jnp.int32(lane), (kc, vc)), ttft, len(prompt_ids)
        p = self.plan
        zero = jnp.zeros((p.rows, slots, p.cols, p.heads.cb), array_dtype(self.dtype))
        caches = self._put(caches, jnp.int32(lane), ((zero,) * self.cfg.n_layers,) * 2)
        lanes = caches[0][0].shape[0]
        tokens, ns, active = np.zeros(lanes, np.int32), np.zeros(lanes, np.int32), np.arange(lanes) == lane
        ttft = 0.0
        for n, tok in enumerate(prompt_ids):  # the reference path: the prompt through the decode program
            tokens[lane], ns[lane] = tok, n
            nxt, logits, caches = self.step(caches, tokens, ns, np.zeros(lanes, np.int32), active)
            led = step_ledger(self.prog, n, slots, 0)
            self.ledger.merge(led)
            ttft += led.time_s
        return int(nxt[lane]), logits[lane], caches, ttft, 0

    def logits_vector(self, logits_x) -> np.ndarray:
        return to_host(logits_x).reshape(-1)[: self.cfg.vocab_size]

    # --- generation --------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, timing: Timing | None = None
                 ) -> Iterator[TokenEvent]:
        """Yield generated token ids until EOS or max_new_tokens (stop strings: the caller stops early)."""
        self.check_capacity(len(prompt_ids), params.max_new_tokens)
        batch = Batch(self, 1, self.slots_for(len(prompt_ids), params.max_new_tokens))
        self.ledger = Ledger(clock_hz=self.spec.clock_hz)
        seq, ev = batch.add(prompt_ids, params, timing)
        yield ev
        while not seq.done:
            for _, ev in batch.step():
                yield ev

    def batch(self, requests: Sequence[tuple[Sequence[int], SamplingParams]], lanes: int | None = None) -> Batch:
        """A batch sized for these requests (all checked before any work); add them with Batch.add."""
        lanes = lanes or len(requests)
        self.check_batch(requests, lanes)
        slots = max(self.slots_for(len(ids), params.max_new_tokens, lanes) for ids, params in requests)
        self.ledger = Ledger(clock_hz=self.spec.clock_hz)
        return Batch(self, lanes, slots)

    def check_batch(self, requests: Sequence[tuple[Sequence[int], SamplingParams]], lanes: int | None = None) -> None:
        """Every request fits its lane's share of the cache (CapacityError otherwise), before any work."""
        for ids, params in requests:
            self.check_capacity(len(ids), params.max_new_tokens, lanes=lanes or len(requests))

    def prefill(self, prompt_ids: Sequence[int], slots: int | None = None):
        """The prompt on the prefill grid, hand-off to the decode grid, first token from the last position.

        Returns (greedy first token, logits_x, one lane's caches [R, slots, C, cb] per layer, TTFT in s).
        """
        slots = slots or self.slots
        T = len(prompt_ids)
        lay = self.pre.layout(T)
        scratch = Ledger(clock_hz=1.0)
        x = handoff.embed_prompt(self.pre.mesh(scratch), self.prog, jnp.asarray(embed_tiles(lay, self.tok_emb, prompt_ids)))
        ks, vs = [], []
        for w in self.pre_weights:  # one compiled layer program serves every layer
            x, k, v = self._pre_layer(w, x)
            ks.append(k)
            vs.append(v)
        nxt, logits, kc, vc = self._handoff(self.weights, x, tuple(ks), tuple(vs), T, slots)
        led = self.prefill_ledger(T)
        self.ledger.merge(led)
        return int(nxt[0]), logits[0], (kc, vc), led.time_s

    def prefill_ledger(self, n_prompt: int) -> Ledger:
        """TTFT's costs (handoff.ttft_ledger: the same function `waferllm predict` uses)."""
        return handoff.ttft_ledger(self.prog, self.pre, n_prompt)


def _request(n_prompt: int, max_new: int) -> str:
    return f"prompt ({plural(n_prompt, 'token')}) + max_new_tokens ({max_new}) = {n_prompt + max_new} tokens"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def check_context(cfg: ModelConfig, n_prompt: int, max_new: int) -> None:
    """CapacityError when a request is empty or longer than the model's context (checked before any placement:
    no grid can lift that limit)."""
    if n_prompt < 1:
        raise CapacityError("empty prompt: at least one token is needed")
    if n_prompt + max_new > cfg.max_seq_len:
        fix = (f"shorten the prompt or lower max_new_tokens (at most {cfg.max_seq_len - n_prompt} with this "
               "prompt)" if n_prompt < cfg.max_seq_len else "shorten the prompt")
        raise CapacityError(f"{_request(n_prompt, max_new)} exceeds the context of {cfg.name or 'the model'} "
                            f"({cfg.max_seq_len} tokens); {fix}")


def _plan(cfg: ModelConfig, spec: DeviceSpec, grid: Grid, dtype: str, max_tokens: int) -> DecodePlan:
    """The decode plan that leaves room for max_tokens of KV cache (as `predict` plans it, and as auto sized
    the grid), or, when the grid cannot, the densest plan: check_capacity then names what it holds."""
    try:
        return plan_decode(cfg, spec, grid, dtype, min_tokens=max_tokens)
    except PlanError:
        return plan_decode(cfg, spec, grid, dtype)


def _engine_auto(cfg: ModelConfig, spec: DeviceSpec, dtype: str, max_tokens: int) -> AutoGrids:
    """placement.smallest_fit, whose 'no square grid fits' says, when a layer fits but the KV cache does not,
    how many tokens the largest square grid holds against the tokens asked for."""
    auto = smallest_fit(cfg, spec, dtype, max_tokens)

    def decode() -> Grid:
        try:
            return auto.decode()
        except PlanError:
            side = min(spec.height_cores, spec.width_cores)
            try:
                cap = plan_decode(cfg, spec, (side, side), dtype).kv_capacity_tokens()["shift"]
            except PlanError:
                cap = None
            if cap is None:
                raise  # not even one layer fits: placement's own message
            raise CapacityError(f"a KV cache of {max_tokens} tokens does not fit {spec.name} at any square grid: "
                                f"the largest, {side}x{side}, holds {cap} tokens (shift policy)") from None

    return AutoGrids(name=auto.name, decode=decode, prefill=auto.prefill)


def _put_lane(caches, lane, new):
    """Write one lane's K/V ([R, slots, C, cb] per layer) into the batched caches."""
    return tuple(tuple(c.at[lane].set(x.astype(c.dtype)) for c, x in zip(cs, xs)) for cs, xs in zip(caches, new))


def _handoff_head(prog: DecodeProgram, pre: PrefillProgram, mw, x, ks, vs, T: int, slots: int):
    """Hand-off and first token, one compiled program per prompt length: every layer's K/V (ks, vs) into
    one lane's decode caches, the last prompt position's hidden state (tiles x) to the LM head.

    Returns (greedy first token [1], logits_x [1, C_lm, vb], K caches, V caches per layer [R, slots, C, cb]).
    """
    dm, lm = prog.mesh(Ledger(clock_hz=1.0)), prog.lm_mesh(Ledger(clock_hz=1.0))
    lay = pre.layout(T)
    caches = handoff.kv_to_decode(dm, prog, lay, jnp.stack([jnp.stack(ks), jnp.stack(vs)]), slots)
    logits = prog.head(lm, mw, handoff.hidden_to_decode(dm, prog, lay, x))
    n = len(ks)
    return prog.argmax(lm, logits), logits, tuple(caches[0, i] for i in range(n)), tuple(caches[1, i] for i in range(n))
