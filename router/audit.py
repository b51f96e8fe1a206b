"""The audit trail: one JSON line per event in ``audit.file``.

The audit trail is the one place where identifiers (UIDs, AE titles, peers) are
recorded on purpose; it is what an auditor reads to follow an instance from
receipt to every destination. Each event is one ``write()`` of one line on a file
opened with ``O_APPEND``, so lines from the SCP and every worker process never
interleave or split, and each is handed to the kernel before the call returns.
"""

from __future__ import annotations

import datetime as dt
import fcntl
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
    """Appends audit events to a file shared by every router process on the host.

    The file is rotated by size (``audit.jsonl`` -> ``audit.jsonl.1`` -> ...). Every
    process takes an exclusive lock on ``audit.jsonl.lock`` around "check the size,
    maybe rotate, write one line", and reopens the file when another process has
    rotated it, so no line is lost, split or written to a file being renamed.
    """

    def __init__(self, path: Path, max_bytes: int = 100 * 1024 * 1024, backups: int = 10) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._pid = 0

    def _open(self) -> int:
        pid = os.getpid()
        if self._pid != pid:  # after a fork, never share the parent's descriptors
            self._fd = self._lock_fd = None
            self._pid = pid
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            self._lock_fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o640)
        current = self._fd
        if current is not None:
            try:
                rotated = os.fstat(current).st_ino != os.stat(self.path).st_ino
            except FileNotFoundError:
                rotated = True
            if rotated:  # another process rotated the file: follow it
                os.close(current)
                self._fd = None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return self._fd

    def _rotate(self) -> None:
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event; raises OSError if the trail cannot be written."""
        line = json.dumps(audit_record(event, **fields), separators=(",", ":"), default=str)
        data = (line + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            assert self._lock_fd is not None
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                fd = self._open()
                if os.fstat(fd).st_size + len(data) > self.max_bytes and os.fstat(fd).st_size:
                    self._rotate()
                    fd = self._open()
                os.write(fd, data)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for fd in (self._fd, self._lock_fd):
                    if fd is not None:
                        os.close(fd)
            self._fd = self._lock_fd = None
