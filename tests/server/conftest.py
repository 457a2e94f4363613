"""One server for the module: started on a free loopback port inside the test process."""

from __future__ import annotations

import socket
import threading
import time

import pytest

MODEL_ID = "smollm2-135m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(engine_for):
    import uvicorn

    from waferllm.engine.scheduler import Scheduler
    from waferllm.server.app import create_app

    eng = engine_for("20x20")
    sched = Scheduler(eng, max_batch=4, max_queue=16, max_tokens=eng.max_tokens)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(sched, MODEL_ID), host="127.0.0.1", port=port,
                                        log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield {"url": f"http://127.0.0.1:{port}", "scheduler": sched, "engine": eng}
    srv.should_exit = True
    th.join(timeout=10)
    sched.close()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"] + "/v1", api_key="none", max_retries=0, timeout=300)
