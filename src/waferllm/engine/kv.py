"""The shift-based KV cache (paper section 4.3) on the decode grid: K/V [R, T, C, cb] per layer.

Row y holds its tokens oldest-first in slots 0.. ; with n tokens, the top n mod R rows hold one more
than the rest (fuller rows on top, the top row holds the oldest tokens). A new token enters at the
bottom row; every row below the first shorter row passes its oldest token to the row above, all in one
parallel step over adjacent-row links. The new token's K/V is already on every row (the QKV allreduce
replicates it along Y), so entering costs no transfer.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from waferllm.machine import noc
from waferllm.machine.mesh import Mesh


def row_counts(n: int, rows: int) -> np.ndarray:
    """Tokens on each row when the cache holds n tokens."""
    q, rem = divmod(n, rows)
    return q + (np.arange(rows) < rem)


def valid_mask(n, rows: int, slots: int):
    """[R, T] bool: which slots hold tokens when the cache holds n (traced or static) tokens."""
    q, rem = n // rows, n % rows
    counts = q + (jnp.arange(rows) < rem)
    return jnp.arange(slots)[None, :] < counts[:, None]


def shift_insert(cache, new, n):
    """Insert `new` [C, cb] into cache [R, T, C, cb] holding n tokens (n traced or static)."""
    R, T = cache.shape[:2]
    q, rem = n // R, n % R
    rows, slot = jnp.arange(R), jnp.arange(T)
    new = new.astype(cache.dtype)
    incoming = jnp.concatenate([cache[1:, 0], new[None]], axis=0)  # [R, C, cb]: what each row receives
    to_rem = jnp.where(q == 0, new, incoming[rem])  # through empty rows the new token goes straight up
    shifted = jnp.concatenate([cache[:, 1:], jnp.zeros_like(cache[:, :1])], axis=1)
    below = (rows > rem) & (q > 0)  # rows that pass their oldest token up and take one from below
    out = jnp.where(below[:, None, None, None], shifted, cache)
    put_below = below[:, None] & (slot[None, :] == q - 1)
    out = jnp.where(put_below[:, :, None, None], incoming[:, None], out)
    put_rem = (rows[:, None] == rem) & (slot[None, :] == q)
    return jnp.where(put_rem[:, :, None, None], to_rem[None, None], out)


def charge_shift(mesh: Mesh, n: int, cb: int, elem_bytes: int) -> None:
    """Cost of one insertion when the cache held n tokens: one adjacent-row step for K and V, if any row moves."""
    q, rem = divmod(n, mesh.rows)
    if q > 0 and rem < mesh.rows - 1:
        nbytes = 2 * cb * elem_bytes  # K and V slices travel on the same link
        mesh.charge_comm(noc.transfer_cycles(mesh, nbytes, 1), hops=1)
