"""The one exception the converter raises."""

from __future__ import annotations

__all__ = ["ConversionError"]


class ConversionError(Exception):
    """A conversion that cannot be done, with a reason an operator can act on.

    ``reason`` is one sentence without a traceback ("jpeg-baseline needs 8-bit
    samples; this instance has BitsAllocated 16"): it ends up in the dead-letter
    list and in audit records, where the person reading it has the instance and
    the rule in front of them but not the code.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
