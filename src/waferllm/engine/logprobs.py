"""Log-probabilities from the distributed LM head: a log-softmax over logits_x [C_lm, vb] on the LM-head grid.

Each column holds vb logits. Its core takes their max, the max is combined along X, each core sums
exp(logit - max), the sums are combined along X, and each core subtracts max + log(sum): the same
program computes the numbers (a scratch ledger) and, shape-only, the cost of a token's logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.engine.decode import DecodeProgram
from waferllm.machine import Ledger, Mesh, noc, ops
from waferllm.machine.shard import to_host


@dataclass(frozen=True, kw_only=True)
class TokenLogprob:
    """One chosen token's log-probability and the `top` most likely tokens (id, logprob), best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def log_softmax_x(mesh: Mesh, logits):
    """logprobs_x [C, vb] from logits_x [C, vb] (padding -inf stays -inf), with two allreduces along X."""
    C = logits.shape[0]
    line = lambda v: jnp.broadcast_to(v[None], (mesh.rows, C))  # noqa: E731 - one scalar per core
    with mesh.phase("logprobs"):
        top = noc.allreduce(mesh, ops.free(line, ops.reduce(mesh, "Xv", logits, "v", "max")), "x", op="max")
        top = ops.free(lambda t: t[0], top)
        e = ops.map(mesh, "Xv", lambda z, m: jnp.exp(z - m[:, None]), logits, top, special=1)
        total = noc.allreduce(mesh, ops.free(line, ops.reduce(mesh, "Xv", e, "v", "sum")), "x", op="sum")
        total = ops.free(lambda t: t[0], total)
        return ops.map(mesh, "Xv", lambda z, m, s: z - (m + jnp.log(s))[:, None], logits, top, total, ops=2)


def _top_n(mesh: Mesh, lp, n: int) -> None:
    """The cost of the n best: n max passes per core, then each column's n (value, id) pairs to one core."""
    with mesh.phase("logprobs_top"):
        ops.map(mesh, "Xv", lambda z: z, lp, ops=n)
        pairs = jax.ShapeDtypeStruct((lp.shape[0], 2 * n), jnp.float32)
        noc.gather_line(mesh, pairs, "Xv", "X")


class LogprobHead:
    """Logprobs for one engine's decode program: numbers from logits_x, costs per token as a Ledger."""

    def __init__(self, prog: DecodeProgram, vocab_size: int):
        self.prog, self.vocab_size = prog, vocab_size
        self._run = jax.jit(lambda lg: log_softmax_x(prog.lm_mesh(Ledger(clock_hz=1.0)), lg))
        self._costs: dict[int, Ledger] = {}

    def token(self, logits_x, token_id: int, top_n: int = 0) -> TokenLogprob:
        """token_id's logprob under logits_x [C_lm, vb] and the top_n most likely tokens."""
        lp = to_host(self._run(jnp.asarray(logits_x, jnp.float32))).reshape(-1)[: self.vocab_size]
        top: tuple[tuple[int, float], ...] = ()
        if top_n:
            k = min(top_n, lp.size)
            best = np.argpartition(-lp, k - 1)[:k]
            best = best[np.lexsort((best, -lp[best]))]  # most likely first, ties -> lowest id
            top = tuple((int(i), float(lp[i])) for i in best)
        return TokenLogprob(token_id=int(token_id), logprob=float(lp[token_id]), top=top)

    def ledger(self, top_n: int = 0) -> Ledger:
        """What one sequence's logprobs cost on the LM-head grid (shape-only, cached per top_n)."""
        if top_n not in self._costs:
            led = Ledger(clock_hz=self.prog.spec.clock_hz)
            lm = self.prog.lm_mesh(led)
            p = self.prog.plan
            lp = log_softmax_x(lm, jax.ShapeDtypeStruct((p.lm_cols, p.vb), jnp.float32))
            if top_n:
                _top_n(lm, lp, top_n)
            self._costs[top_n] = led
        return self._costs[top_n]
