"""DICOM audit messages from a real router to real syslog collectors (TLS and UDP).

The collectors run in the test process; every message they receive is parsed
strictly (octet-counting frame, RFC 5424 header, BOM) and its XML validated
against the DICOM audit schema (PS3.15 A.5.1) by tests/support/syslog_receiver.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import echoscu, storescu
from tests.support.ports import free_port
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import write_ct_series
from tests.support.syslog_receiver import (
    SyslogMessage,
    TlsFiles,
    TlsSyslogReceiver,
    UdpSyslogReceiver,
    make_tls_files,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

RULES = """
rules:
  - name: all-to-capture
    forward: [capture]
"""
START, STOP = ("110100", "110120"), ("110100", "110121")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def capture() -> Iterator[CaptureSCP]:
    with CaptureSCP() as scp:
        yield scp


@pytest.fixture()
def ct_files(tmp_path: Path) -> list[Path]:
    return write_ct_series(tmp_path / "ct", 3, rows=32, cols=32)


def router_with_syslog(
    workdir: Path, redis: RedisServer, capture: CaptureSCP, syslog: dict[str, Any]
) -> RouterProcess:
    destinations = {"capture": {"ae_title": capture.ae_title, "host": "127.0.0.1",
                                "port": capture.port}}  # fmt: skip
    audit = {"file": "audit.jsonl", "syslog": {"queue_dir": "audit-syslog", **syslog}}
    path, config = write_config(workdir, redis.url, destinations, RULES, audit=audit,
                                accept={"calling_ae": ["CT01"]})  # fmt: skip
    return start_router(path, config, workers=1)


def tls_syslog(port: int, files: TlsFiles) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "transport": "tls", "ca_file": str(files.ca),
            "cert_file": str(files.client_cert), "key_file": str(files.client_key),
            "reconnect_max_delay": "0.5s", "source_id": "TEST-ROUTER"}  # fmt: skip


def kinds(messages: list[SyslogMessage]) -> Counter[tuple[str, str | None]]:
    """(EventID, EventTypeCode or EventActionCode) -> how many."""
    return Counter((m.event_id(), m.event_type() or m.action()) for m in messages)


def expect(received: int, extra: dict[tuple[str, str | None], int] | None = None) -> Any:
    """A condition: at least these messages arrived."""
    wanted = {START: 2, ("110104", "C"): received, ("110102", "E"): received,
              ("110104", "R"): received, **(extra or {})}  # fmt: skip

    def condition(messages: list[SyslogMessage]) -> bool:
        have = kinds(messages)
        return all(have[k] >= n for k, n in wanted.items())

    return condition


def role(message: SyslogMessage, code: str) -> Any:
    """The one ActiveParticipant with this RoleIDCode."""
    (found,) = message.xml.xpath(f"ActiveParticipant[RoleIDCode/@csd-code='{code}']")
    return found


def pending_metric(router: RouterProcess) -> float:
    status, text = router.http("/metrics")
    assert status == 200
    match = re.search(r"^dicom_router_audit_syslog_pending (\S+)$", text, re.MULTILINE)
    assert match, "dicom_router_audit_syslog_pending missing from /metrics"
    return float(match.group(1))


def queued_files(router: RouterProcess) -> list[Path]:
    return sorted((router.workdir / "audit-syslog").glob("*.msg"))


def test_tls_collector_receives_every_message(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP, tls_files: TlsFiles,
    ct_files: list[Path],
) -> None:  # fmt: skip
    port = free_port()
    with TlsSyslogReceiver(port, tls_files, require_client_cert=True) as collector:
        router = router_with_syslog(tmp_path / "r", redis_server, capture,
                                    tls_syslog(port, tls_files))  # fmt: skip
        try:
            sent = storescu(ct_files, router.port, calling_ae="CT01")
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert echoscu(router.port, calling_ae="INTRUDER").returncode != 0
            messages = collector.wait_for(
                expect(3, {("110113", "110126"): 1}), 30, "transfer and alert messages"
            )
        finally:
            router.stop()
        messages = collector.wait_for(lambda ms: kinds(ms)[STOP] >= 2, 20, "Application Stop")
    assert router.proc.returncode == 0
    assert collector.connections >= 1  # mutual TLS with the configured client certificate

    for message in messages:
        assert (message.version, message.facility, message.msgid) == (1, 10, "DICOM+RFC3881")
        assert message.app_name == "dicom-router" and message.structured_data == "-"
        assert message.xml.find("AuditSourceIdentification").get("AuditSourceID") == "TEST-ROUTER"
        alert = message.event_id() == "110113"
        assert message.severity == (4 if alert else 5)

    study = str(dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ct_files}
    received = [m for m in messages if (m.event_id(), m.action()) == ("110104", "C")]
    assert len(received) == 3
    for message in received:
        source = role(message, "110153")
        assert source.get("UserID") == "CT01" and source.get("UserIsRequestor") == "true"
        assert source.get("NetworkAccessPointID") == "127.0.0.1"
        target = role(message, "110152")
        assert target.get("UserID") == "ROUTER"
        obj = message.xml.find("ParticipantObjectIdentification")
        assert obj.get("ParticipantObjectID") == study
    patient = str(dcmread(ct_files[0], stop_before_pixels=True).PatientID)
    for message in received + [m for m in messages if m.event_id() == "110102"]:
        objects = {o.get("ParticipantObjectTypeCode"): o for o in
                   message.xml.findall("ParticipantObjectIdentification")}  # fmt: skip
        assert objects["1"].get("ParticipantObjectID") == patient  # the patient (PS3.15 A.5.3)
        assert objects["2"].find(".//SOPClass").get("UID") == "1.2.840.10008.5.1.4.1.1.2"
    delivered = [m for m in messages if (m.event_id(), m.action()) == ("110104", "R")]
    assert {m.xml.find(".//Instance").get("UID") for m in delivered} == uids
    for message in delivered:
        ids = [o.get("ParticipantObjectID") for o in
               message.xml.findall("ParticipantObjectIdentification")]  # fmt: skip
        assert patient in ids
    for message in delivered:
        target = role(message, "110152")
        assert target.get("UserID") == capture.ae_title
    (alert,) = [m for m in messages if m.event_id() == "110113"]
    performer = [p for p in alert.xml.findall("ActiveParticipant") if p.get("UserID") == "INTRUDER"]
    assert len(performer) == 1
    assert queued_files(router) == []


def test_collector_down_delays_nothing_and_loses_nothing(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP, tls_files: TlsFiles,
    ct_files: list[Path],
) -> None:  # fmt: skip
    port = free_port()  # nothing listens there yet
    router = router_with_syslog(tmp_path / "r", redis_server, capture,
                                tls_syslog(port, tls_files))  # fmt: skip
    try:
        before = len(capture.received())
        started = time.monotonic()
        sent = storescu(ct_files, router.port, calling_ae="CT01")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        capture.wait_for_count(before + len(ct_files), timeout=15)
        assert time.monotonic() - started < 10, "routing waited for the audit collector"
        wait_until(lambda: len(router.audit_events("forwarded")) == 3, 10, "forwarded events")
        wait_until(lambda: pending_metric(router) >= 11, 10, "queued messages counted")
        assert len(queued_files(router)) >= 11  # 2 starts + 3 x (received, routed, forwarded)

        with TlsSyslogReceiver(port, tls_files) as collector:
            collector.wait_for(expect(3), 30, "the queued messages")
            wait_until(lambda: queued_files(router) == [], 10, "an empty queue")
            assert pending_metric(router) == 0
            router.stop()
            messages = collector.wait_for(lambda ms: kinds(ms)[STOP] >= 2, 20, "Application Stop")
    finally:
        router.stop()
    have = kinds(messages)
    assert have[("110104", "C")] == have[("110102", "E")] == have[("110104", "R")] == 3
    assert have[START] == 2  # nothing sent twice
    # In emission order: every start before the transfers it precedes.
    order = [(m.event_id(), m.event_type() or m.action()) for m in messages]
    assert order.index(START) < order.index(("110104", "C"))


def test_udp_collector(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP, ct_files: list[Path]
) -> None:
    with UdpSyslogReceiver() as collector:
        syslog = {"host": "127.0.0.1", "port": collector.port, "transport": "udp"}
        router = router_with_syslog(tmp_path / "r", redis_server, capture, syslog)
        try:
            sent = storescu(ct_files[:1], router.port, calling_ae="CT01")
            assert sent.returncode == 0, sent.stdout + sent.stderr
            collector.wait_for(expect(1), 30, "the transfer messages over UDP")
        finally:
            router.stop()
        messages = collector.wait_for(lambda ms: kinds(ms)[STOP] >= 2, 20, "Application Stop")
    assert all(m.facility == 10 and m.msgid == "DICOM+RFC3881" for m in messages)
