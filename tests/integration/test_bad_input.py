"""Bad input gets a specific answer, a metric and an audit event, and loses nothing.

These routers run without workers: what is tested is the SCP's promise that it
answers 0x0000 only once an instance is durably spooled and enqueued.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.support.dcmtk import echoscu, storescu
from tests.support.malformed import mislabelled_as_ul, store, store_file_as_is
from tests.support.ports import free_port
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import write_ct_series

pytestmark = pytest.mark.integration

RULES = """
rules:
  - name: all
    forward: [nowhere]
"""
DESTINATIONS = {"nowhere": {"ae_title": "NOWHERE", "host": "127.0.0.1", "port": 9}}


def spooled_files(router: RouterProcess) -> list[Path]:
    return [p for p in router.spool_dir.rglob("*") if p.is_file()]


@pytest.fixture()
def make_router(tmp_path: Path) -> Iterator[Any]:
    started: list[RouterProcess] = []

    def make(broker_url: str, **overrides: Any) -> RouterProcess:
        path, config = write_config(tmp_path / "router", broker_url, DESTINATIONS, RULES,
                                    **overrides)  # fmt: skip
        router = start_router(path, config, workers=0)
        started.append(router)
        return router

    yield make
    for router in started:
        router.stop()


@pytest.fixture()
def ct_file(tmp_path: Path) -> Path:
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=64, cols=64)
    return path


def test_broker_unreachable_answers_out_of_resources_and_keeps_nothing(
    make_router: Any, ct_file: Path
) -> None:
    router = make_router(f"redis://127.0.0.1:{free_port()}/0")
    assert store(router.port, dcmread(ct_file)) == 0xA700
    assert spooled_files(router) == []
    rejected = router.audit_events("rejected")
    assert rejected and "broker_unavailable" in rejected[-1]["status"]
    status, metrics = router.http("/metrics")
    assert 'dicom_router_instances_rejected_total{reason="broker_unavailable"} 1.0' in metrics
    status, body = router.http("/readyz")
    assert status == 503 and "broker unreachable" in body
    # dcmtk's storescu sees the failure too, and nothing was acknowledged.
    result = storescu([ct_file], router.port)
    assert result.returncode != 0
    assert spooled_files(router) == []


def test_spool_not_writable_answers_out_of_resources(
    make_router: Any, redis_server: RedisServer, ct_file: Path
) -> None:
    router = make_router(redis_server.url)
    incoming = router.spool_dir / "incoming"
    shutil.rmtree(incoming)
    incoming.write_text("not a directory")  # root ignores permissions; a file cannot be mkdir'ed
    assert store(router.port, dcmread(ct_file)) == 0xA700
    assert [p for p in (router.spool_dir / "tmp").iterdir()] == []
    assert "spool_error" in router.audit_events("rejected")[-1]["status"]
    assert redis_server.client().llen("route") == 0


def test_low_disk_is_refused_before_the_disk_is_full(
    make_router: Any, redis_server: RedisServer, ct_file: Path
) -> None:
    router = make_router(
        redis_server.url, spool={"dir": "spool", "min_free_mb": 10**9, "retention_hours": 0}
    )
    assert store(router.port, dcmread(ct_file)) == 0xA700
    assert spooled_files(router) == []
    assert "disk_low" in router.audit_events("rejected")[-1]["status"]
    status, body = router.http("/readyz")
    assert status == 503 and "free space" in body


def test_malformed_dataset_gets_cannot_understand(
    make_router: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    router = make_router(redis_server.url)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    # An element announcing 200 bytes of which only 10 follow: no SOP Instance UID.
    buffer.write(struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 200) + b"1.2.3.4\0xx")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(buffer.getvalue())
    assert store_file_as_is(router.port, bad) == 0xC000
    assert spooled_files(router) == []
    assert "malformed_dataset" in router.audit_events("rejected")[-1]["status"]


def test_unreadable_patient_id_is_refused_and_never_logged(
    make_router: Any, redis_server: RedisServer, ct_file: Path, tmp_path: Path
) -> None:
    """Every identifier is read before the instance is kept: a flaw in one is a refusal
    (not a failure answered for an instance already queued), and the error that names
    the value stays out of the log."""
    bad = mislabelled_as_ul(ct_file, tmp_path / "pid.dcm", 0x00100020, "LO", "LEAKID123 ")
    router = make_router(redis_server.url)
    assert store_file_as_is(router.port, bad) == 0xC000
    assert spooled_files(router) == []
    assert redis_server.client().llen("route") == 0
    assert "malformed_dataset" in router.audit_events("rejected")[-1]["status"]
    assert "(0010,0020)" in router.log_text()  # the element is named ...
    assert "LEAKID123" not in router.log_text()  # ... its value is not


def test_dataset_naming_another_instance_than_its_request_is_refused(
    make_router: Any, redis_server: RedisServer, ct_file: Path, tmp_path: Path
) -> None:
    """The request's Affected SOP Instance UID comes from the file meta; the data set
    inside names another instance: refused, nothing kept."""
    dataset = dcmread(ct_file)
    dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
    odd = tmp_path / "odd.dcm"
    dataset.save_as(odd)  # as is: enforcing the file format would repair the meta
    router = make_router(redis_server.url)
    assert store_file_as_is(router.port, odd) == 0xA900
    assert spooled_files(router) == []
    assert "sop_instance_uid_mismatch" in router.audit_events("rejected")[-1]["status"]
    assert redis_server.client().llen("route") == 0


def test_calling_ae_not_allowed_is_rejected_and_audited(
    make_router: Any, redis_server: RedisServer, ct_file: Path
) -> None:
    router = make_router(redis_server.url, accept={"calling_ae": ["CT01"]})
    refused = echoscu(router.port, calling_ae="INTRUDER")
    assert refused.returncode != 0
    # The sender is told why (A-ASSOCIATE-RJ), not left with a dropped connection.
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert echoscu(router.port, calling_ae="CT01").returncode == 0
    event = router.audit_events("rejected")[-1]
    assert event["calling_ae"] == "INTRUDER"
    assert event["status"] == "calling AE title not allowed"
    assert store(router.port, dcmread(ct_file), calling_ae="CT01") == 0x0000
    assert len(router.audit_events("received")) == 1


def test_peer_network_not_allowed_is_rejected(make_router: Any, redis_server: RedisServer) -> None:
    router = make_router(redis_server.url, accept={"networks": ["10.0.0.0/8"]})
    refused = echoscu(router.port)
    assert refused.returncode != 0
    assert "Rejected Permanent" in refused.stdout + refused.stderr
    assert router.audit_events("rejected")[-1]["status"] == "peer address not allowed"


def test_rule_file_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "broken.yaml"
    rules.write_text(
        "rules:\n  - name: a\n    forward: [x]\n  - name: b\n    match: {Modality: CT\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(tmp_path / "none.yaml"),
         "rules", "lint", str(rules)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{rules}:6: invalid YAML" in result.stdout


def test_bad_config_stops_start_up_with_one_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("listen: {port: eleven}\nbroker_url: redis://127.0.0.1:1/0\n")
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(config), "serve"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{config}: listen.port: Input should be a valid integer" in result.stderr
