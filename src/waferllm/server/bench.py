"""`waferllm bench serve`: a load generator for a running server (vocabulary of `vllm bench serve`).

N streaming /v1/completions requests arrive as a Poisson process at --request-rate; every request
records wall-clock TTFT, inter-token latencies and end-to-end latency, and the server's predicted
on-wafer timings from its final chunk. Metrics: request and output-token throughput, mean / median /
p99 of TTFT, TPOT, ITL and E2E latency, wall-clock and predicted side by side.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

TOPICS = ["wafer-scale chips", "the history of the transistor", "mesh networks", "SRAM versus DRAM",
          "how compilers schedule loops", "the French revolution", "photosynthesis", "black holes",
          "the rules of chess", "how vaccines work", "river deltas", "the printing press"]


@dataclass
class RequestStats:
    ok: bool = False
    error: str = ""
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    predicted_ttft_s: float = 0.0
    predicted_tpot_s: float = 0.0
    predicted_e2e_s: float = 0.0

    @property
    def tpot_s(self) -> float:
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


def prompts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"Write a short paragraph about {TOPICS[int(rng.integers(len(TOPICS)))]}." for _ in range(n)]


async def _one(client, url: str, model: str, prompt: str, max_tokens: int) -> RequestStats:
    st = RequestStats()
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    t0 = time.perf_counter()
    last = t0
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                st.error = f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}"
                return st
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                now = time.perf_counter()
                if obj["choices"][0].get("text"):
                    if st.output_tokens == 0:
                        st.ttft_s = now - t0
                    else:
                        st.itl_s.append(now - last)
                    last = now
                    st.output_tokens += 1  # refined from usage below (a chunk may carry several tokens)
                if "usage" in obj:
                    st.output_tokens = obj["usage"]["completion_tokens"]
                    w = obj.get("waferllm", {})
                    st.predicted_ttft_s, st.predicted_tpot_s = w.get("predicted_ttft_s", 0), w.get("predicted_tpot_s", 0)
                    st.predicted_e2e_s = w.get("predicted_e2e_s", 0)
        st.e2e_s, st.ok = time.perf_counter() - t0, True
    except Exception as e:  # noqa: BLE001 - a failed request is counted, not fatal
        st.error = repr(e)
    return st


async def run_bench(url: str, model: str, num_prompts: int, request_rate: float, max_tokens: int, seed: int,
                    progress=None) -> tuple[list[RequestStats], float]:
    """Fire the requests (Poisson arrivals; inf = all at once); returns per-request stats and the duration."""
    import httpx

    rng = np.random.default_rng(seed)
    texts = prompts(num_prompts, seed)
    async with httpx.AsyncClient(timeout=None, headers=auth_headers()) as client:
        tasks = []
        t0 = time.perf_counter()
        for p in texts:
            tasks.append(asyncio.create_task(_one(client, url, model, p, max_tokens)))
            if progress:
                tasks[-1].add_done_callback(lambda _t: progress())
            if math.isfinite(request_rate):
                await asyncio.sleep(float(rng.exponential(1.0 / request_rate)))
        stats = await asyncio.gather(*tasks)
        return list(stats), time.perf_counter() - t0


def auth_headers() -> dict:
    """`Authorization: Bearer $WAFERLLM_API_KEY` when that is set (a server started with an API key)."""
    key = os.environ.get("WAFERLLM_API_KEY")
    return {"authorization": f"Bearer {key}"} if key else {}


def summarize(stats: list[RequestStats], duration_s: float) -> dict:
    """vLLM-style metrics: throughputs, and mean/median/p99 (ms) of each latency, wall and predicted."""
    ok = [s for s in stats if s.ok]
    out_tokens = sum(s.output_tokens for s in ok)
    res = {"completed": len(ok), "failed": len(stats) - len(ok), "duration_s": duration_s,
           "request_throughput": len(ok) / duration_s if duration_s else 0.0,
           "output_throughput": out_tokens / duration_s if duration_s else 0.0, "total_output_tokens": out_tokens,
           "errors": [s.error for s in stats if not s.ok][:5]}
    series = {"ttft": ([s.ttft_s for s in ok], [s.predicted_ttft_s for s in ok]),
              "tpot": ([s.tpot_s for s in ok if s.output_tokens > 1], [s.predicted_tpot_s for s in ok if s.output_tokens > 1]),
              "itl": ([x for s in ok for x in s.itl_s], [s.predicted_tpot_s for s in ok for _ in s.itl_s]),
              "e2el": ([s.e2e_s for s in ok], [s.predicted_e2e_s for s in ok])}
    for name, (wall, pred) in series.items():
        for kind, vals in (("", wall), ("predicted_", pred)):
            a = np.asarray(vals, float) * 1e3
            res[f"{kind}mean_{name}_ms"] = float(a.mean()) if a.size else 0.0
            res[f"{kind}median_{name}_ms"] = float(np.median(a)) if a.size else 0.0
            res[f"{kind}p99_{name}_ms"] = float(np.percentile(a, 99)) if a.size else 0.0
    return res
