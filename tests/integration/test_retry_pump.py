"""router.retries: the pump survives a queue that fails, and strands nothing.

Queueing a forward task goes through kombu, whose errors are not Redis's: a pump
that stopped at the first of them would leave this process's retries unsent until
a restart. Real Redis; the enqueue function stands in for kombu's.
"""

from __future__ import annotations

import threading
from typing import Any

import kombu.exceptions
import pytest

from router.retries import MOVING, SCHEDULED, RetrySchedule, run_pump
from tests.support.router_proc import RedisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


class FlakyQueue:
    """Refuses the first ``failures`` tasks with kombu's error, then takes them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.queued: list[tuple[str, str, int]] = []

    def __call__(self, key: str, destination: str, meta: dict[str, Any], attempt: int) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise kombu.exceptions.OperationalError("connection to broker lost")
        self.queued.append((key, destination, attempt))


def test_entries_that_could_not_be_queued_are_due_again(redis_server: RedisServer) -> None:
    client = redis_server.client()
    schedule = RetrySchedule(client)
    for n in range(3):
        schedule.schedule(f"key{n}", "pacs", {}, attempt=2, delay_s=0)
    queue = FlakyQueue(failures=1)
    with pytest.raises(kombu.exceptions.OperationalError):
        schedule.pump(queue)
    assert client.llen(MOVING) == 0
    assert client.zcard(SCHEDULED) == 3
    assert schedule.pump(queue) == 3
    assert sorted(queue.queued) == [(f"key{n}", "pacs", 2) for n in range(3)]


def test_pump_goes_on_after_a_queue_error(redis_server: RedisServer) -> None:
    client = redis_server.client()
    schedule = RetrySchedule(client)
    schedule.schedule("key", "pacs", {}, attempt=3, delay_s=0)
    queue = FlakyQueue(failures=2)
    errors: list[Exception] = []
    stop = threading.Event()
    pump = threading.Thread(target=run_pump, args=(schedule, queue, stop, errors.append))
    pump.start()
    try:
        wait_until(lambda: bool(queue.queued), timeout=10, what="the retry queued")
    finally:
        stop.set()
        pump.join(timeout=5)
    assert queue.queued == [("key", "pacs", 3)]
    assert [type(e) for e in errors] == [kombu.exceptions.OperationalError] * 2
    assert client.llen(MOVING) == 0 and client.zcard(SCHEDULED) == 0
    assert not pump.is_alive()
