"""Continuous batching on the decode grid: sequences join (prefill) and leave between decode steps.

Every live sequence owns one lane: its own KV slots on every core ([lanes, R, slots, C, cb] per layer),
its own position and occupancy. A decode step runs all lanes as skinny GEMMs; free lanes ride along
masked (their caches are left untouched) and cost nothing: each step is costed for the live sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from waferllm import WaferError
from waferllm.engine.cost import sampling_ledger, step_ledger
from waferllm.engine.sampling import SamplingParams, sample


class BatchFull(WaferError):
    """No free lane: the batch already holds its maximum number of sequences."""


@dataclass
class TokenEvent:
    """One generated token with its costed on-device time (TTFT for the first, else the step's time)."""

    token_id: int
    predicted_s: float


@dataclass
class Timing:
    """Predicted on-device figures (vLLM names) for one sequence."""

    ttft_s: float = 0.0
    decode_s: list[float] = field(default_factory=list)

    @property
    def tpot_s(self) -> float:
        return float(np.mean(self.decode_s)) if self.decode_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return 1.0 / self.tpot_s if self.tpot_s else 0.0


@dataclass(eq=False)
class Seq:
    """Run state of one sequence in the batch."""

    prompt_ids: list[int]
    params: SamplingParams
    lane: int
    timing: Timing
    n: int = 0  # tokens in its KV cache
    p: int = 0  # of which came from the prefill
    last: int = 0  # the token to feed next
    produced: int = 0
    done: bool = False
    finish_reason: str = ""
    rng: np.random.Generator | None = None


class Batch:
    """Up to `lanes` sequences of one Engine decoding together, each with `slots` KV slots per row."""

    def __init__(self, engine, lanes: int, slots: int):
        if lanes < 1:
            raise WaferError(f"a batch needs at least one lane, got {lanes}")
        self.engine, self.lanes, self.slots = engine, lanes, slots
        self.caches = engine.new_cache(lanes, slots)
        self.seqs: list[Seq | None] = [None] * lanes
        self.step_time_s = 0.0  # summed predicted time of decode steps
        self.step_tokens = 0  # tokens those steps produced over all sequences

    @property
    def live(self) -> list[Seq]:
        return [s for s in self.seqs if s is not None and not s.done]

    def free_lanes(self) -> int:
        return sum(s is None for s in self.seqs)

    def add(self, prompt_ids: Sequence[int], params: SamplingParams, timing: Timing | None = None
            ) -> tuple[Seq, TokenEvent]:
        """Prefill one sequence into a free lane; returns it and its first token."""
        eng = self.engine
        eng.check_capacity(len(prompt_ids), params.max_new_tokens, lanes=self.lanes, slots=self.slots)
        if not self.free_lanes():
            raise BatchFull(f"all {self.lanes} lanes are busy")
        lane = self.seqs.index(None)
        seq = Seq(prompt_ids=list(prompt_ids), params=params, lane=lane, timing=timing or Timing(),
                  rng=np.random.default_rng(params.seed))
        self.seqs[lane] = seq
        nxt, logits, self.caches, ttft, seq.p = eng.fill_lane(self.caches, lane, seq.prompt_ids, self.slots)
        seq.n, seq.timing.ttft_s = len(prompt_ids), ttft
        return seq, self._emit(seq, nxt, logits, first=True)

    def step(self) -> list[tuple[Seq, TokenEvent]]:
        """One decode step for every live sequence: feed each its last token, take its next one."""
        live = self.live
        if not live:
            return []
        eng = self.engine
        tokens, ns, ps, active = (np.zeros(self.lanes, np.int32) for _ in range(4))
        for s in live:
            tokens[s.lane], ns[s.lane], ps[s.lane], active[s.lane] = s.last, s.n, s.p, 1
        nxt, logits, self.caches = eng.step(self.caches, tokens, ns, ps, active.astype(bool))
        led = step_ledger(eng.prog, [s.n for s in live], self.slots, [s.p for s in live])
        eng.ledger.merge(led)
        self.step_time_s += led.time_s
        self.step_tokens += len(live)
        out = []
        for s in live:
            s.n += 1
            s.timing.decode_s.append(led.time_s)
            out.append((s, self._emit(s, int(nxt[s.lane]), logits[s.lane], first=False)))
        return out

    def finish(self, seq: Seq, reason: str = "stop") -> None:
        """Take a sequence out (stop string, cancelled request): its lane is free for the next one."""
        if not seq.done:
            seq.done, seq.finish_reason = True, reason
        if self.seqs[seq.lane] is seq:
            self.seqs[seq.lane] = None

    @property
    def decode_tokens_per_s(self) -> float:
        """Aggregate predicted decode throughput over every sequence the batch has run."""
        return self.step_tokens / self.step_time_s if self.step_time_s else 0.0

    def _emit(self, seq: Seq, greedy_tok: int, logits, first: bool) -> TokenEvent:
        eng, params = self.engine, seq.params
        tok = greedy_tok
        if not params.greedy:
            tok = sample(eng.logits_vector(logits), params, seq.rng)
            extra = sampling_ledger(eng.prog, params)
            eng.ledger.merge(extra)
            if first:
                seq.timing.ttft_s += extra.time_s
            else:
                seq.timing.decode_s[-1] += extra.time_s
        seq.last, seq.produced = tok, seq.produced + 1
        eos = tok in eng.eos_ids and not params.ignore_eos
        if eos or seq.produced >= params.max_new_tokens:
            self.finish(seq, "stop" if eos else "length")
        return TokenEvent(token_id=tok, predicted_s=seq.timing.ttft_s if first else seq.timing.decode_s[-1])
