"""Device presets (wse2, wse3) from ../shared/reference/calibration.json, and custom device files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Mapping

from waferllm.spec.device import DeviceSpec, SpecError, field_names, unknown_field_message

CAL = "calibration.json"
FIT = "fitted by `waferllm calibrate` (perf/calibrate.py)"
BASE_FIT = "fitted by `waferllm calibrate` (perf/baseline_fit.py), WaferLLM constants held, to"
JOINT = (f"{FIT}, jointly with the other latency constants, to {CAL} gemv_16k, gemv_32k (fastest grid and K-tree "
         "group count), decode_llama3_8b_*, prefill_llama3_8b_*, e2e_llama3_8b (Table 2) and the meshgemm_efficiency "
         "floor")

# Fitted constants: the numbers below are the output of `waferllm calibrate`, which fits them to the
# figures named in each source string and to nothing else (docs/cost-model.md, "Calibration").
_WSE2_FITTED = dict(
    fp16_macs_per_cycle=4.0,
    alpha_cycles_per_hop=1.205,
    beta_cycles_per_relay=5.734,
    relay_cycles_per_element=1.392,
    message_overhead_cycles=52.713,
    step_overhead_cycles=227.049,
    collective_overhead_cycles=13.505,
    vector_op_overhead_cycles=3.749,
    special_function_cycles=72.188,
)

# The baselines' constants: the output of `waferllm calibrate` (perf/baseline_fit.py), fitted to the Llama3-8B
# T10 and Ladder rows of Tables 3 and 4 only, with every WaferLLM constant above held fixed.
_WSE2_BASELINES = dict(
    t10_exchange_cycles=191712.4,
    t10_relay_cycles_per_hop=10.1,
    ladder_access_cycles=57671.9,
    ladder_relay_cycles_per_hop=207.6,
)

_WSE2 = dict(
    name="wse2",
    width_cores=750,
    height_cores=994,
    clock_hz=1.1e9,
    sram_bytes_per_core=49152,
    link_bits_per_cycle=32,
    fp32_macs_per_cycle=1.0,
    routes_per_core=32,
    power_w=15000.0,
    sram_bytes_per_cycle_per_core=round(2.2e16 / 850_000 / 1.1e9, 2),
    interwafer_bytes_per_s=150e9,
    interwafer_latency_s=2e-6,
    **_WSE2_FITTED,
    **_WSE2_BASELINES,
)

_WSE2_SOURCES = {
    "width_cores": f"artifact: fabric 757 x 996 less the memcpy frame (7 columns, 2 rows) ({CAL})",
    "height_cores": f"artifact: fabric 757 x 996 less the memcpy frame (7 columns, 2 rows) ({CAL})",
    "clock_hz": f"paper: compute engine at up to 1.1 GHz; artifact converts cycles at 1.1 GHz ({CAL})",
    "sram_bytes_per_core": f"paper: 48 KB per core ({CAL})",
    "link_bits_per_cycle": f"paper: 32-bit message to a neighbour per cycle ({CAL})",
    "fp32_macs_per_cycle": f"paper: one MAC per cycle on 32-bit operands ({CAL})",
    "fp16_macs_per_cycle": f"{FIT}: 4 (SIMD-4 halves) fits the GEMV and Llama3-8B figures with half the error of 2 "
                           f"(joint fit, log-error cost 0.012 vs 0.017) ({CAL})",
    "routes_per_core": f"paper: 5-bit route address, 32 routes per core ({CAL})",
    "power_w": f"derived: 37.5 x A100 (400 W), the ratio behind the paper's energy tables ({CAL})",
    "sram_bytes_per_cycle_per_core": f"derived: 22 PB/s / 850,000 cores / 1.1 GHz ({CAL})",
    "interwafer_bytes_per_s": "vendor: CS-2 system I/O 1.2 Tb/s (12 x 100 GbE) = 150 GB/s; a pipeline stage "
                              "sends activations to the next wafer over it",
    "interwafer_latency_s": "assumed: about 2 us for NIC + one Ethernet switch + NIC (no figure published)",
    "alpha_cycles_per_hop": f"{JOINT} (was assumed 1; the decode slow-down from 420 to 660 needs more per hop)",
    "beta_cycles_per_relay": f"{JOINT} (the pipeline-GEMV baseline bound, meshgemv_vs_pipeline >= 4, holds it up)",
    "relay_cycles_per_element": f"{JOINT}",
    "message_overhead_cycles": f"{JOINT}",
    "step_overhead_cycles": f"{JOINT} (a compute-shift step's fixed cost: task switch, DSD set-up of its sends and "
                            "receives; the e2e rows pin it)",
    "collective_overhead_cycles": f"{JOINT} (the fixed cost of starting a collective: task activation and the "
                                  "set-up of its chains, beside each message's own overhead)",
    "vector_op_overhead_cycles": f"{JOINT} (per vector instruction; the authors' GEMMs issue one @fmach per element "
                                 "of B, GEMVs one per input element)",
    "t10_exchange_cycles": f"{BASE_FIT} {CAL} prefill_llama3_8b_t10 (Table 3); mechanism: T10 (SOSP'24) compute-shift "
                           "steps are bulk-synchronous exchanges between core-id partners, whose pair routes exceed "
                           "the 32 per router, so every step sets its routes up and synchronises (machine/baselines.py)",
    "t10_relay_cycles_per_hop": f"{BASE_FIT} {CAL} decode_llama3_8b_t10 (Table 4); mechanism: T10's collectives "
                                "have no multicast or pass-through routes, so each hop of a reduce chain and of the "
                                "broadcast back is a software relay (machine/baselines.py)",
    "ladder_relay_cycles_per_hop": f"{BASE_FIT} {CAL} prefill_llama3_8b_ladder and decode_llama3_8b_ladder; mechanism: "
                                   "a shared-memory access gathers and scatters across its line, each hop a "
                                   "store-and-forward relay (machine/baselines.py)",
    "ladder_access_cycles": f"{BASE_FIT} {CAL} prefill_llama3_8b_ladder and decode_llama3_8b_ladder (Tables 3-4); "
                            "mechanism: Ladder (OSDI'24) reaches remote operands through shared-memory collective "
                            "accesses over the NoC, each set up and synchronised across its line (machine/baselines.py)",
    "special_function_cycles": f"{JOINT} (one software divide or square root per call: WSE-2 cores have no "
                               "divide or transcendental unit; the authors' decode calls it once per softmax row "
                               "and RMSNorm, and per element only in SiLU; exp is their fast_exp, vector passes. "
                               "The bare GEMV rows pay none of it, which is what lets GEMV and decode both fit)",
}

_WSE3 = dict(
    _WSE2,
    name="wse3",
    width_cores=755,
    height_cores=1170,
    power_w=23000.0,
    sram_bytes_per_cycle_per_core=round(2.1e16 / 900_000 / 1.1e9, 2),
)

_WSE3_SOURCES = dict(
    _WSE2_SOURCES,
    width_cores=f"artifact: fabric 762 x 1172 (cslc --arch=wse3) less a memcpy frame as on WSE-2 ({CAL})",
    height_cores=f"artifact: fabric 762 x 1172 (cslc --arch=wse3) less a memcpy frame as on WSE-2 ({CAL})",
    clock_hz=f"artifact timing scripts assume 1.1 GHz (not vendor-confirmed) ({CAL})",
    sram_bytes_per_core=f"artifact assumes 48 KiB per core; 44 GB / 900,000 cores ({CAL})",
    power_w=f"secondary sources only, an estimate ({CAL})",
    sram_bytes_per_cycle_per_core=f"derived: 21 PB/s / 900,000 cores / 1.1 GHz ({CAL})",
    interwafer_bytes_per_s="assumed equal to the CS-2's 1.2 Tb/s system I/O (CS-3 figure not in the sources)",
    **{k: "assumed equal to wse2 (" + v + ")" for k, v in _WSE2_SOURCES.items()
       if k.endswith("_cycles") or k.endswith("_per_hop") or k.endswith("_per_relay") or k.endswith("_element")},
)

_WSE3_SOURCES["fp16_macs_per_cycle"] = "assumed equal to wse2 (no per-core figure published; fitted on wse2)"

PRESETS: Mapping[str, DeviceSpec] = {
    "wse2": DeviceSpec(**_WSE2, sources=_WSE2_SOURCES),
    "wse3": DeviceSpec(**_WSE3, sources=_WSE3_SOURCES),
}


def device_names() -> list[str]:
    return sorted(PRESETS)


def get_device(name: str) -> DeviceSpec:
    """A preset by name; unknown names raise SpecError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SpecError(f"unknown device {name!r}; known devices: {', '.join(device_names())} "
                        "(or a path to a .json/.toml device file)") from None


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """['field=value', ...] -> {field: typed value}; value typed like the field."""
    out: dict[str, Any] = {}
    ints = {"width_cores", "height_cores", "sram_bytes_per_core", "link_bits_per_cycle", "routes_per_core"}
    for item in items or []:
        if "=" not in item:
            raise SpecError(f"bad override {item!r}; expected FIELD=VALUE, e.g. sram_bytes_per_core=1048576")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in field_names() or k == "sources":
            raise SpecError(unknown_field_message(k))
        try:
            out[k] = v if k == "name" else (int(float(v)) if k in ints and float(v).is_integer() else float(v))
        except ValueError:
            raise SpecError(f"bad value for {k}: {v!r} is not a number") from None
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read device file {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"device file {str(path)!r} is not UTF-8 text; give a .json or .toml file") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"device file {str(path)!r} is not valid {path.suffix[1:] or 'json'}: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"device file {str(path)!r} must hold an object of device fields")
    return data


def spec_from_dict(data: Mapping[str, Any], origin: str) -> DeviceSpec:
    """Build a spec from a dict with optional 'base' preset; every non-base field is required."""
    data = dict(data)
    base_name = data.pop("base", None)
    sources = data.pop("sources", {}) or {}
    if not isinstance(sources, Mapping) or not all(isinstance(v, str) for v in sources.values()):
        raise SpecError(f"{origin}: \"sources\" must be an object of field name -> text")
    if base_name is not None and not isinstance(base_name, str):
        raise SpecError(f"{origin}: \"base\" must be a preset name ({', '.join(device_names())}), got {base_name!r}")
    for k in list(data) + list(sources):
        if k not in field_names() or k == "sources":
            raise SpecError(f"{origin}: " + unknown_field_message(k))
    if base_name is not None:
        base = get_device(base_name)
        data.setdefault("name", f"{base_name}-custom")
        srcs = {k: sources.get(k, f"{origin}") for k in data if k != "name"}
        srcs.update({k: v for k, v in sources.items()})
        return base.replace(**data, sources=srcs)
    missing = [f for f in field_names() if f not in data and f != "sources"]
    if missing:
        raise SpecError(f"{origin}: missing device fields {', '.join(missing)} (or give \"base\": \"wse2\")")
    sources = {**{k: origin for k in data if k != "name"}, **sources}
    return DeviceSpec(**data, sources=sources)


def load_device(name_or_path: str, overrides: list[str] | dict[str, Any] | None = None) -> DeviceSpec:
    """A preset name or a .json/.toml device file, then FIELD=VALUE overrides."""
    if name_or_path in PRESETS:
        spec = PRESETS[name_or_path]
    elif name_or_path.endswith((".json", ".toml")) or Path(name_or_path).exists():
        spec = spec_from_dict(_read_file(Path(name_or_path)), f"device file {name_or_path}")
    else:
        spec = get_device(name_or_path)
    ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return spec.replace(**ov) if ov else spec
