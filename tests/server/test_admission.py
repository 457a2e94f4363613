"""Admission counts free lanes: 429 (with Retry-After) only when every lane and the queue are full."""

from __future__ import annotations

import threading

import httpx
import pytest

from waferllm.engine.sampling import SamplingParams
from waferllm.engine.scheduler import QueueFull, Scheduler

from .conftest import MODEL_ID, running_server


def test_a_burst_fills_every_lane_and_the_queue_before_refusing(engine_for):
    """--max-batch 4 --max-queue 8: of 16 requests submitted at once, exactly 12 are taken."""
    eng = engine_for("20x20")
    sched = Scheduler(eng, max_batch=4, max_queue=8, max_tokens=eng.max_tokens)
    ids = eng.tokenizer.encode("Hi")
    taken, refused = [], []
    try:
        for _ in range(16):
            try:
                taken.append(sched.submit(ids, SamplingParams(max_new_tokens=40, ignore_eos=True), lambda ev: None))
            except QueueFull as e:
                refused.append(str(e))
        assert (len(taken), len(refused)) == (12, 4)
        assert "all 4 lanes are busy and 8 requests are waiting" in refused[0]
    finally:
        for r in taken:
            r.cancel()
        sched.close()


@pytest.mark.slow
def test_burst_of_16_streams_on_4_lanes_and_8_queue_slots(engine_for):
    """The issue's burst: at most 4 of 16 refused (16 - 4 lanes - 8 queued), each with Retry-After."""
    with running_server(engine_for("20x20"), max_batch=4, max_queue=8) as s:
        out = []

        def ask():
            with httpx.stream("POST", s["url"] + "/v1/completions", timeout=600, json={
                    "model": MODEL_ID, "prompt": "Hi", "max_tokens": 3, "stream": True}) as r:
                r.read()
                out.append((r.status_code, r.headers.get("retry-after"), r.text))

        threads = [threading.Thread(target=ask) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    assert len(out) == 16
    refused = [o for o in out if o[0] == 429]
    assert len(refused) <= 4 and all(code in (200, 429) for code, _, _ in out), [o[0] for o in out]
    for _, retry, text in refused:
        assert retry == "1" and '"rate_limit_error"' in text
    assert all("[DONE]" in text for code, _, text in out if code == 200)
