"""Keyed, deterministic transformations used by ``hash``, ``uid_remap`` and de-identification.

All of them are HMAC-SHA256 with the router's secret salt: the same input gives the
same output on every worker and every day (so a study stays one study after its
UIDs are replaced, and a hashed PatientID links a patient's studies), while nobody
without the salt can compute or reverse the mapping. The salt itself is never
logged or written anywhere by the router.
"""

from __future__ import annotations

import hashlib
import hmac

UID_ROOT = "2.25."
"""PS3.5 B.2: a UID derived from a 128-bit number, needing no registered root."""


def keyed_digest(salt: bytes, text: str, purpose: str) -> bytes:
    """HMAC-SHA256 of ``text``; ``purpose`` separates the uses of one salt."""
    return hmac.new(salt, f"{purpose}\0{text}".encode(), hashlib.sha256).digest()


def remap_uid(uid: str, salt: bytes) -> str:
    """A new UID for ``uid``, the same for the same input and salt (at most 64 chars)."""
    number = int.from_bytes(keyed_digest(salt, uid.strip("\0 "), "uid")[:16], "big")
    return f"{UID_ROOT}{number}"


def hash_text(value: str, salt: bytes, length: int = 16) -> str:
    """A keyed hash of ``value`` as ``length`` upper-case hex digits (fits LO, SH, CS)."""
    return keyed_digest(salt, value, "hash").hex().upper()[:length]
