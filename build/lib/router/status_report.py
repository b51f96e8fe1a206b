"""What ``dicom-router status`` shows: the state of every destination, read from Redis.

An operator at 2 a.m. wants one table: for each destination, how much is waiting,
how much is in the retry schedule, what was delivered in the last hour, what is
dead-lettered, whether its circuit is open, and how long the oldest instance has
been waiting. Everything is read from the shared Redis state, so the command
works from any host of the installation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import redis

from router.circuit import PREFIX as CIRCUIT_PREFIX
from router.deadletters import DeadLetters
from router.deliveries import PREFIX as DELIVERY_PREFIX
from router.deliveries import delivered_log_key, waiting_since
from router.retries import MOVING, SCHEDULED


@dataclass
class DestinationStatus:
    name: str
    waiting: int = 0
    """Instances this destination still owes, in the queue or being sent."""
    retrying: int = 0
    """Of those, deliveries waiting in the retry schedule."""
    delivered_last_hour: int = 0
    dead_letters: int = 0
    circuit_open: bool = False
    oldest_waiting_s: float | None = None


@dataclass
class StatusReport:
    queues: dict[str, int]
    destinations: list[DestinationStatus]
    workers: list[str] = field(default_factory=list)
    ruleset_version: str | None = None

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def as_table(self) -> str:
        lines = [
            f"ruleset version: {self.ruleset_version or 'no valid ruleset'}",
            f"workers seen: {', '.join(self.workers) if self.workers else 'none'}",
            "queues: " + ", ".join(f"{q} {n}" for q, n in self.queues.items()),
            "",
            f"{'destination':20} {'waiting':>8} {'retrying':>9} {'last hour':>10} "
            f"{'dead':>6} {'circuit':>8} {'oldest waiting':>15}",
        ]
        for d in self.destinations:
            oldest = "-" if d.oldest_waiting_s is None else _duration(d.oldest_waiting_s)
            lines.append(
                f"{d.name:20} {d.waiting:>8} {d.retrying:>9} {d.delivered_last_hour:>10} "
                f"{d.dead_letters:>6} {'OPEN' if d.circuit_open else 'closed':>8} {oldest:>15}"
            )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def collect(
    client: redis.Redis, destinations: Iterable[str], queues: Iterable[str]
) -> StatusReport:
    """Read the per-destination state; workers and ruleset are filled in by the caller."""
    now = time.time()
    status = {name: DestinationStatus(name) for name in destinations}
    for key in client.scan_iter(f"{DELIVERY_PREFIX}pending:*", count=1000):
        raw: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
        for dest_raw, value_raw in raw.items():
            dest, value = dest_raw.decode(), value_raw.decode()
            entry = status.setdefault(dest, DestinationStatus(dest))
            if value.startswith("dead-"):
                continue  # counted from the dead-letter store
            entry.waiting += 1
            since = waiting_since(value)
            if since is not None:
                age = now - since
                if entry.oldest_waiting_s is None or age > entry.oldest_waiting_s:
                    entry.oldest_waiting_s = age
    for raw_entry in [*client.zrange(SCHEDULED, 0, -1), *client.lrange(MOVING, 0, -1)]:
        dest = str(json.loads(raw_entry).get("destination", ""))
        status.setdefault(dest, DestinationStatus(dest)).retrying += 1
    for dest, count in DeadLetters(client).counts().items():
        status.setdefault(dest, DestinationStatus(dest)).dead_letters = max(0, count)
    for entry in status.values():
        entry.delivered_last_hour = int(
            client.zcount(delivered_log_key(entry.name), now - 3600, "+inf")
        )
        open_until = client.hget(CIRCUIT_PREFIX + entry.name, "open_until")
        entry.circuit_open = open_until is not None and float(open_until) > now
    depths = {q: int(client.llen(q)) for q in queues}
    return StatusReport(depths, sorted(status.values(), key=lambda d: d.name))
