"""GET /metrics: the Prometheus text format with vLLM's names and the predicted on-wafer histograms."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MODEL_ID


def _scrape(url: str) -> dict[str, float]:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.labels.get("model_name") == MODEL_ID and "le" not in s.labels:
                out[s.name + ("" if "finished_reason" not in s.labels else "/" + s.labels["finished_reason"])] = \
                    s.value
    return out


def test_a_request_moves_every_metric(server):
    before = _scrape(server["url"])
    r = httpx.post(server["url"] + "/v1/completions", timeout=300,
                   json={"model": MODEL_ID, "prompt": "Hello", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200
    use, wafer = r.json()["usage"], r.json()["waferllm"]
    after = _scrape(server["url"])

    def grew(name):
        return after[name] - before.get(name, 0.0)

    assert after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0
    assert grew("vllm:prompt_tokens_total") == use["prompt_tokens"]
    assert grew("vllm:generation_tokens_total") == use["completion_tokens"] == 3
    assert grew("vllm:request_success_total/length") == 1
    for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                 "waferllm:predicted_ttft_seconds", "waferllm:predicted_tpot_seconds"):
        assert grew(name + "_count") == 1, name
    assert grew("vllm:time_per_output_token_seconds_count") == 2
    assert abs(grew("waferllm:predicted_ttft_seconds_sum") - wafer["predicted_ttft_s"]) < 1e-12
    assert abs(grew("waferllm:predicted_tpot_seconds_sum") - wafer["predicted_tpot_s"]) < 1e-12
    assert 0 < grew("vllm:time_to_first_token_seconds_sum") <= grew("vllm:e2e_request_latency_seconds_sum")


def test_each_app_has_its_own_registry(server):
    """Two apps in one process: no duplicate-registration error, each shows only its own series, and the
    process-global registry holds none of them."""
    from fastapi.testclient import TestClient
    from prometheus_client import REGISTRY, generate_latest

    from waferllm.server.app import create_app

    a, b = create_app(server["scheduler"], "a"), create_app(server["scheduler"], "b")
    with TestClient(b) as c:
        text = c.get("/metrics").text
    assert 'vllm:num_requests_running{model_name="b"}' in text and 'model_name="a"' not in text
    assert a is not b and b"vllm:" not in generate_latest(REGISTRY)
