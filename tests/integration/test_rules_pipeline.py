"""Rules on the real path: per-rule actions on each rule's own copy, and live reload.

A real router (2 workers, private Redis) sends to a pynetdicom capture SCP and to
Orthanc; instances go in with dcmtk's storescu.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.capture_scp import CaptureSCP
from tests.support.compare import dataset_differences
from tests.support.dcmtk import storescu
from tests.support.orthanc import Orthanc
from tests.support.router_proc import RedisServer, start_router, write_config
from tests.support.synthetic import write_ct_series
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ACTION_RULES = """
rules:
  - name: research-copy
    actions:
      - set: {InstitutionName: "GH-{calling_ae}"}
      - delete: [PatientName, "(0009,xxxx)"]
      - hash: [PatientID]
      - uid_remap: [StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID]
    forward: [capture]
    continue: true
  - name: clinical
    forward: [orthanc]
"""


@pytest.fixture()
def capture() -> Iterator[CaptureSCP]:
    with CaptureSCP() as scp:
        yield scp


def destinations(
    capture: CaptureSCP, orthanc: Orthanc | None = None
) -> dict[str, dict[str, object]]:
    dests: dict[str, dict[str, object]] = {
        "capture": {"ae_title": capture.ae_title, "host": "127.0.0.1", "port": capture.port}
    }
    if orthanc is not None:
        dests["orthanc"] = {
            "ae_title": orthanc.aet,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
        }
    return dests


def test_each_rule_changes_only_its_own_copy(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP
) -> None:
    with Orthanc() as orthanc:
        path, config = write_config(
            tmp_path / "router", redis_server.url, destinations(capture, orthanc), ACTION_RULES,
            salt="integration-test-salt",
        )  # fmt: skip
        router = start_router(path, config)
        try:
            files = write_ct_series(tmp_path / "ct", 5, rows=64, cols=64, patient_id="PID-777")
            originals = {str(dcmread(f).SOPInstanceUID): f for f in files}
            assert storescu(files, router.port, calling_ae="CT01").returncode == 0
            capture.wait_for_count(5, timeout=60)
            orthanc.wait_for_count(5, timeout=60)

            # Orthanc's rule has no actions: it gets the instances exactly as sent.
            for uid, orthanc_id in orthanc.sop_instance_uids().items():
                assert dataset_differences(originals[uid], orthanc.instance_file(orthanc_id)) == []

            # The research copy is changed as its rule says, and only as it says.
            studies = set()
            for received in capture.received():
                ds = dcmread(received)
                assert ds.SOPInstanceUID not in originals
                assert ds.SOPInstanceUID.startswith("2.25.")
                assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
                assert ds.InstitutionName == "GH-CT01"
                assert "PatientName" not in ds
                assert ds.PatientID not in ("PID-777", "")
                studies.add(ds.StudyInstanceUID)
                source = next(
                    dcmread(f) for f in files if dcmread(f).InstanceNumber == ds.InstanceNumber
                )
                assert ds.PixelData == source.PixelData
            assert len(studies) == 1, "one study must stay one study after uid_remap"

            wait_until(
                lambda: not any((router.spool_dir / "incoming").rglob("*.dcm")),
                30,
                "the spool (original and changed copies) to empty",
            )
        finally:
            router.stop()


RULES_V1 = """
rules:
  - name: to-capture
    actions: [{set: {StationName: V1}}]
    forward: [capture]
"""
RULES_V2 = RULES_V1.replace("V1", "V2")
RULES_BROKEN = "rules:\n  - name: to-capture\n    match: {Modality: [CT\n"


def test_reload_during_a_stream_loses_nothing_and_uses_one_version_per_instance(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP
) -> None:
    path, config = write_config(
        tmp_path / "router", redis_server.url, destinations(capture), RULES_V1
    )
    router = start_router(path, config)
    rules_file = path.parent / "rules" / "rules.yaml"
    try:
        first = write_ct_series(tmp_path / "a", 100, rows=64, cols=64, seed=1)
        second = write_ct_series(tmp_path / "b", 100, rows=64, cols=64, seed=2)
        assert storescu(first, router.port).returncode == 0
        rules_file.write_text(RULES_V2)  # while the first batch is still being routed
        time.sleep(2.5)  # workers look for edits every 2 s
        assert storescu(second, router.port).returncode == 0
        capture.wait_for_count(200, timeout=120)

        arrived = Counter(capture.sop_instance_uids())
        sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in first + second}
        assert set(arrived) == sent and max(arrived.values()) == 1

        routed = [e for e in router.audit_events("routed") if e["sop_instance_uid"] in sent]
        versions_per_instance = Counter(e["sop_instance_uid"] for e in routed)
        assert set(versions_per_instance.values()) == {1}
        by_uid = {e["sop_instance_uid"]: e["ruleset_version"] for e in routed}
        versions = set(by_uid.values())
        assert len(versions) == 2, f"expected both ruleset versions in use, got {versions}"
        # What each instance received matches the version that routed it.
        station_of_version: dict[str, str] = {}
        for received in capture.received():
            ds = dcmread(received, stop_before_pixels=True)
            version = by_uid[str(ds.SOPInstanceUID)]
            assert station_of_version.setdefault(version, ds.StationName) == ds.StationName
        assert sorted(station_of_version.values()) == ["V1", "V2"]

        # A broken edit is refused; the previous ruleset keeps routing.
        rules_file.write_text(RULES_BROKEN)
        time.sleep(2.5)
        third = write_ct_series(tmp_path / "c", 5, rows=64, cols=64, seed=3)
        assert storescu(third, router.port).returncode == 0
        capture.wait_for_count(205, timeout=60)
        refused = [e for e in router.audit_events("rules_reloaded") if e["status"] == "refused"]
        assert refused and "rules.yaml:4: invalid YAML" in refused[-1]["detail"]
        _status, metrics = router.http("/metrics")
        assert 'dicom_router_rules_reload_total{outcome="refused"}' in metrics
        v2 = next(v for v, station in station_of_version.items() if station == "V2")
        third_uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in third}
        third_routed = [e for e in router.audit_events("routed")
                        if e["sop_instance_uid"] in third_uids]  # fmt: skip
        assert {e["ruleset_version"] for e in third_routed} == {v2}
    finally:
        router.stop()


DEID_RULES = """
rules:
  - name: research
    actions: [{deidentify: basic}]
    forward: [capture]
"""


def test_deidentified_copies_and_debug_logs_carry_no_patient_identity(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP
) -> None:
    name, patient_id = "QZXWVK^JOHANNA", "PID-918273645"
    path, config = write_config(
        tmp_path / "router", redis_server.url, destinations(capture), DEID_RULES,
        salt="integration-test-salt",
    )  # fmt: skip
    router = start_router(path, config, log_level="DEBUG")
    try:
        files = write_ct_series(tmp_path / "ct", 10, rows=64, cols=64, patient_name=name,
                                patient_id=patient_id, study_description="QZXWVK HEAD")  # fmt: skip
        assert storescu(files, router.port, calling_ae="CT01").returncode == 0
        capture.wait_for_count(10, timeout=60)
        router.wait_for_audit("forwarded", 10)
        for received in capture.received():
            data = received.read_bytes()
            for secret in (name, patient_id, "QZXWVK"):
                assert secret.encode() not in data
            ds = dcmread(received)
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        log = router.log_text()
        assert '"level": "debug"' in log, "the router must have logged at DEBUG"
        for secret in (name, patient_id, "QZXWVK", "JOHANNA"):
            assert secret not in log
    finally:
        router.stop()
