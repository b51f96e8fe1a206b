"""DICOM audit messages to a syslog collector: RFC 5424 format, an on-disk queue, a sender.

Why a queue on disk: an audit message must neither be lost when the collector is
down nor slow routing while it is. A process that emits an event only writes one
small file (``tmp`` + fsync + rename, so a file is whole or absent); a sender
thread (one per ``serve`` and per standalone ``worker``) sends the files in name
order, which is emission order, and deletes each only once it was written to the
TLS connection (RFC 5425) or handed to ``sendto`` (RFC 5426, UDP). Several senders
may share a directory: each file is claimed with ``flock`` while it is sent.

PS3.15 A.6/A.7: facility 10 (security/authorization), severity 5 (notice) for
normal messages and 4 (warning) for failures and alerts, MSGID ``DICOM+RFC3881``,
the XML in MSG as UTF-8 with a BOM (RFC 5424 section 6.4).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from router import metrics
from router.logs import get_logger
from router.steps import ready

log = get_logger(__name__)

APP_NAME = "dicom-router"
MSGID = "DICOM+RFC3881"
BOM = b"\xef\xbb\xbf"
FACILITY_AUTHPRIV = 10
SUFFIX = ".msg"
STALE_TMP_S = 600.0


def _header_field(value: str, limit: int) -> str:
    """A HEADER field: printable US-ASCII without spaces, at most ``limit`` chars, or ``-``."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def format_message(body: bytes, *, severity: int, timestamp: dt.datetime, hostname: str,
                   procid: str, facility: int = FACILITY_AUTHPRIV, app_name: str = APP_NAME,
                   msgid: str = MSGID) -> bytes:  # fmt: skip
    """One RFC 5424 SYSLOG-MSG: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``."""
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError("facility must be 0..23 and severity 0..7")
    utc = timestamp.astimezone(dt.UTC) if timestamp.tzinfo else timestamp.replace(tzinfo=dt.UTC)
    stamp = utc.isoformat(timespec="microseconds").replace("+00:00", "Z")
    fields = (_header_field(hostname, 255), _header_field(app_name, 48),
              _header_field(procid, 128), _header_field(msgid, 32))  # fmt: skip
    # PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, then no STRUCTURED-DATA ("-").
    header = f"<{facility * 8 + severity}>1 {stamp} {' '.join(fields)} -"
    return header.encode("ascii") + b" " + BOM + body


def octet_frame(message: bytes) -> bytes:
    """RFC 5425 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogQueue:
    """A directory of messages waiting to be sent, one file each, names in emission order."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._pid = 0
        self._last_ns = 0
        self._counter = 0
        self._dir_fd: int | None = None

    def _next_name(self) -> str:
        with self._lock:
            pid = os.getpid()
            if pid != self._pid:  # after a fork: own counter, own directory descriptor
                self._pid, self._counter, self._dir_fd = pid, 0, None
            if self._dir_fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            self._counter += 1
            return f"{self._last_ns:020d}-{pid:07d}-{self._counter:010d}{SUFFIX}"

    def put(self, message: bytes) -> Path:
        """Store one message durably; raises OSError when it cannot."""
        name = self._next_name()
        tmp, final = self.directory / f".{name}.tmp", self.directory / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            with os.fdopen(fd, "wb") as handle:
                handle.write(message)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, final)
        assert self._dir_fd is not None
        os.fsync(self._dir_fd)  # the rename itself survives a crash
        return final

    def pending(self) -> list[str]:
        """Names of the queued messages, oldest first."""
        try:
            with os.scandir(self.directory) as entries:
                names = [e.name for e in entries if e.name.endswith(SUFFIX) and e.name[0] != "."]
        except FileNotFoundError:
            return []
        return sorted(names)

    def take(self, name: str, send: Callable[[bytes], None]) -> bool:
        """Send one message and delete it; False if another sender has it or had it.

        The file is deleted only after ``send`` returned; if ``send`` raises, the
        file stays for the next attempt.
        """
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if os.fstat(fd).st_nlink == 0:  # sent and deleted by another sender meanwhile
                return False
            send(b"".join(iter(lambda: os.read(fd, 1 << 16), b"")))
            path.unlink()
            return True
        finally:
            os.close(fd)

    def set_aside(self, name: str, reason: str) -> None:
        """Keep a message that can never be sent out of the queue, for inspection."""
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.directory / name, self.directory / f"{name}.{reason}")

    def sweep_tmp(self) -> None:
        """Remove half-written files left by a process that died while writing."""
        cutoff = time.time() - STALE_TMP_S
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(".tmp") and entry.stat().st_mtime < cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


class Transport(Protocol):
    def send(self, message: bytes) -> None: ...

    def close(self) -> None: ...


class TlsTransport:
    """RFC 5425: one TLS connection, messages framed by octet counting."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        self.timeout = timeout

    def _closed_by_peer(self) -> bool:
        """A collector never writes: a readable socket means it closed or reset."""
        if not ready(self.sock, False, 0):
            return False
        try:
            self.sock.settimeout(0)
            return self.sock.recv(4096) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def send(self, message: bytes) -> None:
        if self._closed_by_peer():
            raise ConnectionResetError(errno.ECONNRESET, "collector closed the connection")
        self.sock.sendall(octet_frame(message))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class UdpTransport:
    """RFC 5426: one message per datagram."""

    def __init__(self, host: str, port: int) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(family, kind, proto)
        self.address = address

    def send(self, message: bytes) -> None:
        self.sock.sendto(message, self.address)

    def close(self) -> None:
        self.sock.close()


class SyslogSender:
    """Drains a :class:`SyslogQueue` to the collector in a daemon thread.

    A collector that is down or refusing only delays the messages: the sender
    reconnects with exponential backoff (0.5 s doubling up to ``max_delay``) and
    the files wait on disk, however long that takes.
    """

    def __init__(self, queue: SyslogQueue, connect: Callable[[], Transport], target: str,
                 max_delay: float = 30.0, poll_s: float = 0.2) -> None:  # fmt: skip
        self.queue, self.connect, self.target = queue, connect, target
        self.max_delay, self.poll_s = max_delay, poll_s
        self._transport: Transport | None = None
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)

    def start(self) -> SyslogSender:
        self.queue.directory.mkdir(parents=True, exist_ok=True)
        self.queue.sweep_tmp()
        self._thread.start()
        return self

    def stop(self, flush_timeout: float = 10.0) -> None:
        """Send what is queued for up to ``flush_timeout`` seconds (not at all while the
        collector is down), then stop; what is left stays on disk for the next start."""
        self._deadline = time.monotonic() + (0 if self._down_since is not None else flush_timeout)
        self._stopping.set()
        self._thread.join(flush_timeout + 5)

    def _halted(self) -> bool:
        return self._stopping.is_set() and time.monotonic() >= self._deadline

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the sender must stop now instead."""
        end = time.monotonic() + seconds
        while not self._halted():
            if time.monotonic() >= end:
                return True
            time.sleep(min(end - time.monotonic(), 0.05))
        return False

    def _send(self, message: bytes) -> None:
        if self._transport is None:
            self._transport = self.connect()
        self._transport.send(message)

    def _disconnect(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _run(self) -> None:
        delay = 0.0
        try:
            while not self._halted():
                names = self.queue.pending()
                if not names and self._stopping.is_set():
                    return
                sent, failed = self._drain(names)
                delay = min(self.max_delay, max(0.5, delay * 2)) if failed else 0.0
                # After a failure, with nothing queued, or when every file was another
                # sender's: wait instead of spinning.
                if (failed or not sent) and not self._pause(delay or self.poll_s):
                    return
        finally:
            self._disconnect()

    def _drain(self, names: list[str]) -> tuple[int, bool]:
        """Send ``names`` in order; returns (how many were sent, whether one failed)."""
        sent = 0
        for name in names:
            if self._halted():
                break
            try:
                if not self.queue.take(name, self._send):
                    continue
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    self._failed(exc)
                    return sent, True
                log.error("audit message too large for UDP; set aside", file=f"{name}.toolarge")
                self.queue.set_aside(name, "toolarge")  # it could never be sent
                continue
            except Exception as exc:  # a bug must not end the thread
                log.error("audit syslog sender error", error=f"{type(exc).__name__}: {exc}")
                self._disconnect()
                return sent, True
            sent += 1
            metrics.audit_syslog_sent.inc()
            if self._down_since is not None:
                log.info("audit syslog collector reachable again", collector=self.target,
                         down_s=round(time.monotonic() - self._down_since, 1))  # fmt: skip
                self._down_since = None
        return sent, False

    def _failed(self, exc: OSError) -> None:
        self._disconnect()
        metrics.audit_syslog_failures.inc()
        if self._stopping.is_set():  # stopping while the collector is down: do not wait
            self._deadline = time.monotonic()
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("audit syslog collector unreachable; messages stay queued",
                        collector=self.target, error=f"{type(exc).__name__}: {exc}",
                        queued=len(self.queue.pending()))  # fmt: skip
