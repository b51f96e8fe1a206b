"""router.syslog_out: RFC 5424 format, RFC 5425 framing, the on-disk queue, the sender;
and the ``audit.syslog`` config keys."""

from __future__ import annotations

import datetime as dt
import errno
import itertools
import multiprocessing
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from router.config import ConfigError, load_config
from router.syslog_out import (
    BOM,
    SyslogQueue,
    SyslogSender,
    TlsTransport,
    UdpTransport,
    format_message,
    octet_frame,
)
from router.tls import client_context
from tests.support.ports import free_port
from tests.support.syslog_receiver import TlsFiles, TlsSyslogReceiver, make_tls_files
from tests.support.waiting import wait_until

WHEN = dt.datetime(2024, 3, 5, 14, 7, 9, 123456, tzinfo=dt.UTC)
BODY = "<AuditMessage>é</AuditMessage>".encode()


def message(**overrides: object) -> bytes:
    args: dict[str, object] = {"severity": 5, "timestamp": WHEN, "hostname": "router1",
                               "procid": "1234", **overrides}  # fmt: skip
    return format_message(BODY, **args)  # type: ignore[arg-type]


# --- RFC 5424 / 5425 ---------------------------------------------------------------


def test_header_fields_in_order() -> None:
    data = message()
    header = b"<85>1 2024-03-05T14:07:09.123456Z router1 dicom-router 1234 DICOM+RFC3881 - "
    assert data == header + BOM + BODY


def test_pri_is_facility_times_eight_plus_severity() -> None:
    assert message(severity=4).startswith(b"<84>1 ")
    assert message(severity=5, facility=13).startswith(b"<109>1 ")
    with pytest.raises(ValueError):
        message(facility=24)
    with pytest.raises(ValueError):
        message(severity=8)


def test_timestamp_is_utc_with_fraction() -> None:
    local = dt.datetime(2024, 3, 5, 16, 7, 9, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    stamp = message(timestamp=local).split(b" ")[1]
    assert stamp == b"2024-03-05T14:07:09.000000Z"
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,6}Z", stamp)


def test_header_fields_are_printable_ascii_limited_or_nil() -> None:
    data = message(hostname="my host\tname", procid="", app_name="a" * 60)
    fields = data.split(b" ")
    assert fields[2] == b"myhostname"
    assert fields[3] == b"a" * 48
    assert fields[4] == b"-"  # NILVALUE
    assert fields[6] == b"-"  # no structured data


def test_octet_counting_counts_bytes_not_characters() -> None:
    data = message()
    framed = octet_frame(data)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(data) == len(rest)
    assert len(data) > len(data.decode())  # the BOM and "é" are multi-byte
    assert rest == data


# --- the queue ---------------------------------------------------------------------


def test_queue_files_sort_in_emission_order_and_no_tmp_is_left(tmp_path: Path) -> None:
    queue = SyslogQueue(tmp_path / "q")
    for n in range(50):
        queue.put(f"m{n}".encode())
    names = queue.pending()
    assert len(names) == 50
    contents = [(tmp_path / "q" / n).read_bytes() for n in names]
    assert contents == [f"m{n}".encode() for n in range(50)]
    assert all(n.endswith(".msg") for n in os.listdir(tmp_path / "q"))


def test_take_deletes_only_after_the_send_returned(tmp_path: Path) -> None:
    queue = SyslogQueue(tmp_path)
    queue.put(b"one")
    (name,) = queue.pending()

    def refuse(data: bytes) -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    with pytest.raises(ConnectionRefusedError):
        queue.take(name, refuse)
    assert queue.pending() == [name]
    got: list[bytes] = []
    assert queue.take(name, got.append) is True
    assert got == [b"one"] and queue.pending() == []
    assert queue.take(name, got.append) is False  # already gone


def test_a_file_being_sent_is_not_taken_twice(tmp_path: Path) -> None:
    queue = SyslogQueue(tmp_path)
    queue.put(b"x")
    (name,) = queue.pending()
    inner: list[bool] = []
    queue.take(name, lambda data: inner.append(queue.take(name, lambda d: None)))
    assert inner == [False]


def test_sweep_removes_only_stale_half_written_files(tmp_path: Path) -> None:
    queue = SyslogQueue(tmp_path)
    old, new = tmp_path / ".a.msg.tmp", tmp_path / ".b.msg.tmp"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    queue.sweep_tmp()
    assert not old.exists() and new.exists()
    assert queue.pending() == []


def _put_many(directory: str, writer: int, count: int) -> None:
    queue = SyslogQueue(Path(directory))
    for n in range(count):
        queue.put(f"{writer}:{n}".encode())


class ListTransport:
    """Collects what a sender sends; can be made to fail."""

    def __init__(self, sink: list[bytes], lock: threading.Lock, fail: int = 0) -> None:
        self.sink, self.lock, self.fail = sink, lock, fail

    def send(self, data: bytes) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        with self.lock:
            self.sink.append(data)

    def close(self) -> None:
        pass


def test_two_senders_on_one_directory_send_each_message_exactly_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_put_many, args=(str(tmp_path), w, 150)) for w in range(3)]
    for proc in writers:
        proc.start()
    sent: list[bytes] = []
    lock = threading.Lock()
    senders = [SyslogSender(SyslogQueue(tmp_path), lambda: ListTransport(sent, lock), "t",
                            poll_s=0.01).start() for _ in range(2)]  # fmt: skip
    for proc in writers:
        proc.join(30)
        assert proc.exitcode == 0
    wait_until(lambda: len(sent) >= 450 and not SyslogQueue(tmp_path).pending(), 20, "drain")
    for sender in senders:
        sender.stop(1)
    # Each once; the order holds per sender (two connections interleave at the collector).
    assert sorted(sent) == sorted(f"{w}:{n}".encode() for w in range(3) for n in range(150))


def test_one_sender_keeps_the_order_of_several_writers(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_put_many, args=(str(tmp_path), w, 100)) for w in range(3)]
    for proc in writers:
        proc.start()
    for proc in writers:
        proc.join(30)
    expected = [(tmp_path / name).read_bytes() for name in SyslogQueue(tmp_path).pending()]
    sent: list[bytes] = []
    sender = SyslogSender(SyslogQueue(tmp_path), lambda: ListTransport(sent, threading.Lock()),
                          "t").start()  # fmt: skip
    wait_until(lambda: len(sent) == 300, 20, "drain")
    sender.stop(1)
    assert sent == expected
    for w in range(3):
        mine = [int(m.split(b":")[1]) for m in sent if m.startswith(f"{w}:".encode())]
        assert mine == list(range(100))


def test_sender_retries_with_backoff_and_keeps_order(tmp_path: Path) -> None:
    queue = SyslogQueue(tmp_path)
    for n in range(5):
        queue.put(f"m{n}".encode())
    sent: list[bytes] = []
    attempts: list[float] = []
    transport = ListTransport(sent, threading.Lock(), fail=3)

    def connect() -> ListTransport:
        attempts.append(time.monotonic())
        return transport

    sender = SyslogSender(queue, connect, "t", max_delay=1.0, poll_s=0.01).start()
    wait_until(lambda: len(sent) == 5, 15, "all sent")
    sender.stop(1)
    assert sent == [f"m{n}".encode() for n in range(5)]
    assert queue.pending() == []
    assert len(attempts) == 4  # reconnects after each failure
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95  # 0.5 s, then doubled (capped at 1 s)


def test_stop_does_not_wait_for_a_collector_that_is_down(tmp_path: Path) -> None:
    queue = SyslogQueue(tmp_path)
    queue.put(b"kept")

    def connect() -> ListTransport:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    sender = SyslogSender(queue, connect, "t", max_delay=30).start()
    time.sleep(0.3)
    started = time.monotonic()
    sender.stop(10)
    assert time.monotonic() - started < 2
    assert len(queue.pending()) == 1  # kept for the next start


def test_udp_sends_one_message_per_datagram(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    queue = SyslogQueue(tmp_path)
    payloads = [message(procid=str(n)) for n in range(3)]
    for payload in payloads:
        queue.put(payload)
    sender = SyslogSender(queue, lambda: UdpTransport("127.0.0.1", port), "udp").start()
    try:
        assert [receiver.recvfrom(65536)[0] for _ in payloads] == payloads
    finally:
        sender.stop(1)
        receiver.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_tls_sender_reconnects_when_the_collector_restarts(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    files = tls_files
    port = free_port()
    queue = SyslogQueue(tmp_path / "q")
    context = client_context(files.ca, files.client_cert, files.client_key, verify=True)
    sender = SyslogSender(queue, lambda: TlsTransport("127.0.0.1", port, context, 5), "tls",
                          max_delay=0.5, poll_s=0.02)  # fmt: skip
    first, second = message(procid="1"), message(procid="2")
    with TlsSyslogReceiver(port, files) as collector:
        sender.start()
        queue.put(first)
        wait_until(lambda: collector.raw == [first], 10, "the first message")
    # The collector closed the connection; the next message must not vanish into it.
    with TlsSyslogReceiver(port, files) as restarted:
        time.sleep(0.2)
        queue.put(second)
        wait_until(lambda: restarted.raw == [second], 10, "the second message")
    sender.stop(1)
    assert queue.pending() == []


def test_tls_sender_refuses_an_unknown_collector_and_keeps_the_message(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    files = tls_files
    other = make_tls_files(tmp_path / "other")  # a collector certified by another CA
    port = free_port()
    queue = SyslogQueue(tmp_path / "q")
    context = client_context(other.ca, None, None, verify=True)
    with TlsSyslogReceiver(port, files, require_client_cert=False) as collector:
        sender = SyslogSender(queue, lambda: TlsTransport("127.0.0.1", port, context, 5),
                              "tls").start()  # fmt: skip
        queue.put(message())
        time.sleep(1.0)
        sender.stop(1)
    assert collector.raw == [] and len(queue.pending()) == 1


# --- config ------------------------------------------------------------------------


def write(tmp_path: Path, syslog: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(f"audit: {{syslog: {syslog}}}\n")
    return path


def test_syslog_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "{host: audit.example, ca_file: certs/ca.pem}"), {})
    syslog = cfg.audit.syslog
    assert syslog is not None
    assert (syslog.port, syslog.transport, syslog.facility) == (6514, "tls", 10)
    assert syslog.verify is True
    assert syslog.queue_dir == tmp_path / "var" / "audit-syslog"
    assert syslog.ca_file == tmp_path / "certs" / "ca.pem"
    assert syslog.source_id is None and syslog.reconnect_max_delay == 30.0
    udp = load_config(write(tmp_path, "{host: h, transport: udp}"), {}).audit.syslog
    assert udp is not None and udp.port == 514
    explicit = load_config(write(tmp_path, "{host: h, transport: udp, port: 5514}"), {})
    assert explicit.audit.syslog is not None and explicit.audit.syslog.port == 5514


@pytest.mark.parametrize(
    ("syslog", "problem"),
    [
        ("{host: h, transport: udp, ca_file: ca.pem}", "only for transport: tls"),
        ("{host: h, key_file: k.pem}", "key_file needs cert_file"),
        ("{host: h, facility: 24}", "audit.syslog.facility"),
        ("{host: h, reconnect_max_delay: soon}", "audit.syslog.reconnect_max_delay"),
        ("{host: h, transport: tcp}", "audit.syslog.transport"),
        ("{host: h, queue: x}", "audit.syslog.queue: unknown key"),
        ("{port: 6514}", "audit.syslog.host"),
    ],
)
def test_syslog_config_problems_name_the_key(tmp_path: Path, syslog: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(write(tmp_path, syslog), {})
