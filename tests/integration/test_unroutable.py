"""Instances the rules cannot be applied to: set aside, audited and counted, never retried.

An element whose value cannot be read (here: text stored under VR UL) passes the
SCP, which reads only the identifiers, and fails when a rule condition or action
reads it. The instance was acknowledged, so it must not be lost, and routing it
again would fail the same way: it goes to ``spool/unroutable/``. pydicom's error
quotes the value, which must stay out of the application log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from router.inbox import INBOX
from tests.support.capture_scp import CaptureSCP
from tests.support.malformed import mislabelled_as_ul, store_file_as_is
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import write_ct_series

pytestmark = pytest.mark.integration

SERIES_DESCRIPTION = 0x0008103E
PRIVATE_CREATOR, PRIVATE_VALUE = 0x00090010, 0x00091001


@pytest.fixture()
def capture() -> Iterator[CaptureSCP]:
    with CaptureSCP() as scp:
        yield scp


def _router(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP, rules: str
) -> RouterProcess:
    dests = {"capture": {"ae_title": capture.ae_title, "host": "127.0.0.1", "port": capture.port}}
    path, config = write_config(tmp_path / "router", redis_server.url, dests, rules,
                                salt="unroutable-test-salt")  # fmt: skip
    return start_router(path, config, workers=1)


def _assert_set_aside(router: RouterProcess, redis_server: RedisServer, status: str) -> None:
    (event,) = router.wait_for_audit("routed", 1, timeout=60)
    assert event["status"] == status
    assert "BytesLengthException" in event["detail"]  # the audit trail has the whole error
    held = list((router.spool_dir / "unroutable").glob("*.dcm"))
    assert len(held) == 1
    assert list((router.spool_dir / "incoming").rglob("*.dcm")) == []  # nor a changed copy
    metrics = router.http("/metrics")[1]
    assert f'dicom_router_instances_unroutable_total{{reason="{status}"}} 1.0' in metrics
    assert redis_server.client().hlen(INBOX) == 0  # settled: not routed again
    log = router.log_text()
    assert "instance set aside in unroutable/" in log
    assert "LEAK" not in log


def test_condition_on_an_unreadable_value_sets_the_instance_aside(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP
) -> None:
    rules = """
rules:
  - name: heads
    match: {SeriesDescription: {contains: HEAD}}
    forward: [capture]
"""
    (plain,) = write_ct_series(tmp_path / "ct", 1, rows=16, cols=16)
    bad = mislabelled_as_ul(plain, tmp_path / "bad.dcm", SERIES_DESCRIPTION, "LO", "LEAK^NAME ")
    router = _router(tmp_path, redis_server, capture, rules)
    try:
        assert store_file_as_is(router.port, bad) == 0x0000  # accepted: now it must not be lost
        _assert_set_aside(router, redis_server, "unroutable")
        assert capture.received() == []
    finally:
        router.stop()


def test_action_on_an_unreadable_value_sets_the_instance_aside(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP
) -> None:
    """De-identification reads every element; the private one cannot be read."""
    rules = """
rules:
  - name: research
    actions: [{deidentify: basic}]
    forward: [capture]
"""
    (plain,) = write_ct_series(tmp_path / "ct", 1, rows=16, cols=16)
    bad = mislabelled_as_ul(plain, tmp_path / "bad.dcm", PRIVATE_VALUE, "LO", "LEAK^NAME ")
    router = _router(tmp_path, redis_server, capture, rules)
    try:
        assert store_file_as_is(router.port, bad) == 0x0000
        _assert_set_aside(router, redis_server, "unroutable")
        assert capture.received() == []
    finally:
        router.stop()
