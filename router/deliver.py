"""One delivery of a spooled instance to one destination, and its bookkeeping.

Used by the ``forward`` task and, for destinations it already talks to, by the
``route`` task. An attempt (router/sending.py) ends as: delivered (delivery record,
pending entry cleared, spool released after the last destination), a retry in the
schedule, the alternate destination, or a dead letter; each with its audit event
and metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import redis
from pydicom import dcmread

from router import metrics
from router.deliveries import BUSY, DELIVERED, release_instance
from router.logs import get_logger
from router.queue import enqueue_forward
from router.runtime import Runtime
from router.sending import CIRCUIT_OPEN, SendContext, send_once
from router.status import ALREADY_DELIVERED, Outcome
from router.steps import Steps, run

log = get_logger(__name__)
T = TypeVar("T")


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^(n-1))]."""
    exponent = min(max(0, attempt - 1), 62)  # beyond this every ceiling is `maximum`
    ceiling = min(maximum, initial * (2**exponent))
    return random.uniform(0, ceiling)


@dataclass(frozen=True)
class Sent:
    """A destination that has the instance, with its bookkeeping still to do."""

    destination: str
    sop_uid: str
    digest: str
    forwarded: dict[str, Any]
    """Fields of the ``forwarded`` audit event (status ``ALREADY_DELIVERED`` when the
    destination had this content from before and nothing was sent)."""
    claim: str | None = None
    """The token of the sending claim held (router/deliveries.py); None when nothing
    was sent."""


def book(rt: Runtime, key: str, sent: Sequence[Sent]) -> None:
    """Record and audit deliveries of one instance together (one round trip, one write);
    after the last destination, release the original and its copies.

    The record comes first: it is what keeps a delivery from being sent again, so
    an audit trail that cannot be written (a full disk) must not stand before it.
    """
    if not sent:
        return
    records = [(s.destination, s.sop_uid, s.digest) for s in sent]
    claims = {s.claim for s in sent if s.claim is not None}
    derived = _record_persistently(
        lambda: rt.deliveries.delivered_many(key, records, next(iter(claims), None))
    )
    rt.audit.emit_done([("forwarded", s.forwarded) for s in sent])
    if derived is not None:
        release_instance(rt.deliveries, rt.spool, key, rt.cfg.spool.retention_hours, derived)


BOOKING_PATIENCE_S = 30.0
"""How long a made delivery waits for Redis to record it before its task is handed back."""


def _record_persistently(record: Callable[[], T]) -> T:
    """Run ``record`` until Redis answers, for up to ``BOOKING_PATIENCE_S``.

    The destination has the instance: a task handed back now runs again and, once
    its claim has lapsed, sends it again. A short Redis outage (a restart, a
    failover) is better waited out here.
    """
    deadline = time.monotonic() + BOOKING_PATIENCE_S
    delay = 0.25
    while True:
        try:
            return record()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("delivery made but not recorded yet; Redis does not answer",
                        error=type(exc).__name__, retry_in_s=delay)  # fmt: skip
            time.sleep(delay)
            delay = min(2 * delay, 4.0)


def _patient_id(path: Path) -> str | None:
    """The Patient ID for the DICOM audit message, or None if it cannot be read.

    It only fills in the audit message, so no error reading it may fail the
    delivery: pydicom raises more than ValueError for a malformed element (e.g.
    ``BytesLengthException``). Only the kind of error is logged, because pydicom's
    messages quote the raw value, here a patient identifier.
    """
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        return str(header.get("PatientID", "")) or None
    except Exception as exc:
        log.warning("patient ID not readable for the audit message", error=type(exc).__name__)
        return None


def digest_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def deliver(rt: Runtime, key: str, destination: str, meta: dict[str, Any], attempt: int) -> None:
    """One delivery attempt and all of its bookkeeping (a forward task)."""
    sent = run(delivery_steps(rt, key, destination, meta, attempt))
    if sent is not None:
        book(rt, key, [sent])


def delivery_steps(
    rt: Runtime,
    key: str,
    destination: str,
    meta: dict[str, Any],
    attempt: int = 1,
    digests: dict[str, str] | None = None,
    claimed: str | None = None,
) -> Steps[Sent | None]:
    """One delivery attempt; a failure's bookkeeping is done here, a success's is returned.

    Steps (router/steps.py): the route task sends one instance to several
    destinations at once with ``run_all``, then passes what they return to
    ``book`` in one go.
    ``digests`` holds content hashes by spool key already computed by the caller
    (route hashes each file once, however many destinations get it). ``claimed``:
    the token of the sending claim the caller has just taken for this content and
    destination (router/deliveries.py); without it the claim is taken here.
    """
    sop_uid = str(meta.get("sop_instance_uid", ""))
    audit_fields = {
        "sop_instance_uid": sop_uid,
        "study_instance_uid": meta.get("study_instance_uid"),
        "sop_class_uid": meta.get("sop_class_uid"),
        "calling_ae": meta.get("calling_ae"),
        "peer": meta.get("peer"),
        "rule": meta.get("rule"),
        "destination": destination,
        "attempt": attempt,
        "alternate_of": meta.get("alternate_of"),  # standing in for that destination
        "ruleset_version": meta.get("ruleset_version"),  # the ruleset that chose it
    }
    dest_cfg = rt.cfg.destinations.get(destination)
    path = rt.spool.path(meta.get("send_key") or key)
    if dest_cfg is None or not path.exists():
        _cannot_deliver(rt, key, destination, meta, attempt, dest_cfg is None, audit_fields)
        return None
    if rt.audit.dicom is not None:  # DICOM audit messages name the patient (PS3.15 A.5.3)
        audit_fields["patient_id"] = _patient_id(path)
    digest = (digests or {}).get(meta.get("send_key") or key) or digest_of(path)
    token = claimed
    if token is None:
        token = uuid.uuid4().hex
        reception = key if dest_cfg.resend_identical else None
        lease = rt.cfg.broker_visibility_timeout
        state = rt.deliveries.claim(destination, sop_uid, digest, token, lease, reception)
        if state == DELIVERED:
            log.info("forward: already delivered, not sending again", spool_key=key,
                     destination=destination, sop_instance_uid=sop_uid)  # fmt: skip
            metrics.already_delivered.labels(destination).inc()
            return Sent(destination, sop_uid, digest, {"status": ALREADY_DELIVERED, **audit_fields})
        if state == BUSY:  # being sent by another task: its record will answer soon
            log.info("forward: being sent by another task; looking again shortly",
                     spool_key=key, destination=destination)  # fmt: skip
            _schedule(rt, key, destination, meta, attempt, random.uniform(1.0, 5.0))
            return None
    sent = None
    try:
        sent = yield from _attempt(rt, key, destination, meta, attempt, path, digest,
                                   audit_fields)  # fmt: skip
    finally:
        if sent is None:  # failed or put off: the next attempt claims anew
            with contextlib.suppress(redis.RedisError):
                rt.deliveries.release(destination, sop_uid, digest, token)
    return None if sent is None else replace(sent, claim=token)


def _cannot_deliver(
    rt: Runtime,
    key: str,
    destination: str,
    meta: dict[str, Any],
    attempt: int,
    unconfigured: bool,
    audit_fields: dict[str, Any],
) -> None:
    """No send is possible: the destination left the config, or the spool file is gone.

    A file gone because the instance is settled (every destination booked, a task
    redelivered late) leaves nothing to do. Otherwise the delivery is dead-lettered:
    visible and counted, instead of failing again at every sweep for ever.
    """
    if not unconfigured and not rt.deliveries.is_pending(key, destination):
        log.info("forward: delivery already settled", spool_key=key, destination=destination)
        return
    reason = "destination no longer configured" if unconfigured else "spool file missing"
    log.error("forward: cannot deliver", spool_key=key, destination=destination, reason=reason)
    rt.audit.emit("forward_failed", status=reason, **audit_fields)
    letter = rt.deadletters.add(key, destination, "permanent failure", reason, attempt, meta)
    rt.audit.emit("dead_lettered", status=f"permanent failure: {reason}", detail=letter.id,
                  **audit_fields)  # fmt: skip


def _attempt(
    rt: Runtime,
    key: str,
    destination: str,
    meta: dict[str, Any],
    attempt: int,
    path: Path,
    digest: str,
    audit_fields: dict[str, Any],
) -> Steps[Sent | None]:
    """Send once, claimed; a failure's bookkeeping is done here, a success is returned."""
    sop_uid = audit_fields["sop_instance_uid"]
    dest_cfg = rt.cfg.destinations[destination]
    blocked = rt.circuits.blocked_for(destination, probe_timeout_s=2 * dest_cfg.timeout + 10)
    sent_bytes = None
    if blocked > 0:
        # Known not to answer: this attempt fails without touching the network.
        outcome, status_text = Outcome.RETRY, CIRCUIT_OPEN
    else:
        attempted = yield from send_once(
            SendContext(dest_cfg, rt.accepts.get(destination, []),
                        rt.pool, rt.circuits, rt.spool.tmp),
            destination, path, meta,
        )  # fmt: skip
        if attempted is None:  # other workers hold every slot: wait a moment, not an attempt
            _schedule(rt, key, destination, meta, attempt, random.uniform(0.2, 1.0))
            return None
        outcome, status_text = attempted.outcome, attempted.status_text
        sent_bytes = attempted.sent_bytes
        audit_fields["transfer_syntax"] = attempted.sent_as
        if attempted.sent_uid not in (None, sop_uid):  # lossy conversion: a new instance
            audit_fields["delivered_sop_instance_uid"] = attempted.sent_uid
    if outcome in (Outcome.SUCCESS, Outcome.WARNING):
        size = sent_bytes if sent_bytes is not None else path.stat().st_size
        _count_delivered(destination, outcome, size, meta)
        log.debug("forwarded", spool_key=key, destination=destination, sop_instance_uid=sop_uid,
                 status=status_text, attempt=attempt)  # fmt: skip
        return Sent(destination, sop_uid, digest, {"status": status_text, **audit_fields})
    failure = Failure(outcome, status_text, attempt, blocked)
    if will_retry(outcome, attempt, dest_cfg.retry.max_attempts):
        _retry_later(rt, key, destination, meta, failure, audit_fields)
    else:
        _give_up(rt, key, destination, meta, failure, audit_fields)
    return None


def _count_delivered(destination: str, outcome: Outcome, size: int, meta: dict[str, Any]) -> None:
    """Metrics of a delivered attempt; ``size`` as sent (a converted copy's own size)."""
    metrics.forward.labels(destination, outcome.value).inc()
    metrics.bytes_forwarded.labels(destination).inc(size)
    received_at = meta.get("received_at")
    if isinstance(received_at, int | float):
        metrics.end_to_end_seconds.labels(destination).observe(time.time() - received_at)


@dataclass(frozen=True)
class Failure:
    """A failed attempt: what the destination answered and where the delivery stands."""

    outcome: Outcome
    status_text: str
    attempt: int
    blocked: float
    """Seconds the destination's circuit stays open (0: closed); no retry comes sooner."""

    @property
    def reason(self) -> str:
        """Why the destination is given up on, when it is."""
        return "permanent failure" if self.outcome == Outcome.FAILED else "retries exhausted"


def will_retry(outcome: Outcome, attempt: int, max_attempts: int) -> bool:
    """Whether a failed attempt is followed by another attempt at the same destination.

    This, not the status class alone, decides the ``outcome`` label of
    ``forward_total``: a transient failure on the last allowed attempt is given up
    on like a permanent one, so it counts as ``failed``, not ``retry``.
    """
    return outcome == Outcome.RETRY and attempt < max_attempts


def _retry_later(
    rt: Runtime,
    key: str,
    destination: str,
    meta: dict[str, Any],
    failure: Failure,
    audit_fields: dict[str, Any],
) -> None:
    """Count and audit the attempt as one that will be tried again, and schedule that."""
    metrics.forward.labels(destination, Outcome.RETRY.value).inc()
    rt.audit.emit("forward_failed", status=failure.status_text, **audit_fields)
    retry = rt.cfg.destinations[destination].retry
    delay = max(failure.blocked, backoff_delay(failure.attempt, retry.initial_delay,
                                               retry.max_delay))  # fmt: skip
    log.warning("forward failed; will retry", spool_key=key, destination=destination,
                sop_instance_uid=audit_fields["sop_instance_uid"], status=failure.status_text,
                attempt=failure.attempt, retry_in_s=round(delay, 2))  # fmt: skip
    _schedule(rt, key, destination, meta, failure.attempt + 1, delay)


def _schedule(
    rt: Runtime, key: str, destination: str, meta: dict[str, Any], attempt: int, delay: float
) -> None:
    """Put the delivery in the retry schedule, and say so in its pending entry."""
    rt.retries.schedule(key, destination, meta, attempt, delay)
    rt.deliveries.retrying(key, destination, time.time() + delay)


def _give_up(
    rt: Runtime,
    key: str,
    destination: str,
    meta: dict[str, Any],
    failure: Failure,
    audit_fields: dict[str, Any],
) -> None:
    """Fail over to the destination's alternate once, else dead-letter the delivery.

    Either way nothing will try this destination again, so the attempt counts as
    ``failed``. A fail-over is audited on the attempt's own ``forward_failed`` event
    (no other event would say the primary was given up on); a dead letter has its
    ``dead_lettered`` event after it.
    """
    metrics.forward.labels(destination, Outcome.FAILED.value).inc()
    reason, status_text = failure.reason, failure.status_text
    alternate = rt.cfg.destinations[destination].alternate
    if alternate is not None and not meta.get("alternate_of"):
        alternate_meta = {**meta, "alternate_of": destination}
        if rt.deliveries.fail_over(key, destination, alternate, alternate_meta):
            status = f"{reason}: {status_text}; sent to the alternate {alternate}"
            rt.audit.emit("forward_failed", status=status, alternate=alternate, **audit_fields)
            log.warning("forward failed; sending to the alternate destination", spool_key=key,
                        destination=destination, alternate=alternate, reason=reason,
                        status=status_text)  # fmt: skip
            enqueue_forward(key, alternate, alternate_meta)
            return
        # The alternate still owes this instance a delivery of its own, and a second
        # one cannot be booked beside it (Deliveries.fail_over): dead-lettered here.
        status_text = f"{status_text}; alternate {alternate} already has its own delivery"
    rt.audit.emit("forward_failed", status=status_text, **audit_fields)
    letter = rt.deadletters.add(key, destination, reason, status_text, failure.attempt, meta)
    rt.audit.emit(
        "dead_lettered", status=f"{reason}: {status_text}", detail=letter.id, **audit_fields
    )
    log.error("forward failed; dead-lettered", spool_key=key, destination=destination,
              sop_instance_uid=audit_fields["sop_instance_uid"], reason=reason,
              status=status_text, attempt=failure.attempt, dead_letter=letter.id)  # fmt: skip
