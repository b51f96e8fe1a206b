"""Celery tasks: thin glue between the queue and the pure routing and delivery code.

``route`` reads one spooled instance's header and asks the rules where it goes.
Destinations this worker process holds an open, answering association to get the
instance right away from the route task; every other destination (not contacted
yet, idle, failing, circuit open) gets a ``forward`` task, queued before the
direct sends start, so a destination that is down delays only its own deliveries.
``forward`` sends the spooled file to one destination; retries, alternates and
dead letters always go through it. Both deliver through ``deliver`` and record the
same outcome. Tasks receive spool keys and a few UIDs, never pixel data.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

import kombu.exceptions
import redis
from celery.exceptions import Reject
from celery.signals import worker_process_shutdown
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from router import metrics
from router.audit import AuditLog, audit_log_from_config
from router.circuit import Circuits
from router.config import RouterConfig, destination_syntaxes, load_config, load_salt
from router.deadletters import DeadLetters
from router.deliveries import Deliveries, release_instance
from router.logs import get_logger
from router.queue import FORWARD_TASK, ROUTE_TASK, app, enqueue_forward
from router.retries import RetrySchedule
from router.rules import InstanceView, RulesetError, decide
from router.rules.actions import ActionContext
from router.rules.engine import Decision, destinations_by_rule
from router.rules.live import LiveRuleset
from router.scu import AssociationPool
from router.sending import CIRCUIT_OPEN, SendContext, send_once
from router.slots import AssociationSlots
from router.spool import Spool
from router.status import Outcome
from router.transcode import is_lossy

log = get_logger(__name__)
P = ParamSpec("P")

RULES_UNAVAILABLE_RETRY_S = 10.0


@dataclass
class Runtime:
    """Per-process state of a worker, created after the fork on first use."""

    cfg: RouterConfig
    spool: Spool
    audit: AuditLog
    rules: LiveRuleset
    deliveries: Deliveries
    pool: AssociationPool
    salt: bytes
    deadletters: DeadLetters
    retries: RetrySchedule
    circuits: Circuits
    accepts: dict[str, list[str]]
    """Destination -> the transfer syntax UIDs it lists as accepted (may be empty)."""


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime, built from ``$ROUTER_CONFIG`` the first time."""
    global _runtime
    if _runtime is None or _runtime_pid != os.getpid():
        cfg = load_config()
        _set_runtime(build_runtime(cfg))
    assert _runtime is not None
    return _runtime


_runtime_pid = 0


def _set_runtime(rt: Runtime) -> None:
    global _runtime, _runtime_pid
    _runtime = rt
    _runtime_pid = os.getpid()


def build_runtime(cfg: RouterConfig) -> Runtime:
    audit = audit_log_from_config(cfg)

    def on_reload(outcome: str, version: str, detail: str) -> None:
        audit.emit("rules_reloaded", status=outcome, ruleset_version=version or None, detail=detail)

    salt = load_salt(cfg)
    client = redis.Redis.from_url(cfg.broker_url)
    accepts = destination_syntaxes(cfg)
    return Runtime(
        cfg=cfg,
        spool=Spool(cfg.spool.dir),
        audit=audit,
        rules=LiveRuleset(cfg.rules, accepts, on_reload=on_reload, salt_available=bool(salt)),
        deliveries=Deliveries(client),
        pool=AssociationPool(cfg.ae_title, slots=AssociationSlots(client)),
        salt=salt,
        deadletters=DeadLetters(client),
        retries=RetrySchedule(client),
        circuits=Circuits(client),
        accepts=accepts,
    )


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _close_associations(**_kwargs: Any) -> None:
    """A stopping pool process releases its associations and their shared slots at once,
    instead of leaving the slots taken until their leases run out."""
    if _runtime is not None and _runtime_pid == os.getpid():
        try:
            _runtime.pool.close_all()
        except Exception as exc:
            log.warning("could not close associations at shutdown", error=str(exc))


BROKER_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
)


def _hand_back_on_broker_error(task: Callable[P, None]) -> Callable[P, None]:
    """A task that loses Redis half-way is put back on its queue, not acknowledged.

    With ``acks_late`` a task that raises is acknowledged as failed, and its
    instance would wait in ``dr:pending`` with no task left to carry it. Rejecting
    with requeue gives the message back when Redis still answers; when it does not,
    the message stays unacknowledged in Redis and returns after the visibility
    timeout. Running a task again is safe: deliveries are idempotent.
    """

    @functools.wraps(task)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            task(*args, **kwargs)
        except BROKER_ERRORS as exc:
            log.warning("broker unavailable; task handed back to the queue",
                        task=task.__name__, error=type(exc).__name__)  # fmt: skip
            raise Reject(type(exc).__name__, requeue=True) from exc

    return wrapper


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^(n-1))]."""
    exponent = min(max(0, attempt - 1), 62)  # beyond this every ceiling is `maximum`
    ceiling = min(maximum, initial * (2**exponent))
    return random.uniform(0, ceiling)


@app.task(name=ROUTE_TASK)  # type: ignore[untyped-decorator]
@_hand_back_on_broker_error
def route(key: str, meta: dict[str, Any]) -> None:
    """Decide the destinations of one spooled instance and queue a forward for each."""
    rt = runtime()
    path = rt.spool.path(key)
    sop_uid = meta.get("sop_instance_uid")
    if not path.exists():
        log.warning("route: spool file already gone", spool_key=key, sop_instance_uid=sop_uid)
        return
    try:
        ruleset = rt.rules.current()
    except RulesetError:
        log.error("route: no valid ruleset loaded; retrying later", spool_key=key)
        app.send_task(ROUTE_TASK, args=[key, meta], countdown=RULES_UNAVAILABLE_RETRY_S)
        return
    try:
        dataset = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        log.error("route: cannot parse spooled instance", spool_key=key, error=str(exc))
        rt.audit.emit("routed", sop_instance_uid=sop_uid, status="unreadable", detail=str(exc))
        return
    view = InstanceView(
        dataset,
        calling_ae=meta.get("calling_ae", ""),
        called_ae=meta.get("called_ae", ""),
        peer_ip=str(meta.get("peer", "")).rsplit(":", 1)[0],
    )
    decision = decide(ruleset, view)
    common = {
        "sop_instance_uid": sop_uid,
        "study_instance_uid": meta.get("study_instance_uid"),
        "sop_class_uid": meta.get("sop_class_uid"),
        "patient_id": str(dataset.get("PatientID", "")) or None,
        "calling_ae": meta.get("calling_ae"),
        "peer": meta.get("peer"),
        "ruleset_version": ruleset.version,
    }
    for rule_name in decision.matched_rules:
        metrics.rule_matches.labels(rule_name).inc()
    if decision.unmatched or not decision.destinations:
        _settle_unrouted(rt, key, decision.unmatched, ruleset.unmatched, common)
        return
    send_keys = _outputs(rt, key, path, decision, view)
    received_at = meta.get("received_at")
    since = float(received_at) if isinstance(received_at, int | float) else None
    tasks = {}
    for destination, rule_name in decision.destinations.items():
        forward_meta = {**meta, "rule": rule_name, "send_key": send_keys[rule_name]}
        target = decision.actions[rule_name].transfer_syntax
        if target is not None:
            forward_meta.update(transcode=target, allow_lossy=is_lossy(target))
        tasks[destination] = forward_meta
    rt.deliveries.expect(key, decision.destinations, since, tasks)
    inline: list[tuple[str, dict[str, Any]]] = []
    for destination, forward_meta in tasks.items():
        rt.audit.emit("routed", rule=forward_meta["rule"], destination=destination, **common)
        if rt.pool.answering(destination):
            inline.append((destination, forward_meta))
        else:
            enqueue_forward(key, destination, forward_meta)
    # Destinations this process is already talking to get the instance from here,
    # after every other destination's forward task is queued; see `deliver`.
    digests = {
        forward_meta["send_key"]: _digest(rt.spool.path(forward_meta["send_key"]))
        for _destination, forward_meta in inline
    }
    if len(inline) == 1:
        deliver(rt, key, *inline[0], digests=digests)
    elif inline:  # one thread per destination: each waits for its own peer
        sends = [
            _sender_threads().submit(deliver, rt, key, destination, forward_meta, 1, digests)
            for destination, forward_meta in inline
        ]
        for send in sends:
            send.result()
    log.debug(
        "routed",
        spool_key=key,
        sop_instance_uid=sop_uid,
        rules=list(decision.matched_rules),
        destinations=list(decision.destinations),
    )


def _outputs(
    rt: Runtime, key: str, path: Path, decision: Decision, view: InstanceView
) -> dict[str, str]:
    """Spool key each matched rule's destinations receive: the original, or a changed copy.

    The full dataset is read once and copied per rule, so one rule's actions never
    reach another rule's output; pixel data is carried over as stored (not decoded).
    """
    send_keys: dict[str, str] = {}
    original = None
    ctx = ActionContext(view.calling_ae, view.called_ae, view.peer_ip, rt.salt)
    for rule_name in destinations_by_rule(decision):
        actions = decision.actions[rule_name]
        if not actions.changes_dataset:
            send_keys[rule_name] = key
            continue
        if original is None:
            original = dcmread(path)
        copy = deepcopy(original)
        actions.apply(copy, ctx)
        derived = rt.spool.write_dataset(copy)
        rt.deliveries.add_derived(key, derived)
        send_keys[rule_name] = derived
    return send_keys


def _settle_unrouted(
    rt: Runtime, key: str, unmatched: bool, policy: str, common: dict[str, Any]
) -> None:
    """No destination: keep the instance for inspection or discard it, audited either way."""
    if unmatched:
        metrics.instances_unmatched.inc()
    if unmatched and policy == "keep":
        rt.spool.keep_unmatched(key)
        status = "unmatched-kept"
    else:
        rt.spool.discard(key)
        status = "unmatched-discarded" if unmatched else "no-destination"
    rt.audit.emit("routed", status=status, **common)
    log.info("routed nowhere", spool_key=key, sop_instance_uid=common["sop_instance_uid"],
             outcome=status)  # fmt: skip


def _finish(rt: Runtime, key: str) -> None:
    """Every destination has the instance: release the original and its changed copies."""
    release_instance(rt.deliveries, rt.spool, key, rt.cfg.spool.retention_hours)


def _patient_id(path: Path) -> str | None:
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except (InvalidDicomError, OSError, ValueError):
        return None
    return str(header.get("PatientID", "")) or None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


@app.task(name=FORWARD_TASK)  # type: ignore[untyped-decorator]
@_hand_back_on_broker_error
def forward(key: str, destination: str, meta: dict[str, Any], attempt: int = 1) -> None:
    """Deliver one spooled instance to one destination, once."""
    deliver(runtime(), key, destination, meta, attempt)


_senders: tuple[int, ThreadPoolExecutor] | None = None


def _sender_threads() -> ThreadPoolExecutor:
    """This process's threads for sending to several destinations at once."""
    global _senders
    if _senders is None or _senders[0] != os.getpid():
        _senders = (os.getpid(), ThreadPoolExecutor(SENDER_THREADS, "sender"))
    return _senders[1]


SENDER_THREADS = 8


def deliver(
    rt: Runtime,
    key: str,
    destination: str,
    meta: dict[str, Any],
    attempt: int = 1,
    digests: dict[str, str] | None = None,
) -> None:
    """One delivery attempt and its bookkeeping (from a forward task or from route).

    ``digests`` holds content hashes by spool key already computed by the caller
    (route hashes each file once, however many destinations get it).
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
    }
    dest_cfg = rt.cfg.destinations.get(destination)
    path = rt.spool.path(meta.get("send_key") or key)
    if dest_cfg is None or not path.exists():
        reason = "destination no longer configured" if dest_cfg is None else "spool file missing"
        log.error("forward: cannot deliver", spool_key=key, destination=destination, reason=reason)
        rt.audit.emit("forward_failed", status=reason, **audit_fields)
        return
    if rt.audit.dicom is not None:  # DICOM audit messages name the patient (PS3.15 A.5.3)
        audit_fields["patient_id"] = _patient_id(path)
    digest = (digests or {}).get(meta.get("send_key") or key) or _digest(path)
    if rt.deliveries.already_delivered(destination, sop_uid, digest):
        log.info("forward: already delivered, not sending again", spool_key=key,
                 destination=destination, sop_instance_uid=sop_uid)  # fmt: skip
        if rt.deliveries.delivered(key, destination, sop_uid, digest):
            _finish(rt, key)
        return
    blocked = rt.circuits.blocked_for(destination, probe_timeout_s=2 * dest_cfg.timeout + 10)
    if blocked > 0:
        # Known not to answer: this attempt fails without touching the network.
        outcome, status_text = Outcome.RETRY, CIRCUIT_OPEN
    else:
        attempted = send_once(
            SendContext(rt.cfg.destinations[destination], rt.accepts.get(destination, []),
                        rt.pool, rt.circuits, rt.spool.tmp),
            destination, path, meta,
        )  # fmt: skip
        if attempted is None:  # other workers hold every slot: wait a moment, not an attempt
            _schedule(rt, key, destination, meta, attempt, random.uniform(0.2, 1.0))
            return
        outcome, status_text = attempted.outcome, attempted.status_text
        audit_fields["transfer_syntax"] = attempted.sent_as
        if attempted.sent_uid not in (None, sop_uid):  # lossy conversion: a new instance
            audit_fields["delivered_sop_instance_uid"] = attempted.sent_uid
    metrics.forward.labels(destination, outcome.value).inc()
    if outcome in (Outcome.SUCCESS, Outcome.WARNING):
        size = path.stat().st_size
        metrics.bytes_forwarded.labels(destination).inc(size)
        received_at = meta.get("received_at")
        if isinstance(received_at, int | float):
            metrics.end_to_end_seconds.labels(destination).observe(time.time() - received_at)
        rt.audit.emit("forwarded", status=status_text, **audit_fields)
        if rt.deliveries.delivered(key, destination, sop_uid, digest):
            _finish(rt, key)
        log.debug("forwarded", spool_key=key, destination=destination, sop_instance_uid=sop_uid,
                 status=status_text, attempt=attempt)  # fmt: skip
        return
    rt.audit.emit("forward_failed", status=status_text, **audit_fields)
    retry = dest_cfg.retry
    if outcome == Outcome.RETRY and attempt < retry.max_attempts:
        delay = max(blocked, backoff_delay(attempt, retry.initial_delay, retry.max_delay))
        log.warning("forward failed; will retry", spool_key=key, destination=destination,
                    sop_instance_uid=sop_uid, status=status_text, attempt=attempt,
                    retry_in_s=round(delay, 2))  # fmt: skip
        _schedule(rt, key, destination, meta, attempt + 1, delay)
        return
    reason = "permanent failure" if outcome == Outcome.FAILED else "retries exhausted"
    _give_up(rt, key, destination, meta, reason, status_text, attempt, audit_fields)


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
    reason: str,
    status_text: str,
    attempt: int,
    audit_fields: dict[str, Any],
) -> None:
    """Fail over to the destination's alternate once, else dead-letter the delivery."""
    dest_cfg = rt.cfg.destinations[destination]
    alternate = dest_cfg.alternate
    if alternate is not None and not meta.get("alternate_of"):
        alternate_meta = {**meta, "alternate_of": destination}
        rt.deliveries.fail_over(key, destination, alternate, alternate_meta)
        log.warning("forward failed; sending to the alternate destination", spool_key=key,
                    destination=destination, alternate=alternate, reason=reason,
                    status=status_text)  # fmt: skip
        enqueue_forward(key, alternate, alternate_meta)
        return
    letter = rt.deadletters.add(key, destination, reason, status_text, attempt, meta)
    rt.audit.emit(
        "dead_lettered", status=f"{reason}: {status_text}", detail=letter.id, **audit_fields
    )
    log.error("forward failed; dead-lettered", spool_key=key, destination=destination,
              sop_instance_uid=audit_fields["sop_instance_uid"], reason=reason,
              status=status_text, attempt=attempt, dead_letter=letter.id)  # fmt: skip
