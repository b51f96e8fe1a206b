"""Exception text that is safe for application logs and dead-letter reasons.

pydicom's errors quote the value they failed on: a PatientID stored with the
wrong VR raises ``BytesLengthException("... Instead received b'12345678 ' ...
parse (0010,0020) according to VR 'UL'")``, and a rule action writing text into
a number raises ``ValueError("could not convert string to float: '12345678'")``.
Logged as ``str(exc)``, either puts a patient identifier into the application
log. So an exception's own text is kept only for kinds whose messages come from
the operating system, the network or the broker (paths, addresses, errno
strings); for any other kind the description is its type and the elements and
value representations its message names, which locate the problem without the
value.
"""

from __future__ import annotations

import re
import sys
import traceback
from types import TracebackType
from typing import Any

import kombu.exceptions
import redis

__all__ = ["describe_error", "exception_of", "safe_traceback"]

MESSAGE_IS_SAFE: tuple[type[BaseException], ...] = (
    OSError,
    redis.RedisError,
    kombu.exceptions.KombuError,
)
"""Exceptions whose messages never hold data set values."""

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")
_VR = re.compile(r"\bVR '?([A-Z]{2})\b")


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for the safe kinds, else ``Type`` and the tags and VRs named.

    >>> describe_error(ValueError("could not convert string to float: 'DOE^JOHN'"))
    'ValueError'
    """
    name = type(exc).__name__
    if isinstance(exc, MESSAGE_IS_SAFE):
        return f"{name}: {exc}"
    text = str(exc)
    tags = sorted({f"({g.upper()},{e.upper()})" for g, e in _TAG.findall(text)})
    vrs = sorted(set(_VR.findall(text)))
    where = [f"element {', '.join(tags)}"] if tags else []
    where += [f"VR {', '.join(vrs)}"] if vrs else []
    return f"{name} ({'; '.join(where)})" if where else name


def safe_traceback(exc_info: ExcInfo) -> str:
    """A traceback's frames and the exception's description (``describe_error``):
    where it happened, for a bug report, without the message's values. Chained
    causes come first, as Python prints them, described the same way."""
    chain: list[BaseException] = []
    exc: BaseException | None = exc_info[1]
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    blocks = []
    for link in reversed(chain):
        frames = traceback.extract_tb(link.__traceback__)
        blocks.append("\n".join([
            "Traceback (most recent call last):",
            *(f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in frames),
            describe_error(link),
        ]))  # fmt: skip
    return "\n\n".join(blocks)


def exception_of(value: Any) -> ExcInfo | None:
    """The (type, value, traceback) that a log call's ``exc_info`` stands for, if any."""
    if value is True:
        value = sys.exc_info()
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value[0], value[1], value[2]
    return None
