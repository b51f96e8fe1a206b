"""router.audit: one JSON line per event, every contract field present."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from router.audit import EVENTS, FIELDS, AuditLog, audit_record

CONTRACT = {
    "ts",
    "event",
    "sop_instance_uid",
    "study_instance_uid",
    "calling_ae",
    "peer",
    "rule",
    "destination",
    "status",
    "attempt",
    "ruleset_version",
}


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_contract_fields_constant() -> None:
    assert {"ts", "event", *FIELDS} == CONTRACT
    assert set(EVENTS) >= {"received", "routed", "forwarded", "forward_failed", "rules_reloaded"}


@pytest.mark.parametrize("event", EVENTS)
def test_record_has_every_contract_field(event: str) -> None:
    record = audit_record(event)
    assert set(record) == CONTRACT
    assert record["event"] == event
    assert all(record[name] is None for name in FIELDS)


def test_record_carries_given_fields_and_extras() -> None:
    record = audit_record(
        "forwarded",
        sop_instance_uid="1.2.3",
        destination="pacs",
        attempt=2,
        status="0x0000 SUCCESS",
        detail="extra info",
        skipped=None,
    )
    assert record["sop_instance_uid"] == "1.2.3"
    assert record["destination"] == "pacs"
    assert record["attempt"] == 2
    assert record["status"] == "0x0000 SUCCESS"
    assert record["detail"] == "extra info"
    assert "skipped" not in record  # None extras are dropped
    assert record["rule"] is None  # None contract fields are kept


def test_timestamp_is_utc_iso_with_milliseconds() -> None:
    before = dt.datetime.now(dt.UTC)
    ts = audit_record("received")["ts"]
    after = dt.datetime.now(dt.UTC)
    assert isinstance(ts, str)
    parsed = dt.datetime.fromisoformat(ts)
    assert parsed.utcoffset() == dt.timedelta(0)
    assert len(ts.split(".")[1].split("+")[0]) == 3
    assert before - dt.timedelta(milliseconds=1) <= parsed <= after


@pytest.mark.parametrize("event", ["deleted", "", "RECEIVED", "received "])
def test_unknown_event_refused(event: str) -> None:
    with pytest.raises(ValueError, match="unknown audit event"):
        audit_record(event)


def test_emit_refuses_unknown_event_and_writes_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError):
        log.emit("bogus")
    log.close()
    assert not (tmp_path / "audit.jsonl").exists()


def test_emit_writes_one_json_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "audit.jsonl"
    log = AuditLog(path)
    log.emit("received", sop_instance_uid="1.2.3", calling_ae="CT1", peer="10.0.0.5")
    log.emit("routed", sop_instance_uid="1.2.3", rule="ct", ruleset_version="abc123")
    log.emit("rules_reloaded", status="loaded", source=Path("/x/y.yaml"))
    log.close()
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["received", "routed", "rules_reloaded"]
    assert records[0]["calling_ae"] == "CT1" and records[0]["peer"] == "10.0.0.5"
    assert records[1]["rule"] == "ct" and records[1]["ruleset_version"] == "abc123"
    assert records[2]["source"] == "/x/y.yaml"  # non-JSON types rendered as text
    assert all(set(r) >= CONTRACT for r in records)


def test_emit_many_writes_every_event_in_order_or_none(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.emit_many([("forwarded", {"destination": d, "sop_instance_uid": "1.2.3"})
                   for d in ("pacs", "archive", "research")])  # fmt: skip
    log.emit_many([])
    with pytest.raises(ValueError):  # one unknown event: nothing of the batch is written
        log.emit_many([("forwarded", {"destination": "pacs"}), ("bogus", {})])
    log.close()
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(r["event"], r["destination"]) for r in records] == [
        ("forwarded", "pacs"), ("forwarded", "archive"), ("forwarded", "research")
    ]  # fmt: skip
    assert all(set(r) >= CONTRACT and r["sop_instance_uid"] == "1.2.3" for r in records)


def test_emit_appends_to_existing_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"event":"old"}\n', encoding="utf-8")
    log = AuditLog(path)
    log.emit("received")
    log.close()
    log2 = AuditLog(path)
    log2.emit("routed")
    log2.close()
    assert [r["event"] for r in read_lines(path)] == ["old", "received", "routed"]


def test_emit_after_close_reopens(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.emit("received")
    log.close()
    log.emit("routed")
    log.close()
    assert [r["event"] for r in read_lines(tmp_path / "a.jsonl")] == ["received", "routed"]


def test_emit_raises_when_trail_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        AuditLog(blocker / "audit.jsonl").emit("received")


def test_events_of_done_actions_never_raise_and_are_counted(tmp_path: Path) -> None:
    """A delivery or admission already made stands whether or not its event is written:
    the failure is counted and logged, with no identifier of the events."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    trail = AuditLog(blocker / "audit.jsonl")
    before = REGISTRY.get_sample_value("dicom_router_audit_write_failures_total") or 0.0
    with capture_logs() as logs:
        written = trail.emit_done([("forwarded", {"sop_instance_uid": "1.2.3",
                                                  "patient_id": "PID-9"})])  # fmt: skip
    assert written is False
    assert REGISTRY.get_sample_value("dicom_router_audit_write_failures_total") == before + 1
    (line,) = logs
    assert line["event"] == "audit events not written" and line["events"] == ["forwarded"]
    assert "PID-9" not in json.dumps(line) and "1.2.3" not in json.dumps(line)
    good = AuditLog(tmp_path / "audit.jsonl")
    assert good.emit_done([("forwarded", {"sop_instance_uid": "1.2.3"})]) is True
    assert json.loads((tmp_path / "audit.jsonl").read_text())["event"] == "forwarded"


def test_concurrent_emits_are_whole_lines_and_none_lost(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    threads_n, per_thread = 8, 200
    barrier = threading.Barrier(threads_n)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            log.emit("forwarded", destination=f"d{t}", attempt=i, detail="x" * (i % 50))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    records = read_lines(path)  # every line is valid JSON
    assert len(records) == threads_n * per_thread
    seen = {(r["destination"], r["attempt"]) for r in records}
    assert seen == {(f"d{t}", i) for t in range(threads_n) for i in range(per_thread)}
    for t in range(threads_n):
        attempts = [r["attempt"] for r in records if r["destination"] == f"d{t}"]
        assert attempts == sorted(attempts)  # a thread's events stay in order


def _write_events(path: str, writer: int, count: int) -> None:
    log = AuditLog(Path(path), max_bytes=4096, backups=1000)
    for n in range(count):
        log.emit("received", sop_instance_uid=f"1.2.3.{writer}.{n}", calling_ae="CT01")
    log.close()


def test_rotation_by_size_across_processes_loses_and_splits_no_line(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_events, args=(str(path), w, 300)) for w in range(4)]
    for proc in writers:
        proc.start()
    for proc in writers:
        proc.join(60)
        assert proc.exitcode == 0
    files = [path, *sorted(tmp_path.glob("audit.jsonl.*"))]
    files = [f for f in files if not f.name.endswith(".lock")]
    assert len(files) > 10, "the trail should have rotated many times"
    uids = []
    for file in files:
        assert file.stat().st_size <= 4096
        for line in file.read_text().splitlines():
            uids.append(json.loads(line)["sop_instance_uid"])  # every line whole JSON
    assert sorted(uids) == sorted(f"1.2.3.{w}.{n}" for w in range(4) for n in range(300))


def test_rotation_keeps_the_configured_number_of_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=1024, backups=3)
    for n in range(200):
        log.emit("routed", sop_instance_uid=f"1.2.{n}")
    log.close()
    rotated = sorted(p.name for p in tmp_path.glob("audit.jsonl.*") if not p.name.endswith("lock"))
    assert rotated == ["audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    newest = json.loads(path.read_text().splitlines()[-1])
    assert newest["sop_instance_uid"] == "1.2.199"
