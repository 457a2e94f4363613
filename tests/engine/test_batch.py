"""Batched decode: several sequences as skinny GEMMs, each with its own KV slots, tokens as if alone."""

from __future__ import annotations

import pytest

from waferllm.engine.cost import step_ledger
from waferllm.engine.generate import CapacityError
from waferllm.engine.sampling import SamplingParams
from waferllm.engine.textgen import generate_batch_text, generate_text, prompt_ids

PROMPTS = [("What is the capital of France?", True),
           ("The three laws of robotics are", False),
           ("Write a haiku about silicon wafers. Use exactly three lines and mention the mesh.", True),
           ("Hi", False)]


@pytest.fixture(scope="module")
def eng(engine_for):
    return engine_for("20x20")


@pytest.fixture(scope="module")
def ids(smollm):
    out = [prompt_ids(smollm[2], t, chat=c) for t, c in PROMPTS]
    assert len({len(i) for i in out}) == 4  # four different lengths
    return out


@pytest.mark.slow
def test_batch_of_four_gives_single_run_tokens(eng, ids):
    lens = [5, 12, 9, 16]  # they finish at different steps and leave the batch
    alone = [[e.token_id for e in eng.generate(i, SamplingParams(max_new_tokens=n, ignore_eos=True))]
             for i, n in zip(ids, lens)]
    batch = eng.batch([(i, SamplingParams(max_new_tokens=n, ignore_eos=True)) for i, n in zip(ids, lens)])
    got, seqs = {}, []
    for i, n in zip(ids, lens):
        seq, ev = batch.add(i, SamplingParams(max_new_tokens=n, ignore_eos=True))
        got[seq] = [ev.token_id]
        seqs.append(seq)
    sizes = []
    while batch.live:
        sizes.append(len(batch.live))
        for seq, ev in batch.step():
            got[seq].append(ev.token_id)
    assert [got[s] for s in seqs] == alone
    assert sizes[0] == 4 and sizes[-1] == 1  # sequences left as they finished
    assert batch.free_lanes() == 4


@pytest.mark.slow
def test_continuous_batching_join_midway(eng, ids):
    """A sequence that joins a running batch (a free lane, mid-decode) still gets its single-run tokens."""
    p = SamplingParams(max_new_tokens=10, ignore_eos=True)
    alone = [[e.token_id for e in eng.generate(i, p)] for i in ids[:2]]
    batch = eng.batch([(i, p) for i in ids[:2]], lanes=2)
    s0, e0 = batch.add(ids[0], p)
    got = {s0: [e0.token_id]}
    for _ in range(4):
        for s, e in batch.step():
            got[s].append(e.token_id)
    s1, e1 = batch.add(ids[1], p)
    got[s1] = [e1.token_id]
    while batch.live:
        for s, e in batch.step():
            got[s].append(e.token_id)
    assert [got[s0], got[s1]] == alone


def _comm(led) -> float:
    return sum(p.comm_cycles for p in led.phases.values())


def test_batched_step_shares_messages(eng):
    """Four sequences in one step: MACs scale with the batch, but reductions carry all four in one message."""
    one = step_ledger(eng.prog, 40, 16)
    four = step_ledger(eng.prog, [40, 40, 40, 40], 16, [0, 0, 0, 0])
    assert one.time_s < four.time_s < 4 * one.time_s
    assert _comm(four) < 4 * _comm(one)  # the per-message latency is paid once
    led = step_ledger(eng.prog, [40, 40], 16, [0, 0])
    assert led.phases["decode/layer/qkv"].macs == 2 * step_ledger(eng.prog, 40, 16).phases["decode/layer/qkv"].macs


def test_batching_pays_off_where_latency_dominates():
    """Llama3-8B on 420x420 (latency-bound reductions): 4 sequences cost far less than 4 steps."""
    from waferllm.engine.decode import DecodeProgram
    from waferllm.engine.placement import plan_decode
    from waferllm.model import get_config
    from waferllm.spec import get_device

    cfg, spec = get_config("llama3-8b"), get_device("wse2")
    prog = DecodeProgram(cfg=cfg, plan=plan_decode(cfg, spec, (420, 420), "float16"), spec=spec)
    one, four = step_ledger(prog, 4095).time_s, step_ledger(prog, [4095] * 4, 0, [0] * 4).time_s
    assert one < four < 2.5 * one


def test_batch_text_and_aggregate_throughput(eng, ids):
    p = SamplingParams(max_new_tokens=4, ignore_eos=True)
    res, agg = generate_batch_text(eng, ids[:3], p)
    single = generate_text(eng, ids[1], p)
    assert res[1].token_ids == single.token_ids and res[1].text == single.text
    # aggregate over the batch (3 tokens per step); this small grid is compute-bound, so barely above one
    assert agg > single.timing.decode_tokens_per_s


def test_batch_over_capacity_refused_before_work(eng, ids):
    per_seq = eng.plan.kv_capacity_tokens()["shift"] // 8
    p = SamplingParams(max_new_tokens=per_seq, ignore_eos=True)
    with pytest.raises(CapacityError, match="per sequence .*8 sequences share"):
        eng.check_batch([(ids[0], p)] * 8)
