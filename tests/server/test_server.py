"""The OpenAI-compatible server, driven by the official openai client over loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from waferllm.engine.sampling import SamplingParams
from waferllm.engine.textgen import generate_text, prompt_ids

from .conftest import MODEL_ID

Q = "What is the capital of France?"


def test_models_and_health(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL_ID]
    h = httpx.get(server["url"] + "/health").json()
    assert h["status"] == "ok" and h["max_batch"] == 4


@pytest.mark.slow
def test_chat_equals_cli(client):
    """Same settings as `waferllm generate` (greedy, the CLI's defaults): the same text."""
    r = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": Q}], max_tokens=24)
    cli = subprocess.run([sys.executable, "-m", "waferllm.cli", "generate", "--prompt", Q, "--chat", "--grid", "20x20",
                          "--max-new-tokens", "24", "--json"], capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    want = json.loads(cli.stdout)
    assert r.choices[0].message.content == want["text"]
    assert r.usage.completion_tokens == len(want["token_ids"]) and r.usage.prompt_tokens == len(want["prompt_token_ids"])
    assert r.choices[0].finish_reason == want["finish_reason"]
    assert r.model_extra["waferllm"]["predicted_ttft_s"] > 0


def test_streaming_equals_non_streaming(client, server):
    eng = server["engine"]
    want = generate_text(eng, eng.tokenizer.encode("The three laws of robotics are"),
                         SamplingParams(max_new_tokens=12))
    r = client.completions.create(model=MODEL_ID, prompt="The three laws of robotics are", max_tokens=12)
    assert r.choices[0].text == want.text
    chunks = list(client.completions.create(model=MODEL_ID, prompt="The three laws of robotics are", max_tokens=12,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].model_extra["waferllm"]["predicted_tpot_s"] > 0
    chat = list(client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": Q}],
                                               max_tokens=8, stream=True))
    non = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": Q}], max_tokens=8)
    assert "".join(c.choices[0].delta.content or "" for c in chat) == non.choices[0].message.content


def test_headers_carry_predicted_timings(server):
    r = httpx.post(server["url"] + "/v1/completions", json={"model": MODEL_ID, "prompt": "Hello", "max_tokens": 3},
                   timeout=120)
    assert r.status_code == 200
    assert float(r.headers["x-waferllm-predicted-ttft-s"]) > 0 and float(r.headers["x-waferllm-predicted-tpot-s"]) > 0


def test_stop_and_seeded_sampling(client):
    a = client.completions.create(model=MODEL_ID, prompt="Count: one, two, three,", max_tokens=16, stop=[","])
    assert "," not in a.choices[0].text and a.choices[0].finish_reason == "stop"
    s1 = client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=8, temperature=0.9,
                                   top_p=0.9, seed=5)
    s2 = client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=8, temperature=0.9,
                                   top_p=0.9, seed=5)
    assert s1.choices[0].text == s2.choices[0].text


@pytest.mark.slow
def test_sixteen_concurrent_clients(client, server):
    """16 clients at once on 4 lanes: everyone is answered, each with its single-run greedy text."""
    eng = server["engine"]
    prompts = [f"Name {k} things that are made of silicon." for k in range(2, 18)]
    out: dict[int, str] = {}
    errors = []

    def ask(i):
        try:
            r = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": prompts[i]}],
                                               max_tokens=6 + i % 5)
            out[i] = r.choices[0].message.content
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and len(out) == 16
    assert server["scheduler"].steps > 0
    for i in (0, 7, 15):  # spot-check against the sequence decoded alone
        ids = prompt_ids(eng.tokenizer, prompts[i], chat=True)
        assert out[i] == generate_text(eng, ids, SamplingParams(max_new_tokens=6 + i % 5)).text


BAD = [
    (b"{not json", 400, None),
    (json.dumps({"model": MODEL_ID}).encode(), 400, "messages"),  # missing field
    (json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "lots"}).encode(),
     400, "max_tokens"),  # wrong type
    (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model"),
    (json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(),
     400, "max_tokens"),
    (json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).encode(),
     400, "max_tokens"),
    (json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "word " * 400}]}).encode(), 400, None),
    (json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), 400, "n"),
    (json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}).encode(),
     400, "temperature"),
]


@pytest.mark.parametrize("body, status, param", BAD)
def test_bad_requests_get_4xx_and_server_keeps_serving(server, body, status, param):
    r = httpx.post(server["url"] + "/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                   timeout=120)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param:
        assert param in (err["param"] or "") or param in err["message"]
    ok = httpx.post(server["url"] + "/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2},
                    timeout=120)
    assert ok.status_code == 200


def test_unknown_route_is_openai_style_404(server):
    r = httpx.get(server["url"] + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_queue_full_gives_429(server):
    sched = server["scheduler"]
    old = sched.max_queue
    sched.max_queue = 1
    codes = []

    def hit():
        r = httpx.post(server["url"] + "/v1/completions",
                       json={"model": MODEL_ID, "prompt": "Tell me a story", "max_tokens": 12}, timeout=300)
        codes.append((r.status_code, r.json()))

    try:
        threads = [threading.Thread(target=hit) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    finally:
        sched.max_queue = old
    refused = [b for c, b in codes if c == 429]
    assert refused and all(b["error"]["type"] == "rate_limit_error" for b in refused)
    assert any(c == 200 for c, _ in codes)


def test_client_disconnect_cancels(server):
    sched = server["scheduler"]
    with httpx.stream("POST", server["url"] + "/v1/completions", timeout=120,
                      json={"model": MODEL_ID, "prompt": "Write a long essay", "max_tokens": 100, "stream": True,
                            "ignore_eos": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # first chunk, then hang up
    deadline = time.time() + 60
    while sched.stats()["running"] and time.time() < deadline:
        time.sleep(0.2)
    assert sched.stats()["running"] == 0
