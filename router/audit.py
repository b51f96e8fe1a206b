"""The audit trail: one JSON line per event in ``audit.file``.

The audit trail is the one place where identifiers (UIDs, AE titles, peers) are
recorded on purpose; it is what an auditor reads to follow an instance from
receipt to every destination. Each event is one ``write()`` of one line on a file
opened with ``O_APPEND``, so lines from the SCP and every worker process never
interleave or split, and each is handed to the kernel before the call returns.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any

EVENTS = (
    "received", "routed", "forwarded", "forward_failed", "dead_lettered", "rejected",
    "rules_reloaded",
)  # fmt: skip
FIELDS = (
    "sop_instance_uid", "study_instance_uid", "calling_ae", "peer", "rule", "destination",
    "status", "attempt", "ruleset_version",
)  # fmt: skip


def audit_record(event: str, **fields: Any) -> dict[str, Any]:
    """The event as a dict: every contract field present (null when not applicable)."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    record: dict[str, Any] = {
        "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "event": event,
    }
    for name in FIELDS:
        record[name] = fields.pop(name, None)
    record.update({k: v for k, v in fields.items() if v is not None})
    return record


class AuditLog:
    """Appends audit events to a file shared by every router process on the host."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._pid = 0

    def _open(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._pid = pid
        return self._fd

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event; raises OSError if the trail cannot be written."""
        line = json.dumps(audit_record(event, **fields), separators=(",", ":"), default=str)
        data = (line + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            os.write(fd, data)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None
