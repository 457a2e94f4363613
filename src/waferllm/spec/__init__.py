"""Layer 0: what the hardware is (device specs and presets, the dtype table). Imports nothing from waferllm above it."""

from waferllm.spec.device import DeviceSpec
from waferllm.spec.dtypes import ARRAY_DTYPES, DTYPE_BYTES, array_dtype, check_dtype, dtype_bytes, storage_bytes
from waferllm.spec.errors import SpecError
from waferllm.spec.presets import PRESETS, get_device, load_device, device_names

__all__ = ["ARRAY_DTYPES", "DTYPE_BYTES", "DeviceSpec", "SpecError", "PRESETS", "array_dtype", "check_dtype",
           "device_names", "dtype_bytes", "get_device", "load_device", "storage_bytes"]
