"""Layer 0: what the hardware is (device specs and presets). Imports nothing from waferllm above it."""

from waferllm.spec.device import DeviceSpec, SpecError
from waferllm.spec.presets import PRESETS, get_device, load_device, device_names

__all__ = ["DeviceSpec", "SpecError", "PRESETS", "get_device", "load_device", "device_names"]
