"""Delivery bookkeeping in Redis: which destinations an instance still waits for.

A spool file may be removed only once every destination chosen for it has it.
The route task records the chosen destinations in a hash; each successful
forward removes its own entry, atomically learning whether it was the last one.
A delivery record per (SOP Instance UID, destination, content hash) makes a
redelivered forward task a no-op instead of a second send. The record holds the
spool key of the reception it delivered: for a destination with
``resend_identical`` only a record of the same reception counts, so a redelivered
task still sends nothing while the same content received again (a deliberate
re-send from the modality) goes out again.

A delivery record is written only after the send, so two tasks for one delivery
running at once (a task redelivered while the first is still sending, a second
reception of the same content) would both find none and both send. Before it
sends, a task therefore claims the delivery (``dr:sending:...``, set only if
absent, with a lease of the broker's visibility timeout, the longest a task may
run); a task that finds the claim taken looks again a little later, by when the
record is written. The claim goes with the booking, or when the attempt fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import redis

from router.spool import Spool

PREFIX = "dr:"
DELIVERED_TTL_S = 7 * 24 * 3600


def pending_key(spool_key: str) -> str:
    return f"{PREFIX}pending:{spool_key}"


def task_key(spool_key: str) -> str:
    """Per destination, the forward task's arguments: enough to queue it again."""
    return f"{PREFIX}task:{spool_key}"


def derived_key(spool_key: str) -> str:
    return f"{PREFIX}derived:{spool_key}"


def delivered_log_key(destination: str) -> str:
    return f"{PREFIX}delivered-log:{destination}"


def waiting_since(value: str) -> float | None:
    """The time stamp recorded with a pending entry (``state@epoch``), if any."""
    _state, _, stamp = value.partition("@")
    try:
        return float(stamp) if stamp else None
    except ValueError:
        return None


def delivered_key(destination: str, sop_instance_uid: str, digest: str) -> str:
    return f"{PREFIX}delivered:{destination}:{sop_instance_uid}:{digest}"


def sending_key(destination: str, sop_instance_uid: str, digest: str) -> str:
    """The claim of the task sending this content to ``destination`` now."""
    return f"{PREFIX}sending:{destination}:{sop_instance_uid}:{digest}"


DELIVERED = "delivered"
"""``claim``: the destination has this content already; nothing to send."""
CLAIMED = "claimed"
"""``claim``: the caller holds the claim and sends."""
BUSY = "busy"
"""``claim``: another task holds the claim and is sending now."""

_CLAIM = """
local record = redis.call('GET', KEYS[1])
if record and (ARGV[3] == '' or record == ARGV[3]) then return 'delivered' end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'claimed' end
return 'busy'
"""

_FAIL_OVER = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Checks(NamedTuple):
    """What ``expect`` found for the deliveries it was asked to check and claim."""

    delivered: set[str]
    """Destinations that have the content already."""
    busy: set[str]
    """Destinations another task is sending the content to now."""


def _counts(record: object, reception: str | None) -> bool:
    """Whether a delivery record (its value: the spool key delivered) makes a send
    redundant; with ``reception``, only a record of that spool key does."""
    if record is None:
        return False
    return reception is None or record in (reception, reception.encode())


class Deliveries:
    """Redis-held delivery state shared by every worker."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._fail_over = client.register_script(_FAIL_OVER)

    def expect(
        self,
        spool_key: str,
        destinations: Iterable[str],
        since: float | None = None,
        tasks: Mapping[str, Mapping[str, Any]] | None = None,
        also: Callable[[Any], None] | None = None,
        check: Sequence[tuple[str, str, str]] = (),
        resend_identical: Collection[str] = (),
        claim: tuple[str, float] | None = None,
    ) -> Checks:
        """Record the destinations an instance must reach (idempotent), and since when.

        ``tasks`` (destination -> forward metadata) lets a delivery whose task was
        lost be queued again (router/stalled.py). ``also`` adds commands of the
        caller's to the same transaction (and round trip). ``check`` lists
        (destination, SOP Instance UID, digest) to look up as ``already_delivered``
        does (``resend_identical``: the destinations for which only a delivery of
        this same reception counts) and, with ``claim`` (token, lease in seconds), to
        claim for sending as ``claim`` does; returns which of them already have the
        instance and which another task is sending.
        """
        fields = {dest: f"queued@{since or time.time()}" for dest in destinations}
        if not fields:
            return Checks(set(), set())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(pending_key(spool_key), mapping=fields)  # type: ignore[arg-type]
        if tasks:
            encoded = {dest: json.dumps(meta) for dest, meta in tasks.items()}
            pipe.hset(task_key(spool_key), mapping=encoded)  # type: ignore[arg-type]
        if also is not None:
            also(pipe)
        for destination, sop_instance_uid, digest in check:
            if claim is None:
                pipe.get(delivered_key(destination, sop_instance_uid, digest))
            else:
                reception = spool_key if destination in resend_identical else None
                self._claim_in(pipe, destination, sop_instance_uid, digest, *claim, reception)
        results = pipe.execute()
        found = results[len(results) - len(check) :]
        if claim is not None:
            states = {
                dest: _text(state) for (dest, _u, _d), state in zip(check, found, strict=True)
            }
            return Checks({d for d, s in states.items() if s == DELIVERED},
                          {d for d, s in states.items() if s == BUSY})  # fmt: skip
        delivered = {
            dest
            for (dest, _uid, _digest), record in zip(check, found, strict=True)
            if _counts(record, spool_key if dest in resend_identical else None)
        }
        return Checks(delivered, set())

    def claim(
        self,
        destination: str,
        sop_instance_uid: str,
        digest: str,
        token: str,
        lease_s: float,
        reception: str | None = None,
    ) -> str:
        """Claim sending this content to ``destination``: DELIVERED (a record counts,
        see ``already_delivered``), CLAIMED (the caller's, for ``lease_s``) or BUSY."""
        state = self._claim_in(None, destination, sop_instance_uid, digest, token, lease_s,
                               reception)  # fmt: skip
        return _text(state)

    def _claim_in(
        self,
        pipe: Any,
        destination: str,
        sop_instance_uid: str,
        digest: str,
        token: str,
        lease_s: float,
        reception: str | None,
    ) -> Any:
        keys = [delivered_key(destination, sop_instance_uid, digest),
                sending_key(destination, sop_instance_uid, digest)]  # fmt: skip
        args: list[str | int] = [token, max(1, int(lease_s * 1000)), reception or ""]
        return self._claim(keys=keys, args=args, client=pipe)

    def release(self, destination: str, sop_instance_uid: str, digest: str, token: str) -> None:
        """Give up a claim the caller holds (the attempt failed); another's stays."""
        self._release(keys=[sending_key(destination, sop_instance_uid, digest)], args=[token])

    def is_pending(self, spool_key: str, destination: str) -> bool:
        """Whether the instance still waits for ``destination`` (queued, retrying or dead)."""
        return bool(self.redis.hexists(pending_key(spool_key), destination))

    def retrying(self, spool_key: str, destination: str, due: float) -> None:
        """The delivery waits in the retry schedule until ``due``: not stalled before."""
        self.redis.hset(pending_key(spool_key), destination, f"retry@{due}")

    def task_meta(self, spool_key: str, destination: str) -> dict[str, Any] | None:
        """The forward metadata recorded for a delivery, if any."""
        raw = self.redis.hget(task_key(spool_key), destination)
        return json.loads(raw) if raw else None

    def add_derived(self, spool_key: str, derived: str) -> None:
        """Remember a rule's changed copy, removed with the original once all are delivered."""
        self.redis.sadd(derived_key(spool_key), derived)

    def take_derived(self, spool_key: str) -> list[str]:
        """The changed copies of an instance (and forget them)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.smembers(derived_key(spool_key))
        pipe.delete(derived_key(spool_key))
        members: set[bytes] = pipe.execute()[0]
        return sorted(m.decode() for m in members)

    def already_delivered(
        self,
        destination: str,
        sop_instance_uid: str,
        digest: str,
        spool_key: str | None = None,
    ) -> bool:
        """True if this content reached ``destination`` before; with ``spool_key``,
        only a delivery of that same reception counts (``resend_identical``)."""
        record = self.redis.get(delivered_key(destination, sop_instance_uid, digest))
        return _counts(record, spool_key)

    def delivered(
        self, spool_key: str, destination: str, sop_instance_uid: str, digest: str
    ) -> list[str] | None:
        """Record one delivery; see ``delivered_many``."""
        return self.delivered_many(spool_key, [(destination, sop_instance_uid, digest)])

    def delivered_many(
        self,
        spool_key: str,
        deliveries: Sequence[tuple[str, str, str]],
        claim: str | None = None,
    ) -> list[str] | None:
        """Record deliveries of one instance: (destination, SOP Instance UID, digest) each.

        Returns None while other destinations still wait for the instance; after the
        last one, the instance's changed copies (usually none), which the caller
        releases with it (``release_instance``). One transaction, one round trip,
        however many destinations: a route task that sent to three records all three
        at once. ``claim``: the token of the claims the sends held, given up here.
        """
        pipe = self.redis.pipeline(transaction=True)
        now = time.time()
        for destination, sop_instance_uid, digest in deliveries:
            pipe.set(
                delivered_key(destination, sop_instance_uid, digest), spool_key, ex=DELIVERED_TTL_S
            )
            if claim is not None:
                self._release(keys=[sending_key(destination, sop_instance_uid, digest)],
                              args=[claim], client=pipe)  # fmt: skip
            pipe.hdel(pending_key(spool_key), destination)
            pipe.hdel(task_key(spool_key), destination)
            # For "delivered in the last hour" in `dicom-router status`.
            log_key = delivered_log_key(destination)
            pipe.zadd(log_key, {f"{spool_key}:{now}": now})
            pipe.zremrangebyscore(log_key, "-inf", now - 3600)
        pipe.hlen(pending_key(spool_key))
        pipe.smembers(derived_key(spool_key))
        results = pipe.execute()
        if int(results[-2]) != 0:
            return None
        derived: set[bytes] = results[-1]
        if derived:
            self.redis.delete(derived_key(spool_key))
        return sorted(member.decode() for member in derived)

    def fail_over(
        self, spool_key: str, destination: str, alternate: str, meta: Mapping[str, Any]
    ) -> bool:
        """The alternate now owes this instance instead of the exhausted destination.

        False, and nothing changed, when the alternate still owes this instance a
        delivery of its own (it is also a destination of its rules): a pending
        entry is one per destination name, and the one delivery booked first would
        clear both, releasing the file the other still needs.
        """
        taken = self._fail_over(
            keys=[pending_key(spool_key), task_key(spool_key)],
            args=[destination, alternate, f"alternate-of-{destination}@{time.time()}",
                  json.dumps(meta)],
        )  # fmt: skip
        return bool(taken)

    def requeued(self, spool_key: str, destination: str, meta: Mapping[str, Any]) -> None:
        """A dead letter (or a stalled delivery) goes back on the normal path."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(pending_key(spool_key), destination, f"queued@{time.time()}")
        pipe.hset(task_key(spool_key), destination, json.dumps(meta))
        pipe.execute()

    def drop(self, spool_key: str, destination: str) -> bool:
        """Forget a destination (purged dead letter); True if nothing else is pending."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(pending_key(spool_key), destination)
        pipe.hlen(pending_key(spool_key))
        pipe.hdel(task_key(spool_key), destination)
        return int(pipe.execute()[1]) == 0


def release_instance(
    deliveries: Deliveries,
    spool: Spool,
    key: str,
    retention_hours: float,
    derived: list[str] | None = None,
) -> None:
    """No destination waits for the instance any more: release it and its changed copies.

    ``derived``: the copies, when the caller already took them (``delivered``).
    """
    for copy in deliveries.take_derived(key) if derived is None else derived:
        spool.finish(copy, retention_hours)
    spool.finish(key, retention_hours)
