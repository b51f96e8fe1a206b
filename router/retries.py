"""Delayed retries kept in Redis, not in workers.

A Celery countdown task on Redis is handed to a worker at once and held there,
unacknowledged, until it is due; the broker's visibility timeout must then exceed
the longest retry delay, and work held by a worker that is killed comes back only
after that long. Instead, a failed delivery is written to a sorted set scored by
when it is due, and a small pump (run by every ``serve`` and ``worker`` process)
moves due entries onto the forward queue. The visibility timeout then only has to
cover one task's run time, so a killed worker's tasks return within minutes.

Moving is atomic (a Lua script moves due entries into a "moving" list in one step);
an entry is removed from that list only after its forward task is queued, and a
pump that starts finds and re-queues what a crashed pump left there. A delivery
queued twice this way is still sent once: forward tasks check the delivery record.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

SCHEDULED = "dr:retry"
MOVING = "dr:retry-moving"
PUMP_INTERVAL_S = 0.5
BATCH = 200

_MOVE_DUE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, item in ipairs(items) do
  redis.call('ZREM', KEYS[1], item)
  redis.call('RPUSH', KEYS[2], item)
end
return items
"""

Enqueue = Callable[[str, str, dict[str, Any], int], None]
"""(spool key, destination, meta, attempt) -> queue a forward task"""


class RetrySchedule:
    """The shared schedule of delayed deliveries."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._move = client.register_script(_MOVE_DUE)

    def schedule(
        self, key: str, destination: str, meta: dict[str, Any], attempt: int, delay_s: float
    ) -> None:
        entry = {"id": uuid.uuid4().hex, "key": key, "destination": destination,
                 "meta": meta, "attempt": attempt}  # fmt: skip
        self.redis.zadd(SCHEDULED, {json.dumps(entry): time.time() + delay_s})

    def pump(self, enqueue: Enqueue, now: float | None = None) -> int:
        """Queue every due retry; returns how many were queued."""
        due = self._move(keys=[SCHEDULED, MOVING], args=[now or time.time(), BATCH])
        return self._enqueue_all([raw for raw in due], enqueue)

    def recover(self, enqueue: Enqueue) -> int:
        """Re-queue entries a crashed pump moved but never queued."""
        return self._enqueue_all(self.redis.lrange(MOVING, 0, -1), enqueue)  # type: ignore[arg-type]

    def _enqueue_all(self, raws: list[bytes], enqueue: Enqueue) -> int:
        for done, raw in enumerate(raws):
            entry = json.loads(raw)
            try:
                enqueue(entry["key"], entry["destination"], entry["meta"], int(entry["attempt"]))
            except Exception:
                self._put_back(raws[done:])
                raise
            self.redis.lrem(MOVING, 1, raw)  # type: ignore[arg-type]
        return len(raws)

    def _put_back(self, raws: list[bytes]) -> None:
        """Entries that could not be queued are due again at once, not stranded in the
        moving list until a pump starts (Redis answers while the queue does not: a
        kombu error, say). If Redis does not answer either, they stay there."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(SCHEDULED, dict.fromkeys(raws, time.time()))
        for raw in raws:
            pipe.lrem(MOVING, 1, raw)  # type: ignore[arg-type]
        pipe.execute()


def run_pump(
    schedule: RetrySchedule,
    enqueue: Enqueue,
    stop: threading.Event,
    on_error: Callable[[Exception], None],
) -> None:
    """Pump until ``stop`` is set; every error is reported and the pump goes on.

    Any error, not only Redis's: queueing goes through kombu, whose errors are its
    own, and a pump thread that died would leave every retry of this process's
    share unsent until a restart, with no delivery ever reaching its last attempt.
    """
    try:
        schedule.recover(enqueue)
    except Exception as exc:
        on_error(exc)
    while not stop.wait(PUMP_INTERVAL_S):
        try:
            schedule.pump(enqueue)
        except Exception as exc:
            on_error(exc)


def start_pump_thread(
    schedule: RetrySchedule, enqueue: Enqueue, on_error: Callable[[Exception], None]
) -> threading.Event:
    """Run the pump in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(
        target=run_pump, args=(schedule, enqueue, stop, on_error), name="retry-pump", daemon=True
    ).start()
    return stop
