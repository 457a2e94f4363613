"""Generation on the simulated wafer: place a model, feed the prompt, decode token by token, cost it all.

gpt-fast's phases: prefill (MeshGEMM on the prefill grid, or the prompt through the decode path token
by token), decode_one_token, generate (a generator of token ids); every step is also costed. Several
sequences decode together through engine.batch(...) (see engine/batch.py).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from waferllm import WaferError
from waferllm.engine import handoff, kv
from waferllm.engine.batch import Batch, Timing, TokenEvent
from waferllm.engine.cost import step_ledger
from waferllm.engine.decode import DecodeProgram, make_decode_step
from waferllm.engine.grids import GridArg, resolve_grids
from waferllm.engine.placement import DecodePlan, plan_decode, smallest_fit
from waferllm.engine.sampling import SamplingParams
from waferllm.engine.prefill import PrefillProgram
from waferllm.engine.prefill_tiles import embed_tiles, place_weights
from waferllm.engine.tiles import mesh_weights, shard_cache, shard_weights
from waferllm.machine import Ledger
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
        if kv_policy not in kv.POLICIES:
            raise WaferError(f"unknown KV policy {kv_policy!r}; known: {', '.join(kv.POLICIES)}")
        self.cfg, self.spec, self.dtype, self.tokenizer = cfg, spec, dtype, tokenizer
        self.grids = resolve_grids(spec, grid=grid, prefill_grid=prefill_grid,
                                   auto=smallest_fit(cfg, spec, dtype, max_tokens))
        self.plan: DecodePlan = plan_decode(cfg, spec, self.grids.decode, dtype)
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
        self.devices = devices  # a jax.sharding.Mesh with axes (gy, gx) over the grid, or None
        if devices is not None:
            self.weights = shard_weights(self.weights, devices)
        self.max_tokens = max_tokens
        # the busiest row's worst case: shift spreads tokens evenly; concat piles them on the tail row
        self.slots = math.ceil(max_tokens / self.plan.rows) if kv_policy == "shift" else max_tokens
        self._step = make_decode_step(self.prog)
        self._put = jax.jit(_put_lane, donate_argnums=0)
        self.eos_ids = frozenset(cfg.eos_token_ids) | frozenset(getattr(tokenizer, "eos_ids", ()) or ())
        self.ledger = Ledger(clock_hz=spec.clock_hz)  # every costed step of the last generation

    # --- capacity ----------------------------------------------------------------
    def lane_slots(self, lanes: int) -> int:
        """KV slots per row each of `lanes` sequences gets when they share the plan's cache memory."""
        return self.plan.kv_tokens_per_row // lanes

    def check_capacity(self, n_prompt: int, max_new: int, *, lanes: int = 1, slots: int | None = None) -> None:
        """Raise CapacityError (with both policies' capacities) before any work if the request cannot fit."""
        if n_prompt < 1:
            raise CapacityError("empty prompt: at least one token is needed")
        per_lane = self.lane_slots(lanes) if slots is None else min(slots, self.lane_slots(lanes))
        need = n_prompt + max_new
        if self._busiest(n_prompt, max_new) > per_lane or need > min(self.max_tokens, self.cfg.max_seq_len):
            cap = {k: v * per_lane // self.plan.kv_tokens_per_row for k, v in self.plan.kv_capacity_tokens().items()}
            share = f" per sequence ({lanes} sequences share the cache)" if lanes > 1 else ""
            raise CapacityError(f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new}) = {need} tokens exceeds "
                                f"the KV capacity{share} of this plan: shift policy {cap['shift']}, concat policy "
                                f"{cap['concat']} tokens (engine limit {self.max_tokens}, model context "
                                f"{self.cfg.max_seq_len}) on grid {self.plan.grid}")

    def slots_for(self, n_prompt: int, max_new: int, lanes: int = 1) -> int:
        """KV slots per row a request needs at its busiest row (rounded to 16 to share compiled steps)."""
        return min(16 * math.ceil(self._busiest(n_prompt, max_new) / 16), max(self.lane_slots(lanes), 1))

    def _busiest(self, n_prompt: int, max_new: int) -> int:
        """Tokens on the fullest KV row at the end of a request (prompt K/V from the prefill, if any)."""
        p = n_prompt if self.pre is not None else 0
        return int(np.max(kv.counts(self.policy, n_prompt + max_new, p, self.plan.rows, np)))

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
        return np.asarray(nxt), logits, (kc, vc)

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
        return np.asarray(logits_x).reshape(-1)[: self.cfg.vocab_size]

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
