"""Generation on the simulated wafer: place a model, feed the prompt, decode token by token, cost it all.

gpt-fast's phases: prefill (here: the prompt through the decode path, token by token, until the mesh
prefill lands), decode_one_token, generate (a generator of token ids); every step is also costed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from waferllm import WaferError
from waferllm.engine import handoff, kv
from waferllm.engine.cost import head_ledger, sampling_ledger, step_ledger
from waferllm.engine.decode import DecodeProgram, make_decode_step
from waferllm.engine.placement import DecodePlan, auto_grid, plan_decode
from waferllm.engine.sampling import SamplingParams, sample
from waferllm.engine.prefill import PrefillProgram, prefill_weights, weight_shapes
from waferllm.engine.tiles import DTYPES, mesh_weights, shard_cache, shard_weights
from waferllm.machine import Ledger, Mesh, parse_grid
from waferllm.model.config import ModelConfig
from waferllm.model.weights import ModelWeights
from waferllm.spec import DeviceSpec


class CapacityError(WaferError):
    """The request needs more KV cache than the plan holds."""


@dataclass
class TokenEvent:
    """One generated token with its costed on-device time."""

    token_id: int
    predicted_s: float


@dataclass
class Timing:
    """Predicted on-device figures (vLLM names) and the simulation's wall time."""

    ttft_s: float = 0.0
    decode_s: list[float] = field(default_factory=list)

    @property
    def tpot_s(self) -> float:
        return float(np.mean(self.decode_s)) if self.decode_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return 1.0 / self.tpot_s if self.tpot_s else 0.0


class Engine:
    """A model placed on a device: weights tiled on the decode grid, a jitted decode step, a cost model."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, spec: DeviceSpec, *, grid: str = "auto",
                 dtype: str = "float32", max_tokens: int = 512, tokenizer=None, devices=None,
                 prefill_grid: str | None = "auto", kv_policy: str = "shift"):
        if dtype not in DTYPES:
            raise WaferError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        self.cfg, self.spec, self.dtype, self.tokenizer = cfg, spec, dtype, tokenizer
        rc = auto_grid(cfg, spec, dtype, max_tokens) if grid == "auto" else grid
        self.plan: DecodePlan = plan_decode(cfg, spec, rc, dtype)
        if kv_policy not in kv.POLICIES:
            raise WaferError(f"unknown KV policy {kv_policy!r}; known: {', '.join(kv.POLICIES)}")
        self.policy = kv_policy
        self.prog = DecodeProgram(cfg=cfg, plan=self.plan, spec=spec, policy=kv_policy)
        self.pre = None
        if prefill_grid is not None:  # None: the prompt goes through the decode path token by token
            side = min(self.plan.rows, self.plan.cols)  # square: lcm(R, C) compute-shift steps explode otherwise
            pr, pc = (side, side) if prefill_grid == "auto" else parse_grid(prefill_grid)
            Mesh(spec, pr, pc)  # the prefill grid must exist on the device
            self.pre = PrefillProgram(cfg=cfg, spec=spec, rows=pr, cols=pc, dtype=dtype)
            self.pre_weights = prefill_weights(cfg, weights, DTYPES[dtype])
            self._pre_layer = jax.jit(lambda w, x: self.pre.layer(self.pre.mesh(Ledger(clock_hz=1.0)), w, x))
            self._head = jax.jit(lambda mw, x: _head_argmax(self.prog, mw, x))
        self.tok_emb = weights.tok_emb
        self.weights = mesh_weights(cfg, weights, self.plan)
        self.devices = devices  # a jax.sharding.Mesh with axes (gy, gx) over the grid, or None
        if devices is not None:
            self.weights = shard_weights(self.weights, devices)
        self.max_tokens = max_tokens
        # the busiest row's worst case: shift spreads tokens evenly; concat piles them on the tail row
        self.slots = math.ceil(max_tokens / self.plan.rows) if kv_policy == "shift" else max_tokens
        self._step = make_decode_step(self.prog)
        self.ledger = Ledger(clock_hz=spec.clock_hz)  # every costed step of the last generation

    # --- capacity ----------------------------------------------------------------
    def check_capacity(self, n_prompt: int, max_new: int) -> None:
        cap = self.plan.kv_capacity_tokens()
        need = n_prompt + max_new
        if n_prompt < 1:
            raise CapacityError("empty prompt: at least one token is needed")
        if self._busiest(n_prompt, max_new) > self.plan.kv_tokens_per_row or need > min(self.max_tokens, self.cfg.max_seq_len):
            raise CapacityError(f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new}) = {need} tokens exceeds "
                                f"the KV capacity of this plan: shift policy {cap['shift']}, concat policy "
                                f"{cap['concat']} tokens (engine limit {self.max_tokens}, model context "
                                f"{self.cfg.max_seq_len}) on grid {self.plan.grid}")

    def slots_for(self, n_prompt: int, max_new: int) -> int:
        """KV slots per row this request needs at its busiest row (rounded to 16 to share compiled steps)."""
        return 16 * math.ceil(self._busiest(n_prompt, max_new) / 16)

    def _busiest(self, n_prompt: int, max_new: int) -> int:
        """Tokens on the fullest KV row at the end of a request (prompt K/V from the prefill, if any)."""
        p = n_prompt if self.pre is not None else 0
        return int(np.max(kv.counts(self.policy, n_prompt + max_new, p, self.plan.rows, np)))

    # --- phases ------------------------------------------------------------------
    def new_cache(self):
        p = self.plan
        shape = (p.rows, self.slots, p.cols, p.heads.cb)
        z = [jnp.zeros(shape, DTYPES[self.dtype]) for _ in range(2 * self.cfg.n_layers)]
        if self.devices is not None:
            z = [shard_cache(c, self.devices) for c in z]
        return tuple(z[: self.cfg.n_layers]), tuple(z[self.cfg.n_layers:])

    def decode_one_token(self, caches, token: int, n: int, p: int = 0):
        """Feed one token at position n (n tokens cached, p from a prefill): (greedy id, logits_x, caches, s)."""
        kc, vc = caches
        nxt, logits, kc, vc = self._step(self.weights, kc, vc, jnp.int32(token), jnp.float32(n), jnp.int32(n),
                                         jnp.int32(p))
        led = step_ledger(self.prog, n, self.slots, p)
        self.ledger.merge(led)
        return int(nxt), logits, (kc, vc), led.time_s

    def logits_vector(self, logits_x) -> np.ndarray:
        return np.asarray(logits_x).reshape(-1)[: self.cfg.vocab_size]

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, timing: Timing | None = None
                 ) -> Iterator[TokenEvent]:
        """Yield generated token ids until EOS, a stop condition checked by the caller, or max_new_tokens."""
        self.check_capacity(len(prompt_ids), params.max_new_tokens)
        self.slots = self.slots_for(len(prompt_ids), params.max_new_tokens)
        timing = timing if timing is not None else Timing()
        self.ledger = Ledger(clock_hz=self.spec.clock_hz)
        rng = np.random.default_rng(params.seed)
        if self.pre is not None:
            nxt, logits, caches, timing.ttft_s = self.prefill(prompt_ids)
            p = len(prompt_ids)
        else:
            caches, t, p = self.new_cache(), 0.0, 0
            for n, tok in enumerate(prompt_ids):  # the prompt, token by token (the reference path)
                nxt, logits, caches, dt = self.decode_one_token(caches, tok, n)
                t += dt
            timing.ttft_s = t
        n = len(prompt_ids)
        eos = set(self.cfg.eos_token_ids) | set(getattr(self.tokenizer, "eos_ids", ()) or ())
        extra = 0.0 if params.greedy else sampling_ledger(self.prog, params)
        for i in range(params.max_new_tokens):
            if not params.greedy:
                tok = sample(self.logits_vector(logits), params, rng)
                self.ledger.merge(extra)
                if i == 0:
                    timing.ttft_s += extra.time_s
                else:
                    timing.decode_s[-1] += extra.time_s
            else:
                tok = nxt
            yield TokenEvent(token_id=tok, predicted_s=timing.ttft_s if i == 0 else timing.decode_s[-1])
            if (tok in eos and not params.ignore_eos) or i == params.max_new_tokens - 1:
                return
            nxt, logits, caches, dt = self.decode_one_token(caches, tok, n, p)
            timing.decode_s.append(dt)
            n += 1

    def prefill(self, prompt_ids: Sequence[int]):
        """The prompt on the prefill grid, hand-off to the decode grid, first token from the last position.

        Returns (greedy first token, logits_x, caches, predicted TTFT in seconds).
        """
        T = len(prompt_ids)
        bucket = 32 * math.ceil(T / 32)  # padded tail rows never reach real ones (causal): fewer compiles
        x = jnp.asarray(np.pad(self.tok_emb[np.asarray(prompt_ids)], ((0, bucket - T), (0, 0))))
        ks, vs = [], []
        for w in self.pre_weights:
            x, k, v = self._pre_layer(w, x)
            ks.append(np.asarray(k[:T]))
            vs.append(np.asarray(v[:T]))
        nxt, logits = self._head(self.weights, x[T - 1])
        kc = tuple(jnp.asarray(handoff.prompt_cache(self.prog, k, self.slots), DTYPES[self.dtype]) for k in ks)
        vc = tuple(jnp.asarray(handoff.prompt_cache(self.prog, v, self.slots), DTYPES[self.dtype]) for v in vs)
        if self.devices is not None:
            kc, vc = tuple(shard_cache(c, self.devices) for c in kc), tuple(shard_cache(c, self.devices) for c in vc)
        led = self.prefill_ledger(T)
        self.ledger.merge(led)
        return int(nxt), logits, (kc, vc), led.time_s

    def prefill_ledger(self, n_prompt: int) -> Ledger:
        """TTFT's costs: embedding rows to the prefill grid, every layer (shape-only run of the same
        program), hand-off, final norm + LM head + argmax on the decode side."""
        led = Ledger(clock_hz=self.spec.clock_hz)
        led.merge(handoff.embed_ledger(self.prog, self.pre, n_prompt))
        pl = Ledger(clock_hz=self.spec.clock_hz)
        x = jax.ShapeDtypeStruct((n_prompt, self.cfg.dim), np.float32)
        self.pre.run(self.pre.mesh(pl), weight_shapes(self.cfg, DTYPES[self.dtype]), x)
        led.merge(pl)
        led.merge(handoff.handoff_ledger(self.prog, self.pre, n_prompt, jnp.dtype(DTYPES[self.dtype]).itemsize))
        led.merge(first_token_ledger(self.prog), "first_token/")
        return led


def _head_argmax(prog: DecodeProgram, mw, x):
    lm = prog.lm_mesh(Ledger(clock_hz=1.0))
    logits = prog.head(lm, mw, _to_rows(prog, x))
    return prog.argmax(lm, logits), logits


def _to_rows(prog: DecodeProgram, x):
    """x[D] -> x_y [R, kb] (zero padded)."""
    p = prog.plan
    return jnp.pad(x, (0, p.rows * p.kb - x.shape[0])).reshape(p.rows, p.kb)


def first_token_ledger(prog: DecodeProgram) -> Ledger:
    """Final norm, LM head and argmax for the prefill's last position (no embedding lookup)."""
    led = head_ledger(prog)
    led.phases.pop("embed", None)
    return led
