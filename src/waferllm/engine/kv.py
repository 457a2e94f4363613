"""The shift-based KV cache (paper section 4.3) on the decode grid: K/V [R, T, C, cb] per layer.

Row y holds its tokens oldest-first in slots 0.. ; with n tokens, the top n mod R rows hold one more
than the rest (fuller rows on top, the top row holds the oldest tokens). A new token enters at the
bottom row; every row below the first shorter row passes its oldest token to the row above, all in one
parallel step over adjacent-row links. The new token's K/V is already on every row (the QKV allreduce
replicates it along Y), so entering costs no transfer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from waferllm.machine import noc, ops
from waferllm.machine.mesh import Mesh


def shift_insert(cache, new, n, incoming=None):
    """Insert `new` [C, cb] into cache [R, T, C, cb] holding n tokens (n traced or static).

    incoming [R, C, cb]: what each row receives in the adjacent-row pass (row y + 1's oldest slot, the new
    token at the bottom row); computed here when not given (noc.line_shift makes it on the mesh).
    """
    R, T = cache.shape[:2]
    q, rem = n // R, n % R
    rows, slot = jnp.arange(R), jnp.arange(T)
    new = new.astype(cache.dtype)
    if incoming is None:
        incoming = jnp.concatenate([cache[1:, 0], new[None]], axis=0)
    to_rem = jnp.where(q == 0, new, incoming[rem])  # through empty rows the new token goes straight up
    # the slot moves below are in-core pointer moves: the data that crosses cores is `incoming`
    shifted = jnp.concatenate([cache[:, 1:], jnp.zeros_like(cache[:, :1])], axis=1)
    below = (rows > rem) & (q > 0)  # rows that pass their oldest token up and take one from below
    out = jnp.where(below[:, None, None, None], shifted, cache)
    put_below = below[:, None] & (slot[None, :] == q - 1)
    out = jnp.where(put_below[:, :, None, None], incoming[:, None], out)
    put_rem = (rows[:, None] == rem) & (slot[None, :] == q)
    return jnp.where(put_rem[:, :, None, None], to_rem[None, None], out)


def shift_moves(n: int, rows: int) -> bool:
    """Whether inserting token n (n cached) makes rows pass tokens up under the shift policy."""
    q, rem = divmod(n, rows)
    return q > 0 and rem < rows - 1


# --- policies ------------------------------------------------------------------
POLICIES = ("shift", "concat")


def prompt_block(p, rows: int, xp=jnp):
    """Tokens per row when a p-token prompt's K/V arrive from the prefill (sequence along Y, blocks)."""
    return xp.maximum(1, (p + rows - 1) // rows)


def _tail(p, rows: int, xp=jnp):
    """The row owning the newest prompt token (the last row when there is no prefill)."""
    return xp.where(p > 0, (xp.maximum(p, 1) - 1) // prompt_block(p, rows, xp), rows - 1)


def concat_counts(n, p, rows: int, xp=jnp):
    """Concat policy: the prompt in blocks; every later token appended to the tail row (the hotspot)."""
    b = prompt_block(p, rows, xp)
    y = xp.arange(rows)
    base = xp.clip(p - y * b, 0, b)
    return base + xp.where(y == _tail(p, rows, xp), n - p, 0)


def counts(policy: str, n, p, rows: int, xp=jnp):
    """Tokens on each row with n tokens cached (p of them from the prefill); xp=np for static ints."""
    if policy == "shift":
        q, rem = n // rows, n % rows
        return q + (xp.arange(rows) < rem)
    return concat_counts(n, p, rows, xp)


def policy_valid(policy: str, n, p, rows: int, slots: int):
    """[R, T] bool: slots holding tokens."""
    return jnp.arange(slots)[None, :] < counts(policy, n, p, rows)[:, None]


def concat_insert(cache, new, n, p):
    """Append `new` [C, cb] at the tail row's next free slot."""
    R, T = cache.shape[:2]
    c = concat_counts(n, p, R)
    tail = _tail(p, R)
    put = (jnp.arange(R)[:, None] == tail) & (jnp.arange(T)[None, :] == c[tail])
    return jnp.where(put[:, :, None, None], new.astype(cache.dtype)[None, None], cache)


def insert(policy: str, cache, new, n, p):
    return shift_insert(cache, new, n) if policy == "shift" else concat_insert(cache, new, n, p)


def busiest_row(policy: str, n: int, p: int, rows: int) -> int:
    """Tokens on the fullest row after inserting token n (static ints): it sets the attention's critical path."""
    return fullest_row(policy, n + 1, p, rows)


def fullest_row(policy: str, n: int, p: int, rows: int) -> int:
    """max(counts(policy, n, p, rows)) in Python integers: exact for any n (a request's 10**30 tokens
    included, where numpy's int64 would overflow), so capacity checks can say no instead of crashing."""
    n, p, rows = int(n), int(p), int(rows)
    if policy == "shift":
        return -(-n // rows)
    b = max(1, -(-p // rows))  # prompt_block
    tail = (p - 1) // b if p > 0 else rows - 1
    base_tail = min(max(p - tail * b, 0), b)
    return max(min(max(p, 0), b), base_tail + n - p)


def step_load(policy: str, ns, ps, rows: int) -> tuple[int, int]:
    """(tokens on the busiest row summed over the batch after this step's insertions, sequences whose rows
    shift): all a decode step's charges depend on besides the batch size."""
    tot = sum(counts(policy, n + 1, p, rows, np) for n, p in zip(ns, ps))
    moving = sum(policy == "shift" and shift_moves(n, rows) for n in ns)
    return int(np.max(tot)), int(moving)


def insert_kv(mesh: Mesh, policy: str, kc, vc, k, v, n, p, *, moving: int):
    """Each sequence's new K and V [B, C, cb] into caches kc, vc [B, R, T, C, cb] (n, p [B]).

    Shift: one parallel adjacent-row pass (noc.line_shift along Y) carries every row's oldest K and V slot
    to the row above, charged for the `moving` sequences whose rows rebalance; the new token's K/V is
    already on every row (the QKV allreduce replicates it), so entering costs nothing. Concat: the token
    is already on the tail row: no transfer.
    """
    if policy != "shift":
        put = lambda c, x, n, p: insert_batch(policy, c, x, n, p)  # noqa: E731
        return ops.free(put, kc, k, n, p), ops.free(put, vc, v, n, p)
    oldest = ops.free(lambda kc, vc: jnp.stack([kc[:, :, 0], vc[:, :, 0]]), kc, vc)  # [2, B, R, C, cb]
    new = ops.free(lambda k, v: jnp.stack([k, v]), k, v)  # [2, B, C, cb]
    got = noc.line_shift(mesh, oldest, "pbYXd", new, live={"b": moving})  # K and V share the message
    put = jax.vmap(shift_insert)
    return ops.free(lambda kc, vc, k, v, n, g: (put(kc, k, n, g[0]), put(vc, v, n, g[1])), kc, vc, k, v, n, got)


def insert_batch(policy: str, caches, new, n, p):
    """Each sequence's token into its own slots: caches [B, R, T, C, cb], new [B, C, cb], n, p [B]."""
    return jax.vmap(lambda c, x, n1, p1: insert(policy, c, x, n1, p1))(caches, new, n, p)


def valid_batch(policy: str, n, p, rows: int, slots: int):
    """[B, R, T] bool: slots holding tokens when sequence b has n[b] tokens (p[b] from its prefill)."""
    return jax.vmap(lambda n1, p1: policy_valid(policy, n1, p1, rows, slots))(n, p)


def place_prompt_kv(policy: str, kv_tokens: np.ndarray, rows: int, slots: int) -> np.ndarray:
    """[P, C, cb] of one layer's prompt K (or V) -> cache [R, slots, C, cb] laid out as the policy keeps it."""
    p = kv_tokens.shape[0]
    cnt = counts(policy, p, p, rows, np)
    out = np.zeros((rows, slots) + kv_tokens.shape[1:], kv_tokens.dtype)
    start = 0
    for y in range(rows):  # shift: oldest tokens on top; concat: blocks in sequence order
        out[y, : cnt[y]] = kv_tokens[start:start + cnt[y]]
        start += cnt[y]
    return out
