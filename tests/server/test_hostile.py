"""A hostile client against the server: every bad input gets its documented 4xx and one clear message
(OpenAI error body), the server keeps serving, and nothing reaches a 500 or a dropped connection."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from .conftest import MODEL_ID

CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMP = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2}


def _post(url: str, path: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=120, **kw)


def _still_serving(url: str) -> None:
    r = _post(url, "/v1/completions", COMP)
    assert r.status_code == 200, r.text


def _error(r: httpx.Response, status: int, param: str | None, words: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    assert words in err["message"], err
    return err


CASES = [  # (path, raw body, param, words in the message)
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1e30}', "max_tokens",
     "must be an integer, got a number (1e+30)"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1000000000000000000000000000000}',
     "max_tokens", "must be <= 128"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "a\\udfffb"}', "prompt", "lone surrogate"),
    ("/v1/chat/completions", b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "a\\udfffb"}]}',
     "messages[0].content", "lone surrogate"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "stop": ["\\ud800"]}', "stop[0]",
     "lone surrogate"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "seed": -1}', "seed", "must be >= 0, got -1"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "max_tokens": true}', "max_tokens",
     "must be an integer, got a boolean (true)"),
    ("/v1/chat/completions", b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], '
                             b'"stream": "yes"}', "stream", "must be a boolean, got a string"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "temperature": NaN}', None, "NaN"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "temperature": Infinity}', None, "Infinity"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "top_p": 1e400}', None, "must be finite"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "echo": true}', "echo", "not supported"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "best_of": 3}', "best_of", "not supported"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "suffix": "end"}', "suffix", "not supported"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "logprobs": true}', "logprobs",
     "must be an integer, got a boolean"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "logprobs": 21}', "logprobs", "<= 20"),
    ("/v1/chat/completions", b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], '
                             b'"top_logprobs": 2}', "top_logprobs", "needs logprobs=true"),
    ("/v1/chat/completions", b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], '
                             b'"tools": []}', "tools", "unsupported parameter: tools"),
    ("/v1/chat/completions", b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi", '
                             b'"name": "x"}]}', "messages[0].name", "unsupported parameter"),
    ("/v1/chat/completions", b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": '
                             b'[{"type": "image_url"}]}]}', "messages[0].content[0].type", "'text'"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "presence_penalty": 0.5}', "presence_penalty",
     "not supported"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi", "stream_options": {"include_usage": true}}',
     "stream_options", "only allowed with stream=true"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": [1, 99999999]}', "prompt[1]", "not a token id"),
    ("/v1/completions", json.dumps({"model": MODEL_ID, "prompt": "Hi", "stop": ["."] * 17}).encode(), "stop",
     "List should have at most 16 items"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "Hi"', None, "malformed JSON"),
    ("/v1/completions", b'[1, 2]', None, "must be a JSON object"),
    ("/v1/completions", b'{"model": "smollm2-135m", "prompt": "\xff\xfe"}', None, "not valid UTF-8"),
    ("/v1/completions", b'[' * 100000 + b']' * 100000, None, "nested too deeply"),
]


@pytest.mark.parametrize("path, raw, param, words", CASES, ids=[c[3][:30] + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_a_400_naming_it(server, path, raw, param, words):
    _error(_post(server["url"], path, raw), 400, param, words)
    assert httpx.get(server["url"] + "/health").status_code == 200


def test_noop_values_of_unsupported_parameters_are_accepted(server):
    body = dict(COMP, n=1, echo=False, best_of=1, suffix=None, logit_bias={}, frequency_penalty=0,
                presence_penalty=0.0, user="u1", top_k=-1, seed=2**64 - 1, stream_options=None,
                stop="a stop string longer than sixteen characters")
    r = _post(server["url"], "/v1/completions", body)
    assert r.status_code == 200, r.text


def test_body_over_the_limit_is_413(server):
    r = _post(server["url"], "/v1/chat/completions", b" " * (2 << 20))
    err = _error(r, 413, None, "limit is 1048576 bytes")
    assert err["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b" " * 65536

    r = httpx.post(server["url"] + "/v1/completions", content=chunks(), timeout=60)
    _error(r, 413, None, "limit is 1048576 bytes")
    _still_serving(server["url"])


def _health_latencies(url: str, busy: threading.Event) -> list[float]:
    """/health round trips, timed, for as long as `busy` is set."""
    out = []
    with httpx.Client(timeout=10) as c:
        c.get(url + "/health")  # connect first: only the answer is timed
        while busy.is_set():
            t0 = time.perf_counter()
            assert c.get(url + "/health").status_code == 200
            out.append(time.perf_counter() - t0)
            time.sleep(0.005)
    return out


def _slowly(body: bytes, seconds: float):
    """The body in 64 KiB pieces spread over about `seconds` (a client uploading over a slow link)."""
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    for p in pieces:
        yield p
        time.sleep(seconds / len(pieces))


def _while_posting(url: str, path: str, body: bytes, seconds: float = 0.0) -> tuple[httpx.Response, list[float]]:
    """POST body (over about `seconds`), timing /health round trips until its answer is in."""
    busy, box = threading.Event(), {}
    busy.set()

    def post():
        try:
            content = _slowly(body, seconds) if seconds else body
            box["r"] = httpx.post(url + path, content=content, timeout=120,
                                  headers={"content-type": "application/json", "content-length": str(len(body))})
        finally:
            busy.clear()

    th = threading.Thread(target=post)
    th.start()
    lat = _health_latencies(url, busy)
    th.join()
    return box["r"], lat


def test_health_answers_within_100ms_while_a_5mb_body_is_rejected(server):
    body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "word " * 1_000_000}]}).encode()
    r, lat = _while_posting(server["url"], "/v1/chat/completions", body, seconds=1.0)
    _error(r, 413, None, "request body too large")
    assert len(lat) > 5 and max(lat) < 0.1, lat


def test_a_big_prompt_is_tokenized_off_the_event_loop(engine_for):
    """Under a large limit the 5 MB prompt is parsed and tokenized (seconds of CPU), yet /health keeps
    answering; then the prompt is refused for its length."""
    from waferllm.server.app import ServerConfig

    from .conftest import running_server

    with running_server(engine_for("20x20"), ServerConfig(max_body_bytes=8 << 20)) as s:
        body = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "word " * 1_000_000}]})
        r, lat = _while_posting(s["url"], "/v1/chat/completions", body.encode())
        _error(r, 400, "messages", "exceeds")
        assert len(lat) > 10 and sorted(lat)[len(lat) // 2] < 0.1 and max(lat) < 0.5, lat


def test_unknown_route_and_method_are_openai_errors(server):
    r = httpx.get(server["url"] + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(server["url"] + "/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


class _Broken:
    """A scheduler whose submit raises an unexpected exception, or whose request fails in the engine."""

    def __init__(self, engine, mode: str):
        self.engine, self.mode = engine, mode

    def stats(self):
        return {"running": 0, "waiting": 0}

    def submit(self, ids, params, listener, *, logprobs=None):
        if self.mode == "raise":
            raise RuntimeError("secret internal detail")
        from waferllm.engine.scheduler import Event, Request

        listener(Event(done=True, error="lane exploded\nTraceback: x"))
        return Request(prompt_ids=list(ids), params=params, listener=listener)


@pytest.mark.parametrize("mode, words", [("raise", "internal server error"), ("event", "generation failed")])
def test_unexpected_errors_are_500_with_an_openai_body(engine_for, mode, words):
    from fastapi.testclient import TestClient

    from waferllm.server.app import create_app

    app = create_app(_Broken(engine_for("20x20"), mode), MODEL_ID)
    with TestClient(app, raise_server_exceptions=False) as c:
        for stream in (False, True):
            r = c.post("/v1/completions", json=dict(COMP, stream=stream))
            assert r.status_code == 500, r.text
            err = r.json()["error"]
            assert err["type"] == "server_error" and words in err["message"]
            assert "secret" not in r.text and "Traceback" not in r.text
        assert c.get("/health").status_code == 200


def test_still_generates_after_all_that(server):
    _still_serving(server["url"])
    assert server["scheduler"].thread.is_alive()
