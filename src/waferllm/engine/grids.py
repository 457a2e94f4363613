"""Grids, resolved once: `auto` or `RxC` (or (R, C)) -> one grid per phase, checked against the device.

resolve_grids() is the only place `auto` is interpreted; what it means is the caller's AutoGrids:
  - the engine (`waferllm generate`, `serve`; engine/placement.smallest_fit): decode = the smallest
    square grid on which a layer fits with the KV cache for max_tokens; prefill = the square of the
    decode grid's shorter side (square: lcm(R, C) compute-shift steps explode otherwise);
  - predictions (`waferllm predict`, `compare`; perf/autotune.autotuned): the autotuner, the fastest
    grid on the fewest wafers for each phase.
A grid is checked against the device's size here, without building a Mesh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Union

from waferllm.machine.mesh import GridError
from waferllm.spec import DeviceSpec

Grid = tuple[int, int]
GridArg = Union[str, Grid]  # 'auto', 'RxC' or (R, C)
AUTO = "auto"
NONE = "none"  # prefill only: no prefill grid, the prompt goes through the decode path token by token

_RXC = re.compile(r"\s*(-?\d+)\s*[xX*]\s*(-?\d+)\s*")


@dataclass(frozen=True, kw_only=True)
class AutoGrids:
    """What `auto` means: decode() -> the decode grid; prefill(decode grid) -> the prefill grid."""

    name: str
    decode: Callable[[], Grid]
    prefill: Callable[[Grid], Grid]


@dataclass(frozen=True, kw_only=True)
class Grids:
    """The grids a run uses: decode, and prefill (None: the prompt goes through the decode path)."""

    decode: Grid
    prefill: Grid | None


def parse_grid_arg(value: GridArg, what: str = "grid") -> Grid | str:
    """'auto' (returned as is), 'RxC' or (R, C) -> (R, C) with R, C >= 1; GridError otherwise."""
    if isinstance(value, str):
        if value.strip() == AUTO:
            return AUTO
        m = _RXC.fullmatch(value)
        if not m:
            also = ", none" if what == "prefill grid" else ""
            raise GridError(f"bad {what} {value!r}; expected auto{also} or ROWSxCOLS with positive integers, "
                            "e.g. 720x720 or 3x5")
        rc = int(m.group(1)), int(m.group(2))
    else:
        try:
            rc = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            rc = ()
        if len(rc) != 2:
            raise GridError(f"bad {what} {value!r}; expected (rows, cols)")
    if min(rc) < 1:
        raise GridError(f"bad {what} {value if isinstance(value, str) else 'x'.join(map(str, rc))!r}: "
                        "rows and columns must be >= 1")
    return rc


def check_grid(spec: DeviceSpec, grid: GridArg, what: str = "grid") -> Grid:
    """An explicit grid ('RxC' or (R, C)) that fits the device; GridError naming the device's size otherwise."""
    rc = parse_grid_arg(grid, what)
    if rc == AUTO:
        raise GridError(f"{what} 'auto' must be resolved first (engine/grids.resolve_grids)")
    rows, cols = rc
    if rows > spec.height_cores or cols > spec.width_cores:
        raise GridError(f"{what} {rows}x{cols} does not fit device {spec.name} "
                        f"({spec.height_cores}x{spec.width_cores} cores, rows x columns)")
    return rows, cols


def _no_prefill(prefill_grid: GridArg | None) -> bool:
    return prefill_grid is None or (isinstance(prefill_grid, str) and prefill_grid.strip().lower() == NONE)


def check_grid_args(spec: DeviceSpec, *, grid: GridArg = AUTO, prefill_grid: GridArg | None = AUTO) -> None:
    """Check a run's explicit grids ('RxC', (R, C)) against the device without a model, so a bad --grid fails
    before anything slow (loading a checkpoint); `auto` and `none` are left to resolve_grids."""
    if parse_grid_arg(grid) != AUTO:
        check_grid(spec, grid)
    if not _no_prefill(prefill_grid) and parse_grid_arg(prefill_grid, "prefill grid") != AUTO:
        check_grid(spec, prefill_grid, "prefill grid")


def resolve_grids(spec: DeviceSpec, *, grid: GridArg = AUTO, prefill_grid: GridArg | None = AUTO,
                  auto: AutoGrids) -> Grids:
    """The decode and prefill grids of a run; `auto` means what `auto` says (see the module docstring).

    prefill_grid None or 'none': no prefill grid. Every grid is checked against the device; the strategy
    is only consulted for the phases that ask for `auto`.
    """
    d = parse_grid_arg(grid)
    p = None if _no_prefill(prefill_grid) else parse_grid_arg(prefill_grid, "prefill grid")
    decode = check_grid(spec, auto.decode() if d == AUTO else d)
    if p is None:
        return Grids(decode=decode, prefill=None)
    return Grids(decode=decode, prefill=check_grid(spec, auto.prefill(decode) if p == AUTO else p, "prefill grid"))
