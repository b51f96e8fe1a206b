"""A destination's ``max_associations``, honoured across every worker on every host.

Each open association holds a lease in a Redis sorted set per destination, scored
by when the lease runs out. Taking a slot removes expired leases and adds one only
while fewer than the limit are held, in one Lua script; a worker renews its lease
while it uses the association and gives it back when it closes it. A worker that
dies simply stops renewing, and its slot is free again once the lease runs out.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import redis

PREFIX = "dr:slots:"
LEASE_S = 30.0

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  return 1
end
return 0
"""


class AssociationSlots:
    """This process's leases on destinations' association slots."""

    def __init__(self, client: redis.Redis, lease_s: float = LEASE_S) -> None:
        self.redis = client
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._acquire = client.register_script(_ACQUIRE)
        self._renewed: dict[str, float] = {}

    def acquire(self, destination: str, limit: int) -> bool:
        """Take (or keep) a slot; False when ``limit`` others hold one."""
        now = time.time()
        taken = self._acquire(
            keys=[PREFIX + destination], args=[now, self.holder, now + self.lease_s, limit]
        )
        if taken:
            self._renewed[destination] = time.monotonic()
        return bool(taken)

    def renew(self, destination: str) -> None:
        """Extend the lease while the association is in use (at most every third of it)."""
        last = self._renewed.get(destination, 0.0)
        if time.monotonic() - last > self.lease_s / 3:
            self.redis.zadd(PREFIX + destination, {self.holder: time.time() + self.lease_s})
            self._renewed[destination] = time.monotonic()

    def release(self, destination: str) -> None:
        self._renewed.pop(destination, None)
        self.redis.zrem(PREFIX + destination, self.holder)
