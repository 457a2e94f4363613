"""The engine's programs built shape-only for predictions, on grids already resolved (engine/grids.py).

Shared by predict.py and autotune.py (so neither imports the other back).
"""

from __future__ import annotations

from waferllm.engine.decode import DecodeProgram
from waferllm.engine.grids import Grid, check_grid
from waferllm.engine.placement import plan_decode
from waferllm.engine.prefill import PrefillProgram
from waferllm.model.config import ModelConfig
from waferllm.spec import DeviceSpec


def decode_program(cfg: ModelConfig, spec: DeviceSpec, grid: Grid, dtype: str, tokens: int, policy: str = "shift",
                   strategy: str = "waferllm") -> DecodeProgram:
    """The decode program on an explicit grid whose plan leaves room for `tokens` of KV cache."""
    plan = plan_decode(cfg, spec, grid, dtype, min_tokens=tokens)
    return DecodeProgram(cfg=cfg, plan=plan, spec=spec, policy=policy, strategy=strategy)


def prefill_program(cfg: ModelConfig, spec: DeviceSpec, grid: Grid, dtype: str,
                    strategy: str = "waferllm") -> PrefillProgram:
    """The prefill program on an explicit grid (checked against the device)."""
    rows, cols = check_grid(spec, grid, "prefill grid")
    return PrefillProgram(cfg=cfg, spec=spec, rows=rows, cols=cols, dtype=dtype, strategy=strategy)
