"""The one dtype table: name -> bytes per element and the numpy/JAX element type the mesh stores.

Mesh dtypes (float32, float16, bfloat16) are what weights, KV caches and tiles are held in; every layer
takes them from here (`array_dtype`, `dtype_bytes`). Storage-only formats (int8, int4 and GGUF's block
formats, whose bytes include their per-block scales) only size checkpoints (`storage_bytes`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import ml_dtypes  # numpy's bfloat16 (JAX's own jnp.bfloat16 is this type)
import numpy as np

from waferllm.spec.errors import SpecError

# name -> (bytes per element, numpy element type on the mesh; None for storage-only formats)
_TABLE: dict[str, tuple[float, type | None]] = {
    "float32": (4, np.float32), "float16": (2, np.float16), "bfloat16": (2, ml_dtypes.bfloat16),
    "int8": (1, None), "int4": (0.5, None), "q8_0": (34 / 32, None), "q4_0": (18 / 32, None), "q4_1": (20 / 32, None),
}
ALIASES: Mapping[str, str] = MappingProxyType({"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"})

#: mesh dtype name -> numpy dtype (JAX takes these wherever it takes jnp.float32 & co.)
ARRAY_DTYPES: Mapping[str, np.dtype] = MappingProxyType(
    {k: np.dtype(t) for k, (_, t) in _TABLE.items() if t is not None})
#: mesh dtype name -> bytes per element
DTYPE_BYTES: Mapping[str, int] = MappingProxyType({k: int(_TABLE[k][0]) for k in ARRAY_DTYPES})
#: any storage name (aliases included) -> bytes per element
STORAGE_BYTES: Mapping[str, float] = MappingProxyType(
    {**{k: float(b) for k, (b, _) in _TABLE.items()}, **{a: float(_TABLE[k][0]) for a, k in ALIASES.items()}})


def check_dtype(dtype: str) -> str:
    """A mesh dtype name, unchanged; SpecError listing the known ones otherwise."""
    if dtype not in ARRAY_DTYPES:
        raise SpecError(f"unknown dtype {dtype!r}; known: {', '.join(ARRAY_DTYPES)}")
    return dtype


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a mesh dtype."""
    return DTYPE_BYTES[check_dtype(dtype)]


def array_dtype(dtype: str) -> np.dtype:
    """The numpy (and JAX) element type of a mesh dtype."""
    return ARRAY_DTYPES[check_dtype(dtype)]


def storage_bytes(dtype: str) -> float:
    """Bytes per element of any storage format (case-insensitive; block formats include their scales)."""
    try:
        return STORAGE_BYTES[dtype.lower()]
    except KeyError:
        raise SpecError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(STORAGE_BYTES))}") from None
