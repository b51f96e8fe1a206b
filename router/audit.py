"""The audit trail: one JSON line per event in ``audit.file``.

The audit trail is the one place where identifiers (UIDs, AE titles, peers) are
recorded on purpose; it is what an auditor reads to follow an instance from
receipt to every destination. Each event is one ``write()`` of one line on a file
opened with ``O_APPEND``, so lines from the SCP and every worker process never
interleave or split, and each is handed to the kernel before the call returns.

With ``audit.syslog`` configured, each event is then also queued as a DICOM audit
message (PS3.15 A.5, see :mod:`router.audit_messages`) for the syslog sender
(:mod:`router.syslog_out`). Queuing comes second and never raises: a full disk or
a bad message costs a log line and a counter, never the JSON line or routing.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import json
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router import metrics
from router.audit_messages import (
    AuditContext,
    Node,
    application_activity,
    audit_message,
    syslog_severity,
)
from router.logs import get_logger
from router.syslog_out import SyslogQueue, format_message

if TYPE_CHECKING:
    from router.config import RouterConfig

log = get_logger(__name__)

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


class DicomAuditSink:
    """Turns audit records into RFC 5424 messages carrying DICOM audit XML, on disk."""

    def __init__(self, queue: SyslogQueue, context: AuditContext, facility: int = 10) -> None:
        self.queue = queue
        self.context = context
        self.facility = facility
        self.hostname = context.host

    def _put(self, message: bytes, when: dt.datetime) -> None:
        data = format_message(
            message,
            severity=syslog_severity(message),
            timestamp=when,
            hostname=self.hostname,
            procid=str(os.getpid()),
            facility=self.facility,
        )
        self.queue.put(data)

    def submit(self, record: Mapping[str, Any]) -> None:
        """Queue the DICOM message of ``record``, if it has one; never raises."""
        try:
            message = audit_message(record, self.context)
            if message is not None:
                self._put(message, dt.datetime.fromisoformat(str(record["ts"])))
        except Exception as exc:
            self._not_queued(str(record.get("event")), exc)

    def application(self, started: bool) -> None:
        """Queue Application Start or Stop (PS3.15 A.5.3.1); never raises."""
        now = dt.datetime.now(dt.UTC)
        try:
            self._put(application_activity(started, self.context, now), now)
        except Exception as exc:
            self._not_queued("application_start" if started else "application_stop", exc)

    @staticmethod
    def _not_queued(event: str, exc: Exception) -> None:
        # Only the event name and the kind of error: no identifiers in application logs.
        metrics.audit_syslog_queue_errors.inc()
        log.error("DICOM audit message not queued", audit_event=event,
                  error=getattr(exc, "strerror", None) or type(exc).__name__)  # fmt: skip


def dicom_sink_from_config(cfg: RouterConfig) -> DicomAuditSink | None:
    """The sink for ``audit.syslog``, or None when DICOM audit messages are off."""
    syslog = cfg.audit.syslog
    if syslog is None:
        return None
    host = socket.gethostname()
    try:
        launcher: str | None = getpass.getuser()
    except (KeyError, OSError):
        launcher = None
    context = AuditContext(
        ae_title=cfg.ae_title,
        host=host,
        source_id=syslog.source_id or host,
        destinations={n: Node(d.ae_title, d.host) for n, d in cfg.destinations.items()},
        launcher=launcher,
    )
    return DicomAuditSink(SyslogQueue(syslog.queue_dir), context, syslog.facility)


_process_sink: DicomAuditSink | None = None


def install_dicom_sink(sink: DicomAuditSink | None) -> None:
    """Make ``sink`` the one every :class:`AuditLog` created later in this process
    (and in processes forked from it) uses when not given one: the worker's task
    processes build their AuditLog lazily, after the fork."""
    global _process_sink
    _process_sink = sink


def audit_log_from_config(cfg: RouterConfig) -> AuditLog:
    """The audit trail of ``cfg``: the JSON file, plus DICOM messages with ``audit.syslog``."""
    return AuditLog(
        cfg.audit.file,
        int(cfg.audit.max_mb * 1024 * 1024),
        cfg.audit.backups,
        dicom=dicom_sink_from_config(cfg),
    )


class AuditLog:
    """Appends audit events to a file shared by every router process on the host.

    The file is rotated by size (``audit.jsonl`` -> ``audit.jsonl.1`` -> ...). Every
    process takes an exclusive lock on ``audit.jsonl.lock`` around "check the size,
    maybe rotate, write one line", and reopens the file when another process has
    rotated it, so no line is lost, split or written to a file being renamed.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = 100 * 1024 * 1024,
        backups: int = 10,
        dicom: DicomAuditSink | None = None,
    ) -> None:
        self.path = Path(path)
        self.dicom = dicom if dicom is not None else _process_sink
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
        """Write one event, then queue its DICOM message (if any).

        Raises OSError if the trail cannot be written; the DICOM message never raises.
        """
        self.emit_many([(event, fields)])

    def emit_done(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> bool:
        """Write events of actions that already happened; False if they could not be.

        An instance already delivered or admitted stays so whether or not its event
        can be written: failing the task or the store at this point would repeat
        the action (a second send, a second admission) without ever writing the
        event either. The failure is logged (without the events' identifiers) and
        counted in ``audit_write_failures_total``, which has an alert.
        """
        try:
            self.emit_many(events)
        except OSError as exc:
            metrics.audit_write_failures.inc(len(events))
            log.error("audit events not written", events=[event for event, _ in events],
                      error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            return False
        return True

    def emit_many(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Write several events with one lock and one write (several deliveries of
        one instance), then queue their DICOM messages. Raises as ``emit``."""
        records = [audit_record(event, **fields) for event, fields in events]
        if not records:
            return
        data = b"".join(
            (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8")
            for record in records
        )
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
        if self.dicom is not None:
            for record in records:
                self.dicom.submit(record)

    def application(self, started: bool) -> None:
        """Application Start/Stop as a DICOM audit message (there is no JSON event)."""
        if self.dicom is not None:
            self.dicom.application(started)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for fd in (self._fd, self._lock_fd):
                    if fd is not None:
                        os.close(fd)
            self._fd = self._lock_fd = None
