"""Shared fixtures: a roomy test device (kernels on tiny grids need more than 48 KB only for big tiles)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from waferllm.spec import get_device  # noqa: E402


@pytest.fixture(scope="session")
def wse2():
    return get_device("wse2")


@pytest.fixture(scope="session")
def roomy(wse2):
    """wse2 with 16 MiB per core, for numeric kernel tests with large tiles on tiny grids."""
    return wse2.replace(sram_bytes_per_core=1 << 24)
