"""Named DIMSE status codes (PS3.4 Annex B, PS3.7 Annex C) and their delivery classes.

Both sides use this table: the SCP answers with a name instead of a bare number,
and the forwarder classifies what a destination answered into what the router
does next (done, done with a warning, try again later, give up).
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """The codes the router sends or reasons about, by name."""

    SUCCESS = 0x0000
    # Warnings: the instance was stored, perhaps changed (PS3.4 B.2.3).
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    # Failures.
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    PROCESSING_FAILURE = 0x0110
    RESOURCE_LIMITATION = 0x0213


ALREADY_DELIVERED = "already delivered, not sent again"
"""Status of a ``forwarded`` audit event for which nothing was sent: a delivery record
shows the destination has this very content (router/deliveries.py)."""


class Outcome(enum.StrEnum):
    """What a status means for delivery; also the ``outcome`` label of forward_total."""

    SUCCESS = "success"
    WARNING = "warning"
    RETRY = "retry"
    FAILED = "failed"


_WARNINGS = {
    Status.COERCION_OF_DATA_ELEMENTS,
    Status.ELEMENTS_DISCARDED,
    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
}


def classify(status: int) -> Outcome:
    """Delivery class of a C-STORE response status from a destination.

    Out-of-resources (0xA7xx) and resource limitation (0x0213) are transient: the
    destination may accept the same instance later. 0xA9xx, 0xCxxx, 0x0122 and
    0x0124 will not change by retrying the same bytes, so they fail at once.
    Unknown codes in the warning range (0x0001, 0xBxxx) count as warnings, any
    other unknown code as a permanent failure so that it is looked at.
    """
    if status == Status.SUCCESS:
        return Outcome.SUCCESS
    if status in _WARNINGS or (status & 0xF000) == 0xB000 or status == 0x0001:
        return Outcome.WARNING
    if (status & 0xFF00) == 0xA700 or status == Status.RESOURCE_LIMITATION:
        return Outcome.RETRY
    return Outcome.FAILED


def describe(status: int) -> str:
    """``0xA700 OUT_OF_RESOURCES``-style text for logs and audit events."""
    try:
        name = Status(status).name
    except ValueError:
        name = "UNKNOWN"
    return f"0x{status:04X} {name}"
