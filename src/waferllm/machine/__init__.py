"""Layer 1: the simulated mesh: tiles, NoC primitives, the PLMR cost ledger, shape-only arrays."""

from waferllm.machine.ledger import Ledger, PhaseCost
from waferllm.machine.mesh import Mesh, LimitError, GridError, parse_grid

__all__ = ["Ledger", "PhaseCost", "Mesh", "LimitError", "GridError", "parse_grid"]
