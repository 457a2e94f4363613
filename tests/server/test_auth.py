"""--api-key: every /v1 route needs the Bearer key (401 otherwise); serve refuses to expose itself without one,
and says so (or that the port is taken) before printing any URL."""

from __future__ import annotations

import argparse
import socket

import httpx
import pytest

from waferllm.cli import ArgError, main
from waferllm.cli.serve import check_args
from waferllm.server.auth import ENV_VAR, is_loopback

from .conftest import MODEL_ID, running_server

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def locked(engine_for):
    from waferllm.server.app import ServerConfig

    with running_server(engine_for("20x20"), ServerConfig(api_key=KEY)) as s:
        yield s


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": KEY},
                                     {"authorization": f"Basic {KEY}"}])
def test_v1_routes_need_the_key(locked, headers):
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                         ("GET", "/v1/nothing")]:
        r = httpx.request(method, locked["url"] + path, headers=headers, json={"model": MODEL_ID, "prompt": "Hi"})
        assert r.status_code == 401, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and "Bearer" in err["message"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_the_key_opens_them_and_health_metrics_stay_open(locked):
    from openai import OpenAI

    c = OpenAI(base_url=locked["url"] + "/v1", api_key=KEY, max_retries=0, timeout=300)
    assert [m.id for m in c.models.list().data] == [MODEL_ID]
    assert c.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=2).choices[0].text is not None
    r = httpx.get(locked["url"] + "/v1/models", headers={"Authorization": f"bearer {KEY}"})
    assert r.status_code == 200
    assert httpx.get(locked["url"] + "/health").status_code == 200
    assert httpx.get(locked["url"] + "/metrics").status_code == 200


def _args(*argv: str) -> argparse.Namespace:
    from waferllm.cli import build_parser

    return build_parser().parse_args(["serve", *argv])


def test_key_sources(tmp_path):
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    assert check_args(_args("--api-key", "k1"), {}) == "k1"
    assert check_args(_args("--api-key-file", str(f)), {}) == KEY
    assert check_args(_args(), {ENV_VAR: "k3"}) == "k3"
    assert check_args(_args("--api-key", "k1"), {ENV_VAR: "k3"}) == "k1"
    assert check_args(_args(), {}) is None
    for argv, words in [(("--api-key", "a", "--api-key-file", str(f)), "not both"),
                        (("--api-key-file", str(tmp_path / "missing")), "cannot read"),
                        (("--api-key", "has space"), "printable ASCII"),
                        (("--max-body-bytes", "0"), "--max-body-bytes must be >= 1")]:
        with pytest.raises(ArgError, match=words):
            check_args(_args(*argv), {})


def test_exposed_host_needs_a_key_or_an_explicit_flag():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.com")
    with pytest.raises(ArgError, match="--allow-unauthenticated"):
        check_args(_args("--host", "0.0.0.0"), {})
    assert check_args(_args("--host", "0.0.0.0", "--allow-unauthenticated"), {}) is None
    assert check_args(_args("--host", "0.0.0.0"), {ENV_VAR: KEY}) == KEY


def test_serve_refuses_before_printing_a_url(capsys, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--allow-unauthenticated" in err and "http://" not in err
    with socket.socket() as busy:  # a taken port: the bind fails, and nothing claims to be serving
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "http://" not in err and "serving" not in err
