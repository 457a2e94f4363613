"""Layer 2: mesh algorithms written from one core's view with named NoC primitives."""

from waferllm.kernels.gemm import GEMM_ALGOS, gemm, gemm_t
from waferllm.kernels.gemv import GEMV_ALGOS, gemv, gemv_x_to_y, gemv_y_to_x

__all__ = ["GEMM_ALGOS", "GEMV_ALGOS", "gemm", "gemm_t", "gemv", "gemv_x_to_y", "gemv_y_to_x"]
