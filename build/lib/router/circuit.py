"""A circuit breaker per destination, shared by every worker through Redis.

When a destination stops answering at all (refused or dropped connections,
timeouts), every queued delivery to it would otherwise spend a connection attempt
and a worker's time failing, crowding out deliveries to destinations that work.
After a few such failures in a row the circuit opens: deliveries to that
destination go back into the retry schedule until the circuit's cool-down ends,
without trying and without using up their attempts. Then exactly one delivery
probes; success closes the circuit, failure opens it again for longer.

DIMSE failure statuses (e.g. 0xA700 from a PACS that is up but full) do not open
the circuit: the destination is reachable, and each delivery's own backoff applies.
"""

from __future__ import annotations

import time

import redis

PREFIX = "dr:circuit:"
PROBE_PREFIX = "dr:circuit-probe:"
OPEN_AFTER = 3
"""Consecutive connection-level failures that open the circuit."""
FIRST_COOL_DOWN_S = 2.0
MAX_COOL_DOWN_S = 30.0
CLOSED_RECHECK_S = 0.5
"""How long a process trusts having seen no circuit record before asking Redis again:
a circuit another worker opens applies here at most this much later."""


class Circuits:
    """Circuit state for all destinations."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._maybe_open: set[str] = set()
        """Destinations this process saw with a circuit record (to close it on success)."""
        self._closed_until: dict[str, float] = {}
        """Destination -> until when (monotonic) its circuit is taken as closed unasked."""

    def blocked_for(self, destination: str, probe_timeout_s: float) -> float:
        """0 if a delivery may try now; else seconds to wait before asking again."""
        if time.monotonic() < self._closed_until.get(destination, 0.0):
            return 0.0  # a busy destination costs no round trip per delivery
        raw = self.redis.hget(PREFIX + destination, "open_until")
        if raw is None:
            self._closed_until[destination] = time.monotonic() + CLOSED_RECHECK_S
            return 0.0
        self._maybe_open.add(destination)
        wait = float(raw) - time.time()
        if wait > 0:
            return wait
        # Cool-down over: one delivery probes, the others wait for its outcome.
        elected = self.redis.set(
            PROBE_PREFIX + destination, "1", nx=True, px=int(probe_timeout_s * 1000)
        )
        return 0.0 if elected else 1.0

    def failed(self, destination: str) -> None:
        """A connection-level failure; opens (or re-opens) the circuit past the threshold."""
        key = PREFIX + destination
        self._maybe_open.add(destination)
        self._closed_until.pop(destination, None)
        failures = int(self.redis.hincrby(key, "failures", 1))
        if failures >= OPEN_AFTER:
            opens = failures - OPEN_AFTER
            cool_down = min(MAX_COOL_DOWN_S, FIRST_COOL_DOWN_S * 2 ** min(opens, 10))
            self.redis.hset(key, "open_until", time.time() + cool_down)
            self.redis.delete(PROBE_PREFIX + destination)

    def succeeded(self, destination: str) -> None:
        """The destination answered: close the circuit (a Redis call only if one was seen)."""
        if destination in self._maybe_open:
            self._maybe_open.discard(destination)
            self.redis.delete(PREFIX + destination, PROBE_PREFIX + destination)
