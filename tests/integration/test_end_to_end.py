"""The whole path on real parts: dcmtk senders -> router -> capture SCP and Orthanc.

One router (2 workers, private Redis) fans every instance out to a pynetdicom
capture SCP and to Orthanc. Each test asserts what arrived, byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.capture_scp import CaptureSCP
from tests.support.compare import dataset_differences
from tests.support.dcmtk import dcmsend, echoscu, storescu
from tests.support.orthanc import Orthanc
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import pydicom_test_files, write_ct_series
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAN_OUT_RULES = """
rules:
  - name: everything-to-both
    forward: [capture, orthanc]
unmatched: keep
"""


@pytest.fixture(scope="module")
def capture() -> Iterator[CaptureSCP]:
    with CaptureSCP() as scp:
        yield scp


@pytest.fixture(scope="module")
def orthanc() -> Iterator[Orthanc]:
    with Orthanc() as server:
        yield server


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory,
    redis_session: RedisServer,
    capture: CaptureSCP,
    orthanc: Orthanc,
) -> Iterator[RouterProcess]:
    redis_session.client().flushall()
    redis_server = redis_session
    destinations = {
        "capture": {"ae_title": capture.ae_title, "host": "127.0.0.1", "port": capture.port},
        "orthanc": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
    }
    path, config = write_config(
        tmp_path_factory.mktemp("router"), redis_server.url, destinations, FAN_OUT_RULES
    )
    proc = start_router(path, config, workers=2)
    try:
        yield proc
    finally:
        proc.stop()


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_instance_reaches_both_destinations_unchanged(
    router: RouterProcess, capture: CaptureSCP, orthanc: Orthanc, tmp_path: Path
) -> None:
    ct_files = write_ct_series(tmp_path / "ct", 50)
    sample_files = pydicom_test_files()
    assert len(sample_files) >= 10
    originals = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in
                 [*ct_files, *sample_files]}  # fmt: skip
    assert len(originals) == len(ct_files) + len(sample_files)

    sent = storescu(ct_files, router.port, called_ae="ROUTER", calling_ae="CT01")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    sent = dcmsend(sample_files, router.port, called_ae="ROUTER", calling_ae="MODALITY")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    total = len(originals)
    capture.wait_for_count(total, timeout=120)
    orthanc.wait_for_count(total, timeout=120)

    captured = Counter(capture.sop_instance_uids())
    assert set(captured) == set(originals)
    assert max(captured.values()) == 1, "an instance arrived twice at the capture SCP"
    for received in capture.received():
        uid = str(dcmread(received, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_differences(originals[uid], received) == [], uid

    in_orthanc = orthanc.sop_instance_uids()
    assert set(in_orthanc) == set(originals)
    assert orthanc.count_instances() == total
    for uid, orthanc_id in in_orthanc.items():
        assert dataset_differences(originals[uid], orthanc.instance_file(orthanc_id)) == [], uid

    forwarded = router.wait_for_audit("forwarded", 2 * total)
    assert Counter((e["sop_instance_uid"], e["destination"]) for e in forwarded) == Counter(
        {(uid, dest): 1 for uid in originals for dest in ("capture", "orthanc")}
    )
    received_events = router.audit_events("received")
    assert {e["sop_instance_uid"] for e in received_events} >= set(originals)
    routed = [e for e in router.audit_events("routed") if e["sop_instance_uid"] in originals]
    assert all(e["rule"] == "everything-to-both" and e["ruleset_version"] for e in routed)
    # A delivery names the ruleset that chose it, as its routing did.
    assert {e["ruleset_version"] for e in forwarded} == {e["ruleset_version"] for e in routed}
    # Every destination has its copy: nothing is left in the spool (retention 0).
    assert list((router.spool_dir / "incoming").rglob("*.dcm")) == []

    status, text = router.http("/metrics")
    assert status == 200
    assert 'dicom_router_instances_received_total{calling_ae="CT01"} 50.0' in text
    assert 'dicom_router_forward_total{destination="orthanc",outcome="success"}' in text


def test_echoscu_against_router(router: RouterProcess) -> None:
    result = echoscu(router.port, called_ae="ROUTER")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dicom_router_echo(router: RouterProcess, orthanc: Orthanc) -> None:
    by_name = run_cli(router.config_path, "echo", "orthanc")
    assert by_name.returncode == 0, by_name.stderr
    assert "C-ECHO succeeded" in by_name.stdout
    by_address = run_cli(
        router.config_path, "echo", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    )
    assert by_address.returncode == 0, by_address.stderr


def test_dicom_router_echo_to_closed_port_fails_clearly(router: RouterProcess) -> None:
    from tests.support.ports import free_port

    result = run_cli(
        router.config_path, "echo", f"NOBODY@127.0.0.1:{free_port()}", "--timeout", "3"
    )
    assert result.returncode == 1
    assert "cannot connect" in result.stderr
    unknown = run_cli(router.config_path, "echo", "no_such_destination")
    assert unknown.returncode == 2
    assert "neither a configured destination" in unknown.stderr


def test_metrics_pass_promtool(router: RouterProcess) -> None:
    status, text = router.http("/metrics")
    assert status == 200
    assert "dicom_router_queue_depth" in text and "dicom_router_forward_seconds_bucket" in text
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_health_endpoints(router: RouterProcess) -> None:
    assert router.http("/healthz") == (200, "ok\n")
    assert router.http("/readyz") == (200, "ready\n")


def test_unsupported_context_is_refused_while_the_association_goes_on(
    router: RouterProcess, capture: CaptureSCP, tmp_path: Path
) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        ModalityWorklistInformationFind,
    )

    (ct_file,) = write_ct_series(tmp_path, 1, rows=64, cols=64, seed=7)
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context("1.2.3.4.5.6.7.8.9")  # a SOP class that does not exist
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
        assert accepted == {str(CTImageStorage)}
        assert rejected == {str(ModalityWorklistInformationFind), "1.2.3.4.5.6.7.8.9"}
        status = assoc.send_c_store(dcmread(ct_file))
        assert int(status.Status) == 0x0000
    finally:
        assoc.release()
    uid = str(dcmread(ct_file, stop_before_pixels=True).SOPInstanceUID)
    wait_until(lambda: uid in capture.sop_instance_uids(), 30, "the CT at the capture SCP")
