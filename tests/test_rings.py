import numpy as np
import pytest

from waferllm.machine.rings import interleave_order, ring_hops, ring_pos, ring_src


def algorithm1(i: int, n: int) -> tuple[int, int]:
    """The paper's INTERLEAVE(i, N) -> (send, recv), transcribed literally."""
    if i % 2 == 0:
        recv, send = max(i - 2, 0), min(i + 2, n - 1)
    else:
        recv, send = min(i + 2, n - 1), max(i - 2, 0)
    if i == 0:
        recv = 1
    if i == n - 1:
        if n % 2 == 0:
            recv = n - 2
        else:
            send = n - 2
    return send, recv


@pytest.mark.parametrize("n", range(3, 40))
def test_interleaved_ring_matches_algorithm_1(n):
    order = interleave_order(n)
    assert sorted(order) == list(range(n))
    nxt = {order[k]: order[(k + 1) % n] for k in range(n)}
    prv = {v: k for k, v in nxt.items()}
    for i in range(n):
        send, recv = algorithm1(i, n)
        assert nxt[i] == send and prv[i] == recv, (n, i)
        assert abs(nxt[i] - i) <= 2  # every logical link is at most two physical hops
    assert ring_hops(n, "interleaved") == 2 and ring_hops(n, "wrap") == n - 1


def test_paper_example_n6():
    assert interleave_order(6) == (0, 2, 4, 5, 3, 1)
    assert list(ring_pos(6)[list(interleave_order(6))]) == list(range(6))


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_shift_sources_are_permutations(n):
    for kind in ("interleaved", "wrap"):
        for d in (1, -1):
            src = ring_src(n, kind, d)
            assert sorted(src) == list(range(n))
    assert np.all(ring_src(n, "interleaved", 1)[ring_src(n, "interleaved", -1)] == np.arange(n))
