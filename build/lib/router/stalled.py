"""Deliveries and instances whose task was lost are queued again.

A forward task can vanish when the broker dies at the wrong moment: Celery and
kombu hand an in-flight message back to Redis on a lost connection, and that
hand-back can itself be lost. The delivery's pending entry and its task arguments
(``dr:pending:*``, ``dr:task:*``) are written before the task is queued, so they
survive it. A periodic sweep queues again every delivery that

- is neither dead-lettered nor waiting in the retry schedule (its entry says
  ``retry@<due>`` until then),
- has shown no progress for longer than any task may take (twice the broker
  visibility timeout), and
- cannot still be waiting in the forward queue: the queue is empty, or the
  instance at its head was received after this delivery began.

A second task for a delivery that was in fact made is harmless: the delivery
record turns it into a no-op. The same holds one step earlier for route tasks:
an acknowledged instance stays in the inbox (router/inbox.py) until its route task
has finished, and one that stays longer than a task may take, and cannot still be
waiting in the route queue, is routed again. One sweeper runs at a time across all
hosts.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from router import metrics
from router.deliveries import PREFIX, Deliveries, pending_key
from router.inbox import Inbox
from router.logs import get_logger
from router.queue import FORWARD_QUEUE, ROUTE_QUEUE, enqueue_forward, enqueue_route

log = get_logger(__name__)

SWEEP_LOCK = PREFIX + "stalled-sweep"


@dataclass(frozen=True)
class Stalled:
    spool_key: str
    destination: str
    since: float


def stalled_entries(
    client: redis.Redis, now: float, older_than: float, queue_head_received: float | None
) -> Iterator[Stalled]:
    """Pending deliveries matching the rules in the module docstring."""
    prefix = pending_key("")
    for raw_key in client.scan_iter(match=prefix + "*", count=500):
        spool_key = raw_key.decode()[len(prefix) :]
        entries: dict[bytes, bytes] = client.hgetall(raw_key)  # type: ignore[assignment]
        for raw_dest, raw_value in entries.items():
            state, _, stamp = raw_value.decode().partition("@")
            if state.startswith("dead-"):
                continue
            try:
                since = float(stamp)
            except ValueError:
                continue
            if since > now - older_than:
                continue
            if queue_head_received is not None and queue_head_received <= since:
                continue  # its task may still be in the queue, behind the head
            yield Stalled(spool_key, raw_dest.decode(), since)


def queue_head_received(
    client: redis.Redis, queue: str = FORWARD_QUEUE, meta_arg: int = 2
) -> float | None:
    """When the instance of the oldest queued forward task was received.

    None when the queue is empty. A message that cannot be read counts as
    received now, so nothing is taken for stalled while it waits.
    """
    raw = client.lindex(queue, -1)  # kombu pushes left and pops right
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        received = body[0][meta_arg].get("received_at")
        return float(received) if received is not None else time.time()
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return time.time()


def lost_routes(
    inbox: Inbox, now: float, older_than: float, queue_head: float | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Inbox entries whose route task cannot be pending any more (module docstring)."""
    for spool_key, meta in inbox.entries():
        received = meta.get("received_at")
        if not isinstance(received, int | float):
            continue
        last_queued = max(received, float(meta.get("requeued_at") or 0))
        if last_queued > now - older_than:
            continue
        if queue_head is not None and queue_head <= received:
            continue
        yield spool_key, meta


def requeue_stalled(
    client: redis.Redis, deliveries: Deliveries, inbox: Inbox, older_than: float
) -> int:
    """Queue again every lost route task and stalled delivery; returns how many.
    One sweeper at a time."""
    if not client.set(SWEEP_LOCK, "1", nx=True, ex=max(30, int(older_than))):
        return 0
    try:
        head = queue_head_received(client, ROUTE_QUEUE, meta_arg=1)
        routed = list(lost_routes(inbox, time.time(), older_than, head))
        for spool_key, route_meta in routed:
            inbox.touch(spool_key, route_meta, time.time())
            enqueue_route(spool_key, route_meta)
            metrics.instances_resumed.inc()
            log.warning("instance without a route task queued again", spool_key=spool_key,
                        waited_s=round(time.time() - route_meta["received_at"]))  # fmt: skip
        head = queue_head_received(client)
        found = list(stalled_entries(client, time.time(), older_than, head))
        resumed = 0
        for entry in found:
            meta = deliveries.task_meta(entry.spool_key, entry.destination)
            if meta is None:
                log.warning("stalled delivery without recorded task; left as it is",
                            spool_key=entry.spool_key, destination=entry.destination)  # fmt: skip
                continue
            deliveries.requeued(entry.spool_key, entry.destination, meta)
            enqueue_forward(entry.spool_key, entry.destination, meta, attempt=1)
            metrics.deliveries_resumed.labels(entry.destination).inc()
            log.warning("stalled delivery queued again", spool_key=entry.spool_key,
                        destination=entry.destination,
                        stalled_s=round(time.time() - entry.since))  # fmt: skip
            resumed += 1
        return resumed + len(routed)
    finally:
        client.delete(SWEEP_LOCK)
