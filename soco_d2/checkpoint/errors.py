"""The one exception type of the converter: a message a user can act on."""
from __future__ import annotations


class ConversionError(ValueError):
    """The input cannot be converted (unreadable, truncated, wrong layout or architecture)."""
