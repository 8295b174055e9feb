"""Errors of the checkpoint package: messages a user can act on."""
from __future__ import annotations

from ..errors import InputError

# The one opt-out of safe loading, the same flag on every tool that reads weights.
UNSAFE_LOAD_FLAG = "--unsafe-load"


class WeightsFileError(InputError, ValueError):
    """A weights file cannot be read, or not safely (missing, truncated, or holding code)."""


class ConversionError(WeightsFileError):
    """The input cannot be converted (unreadable, truncated, wrong layout or architecture)."""
