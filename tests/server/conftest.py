"""Servers for the module: started on free loopback ports inside the test process, sharing one engine."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

MODEL_ID = "smollm2-135m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(eng, config=None, *, max_batch: int = 4, max_queue: int = 16):
    """A scheduler and uvicorn server for `eng` on a free loopback port: {'url', 'scheduler', 'engine'}."""
    import uvicorn

    from waferllm.engine.scheduler import Scheduler
    from waferllm.server.app import ServerConfig, create_app

    sched = Scheduler(eng, max_batch=max_batch, max_queue=max_queue, max_tokens=eng.max_tokens)
    port = _free_port()
    app = create_app(sched, MODEL_ID, config or ServerConfig())
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        yield {"url": f"http://127.0.0.1:{port}", "scheduler": sched, "engine": eng}
    finally:
        srv.should_exit = True
        th.join(timeout=10)
        sched.close()


@pytest.fixture(scope="session")
def server(engine_for):
    with running_server(engine_for("20x20")) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"] + "/v1", api_key="none", max_retries=0, timeout=300)
