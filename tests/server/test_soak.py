"""A bounded soak on loopback: 200 requests from 16 clients mixing good requests, hostile ones and clients
that hang up. Afterwards the server is healthy, every good request got its exact greedy text, no answer was
a 500, and the process grew by less than 200 MB."""

from __future__ import annotations

import collections
import json
import random
import threading
import time

import httpx
import pytest

from waferllm.engine.sampling import SamplingParams
from waferllm.engine.textgen import generate_text, prompt_ids

from .conftest import MODEL_ID, running_server

KEY = "soak-key"
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
N_REQUESTS, N_CLIENTS, LIMIT = 200, 16, 64 << 10
GOOD = {  # name -> (chat?, text, max_tokens)
    "story": (False, "Once upon a time", 6),
    "count": (False, "One, two, three,", 4),
    "capital": (True, "What is the capital of France?", 8),
}
BAD = {  # name -> (raw body, headers, expected status)
    "huge_max_tokens": (b'{"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1e30}', AUTH, 400),
    "bool_max_tokens": (b'{"model": "smollm2-135m", "prompt": "Hi", "max_tokens": true}', AUTH, 400),
    "stream_yes": (b'{"model": "smollm2-135m", "prompt": "Hi", "stream": "yes"}', AUTH, 400),
    "negative_seed": (b'{"model": "smollm2-135m", "prompt": "Hi", "seed": -1}', AUTH, 400),
    "surrogate": (b'{"model": "smollm2-135m", "prompt": "a\\udfffb"}', AUTH, 400),
    "nan": (b'{"model": "smollm2-135m", "prompt": "Hi", "temperature": NaN}', AUTH, 400),
    "best_of": (b'{"model": "smollm2-135m", "prompt": "Hi", "best_of": 4}', AUTH, 400),
    "malformed": (b'{"model": ', AUTH, 400),
    "too_big": (json.dumps({"model": MODEL_ID, "prompt": "x" * (LIMIT + 10)}).encode(), AUTH, 413),
    "no_key": (b'{"model": "smollm2-135m", "prompt": "Hi"}', {"content-type": "application/json"}, 401),
    "wrong_model": (b'{"model": "gpt-4", "prompt": "Hi"}', AUTH, 404),
}
KINDS = ([f"good:{g}:{s}" for g in GOOD for s in ("whole", "stream")] * 10 + [f"bad:{b}" for b in BAD] * 10
         + ["hangup:stream", "hangup:whole"] * 15)  # 60 good, 110 bad, 30 hang-ups


def _body(name: str, stream: bool) -> dict:
    chat, text, n = GOOD[name]
    body = {"model": MODEL_ID, "max_tokens": n, "stream": stream}
    body.update({"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text})
    return body


def _path(name: str) -> str:
    return "/v1/chat/completions" if GOOD[name][0] else "/v1/completions"


def _good(c: httpx.Client, name: str, stream: bool, log: list) -> str | None:
    """One good request, retried after each 429's Retry-After (for up to 5 minutes); its text, or None with
    the failure logged. Statuses go to `log` (a 429 as 'retry')."""
    chat = GOOD[name][0]
    deadline = time.time() + 300
    while time.time() < deadline:
        with c.stream("POST", _path(name), json=_body(name, stream), headers=AUTH) as r:
            if r.status_code == 429:
                log.append("retry")
                time.sleep(float(r.headers["retry-after"]))
                continue
            raw = r.read().decode()
            log.append(r.status_code)
            if r.status_code != 200:
                return None
        if not stream:
            msg = json.loads(raw)["choices"][0]
            return msg["message"]["content"] if chat else msg["text"]
        text = ""
        for line in raw.splitlines():
            if line.startswith("data: {"):
                ev = json.loads(line[6:])
                if "error" in ev:
                    log.append(f"stream error {ev['error']}")
                    return None
                d = ev["choices"][0]
                text += (d["delta"].get("content") or "") if chat else d["text"]
        return text if raw.rstrip().endswith("data: [DONE]") else None
    log.append("gave up after 5 minutes of 429s")
    return None


def _hangup(url: str, how: str) -> None:
    """Ask for a long answer and leave: after the first streamed line, or on a short read timeout."""
    body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 60, "ignore_eos": True}
    if how == "stream":
        with httpx.stream("POST", url + "/v1/completions", json=dict(body, stream=True), headers=AUTH,
                          timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    break
        return
    try:
        httpx.post(url + "/v1/completions", json=body, headers=AUTH, timeout=0.3)
    except httpx.TimeoutException:
        pass


def _client(url: str, kinds: list[str], want: dict, results: list) -> None:
    with httpx.Client(base_url=url, timeout=300) as c:
        for kind in kinds:
            what, name, *rest = kind.split(":")
            log: list = []
            if what == "good":
                got = _good(c, name, rest[0] == "stream", log)
                results.append((kind, got == want[name], log, got))
            elif what == "bad":
                raw, headers, status = BAD[name]
                r = c.post("/v1/completions", content=raw, headers=headers)
                ok = r.status_code == status and r.json()["error"]["message"]
                results.append((kind, bool(ok), [r.status_code], r.text[:200]))
            else:
                _hangup(url, name)
                results.append((kind, True, [], None))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak(engine_for):
    import psutil

    from waferllm.server.app import ServerConfig

    eng = engine_for("8x8", sram=1 << 24)
    want = {name: generate_text(eng, prompt_ids(eng.tokenizer, text, chat=chat), SamplingParams(max_new_tokens=n)).text
            for name, (chat, text, n) in GOOD.items()}
    kinds = random.Random(0).sample(KINDS, len(KINDS))
    assert len(kinds) == N_REQUESTS
    config = ServerConfig(api_key=KEY, max_body_bytes=LIMIT)
    with running_server(eng, config, max_batch=4, max_queue=8) as s:
        with httpx.Client(base_url=s["url"], timeout=300) as c:  # warm up: every program compiled once
            for name in GOOD:
                assert _good(c, name, False, []) == want[name]
        proc = psutil.Process()
        rss0, t0, results = proc.memory_info().rss, time.time(), []
        threads = [threading.Thread(target=_client, args=(s["url"], kinds[i::N_CLIENTS], want, results))
                   for i in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=800)
        elapsed, grown = time.time() - t0, (proc.memory_info().rss - rss0) / 2**20
        sched = s["scheduler"]
        deadline = time.time() + 60
        while (sched.stats()["running"] or sched.stats()["waiting"]) and time.time() < deadline:
            time.sleep(0.2)  # the last hang-ups leave at the next step
        health = httpx.get(s["url"] + "/health", timeout=10).json()
    assert len(results) == N_REQUESTS, f"{len(results)} of {N_REQUESTS} finished in {elapsed:.0f} s"
    statuses = [code for _, _, log, _ in results for code in log]
    print(f"soak: {elapsed:.0f} s, RSS {grown:+.0f} MB, answers {dict(collections.Counter(statuses))}")
    assert 500 not in statuses and not any(isinstance(c, str) and c != "retry" for c in statuses), statuses
    failed = [r for r in results if not r[1]]
    assert not failed, failed[:5]
    assert health["status"] == "ok" and health["running"] == 0 and health["waiting"] == 0
    assert grown < 200, f"RSS grew {grown:.0f} MB"
