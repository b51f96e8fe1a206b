"""router.deliver: a delivery already made waits out a short Redis outage to be recorded.

Handing the task back instead would run it again, and once its claim had lapsed
it would send the instance a second time. The recording function stands in for
Redis here: what is tested is the waiting, not Redis.
"""

from __future__ import annotations

import time

import pytest
import redis

from router import deliver


class Outage:
    """Raises Redis's connection error ``failures`` times, then records."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> list[str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise redis.ConnectionError("Connection refused")
        return ["recorded"]


def test_a_short_outage_is_waited_out() -> None:
    outage = Outage(failures=2)
    started = time.monotonic()
    assert deliver._record_persistently(outage) == ["recorded"]
    assert outage.calls == 3
    assert 0.7 <= time.monotonic() - started < 3  # 0.25 s, then 0.5 s


def test_a_long_outage_hands_the_task_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deliver, "BOOKING_PATIENCE_S", 1.0)
    outage = Outage(failures=100)
    with pytest.raises(redis.ConnectionError):
        deliver._record_persistently(outage)
    assert 2 <= outage.calls <= 4


def test_other_errors_are_not_waited_on() -> None:
    def refused() -> None:
        raise redis.ResponseError("OOM command not allowed")

    with pytest.raises(redis.ResponseError):
        deliver._record_persistently(refused)
