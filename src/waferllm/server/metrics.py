"""GET /metrics: Prometheus metrics under vLLM's names, plus the predicted on-wafer timings (waferllm:*).

Each app owns a CollectorRegistry (never the process-global one), so several apps can live in one process.
Wall-clock figures are measured at the server from the scheduler's events; predicted ones come with them.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vLLM's buckets (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
# on-wafer times are micro- to milliseconds
WAFER_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The app's metrics; `track()` gives one request's recorder."""

    def __init__(self, model_id: str, stats):
        self.registry = reg = CollectorRegistry()
        lab = ["model_name"]

        def hist(name, doc, buckets):
            return Histogram(name, doc, lab, buckets=buckets, registry=reg).labels(model_name=model_id)

        def count(name, doc):
            return Counter(name, doc, lab, registry=reg).labels(model_name=model_id)

        for name, key, doc in (("vllm:num_requests_running", "running", "Requests decoding in a lane."),
                               ("vllm:num_requests_waiting", "waiting", "Requests queued for a lane.")):
            Gauge(name, doc, lab, registry=reg).labels(model_name=model_id).set_function(
                lambda key=key: stats()[key])
        self.ttft = hist("vllm:time_to_first_token_seconds", "Wall-clock time to first token.", TTFT_BUCKETS)
        self.tpot = hist("vllm:time_per_output_token_seconds", "Wall-clock time per output token after the first.",
                         TPOT_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Wall-clock request latency.", E2E_BUCKETS)
        self.prompt = count("vllm:prompt_tokens", "Prompt tokens of finished requests.")
        self.generated = count("vllm:generation_tokens", "Generated tokens.")
        self.success = Counter("vllm:request_success", "Finished requests by finish reason.",
                               lab + ["finished_reason"], registry=reg)
        self.model_id = model_id
        self.wafer_ttft = hist("waferllm:predicted_ttft_seconds", "Predicted on-wafer time to first token.",
                               WAFER_BUCKETS)
        self.wafer_tpot = hist("waferllm:predicted_tpot_seconds", "Predicted on-wafer time per output token.",
                               WAFER_BUCKETS)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def track(self, n_prompt: int) -> "RequestTimer":
        return RequestTimer(self, n_prompt)


class RequestTimer:
    """One request's wall-clock marks, fed each scheduler event as the server receives it."""

    def __init__(self, metrics: Metrics, n_prompt: int):
        self.m, self.n_prompt = metrics, n_prompt
        self.t0 = self.last = time.perf_counter()
        self.started = False

    def event(self, ev) -> None:
        """Record an event: TTFT at the first, then each token's share of the interval; finish on the last."""
        now = time.perf_counter()
        n = len(ev.token_ids)
        if not self.started:
            self.started = True
            self.m.ttft.observe(now - self.t0)
        else:
            for _ in range(n):
                self.m.tpot.observe((now - self.last) / n)
        self.m.generated.inc(n)
        self.last = now
        if ev.done and ev.result is not None:
            self._finish(now, ev.result)

    def _finish(self, now: float, res) -> None:
        m = self.m
        m.e2e.observe(now - self.t0)
        m.prompt.inc(self.n_prompt)
        m.success.labels(model_name=m.model_id, finished_reason=res.finish_reason).inc()
        m.wafer_ttft.observe(res.timing.ttft_s)
        if res.timing.decode_s:
            m.wafer_tpot.observe(res.timing.tpot_s)
