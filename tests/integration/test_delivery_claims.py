"""One sender at a time per delivery: two tasks for one delivery running at once
send it once.

Two forward tasks for one delivery run at once when a task is redelivered while the
first is still sending (it outlived the visibility timeout, or its route task ran
again) or when the same content arrives twice. The delivery record is written only
after a send, so both would find none; the claim taken before sending makes the
second look again later, when the record answers. Two runtimes stand for two
worker processes; the destination takes 1.5 s per store, so the sends overlap.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydicom import dcmread

from router.config import load_config
from router.deliver import deliver, digest_of
from router.deliveries import delivered_key, pending_key
from router.retries import SCHEDULED
from router.runtime import Runtime, build_runtime
from tests.support.capture_scp import CaptureSCP
from tests.support.router_proc import RedisServer, write_config
from tests.support.synthetic import write_ct_series

pytestmark = pytest.mark.integration


@pytest.fixture()
def slow_destination() -> Iterator[CaptureSCP]:
    with CaptureSCP(extra_args=("--store-delay", "1.5")) as scp:
        yield scp


def _workers(tmp_path: Path, redis_server: RedisServer, sink: CaptureSCP) -> list[Runtime]:
    dest = {"pacs": {"ae_title": sink.ae_title, "host": "127.0.0.1", "port": sink.port}}
    path, _config = write_config(tmp_path / "router", redis_server.url, dest,
                                 "rules:\n  - name: all\n    forward: [pacs]\n")  # fmt: skip
    runtimes = [build_runtime(load_config(path)) for _ in range(2)]
    runtimes[0].spool.ensure()
    return runtimes


def test_two_tasks_for_one_delivery_send_it_once(
    tmp_path: Path, redis_server: RedisServer, slow_destination: CaptureSCP
) -> None:
    first, second = _workers(tmp_path, redis_server, slow_destination)
    (ct,) = write_ct_series(tmp_path / "ct", 1, rows=16, cols=16, seed=41)
    key = first.spool.write_bytes(ct.read_bytes())
    uid = str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
    meta = {"sop_instance_uid": uid, "rule": "all", "send_key": key}
    first.deliveries.expect(key, ["pacs"], tasks={"pacs": meta})

    tasks = [threading.Thread(target=deliver, args=(rt, key, "pacs", meta, 1))
             for rt in (first, second)]  # fmt: skip
    for task in tasks:
        task.start()
    for task in tasks:
        task.join(timeout=30)

    assert slow_destination.sop_instance_uids() == [uid]  # once
    # The task that found the delivery being sent looks again later, not as an attempt:
    client = redis_server.client()
    (entry,) = client.zrange(SCHEDULED, 0, -1)
    assert b'"attempt": 1' in entry
    # By then the first has booked it: the second finds the record and sends nothing.
    assert not client.exists(pending_key(key))
    deliver(second, key, "pacs", meta, 1)
    assert slow_destination.sop_instance_uids() == [uid]
    audit = [json.loads(line) for line in first.cfg.audit.file.read_text().splitlines()]
    assert [e["event"] for e in audit] == ["forwarded"]  # no failure, no second send
    for rt in (first, second):
        rt.pool.close_all()


def test_a_delivery_whose_event_cannot_be_written_is_not_sent_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The audit trail's disk is full: the delivery is still recorded (the record, not
    the event, keeps it from being sent again), and the failure is counted."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    with CaptureSCP() as sink:
        dest = {"pacs": {"ae_title": sink.ae_title, "host": "127.0.0.1", "port": sink.port}}
        path, _config = write_config(tmp_path / "router", redis_server.url, dest,
                                     "rules:\n  - name: all\n    forward: [pacs]\n",
                                     audit={"file": str(blocker / "audit.jsonl")})  # fmt: skip
        rt = build_runtime(load_config(path))
        rt.spool.ensure()
        (ct,) = write_ct_series(tmp_path / "ct", 1, rows=16, cols=16, seed=42)
        key = rt.spool.write_bytes(ct.read_bytes())
        uid = str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
        meta = {"sop_instance_uid": uid, "rule": "all", "send_key": key}
        rt.deliveries.expect(key, ["pacs"], tasks={"pacs": meta})
        failures = REGISTRY.get_sample_value("dicom_router_audit_write_failures_total") or 0.0

        deliver(rt, key, "pacs", meta, 1)  # does not raise: the task is done
        assert sink.sop_instance_uids() == [uid]
        assert REGISTRY.get_sample_value("dicom_router_audit_write_failures_total") == (
            failures + 1
        )
        client = redis_server.client()
        assert not client.exists(pending_key(key))  # booked, and the file released
        assert client.exists(delivered_key("pacs", uid, digest_of(ct)))  # a rerun finds it
        rt.pool.close_all()
