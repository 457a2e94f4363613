"""`waferllm serve --num-processes 2`: process 0 serves, process 1 replays its batch in lockstep (JAX's
distributed runtime, Gloo on CPU). Its answers equal the one-process server's: greedy and sampled text,
logprobs, predicted figures, requests batched together; a SIGTERM stops every process cleanly."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import MODEL_ID, _free_port

REQUESTS = [  # each answered alone and, below, all at once (sharing the batch's lanes)
    {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0},
    {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0.7, "seed": 3, "logprobs": 2},
    {"prompt": "1, 2, 3,", "max_tokens": 8, "temperature": 0, "stop": [" 6"]},
]


def _ask(url: str, body: dict) -> dict:
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL_ID, **body}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def _same(a: dict, b: dict) -> None:
    ca, cb = a["choices"][0], b["choices"][0]
    assert (ca["text"], ca["finish_reason"]) == (cb["text"], cb["finish_reason"])
    wa, wb = ({k: v for k, v in w.items() if k != "wall_s"} for w in (a["waferllm"], b["waferllm"]))
    assert wa == wb and a["usage"] == b["usage"]
    if ca["logprobs"]:
        assert ca["logprobs"]["tokens"] == cb["logprobs"]["tokens"]
        assert ca["logprobs"]["token_logprobs"] == pytest.approx(cb["logprobs"]["token_logprobs"], abs=1e-5)


@pytest.fixture(scope="module")
def two_process_server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "waferllm.cli", "serve", "--model", MODEL_ID, "--grid", "20x20",
                                 "--max-model-len", "128", "--max-batch", "4", "--port", str(port),
                                 "--num-processes", "2"], stdout=subprocess.DEVNULL, stderr=err)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    assert proc.poll() is None, log.read_text()
    yield {"url": url, "proc": proc, "log": log}
    if proc.poll() is None:
        proc.kill()  # its processes get SIGTERM from the kernel when it dies (PR_SET_PDEATHSIG)


@pytest.mark.slow
def test_two_process_server_answers_as_one_process(two_process_server, server):
    url = two_process_server["url"]
    alone = [_ask(url, body) for body in REQUESTS]
    for got, body in zip(alone, REQUESTS):
        _same(got, _ask(server["url"], body))
    with concurrent.futures.ThreadPoolExecutor(len(REQUESTS)) as pool:  # batched together, joining mid-decode
        together = list(pool.map(lambda b: _ask(url, b), REQUESTS))
    for a, b in zip(together, alone):
        ca, cb = a["choices"][0], b["choices"][0]
        assert (ca["text"], ca["finish_reason"]) == (cb["text"], cb["finish_reason"])
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["running"] == 0 and health["steps"] > 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_sigterm_stops_every_process(two_process_server):
    proc, log = two_process_server["proc"], two_process_server["log"]
    time.sleep(6)  # past an idle tick: the follower has waited through at least one "idle" command
    kids = _children(proc.pid)
    assert len(kids) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()
    assert not any(os.path.exists(f"/proc/{k}") for k in kids)
    assert "over 2 processes" in log.read_text()
