"""DeviceSpec: the PLMR description of a wafer-scale mesh, every number with its provenance."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from waferllm.spec.dtypes import DTYPE_BYTES, check_dtype, dtype_bytes  # noqa: F401 (re-exported)
from waferllm.spec.errors import SpecError


@dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """A 2D mesh of cores (P, L, M, R of the PLMR model); X = columns (width), Y = rows (height)."""

    name: str
    width_cores: int  # cores along X
    height_cores: int  # cores along Y
    clock_hz: float
    sram_bytes_per_core: int
    link_bits_per_cycle: int  # per direction, per link
    fp32_macs_per_cycle: float
    fp16_macs_per_cycle: float  # also used for bfloat16
    alpha_cycles_per_hop: float  # L: forwarding one hop on a configured route
    beta_cycles_per_relay: float  # L: a software relay stage (parse, add, re-send)
    relay_cycles_per_element: float  # a relay core's work per streamed element of a reduction
    message_overhead_cycles: float  # fixed cost of starting one message (send task activation)
    step_overhead_cycles: float  # fixed cost of one compute-shift step (sync, buffer swap)
    collective_overhead_cycles: float  # fixed cost of one collective (task switch, route setup)
    vector_op_overhead_cycles: float  # fixed cost per vector instruction (DSD set-up) in local compute
    special_function_cycles: float  # one exp / rsqrt / sigmoid on one element (software on the core)
    routes_per_core: int  # R: distinct routes (colours) a router can hold
    power_w: float  # whole-system power for energy figures
    sram_bytes_per_cycle_per_core: float  # peak SRAM read bandwidth of one core (utilization figures)
    interwafer_bytes_per_s: float  # one wafer's I/O to the next wafer of a pipeline
    interwafer_latency_s: float  # one message from wafer to wafer (NIC, switch, NIC)
    # the paper's mesh-oblivious baselines (machine/baselines.py; fitted by perf/baseline_fit.py)
    t10_exchange_cycles: float  # T10: setting up and synchronising one compute-shift step's pair routes
    t10_relay_cycles_per_hop: float  # T10: one hop of a collective relayed in software (no spanning route)
    ladder_access_cycles: float  # Ladder: setting up one shared-memory collective access over the NoC
    ladder_relay_cycles_per_hop: float  # Ladder: one store-and-forward hop of a shared-memory access
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"device name must be a non-empty string, got {self.name!r}")
        for name in ("width_cores", "height_cores", "sram_bytes_per_core", "link_bits_per_cycle", "routes_per_core"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"device {self.name!r}: {name} must be a positive integer, got {v!r}")
        for name in ("clock_hz", "fp32_macs_per_cycle", "fp16_macs_per_cycle", "alpha_cycles_per_hop", "power_w",
                     "sram_bytes_per_cycle_per_core", "interwafer_bytes_per_s", "interwafer_latency_s"):
            if not _is_num(getattr(self, name)) or getattr(self, name) <= 0:
                raise SpecError(f"device {self.name!r}: {name} must be a finite positive number, "
                                f"got {getattr(self, name)!r}")
        for name in ("beta_cycles_per_relay", "relay_cycles_per_element", "message_overhead_cycles",
                     "step_overhead_cycles", "collective_overhead_cycles", "vector_op_overhead_cycles",
                     "special_function_cycles", "t10_exchange_cycles", "t10_relay_cycles_per_hop",
                     "ladder_access_cycles", "ladder_relay_cycles_per_hop"):
            if not _is_num(getattr(self, name)) or getattr(self, name) < 0:
                raise SpecError(f"device {self.name!r}: {name} must be a finite number >= 0, "
                                f"got {getattr(self, name)!r}")
        if self.beta_cycles_per_relay < self.alpha_cycles_per_hop:
            raise SpecError(f"device {self.name!r}: contradictory latencies: a relay (beta_cycles_per_relay="
                            f"{self.beta_cycles_per_relay}) cannot be cheaper than one hop (alpha_cycles_per_hop="
                            f"{self.alpha_cycles_per_hop}); PLMR needs alpha <= beta")
        if self.routes_per_core < 4:
            raise SpecError(f"device {self.name!r}: routes_per_core={self.routes_per_core} is below the 4 routes "
                            "every mesh kernel needs (a send and a receive route on each axis)")
        unknown = set(self.sources) - set(field_names())
        if unknown:
            raise SpecError(f"device {self.name!r}: sources name unknown fields {sorted(unknown)}")

    # --- derived quantities -------------------------------------------------
    @property
    def cores(self) -> int:
        return self.width_cores * self.height_cores

    @property
    def link_bytes_per_cycle(self) -> float:
        return self.link_bits_per_cycle / 8

    def macs_per_cycle(self, dtype: str) -> float:
        """MACs per cycle per core for a dtype name (float32, float16, bfloat16)."""
        check_dtype(dtype)
        return self.fp32_macs_per_cycle if dtype == "float32" else self.fp16_macs_per_cycle

    def source(self, name: str) -> str:
        return self.sources.get(name, "unspecified")

    def replace(self, **changes: Any) -> "DeviceSpec":
        """A copy with some fields changed; changed fields are marked as user overrides."""
        srcs = dict(self.sources)
        for k in changes:
            if k not in field_names():
                raise SpecError(unknown_field_message(k))
            if k != "sources":
                srcs[k] = changes.get("sources", {}).get(k, "user override")
        changes = {k: v for k, v in changes.items() if k != "sources"}
        return dataclasses.replace(self, sources=srcs, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sources"}
        d["sources"] = dict(self.sources)
        return d


def _is_num(v: Any) -> bool:
    """A real, finite number (NaN and infinity are not: every figure derived from them would be meaningless)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(DeviceSpec)]


def unknown_field_message(name: str) -> str:
    known = ", ".join(n for n in field_names() if n != "sources")
    return f"unknown device field {name!r}; known fields: {known}"
