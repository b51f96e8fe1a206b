"""The SCP's one-transaction admission, on a real Redis: the route task it queues is
read back by kombu exactly like one Celery's ``send_task`` queues, and its inbox
record is written with it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from router.admission import RouteAdmission
from router.inbox import INBOX
from router.queue import ROUTE_QUEUE, ROUTE_TASK
from tests.support.router_proc import RedisServer

pytestmark = pytest.mark.integration

META = {"sop_instance_uid": "1.2.3.4", "calling_ae": "CT1", "received_at": 1795731781.5}
VARYING = {"id", "root_id", "argsrepr", "origin"}
"""Headers that differ between any two messages (ids) or by design (repr, origin)."""


def read_back(url: str, count: int) -> list[Any]:
    """Take ``count`` messages off the route queue with kombu's own consumer."""
    with Connection(url) as connection:
        queue = connection.SimpleQueue(ROUTE_QUEUE)
        try:
            messages = [queue.get(timeout=5) for _ in range(count)]
            for message in messages:
                message.ack()
            return messages
        finally:
            queue.close()


def test_admitted_route_task_reads_back_like_one_sent_by_celery(
    redis_server: RedisServer,
) -> None:
    app = Celery("admission-test", broker=redis_server.url)
    app.conf.update(task_serializer="json", task_ignore_result=True)
    app.send_task(ROUTE_TASK, args=["sent", META], queue=ROUTE_QUEUE, retry=False)
    RouteAdmission(app, redis_server.client())("admitted", META)

    sent, admitted = read_back(redis_server.url, 2)

    assert admitted.payload == [["admitted", META], {}, sent.payload[2]]
    assert sent.payload[0] == ["sent", META]
    assert admitted.headers["task"] == ROUTE_TASK
    assert {k: v for k, v in admitted.headers.items() if k not in VARYING} == {
        k: v for k, v in sent.headers.items() if k not in VARYING
    }
    assert admitted.headers["argsrepr"] == "['admitted']"  # names the key, nothing else
    for name in ("content_type", "content_encoding", "delivery_info"):
        assert getattr(admitted, name) == getattr(sent, name), name
    assert admitted.properties.keys() == sent.properties.keys()
    assert admitted.properties["delivery_mode"] == sent.properties["delivery_mode"]


def test_admission_writes_the_inbox_record_with_the_task(redis_server: RedisServer) -> None:
    client = redis_server.client()
    app = Celery("admission-test", broker=redis_server.url)

    RouteAdmission(app, client)("k1", META)

    assert json.loads(client.hget(INBOX, "k1") or b"null") == META
    assert client.llen(ROUTE_QUEUE) == 1
