"""Instances the SCP acknowledged whose route task has not finished yet.

The SCP records each instance here (spool key -> the route task's arguments) in the
same transaction that queues its route task (``router.admission``), and the route
task removes the record once it has queued or made every delivery. A route task
message can be lost in the broker when a worker is killed at the wrong moment
(between Redis handing the message over and recording it as unacknowledged); the
record survives, and ``router.stalled`` queues the route task again from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import redis

from router.deliveries import PREFIX

INBOX = PREFIX + "inbox"


class Inbox:
    """The Redis hash of acknowledged, not yet routed instances."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, spool_key: str, meta: dict[str, Any]) -> None:
        self.redis.hset(INBOX, spool_key, json.dumps(meta))

    def touch(self, spool_key: str, meta: dict[str, Any], now: float) -> None:
        """The route task was queued again at ``now``: not lost before that."""
        self.add(spool_key, {**meta, "requeued_at": now})

    def done(self, spool_key: str) -> None:
        self.redis.hdel(INBOX, spool_key)

    @staticmethod
    def done_in(spool_key: str) -> Callable[[Any], None]:
        """``done`` as a step of someone else's Redis transaction (a pipeline)."""

        def step(pipe: Any) -> None:
            pipe.hdel(INBOX, spool_key)

        return step

    def entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for raw_key, raw_meta in self.redis.hscan_iter(INBOX, count=500):
            yield raw_key.decode(), json.loads(raw_meta)
