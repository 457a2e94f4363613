"""Shared pieces of the benchmarks: the fixed prompt, medians, the machine's load, and a compile clock.

CompileClock listens to JAX's own monitoring events (jax.monitoring), the ones JAX records around every
program it builds, eager per-primitive programs included:
  /jax/core/compile/jaxpr_trace_duration         tracing Python into a jaxpr
  /jax/core/compile/jaxpr_to_mlir_module_duration lowering the jaxpr to StableHLO
  /jax/core/compile/backend_compile_duration      XLA compile, or, with the persistent cache, loading the
                                                  compiled program from the cache (it wraps compile_or_get_cached)
It keeps each event's (start, end) span and reports the length of the union of the spans, so nested
events (a jit traced inside another's trace) are not counted twice. Cache hits and misses are counted
from /jax/compilation_cache/cache_hits and .../cache_misses.
"""

from __future__ import annotations

import os
import statistics

# A fixed English paragraph: 116 tokens with smollm2-135m's tokenizer (BOS is not added by encode).
PROMPT = (
    "Wafer-scale accelerators such as the Cerebras WSE-2 place hundreds of thousands of small cores on a "
    "single silicon wafer, each with its own fast local memory and a router connected to its four "
    "neighbours. Running a large language model on such a machine means cutting every weight matrix into "
    "tiles that fit into a core, moving activations across the mesh with as few hops as possible, and "
    "keeping the key-value cache spread evenly over the rows. Explain in simple words why the decode phase "
    "is limited by communication latency rather than by arithmetic, in two short sentences."
)
PROMPT_TOKENS = 116

TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND = "/jax/core/compile/backend_compile_duration"
HITS = "/jax/compilation_cache/cache_hits"
MISSES = "/jax/compilation_cache/cache_misses"


def median(xs) -> float:
    return float(statistics.median(xs))


def load() -> str:
    """The 1/5/15-minute load averages and the core count, for printing beside timings."""
    a, b, c = os.getloadavg()
    return f"load average {a:.2f}, {b:.2f}, {c:.2f} on {os.cpu_count()} cores"


def _union(spans) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


class CompileClock:
    """Collects JAX's compile events from the moment it is made (import jax before, call nothing yet)."""

    def __init__(self):
        import jax.monitoring as mon

        self.spans: dict[str, list[tuple[float, float]]] = {TRACE: [], LOWER: [], BACKEND: []}
        self.counts = {HITS: 0, MISSES: 0}
        mon.register_event_time_span_listener(self._span)
        mon.register_event_listener(self._event)

    def reset(self) -> None:
        """Forget what was recorded so far (to clock one call)."""
        for v in self.spans.values():
            v.clear()
        self.counts = dict.fromkeys(self.counts, 0)

    def _span(self, event, start, end, **_):
        if event in self.spans:
            self.spans[event].append((start, end))

    def _event(self, event, **_):
        if event in self.counts:
            self.counts[event] += 1

    def summary(self) -> dict:
        """compile_s (union of trace, lowering and backend spans), its parts, programs built, cache counts."""
        return {"compile_s": _union([s for v in self.spans.values() for s in v]),
                "trace_s": _union(self.spans[TRACE]), "lower_s": _union(self.spans[LOWER]),
                "backend_s": _union(self.spans[BACKEND]), "programs": len(self.spans[BACKEND]),
                "cache_hits": self.counts[HITS], "cache_misses": self.counts[MISSES]}
