"""logprobs / top_logprobs from the distributed LM head equal transformers' log-softmax (fp32, 1e-4)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from .conftest import MODEL_ID

PROMPT = "Hello"


@pytest.fixture(scope="module")
def hf_logprobs(hf_gguf_model):
    """(prompt ids + continuation) -> transformers' log-softmax at every position [T, V]."""
    import torch

    def run(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = hf_gguf_model(torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1).numpy()

    return run


def test_logprob_head_equals_transformers_over_the_vocabulary(server, hf_logprobs):
    from waferllm.engine.logprobs import LogprobHead

    eng = server["engine"]
    ids = eng.tokenizer.encode(PROMPT)
    nxt, logits, _, _, _ = eng.fill_lane(eng.new_cache(1, eng.slots), 0, ids, eng.slots)
    head = LogprobHead(eng.prog, eng.cfg.vocab_size)
    want = hf_logprobs(ids)[-1]
    got = head.token(logits, nxt, top_n=5)
    lp = np.asarray(head._run(logits)).reshape(-1)[: eng.cfg.vocab_size]
    np.testing.assert_allclose(lp, want, atol=1e-4, rtol=0)
    assert got.token_id == nxt and abs(got.logprob - want[nxt]) < 1e-4
    assert [i for i, _ in got.top] == list(np.argsort(-want, kind="stable")[:5])
    assert head.ledger(5).time_s > head.ledger(0).time_s > 0


def test_completions_logprobs_equal_transformers(server, hf_logprobs, hf_gguf_model, hf_greedy):
    tok = server["engine"].tokenizer
    r = httpx.post(server["url"] + "/v1/completions", timeout=300, json={
        "model": MODEL_ID, "prompt": PROMPT, "max_tokens": 4, "logprobs": 3, "ignore_eos": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    ids = tok.encode(PROMPT)
    gen = hf_greedy(hf_gguf_model, ids, 4)
    want = hf_logprobs(ids + gen)[len(ids) - 1:]
    assert lp["tokens"] == [tok.decode([g]) for g in gen] and "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"]])[:-1])
    for k, (v, top) in enumerate(zip(lp["token_logprobs"], lp["top_logprobs"])):
        best = np.argsort(-want[k], kind="stable")[:3]
        assert best[0] == gen[k] and abs(v - want[k][gen[k]]) < 1e-4  # greedy: the most likely token
        assert {tok.decode([int(i)]): pytest.approx(float(want[k][i]), abs=1e-4) for i in best} == top


def test_chat_logprobs_streamed_equal_whole(server):
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 4, "logprobs": True, "top_logprobs": 2}
    r = httpx.post(server["url"] + "/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    whole = r.json()["choices"][0]["logprobs"]["content"]
    assert len(whole) == r.json()["usage"]["completion_tokens"]
    for e in whole:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"} and len(e["top_logprobs"]) == 2
        assert e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][1]["logprob"]
        assert e["logprob"] == e["top_logprobs"][0]["logprob"]  # greedy
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
    import json

    streamed = []
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", json=dict(body, stream=True), timeout=300) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                lp = json.loads(line[6:])["choices"][0]["logprobs"]
                streamed += lp["content"] if lp else []
    assert streamed == whole


def test_logprobs_are_charged_on_the_lm_head(server):
    """The log-softmax is costed like any mesh op: each token's predicted time grows by its ledger."""
    def ask(**kw):
        r = httpx.post(server["url"] + "/v1/completions", timeout=300,
                       json={"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 3, "ignore_eos": True, **kw})
        return r.json()["waferllm"]

    plain, with_lp = ask(), ask(logprobs=5)
    extra = server["scheduler"].batch.head.ledger(5).time_s
    assert with_lp["predicted_ttft_s"] == pytest.approx(plain["predicted_ttft_s"] + extra, rel=1e-9)
    assert with_lp["predicted_tpot_s"] == pytest.approx(plain["predicted_tpot_s"] + extra, rel=1e-9)
