"""SpecError: the one user-facing error of the spec layer."""

from __future__ import annotations

from waferllm import WaferError


class SpecError(WaferError):
    """A device spec or dtype is unknown, incomplete or contradictory."""
