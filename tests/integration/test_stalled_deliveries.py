"""Deliveries whose forward task was lost are found in Redis and queued again; nothing
else is: not dead letters, not scheduled retries, not tasks still waiting their turn."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from router import tasks
from router.config import load_config
from router.deliveries import Deliveries, pending_key
from router.inbox import INBOX, Inbox
from router.queue import configure
from router.runtime import build_runtime
from router.spool import Spool, SpoolError
from router.stalled import queue_head_received, stalled_entries
from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.ports import free_port
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import write_ct_series
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0
OLDER_THAN = 600.0


def _message(received_at: float) -> bytes:
    """A forward task message as kombu stores it in the queue's list."""
    body = [["key", "pacs", {"received_at": received_at}], {"attempt": 1}, {}]
    return json.dumps({"body": base64.b64encode(json.dumps(body).encode()).decode()}).encode()


def test_only_lost_deliveries_are_stalled(redis_server: RedisServer) -> None:
    client = redis_server.client()
    deliveries = Deliveries(client)
    meta = {"sop_instance_uid": "1.2.3", "rule": "all", "send_key": "k-lost"}
    deliveries.expect("k-lost", ["pacs", "archive"], NOW - 3600, {"pacs": meta, "archive": meta})
    deliveries.expect("k-recent", ["pacs"], NOW - 10, {"pacs": meta})
    deliveries.expect("k-retrying", ["pacs"], NOW - 3600, {"pacs": meta})
    deliveries.retrying("k-retrying", "pacs", NOW + 60)
    deliveries.expect("k-dead", ["pacs"], NOW - 3600, {"pacs": meta})
    client.hset("dr:pending:k-dead", "pacs", f"dead-abc@{NOW - 3000}")

    found = {(s.spool_key, s.destination) for s in stalled_entries(client, NOW, OLDER_THAN, None)}
    assert found == {("k-lost", "pacs"), ("k-lost", "archive")}
    assert deliveries.task_meta("k-lost", "pacs") == meta

    # A queue whose head was received before the lost delivery may still hold its task.
    head = NOW - 7200
    assert list(stalled_entries(client, NOW, OLDER_THAN, head)) == []
    # One received after it cannot be ahead of it.
    assert len(list(stalled_entries(client, NOW, OLDER_THAN, NOW - 60))) == 2

    # Delivered: forgotten, task record included.
    assert deliveries.delivered("k-lost", "pacs", "1.2.3", "digest") is None  # archive waits
    assert deliveries.task_meta("k-lost", "pacs") is None
    found = {(s.spool_key, s.destination) for s in stalled_entries(client, NOW, OLDER_THAN, None)}
    assert found == {("k-lost", "archive")}


def test_queue_head_is_read_from_the_forward_list(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert queue_head_received(client) is None
    client.lpush("forward", _message(NOW - 100))  # the oldest: popped first, from the right
    client.lpush("forward", _message(NOW - 5))
    assert queue_head_received(client) == NOW - 100
    client.delete("forward")
    client.lpush("forward", b"not json")
    assert queue_head_received(client) == pytest.approx(time.time(), abs=5)


@contextlib.contextmanager
def router_with_one_destination(
    tmp_path: Path, redis_server: RedisServer, seed: int
) -> Iterator[tuple[RouterProcess, CaptureSCP, Spool, str, str]]:
    """A router forwarding everything to a capture SCP, and one CT already in its spool
    (spool key, SOP Instance UID) that no task knows about."""
    with CaptureSCP() as capture:
        dest = {"pacs": {"ae_title": capture.ae_title, "host": "127.0.0.1", "port": capture.port}}
        path, config = write_config(tmp_path / "router", redis_server.url, dest,
                                    "rules:\n  - name: all\n    forward: [pacs]\n",
                                    broker_visibility_timeout="5s")  # fmt: skip
        router = start_router(path, config)
        try:
            (ct,) = write_ct_series(tmp_path / "ct", 1, rows=64, cols=64, seed=seed)
            spool = Spool(router.spool_dir)
            key = spool.write_bytes(ct.read_bytes())
            uid = str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
            yield router, capture, spool, key, uid
        finally:
            router.stop()


def test_router_resumes_a_delivery_whose_task_was_lost(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The state a lost task leaves: a spooled instance, its pending entry and task
    arguments in Redis, no message in any queue. The router delivers it anyway."""
    with router_with_one_destination(tmp_path, redis_server, 31) as (router, capture, spool,
                                                                     key, uid):  # fmt: skip
        meta = {"sop_instance_uid": uid, "rule": "all", "send_key": key,
                "received_at": time.time() - 60}  # fmt: skip
        Deliveries(redis_server.client()).expect(key, ["pacs"], time.time() - 60,
                                                  {"pacs": meta})  # fmt: skip
        capture.wait_for_count(1, timeout=60)
        assert capture.sop_instance_uids() == [uid]
        wait_until(lambda: not spool.path(key).exists(), 30, "the spool file released")
        _status, text = router.http("/metrics")
        assert 'dicom_router_deliveries_resumed_total{destination="pacs"} 1.0' in text


def test_router_routes_an_acknowledged_instance_whose_route_task_was_lost(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """What a route task message lost in the broker leaves: a spooled instance in the
    inbox and no message anywhere. The router routes and delivers it anyway."""
    with router_with_one_destination(tmp_path, redis_server, 32) as (router, capture, _spool,
                                                                     key, uid):  # fmt: skip
        meta = {"sop_instance_uid": uid, "calling_ae": "CT01", "called_ae": "ROUTER",
                "peer": "127.0.0.1:1", "received_at": time.time() - 60}  # fmt: skip
        Inbox(redis_server.client()).add(key, meta)
        capture.wait_for_count(1, timeout=60)
        assert capture.sop_instance_uids() == [uid]
        wait_until(lambda: not redis_server.client().hexists(INBOX, key), 30, "inbox cleared")
        _status, text = router.http("/metrics")
        assert "dicom_router_instances_resumed_total 1.0" in text
        (routed,) = router.audit_events("routed")
        assert routed["sop_instance_uid"] == uid and routed["calling_ae"] == "CT01"


def test_the_scp_records_each_instance_until_it_is_routed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Nothing is routed (no worker): every acknowledged instance waits in the inbox."""
    dest = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 9}}
    path, config = write_config(tmp_path / "router", redis_server.url, dest,
                                "rules:\n  - name: all\n    forward: [pacs]\n")  # fmt: skip
    router = start_router(path, config, workers=0)
    try:
        files = write_ct_series(tmp_path / "ct", 3, rows=32, cols=32, seed=33)
        assert storescu(files, router.port).returncode == 0
        recorded = {meta["sop_instance_uid"] for _key, meta in
                    Inbox(redis_server.client()).entries()}  # fmt: skip
        assert recorded == {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    finally:
        router.stop()


def test_a_delivery_routed_late_is_not_taken_for_stalled(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """An instance received long ago (a backlog after a worker outage) but routed just
    now has made progress: the sweep must not queue its delivery again while it is
    being sent, or the destination gets it twice. Stalled counts from the routing."""
    dest = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}}
    path, _config = write_config(tmp_path / "router", redis_server.url, dest,
                                 "rules:\n  - name: all\n    forward: [pacs]\n")  # fmt: skip
    rt = build_runtime(load_config(path))
    rt.spool.ensure()
    configure(rt.cfg)
    (ct,) = write_ct_series(tmp_path / "ct", 1, rows=16, cols=16, seed=33)
    key = rt.spool.write_bytes(ct.read_bytes())
    received_long_ago = time.time() - 10 * OLDER_THAN
    meta = {"sop_instance_uid": str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID),
            "calling_ae": "CT01", "called_ae": "ROUTER", "peer": "127.0.0.1:1",
            "received_at": received_long_ago}  # fmt: skip
    tasks._route(rt, key, meta)
    client = redis_server.client()
    assert client.hexists(pending_key(key), "pacs")
    # Even with no queue to hide behind (a direct send is never queued):
    assert list(stalled_entries(client, time.time(), OLDER_THAN, None)) == []
    later = time.time() + 2 * OLDER_THAN
    assert [s.spool_key for s in stalled_entries(client, later, OLDER_THAN, None)] == [key]


def test_a_worker_without_the_spool_keeps_the_instance_in_the_inbox(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A worker whose spool volume is not mounted sees no file for any key. Taking
    that for "already delivered and released" would drop every instance it routes."""
    dest = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}}
    path, _config = write_config(tmp_path / "router", redis_server.url, dest,
                                 "rules:\n  - name: all\n    forward: [pacs]\n",
                                 spool={"dir": str(tmp_path / "not-mounted")})  # fmt: skip
    rt = build_runtime(load_config(path))
    key = "0123456789abcdef0123456789abcdef"
    meta = {"sop_instance_uid": "1.2.3", "received_at": time.time()}
    Inbox(redis_server.client()).add(key, meta)
    with pytest.raises(SpoolError, match="spool not found"):
        tasks._route(rt, key, meta)
    assert redis_server.client().hexists(INBOX, key)
