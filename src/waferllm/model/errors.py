"""ModelError: the one user-facing error of the model layer."""

from __future__ import annotations

from waferllm import WaferError


class ModelError(WaferError):
    """A model could not be found, read or understood; the message is one line."""


def known_list(names) -> str:
    """Names for an error message: 'a, b, c'."""
    return ", ".join(sorted(names))
