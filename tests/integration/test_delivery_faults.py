"""Delivery under faults, with real processes: every acknowledged instance reaches every
chosen destination exactly once, or sits in the dead-letter store with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from router.status import ALREADY_DELIVERED
from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import dcmsend, storescu
from tests.support.ports import free_port
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import pydicom_test_files_dir, write_ct_series
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
FAST_RETRY = {"max_attempts": 30, "initial_delay": "0.5s", "max_delay": "3s"}


def destination(port: int, ae_title: str = "CAPTURE", **extra: Any) -> dict[str, Any]:
    return {"ae_title": ae_title, "host": "127.0.0.1", "port": port, "retry": FAST_RETRY,
            "timeout": "5s", **extra}  # fmt: skip


def uids(files: list[Path]) -> set[str]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def assert_once(capture: CaptureSCP, expected: set[str]) -> None:
    arrived = Counter(capture.sop_instance_uids())
    assert set(arrived) == expected
    assert max(arrived.values()) == 1, "an instance was delivered twice"


def cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(router.config_path), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_destination_down_for_20_seconds_then_up(tmp_path: Path, redis_server: RedisServer) -> None:
    port = free_port()
    rules = "rules:\n  - name: all\n    forward: [pacs]\n"
    path, config = write_config(tmp_path / "router", redis_server.url,
                                {"pacs": destination(port)}, rules)  # fmt: skip
    router = start_router(path, config)
    try:
        files = write_ct_series(tmp_path / "ct", 20, rows=64, cols=64, seed=11)
        assert storescu(files, router.port).returncode == 0  # acknowledged while pacs is down
        time.sleep(20)
        assert router.audit_events("forwarded") == []
        # Every instance had failed attempts, but after a few real connection failures
        # the circuit opened and the rest failed without touching the network.
        failed = router.audit_events("forward_failed")
        assert {e["sop_instance_uid"] for e in failed} == uids(files)
        tried = [e for e in failed if "circuit open" not in e["status"]]
        assert 3 <= len(tried) < 20
        with CaptureSCP(port=port) as pacs:
            pacs.wait_for_count(20, timeout=60)
            router.wait_for_audit("forwarded", 20)
            assert_once(pacs, uids(files))
        assert router.audit_events("dead_lettered") == []
        wait_until(lambda: not any((router.spool_dir / "incoming").rglob("*.dcm")), 30,
                   "the spool to empty")  # fmt: skip
    finally:
        router.stop()


def test_destination_out_of_resources_for_its_first_20_stores(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with CaptureSCP(extra_args=["--fail-first", "20", "--fail-status", "0xA700"]) as pacs:
        rules = "rules:\n  - name: all\n    forward: [pacs]\n"
        path, config = write_config(tmp_path / "router", redis_server.url,
                                    {"pacs": destination(pacs.port)}, rules)  # fmt: skip
        router = start_router(path, config)
        try:
            files = write_ct_series(tmp_path / "ct", 30, rows=64, cols=64, seed=12)
            assert storescu(files, router.port).returncode == 0
            pacs.wait_for_count(30, timeout=120)
            router.wait_for_audit("forwarded", 30)
            assert_once(pacs, uids(files))
            failed = router.audit_events("forward_failed")
            assert len(failed) == 20
            assert all(e["status"] == "0xA700 OUT_OF_RESOURCES" for e in failed)
            _status, metrics = router.http("/metrics")
            assert 'dicom_router_forward_total{destination="pacs",outcome="retry"} 20.0' in metrics
            assert router.audit_events("dead_lettered") == []
        finally:
            router.stop()


def test_refused_sop_class_is_dead_lettered_then_retried(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    refusing = ["--fail-sop-class", CT_IMAGE_STORAGE, "--fail-status", "0xC000"]
    pacs = CaptureSCP(out_dir=tmp_path / "pacs", extra_args=refusing).start()
    archive = CaptureSCP(ae_title="ARCHIVE").start()
    rules = "rules:\n  - name: all\n    forward: [pacs, archive]\n"
    dests = {"pacs": destination(pacs.port),
             "archive": destination(archive.port, ae_title="ARCHIVE")}  # fmt: skip
    path, config = write_config(tmp_path / "router", redis_server.url, dests, rules)
    router = start_router(path, config)
    try:
        ct = write_ct_series(tmp_path / "ct", 5, rows=64, cols=64, seed=13)
        others = [pydicom_test_files_dir() / name for name in ("MR_small.dcm", "rtplan.dcm")]
        assert storescu(ct, router.port).returncode == 0
        assert dcmsend(others, router.port).returncode == 0
        archive.wait_for_count(7, timeout=60)
        assert_once(archive, uids(ct) | uids(others))  # the other destination is unaffected
        pacs.wait_for_count(2, timeout=60)
        dead = router.wait_for_audit("dead_lettered", 5)
        assert {e["sop_instance_uid"] for e in dead} == uids(ct)
        assert all("permanent failure: 0xC000" in e["status"] for e in dead)
        assert all(e["attempt"] == 1 for e in dead), "a permanent failure is not retried"
        assert_once(pacs, uids(others))

        listing = cli(router, "deadletter", "list")
        assert listing.returncode == 0 and "5 dead letters" in listing.stdout
        first_id = listing.stdout.split()[0]
        shown = cli(router, "deadletter", "show", first_id)
        assert "destination: pacs" in shown.stdout and "0xC000" in shown.stdout
        _status, metrics = router.http("/metrics")
        assert 'dicom_router_dead_letters{destination="pacs"} 5.0' in metrics
        # Dead-lettered instances stay in the spool.
        assert len(list((router.spool_dir / "incoming").rglob("*.dcm"))) == 5
        # The operator's view says the same.
        status = cli(router, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        by_name = {d["name"]: d for d in report["destinations"]}
        assert by_name["pacs"]["dead_letters"] == 5
        assert by_name["pacs"]["delivered_last_hour"] == 2
        assert by_name["archive"]["delivered_last_hour"] == 7
        assert by_name["archive"]["waiting"] == 0 and by_name["archive"]["dead_letters"] == 0
        assert report["workers"] and report["ruleset_version"]
        assert "destination" in cli(router, "status").stdout

        # The PACS is fixed; the operator retries everything.
        pacs.stop()
        fixed = CaptureSCP(out_dir=tmp_path / "pacs", port=pacs.port).start()
        try:
            retried = cli(router, "deadletter", "retry", "--all")
            assert retried.returncode == 0, retried.stderr
            fixed.wait_for_count(7, timeout=60)
            assert_once(fixed, uids(ct) | uids(others))
            assert "0 dead letters" in cli(router, "deadletter", "list").stdout
            wait_until(lambda: not any((router.spool_dir / "incoming").rglob("*.dcm")), 30,
                       "the spool to empty after the retried deliveries")  # fmt: skip
            _status, metrics = router.http("/metrics")
            assert 'dicom_router_dead_letters{destination="pacs"} 0.0' in metrics
        finally:
            fixed.stop()
    finally:
        router.stop()
        pacs.stop()
        archive.stop()


def test_alternate_receives_what_the_primary_cannot(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with CaptureSCP(ae_title="BACKUP") as backup:
        rules = "rules:\n  - name: all\n    forward: [primary]\n"
        dead_port = free_port()
        dests = {
            "primary": destination(dead_port, alternate="backup",
                                   retry={"max_attempts": 2, "initial_delay": "0.2s",
                                          "max_delay": "0.5s"}),
            "backup": destination(backup.port, ae_title="BACKUP"),
        }  # fmt: skip
        path, config = write_config(tmp_path / "router", redis_server.url, dests, rules)
        router = start_router(path, config)
        try:
            files = write_ct_series(tmp_path / "ct", 5, rows=64, cols=64, seed=14)
            assert storescu(files, router.port).returncode == 0
            backup.wait_for_count(5, timeout=60)
            assert_once(backup, uids(files))
            forwarded = router.wait_for_audit("forwarded", 5)
            assert {e["destination"] for e in forwarded} == {"backup"}
            assert {e["alternate_of"] for e in forwarded} == {"primary"}
            assert router.audit_events("dead_lettered") == []
            # Each instance's last attempt at the primary says it went to the alternate.
            given_up = [e for e in router.audit_events("forward_failed")
                        if e["status"].endswith("; sent to the alternate backup")]  # fmt: skip
            assert sorted(e["sop_instance_uid"] for e in given_up) == sorted(uids(files))
            assert all(e["destination"] == "primary" and e["attempt"] == 2 for e in given_up)
            assert all(e["status"].startswith("retries exhausted: ") for e in given_up)
            _status, metrics = router.http("/metrics")
            lines = metrics.splitlines()
            assert 'dicom_router_forward_total{destination="primary",outcome="failed"} 5.0' in lines
            assert 'dicom_router_forward_total{destination="primary",outcome="retry"} 5.0' in lines
            wait_until(lambda: not any((router.spool_dir / "incoming").rglob("*.dcm")), 30,
                       "the spool to empty")  # fmt: skip
        finally:
            router.stop()


def test_max_associations_holds_across_workers(tmp_path: Path, redis_server: RedisServer) -> None:
    with CaptureSCP() as pacs:
        rules = "rules:\n  - name: all\n    forward: [pacs]\n"
        dests = {"pacs": destination(pacs.port, max_associations=1)}
        path, config = write_config(tmp_path / "router", redis_server.url, dests, rules)
        router = start_router(path, config, workers=3)
        try:
            files = write_ct_series(tmp_path / "ct", 60, rows=64, cols=64, seed=15)
            assert storescu(files, router.port).returncode == 0
            pacs.wait_for_count(60, timeout=120)
            assert_once(pacs, uids(files))
            assert pacs.max_concurrent_associations() == 1
            assert router.audit_events("forward_failed") == []
        finally:
            router.stop()


def median_latency(router: RouterProcess, destination_name: str, sent: set[str]) -> float:
    received = {e["sop_instance_uid"]: e["ts"] for e in router.audit_events("received")}
    delays = sorted(
        (_seconds(e["ts"]) - _seconds(received[e["sop_instance_uid"]]))
        for e in router.audit_events("forwarded")
        if e["destination"] == destination_name and e["sop_instance_uid"] in sent
    )
    return delays[len(delays) // 2]


def _seconds(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp()


def test_a_dead_destination_does_not_slow_the_others(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    latencies = {}
    with CaptureSCP() as pacs:
        for name, forward in (("alone", "[pacs]"), ("beside-dead", "[pacs, dead]")):
            dests = {"pacs": destination(pacs.port), "dead": destination(free_port())}
            rules = f"rules:\n  - name: all\n    forward: {forward}\n"
            path, config = write_config(tmp_path / name, redis_server.url, dests, rules)
            router = start_router(path, config)
            try:
                files = write_ct_series(tmp_path / f"ct-{name}", 40, rows=128, cols=128,
                                        seed=16 if name == "alone" else 17)  # fmt: skip
                pacs.clear()
                assert storescu(files, router.port).returncode == 0
                pacs.wait_for_count(40, timeout=120)
                router.wait_for_audit("forwarded", 40)
                latencies[name] = median_latency(router, "pacs", uids(files))
            finally:
                router.stop()
    # Within 2x, plus half a second: the medians are fractions of a second on a shared
    # 2-core machine, where scheduling noise alone moves them by that much. A dead
    # destination that held up the others would cost seconds to minutes.
    assert latencies["beside-dead"] <= 2 * latencies["alone"] + 0.5, latencies


def test_identical_resend_is_not_sent_again_but_a_correction_is(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with CaptureSCP() as pacs:
        rules = "rules:\n  - name: all\n    forward: [pacs]\n"
        path, config = write_config(tmp_path / "router", redis_server.url,
                                    {"pacs": destination(pacs.port)}, rules)  # fmt: skip
        router = start_router(path, config)
        try:
            (original,) = write_ct_series(tmp_path / "ct", 1, rows=64, cols=64, seed=18)
            uid = str(dcmread(original).SOPInstanceUID)
            assert storescu([original], router.port).returncode == 0
            pacs.wait_for_count(1, timeout=30)
            # The modality sends the very same instance again: it is not delivered twice,
            # and the audit trail and a metric say why.
            assert storescu([original], router.port).returncode == 0
            wait_until(lambda: len(router.audit_events("received")) == 2, 30, "2nd receipt")
            wait_until(lambda: not any((router.spool_dir / "incoming").rglob("*.dcm")), 30,
                       "the second copy to be settled")  # fmt: skip
            assert pacs.sop_instance_uids() == [uid]
            statuses = [e["status"] for e in router.audit_events("forwarded")]
            assert statuses == ["0x0000 SUCCESS", ALREADY_DELIVERED]
            _status, metrics = router.http("/metrics")
            assert 'dicom_router_already_delivered_total{destination="pacs"} 1.0' in metrics
            # A correction: same SOP Instance UID, different content. It is sent again.
            corrected = dcmread(original)
            corrected.SeriesDescription = "CORRECTED"
            fixed = tmp_path / "corrected.dcm"
            corrected.save_as(fixed, enforce_file_format=True)
            assert storescu([fixed], router.port).returncode == 0
            pacs.wait_for_count(2, timeout=30)
            assert pacs.sop_instance_uids() == [uid, uid]
            assert dcmread(pacs.received()[-1]).SeriesDescription == "CORRECTED"
        finally:
            router.stop()


def test_resend_identical_sends_a_resent_instance_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``resend_identical``: a deliberate re-send from the modality (the PACS lost the
    study, say) goes out again, where by default the first delivery stands for it."""
    with CaptureSCP() as pacs:
        rules = "rules:\n  - name: all\n    forward: [pacs]\n"
        dest = destination(pacs.port, resend_identical=True)
        path, config = write_config(tmp_path / "router", redis_server.url, {"pacs": dest}, rules)
        router = start_router(path, config)
        try:
            (original,) = write_ct_series(tmp_path / "ct", 1, rows=64, cols=64, seed=19)
            uid = str(dcmread(original).SOPInstanceUID)
            for count in (1, 2):
                assert storescu([original], router.port).returncode == 0
                pacs.wait_for_count(count, timeout=30)
            assert pacs.sop_instance_uids() == [uid, uid]
            assert [e["status"] for e in router.audit_events("forwarded")] == ["0x0000 SUCCESS"] * 2
        finally:
            router.stop()
