"""Celery tasks: thin glue between the queue and the pure routing and delivery code.

``route`` reads one spooled instance's header and asks the rules where it goes.
Destinations this worker process holds an open, answering association to get the
instance right away from the route task; every other destination (not contacted
yet, idle, failing, circuit open) gets a ``forward`` task, queued before the
direct sends start, so a destination that is down delays only its own deliveries.
``forward`` sends the spooled file to one destination; retries, alternates and
dead letters always go through it. Both deliver through ``delivery_steps`` and
``book`` (router/deliver.py) and record the same outcome. Tasks receive spool keys
and a few UIDs, never pixel data.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any, ParamSpec

import kombu.exceptions
import redis
from celery.exceptions import Reject
from pydicom import dcmread

from router import metrics
from router.deliver import Sent, book, deliver, delivery_steps, digest_of
from router.error_text import describe_error
from router.logs import get_logger
from router.queue import FORWARD_TASK, ROUTE_TASK, app, enqueue_forward
from router.rules import InstanceView, RulesetError, decide
from router.rules.actions import ActionContext
from router.rules.engine import Decision, destinations_by_rule
from router.runtime import Runtime, runtime
from router.spool import SpoolError
from router.steps import run_all
from router.transcode import is_lossy

log = get_logger(__name__)
P = ParamSpec("P")

RULES_UNAVAILABLE_RETRY_S = 10.0


BROKER_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
)
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, *BROKER_ERRORS)
"""Errors of the machine, not of the instance: its task fails and runs again later."""


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


@app.task(name=ROUTE_TASK)  # type: ignore[untyped-decorator]
@_hand_back_on_broker_error
def route(key: str, meta: dict[str, Any]) -> None:
    """Decide the destinations of one spooled instance and queue a forward for each."""
    _route(runtime(), key, meta)


def _route(rt: Runtime, key: str, meta: dict[str, Any]) -> None:
    """Route one instance, and clear its inbox record once it is settled.

    Settled means every delivery is recorded as pending (with its task arguments)
    or the instance went nowhere; from then on the stalled-work sweep no longer
    needs the inbox record. Without a ruleset the route task is queued again and
    the record stays.
    """
    path = rt.spool.path(key)
    sop_uid = meta.get("sop_instance_uid")
    if not path.exists():
        if not rt.spool.incoming.is_dir():
            # Not this instance's absence: the spool itself is not here (a worker whose
            # volume is not mounted). Fail the task; the inbox record keeps the
            # instance, and the sweep routes it again, where the spool is.
            raise SpoolError(f"spool not found: {rt.spool.incoming} does not exist")
        log.warning("route: spool file already gone", spool_key=key, sop_instance_uid=sop_uid)
        rt.inbox.done(key)
        return
    try:
        ruleset = rt.rules.current()
    except RulesetError:
        log.error("route: no valid ruleset loaded; retrying later", spool_key=key)
        app.send_task(ROUTE_TASK, args=[key, meta], countdown=RULES_UNAVAILABLE_RETRY_S)
        rt.inbox.touch(key, meta, time.time())  # queued again: not lost
        return
    common = {
        "sop_instance_uid": sop_uid,
        "study_instance_uid": meta.get("study_instance_uid"),
        "sop_class_uid": meta.get("sop_class_uid"),
        "calling_ae": meta.get("calling_ae"),
        "peer": meta.get("peer"),
        "ruleset_version": ruleset.version,
    }
    try:
        dataset = dcmread(path, stop_before_pixels=True)
    except OSError:
        raise  # the spool's disk, not the instance: try again later (inbox record stays)
    except Exception as exc:  # whatever the flaw, the instance is held
        _hold_unroutable(rt, key, "unreadable", exc, common)
        return
    try:
        view = InstanceView(
            dataset,
            calling_ae=meta.get("calling_ae", ""),
            called_ae=meta.get("called_ae", ""),
            peer_ip=str(meta.get("peer", "")).rsplit(":", 1)[0],
        )
        decision = decide(ruleset, view)
        common["patient_id"] = str(dataset.get("PatientID", "")) or None
    except Exception as exc:  # a value the rules cannot read
        _hold_unroutable(rt, key, "unroutable", exc, common)
        return
    for rule_name in decision.matched_rules:
        metrics.rule_matches.labels(rule_name).inc()
    if decision.unmatched or not decision.destinations:
        _settle_unrouted(rt, key, decision.unmatched, ruleset.unmatched, common)
        rt.inbox.done(key)
        return
    try:
        send_keys = _outputs(rt, key, path, decision, view)
    except RETRYABLE_ERRORS:
        raise  # the spool's disk or Redis: try again later
    except Exception as exc:  # an action this instance's values do not allow
        _hold_unroutable(rt, key, "unroutable", exc, common)
        return
    tasks = {}
    for destination, rule_name in decision.destinations.items():
        forward_meta = {**meta, "rule": rule_name, "send_key": send_keys[rule_name],
                        "ruleset_version": ruleset.version}  # fmt: skip
        target = decision.actions[rule_name].transfer_syntax
        if target is not None:
            forward_meta.update(transcode=target, allow_lossy=is_lossy(target))
        tasks[destination] = forward_meta
    # Destinations this process is already talking to get the instance from here,
    # after every other destination's forward task is queued; see `deliver`.
    inline = [(dest, forward_meta) for dest, forward_meta in tasks.items()
              if rt.pool.answering(dest)]  # fmt: skip
    digests = {
        send_key: digest_of(rt.spool.path(send_key))
        for send_key in {forward_meta["send_key"] for _destination, forward_meta in inline}
    }
    # One transaction records the deliveries, clears the inbox record, tells which
    # direct deliveries were made before (a resent or re-routed instance) and claims
    # the others for sending (router/deliveries.py). The deliveries start now, not
    # at reception: an instance routed late (a backlog after a worker outage) must
    # not look stalled to the sweep while it is sent.
    claim = uuid.uuid4().hex
    checks = rt.deliveries.expect(
        key, decision.destinations, None, tasks, also=rt.inbox.done_in(key),
        check=[(dest, str(meta.get("sop_instance_uid", "")), digests[m["send_key"]])
               for dest, m in inline],
        resend_identical={dest for dest, _meta in inline
                          if rt.cfg.destinations[dest].resend_identical},
        claim=(claim, rt.cfg.broker_visibility_timeout),
    )  # fmt: skip
    # Another task is sending what a direct send would: its forward task looks later.
    inline = [(dest, forward_meta) for dest, forward_meta in inline if dest not in checks.busy]
    direct = {dest for dest, _meta in inline}
    routed = [
        ("routed", {"rule": forward_meta["rule"], "destination": destination, **common})
        for destination, forward_meta in tasks.items()
    ]
    rt.audit.emit_many(routed)
    for destination, forward_meta in tasks.items():
        if destination not in direct:
            enqueue_forward(key, destination, forward_meta)
    _send_inline(rt, key, inline, digests, checks.delivered, claim)
    log.debug(
        "routed",
        spool_key=key,
        sop_instance_uid=sop_uid,
        rules=list(decision.matched_rules),
        destinations=list(decision.destinations),
    )


def _send_inline(
    rt: Runtime,
    key: str,
    inline: list[tuple[str, dict[str, Any]]],
    digests: dict[str, str],
    sent_before: set[str],
    claim: str,
) -> None:
    """Send to the destinations this process talks to, all at once, then book them together.

    The sends run interleaved in this thread (router/steps.py), each waiting only
    for its own peer. A send that raised (Redis lost mid-way) does not keep the
    others from being booked; the first error is raised after, for the task to be
    handed back.
    """
    sends = [
        delivery_steps(
            rt, key, dest, forward_meta, 1, digests, None if dest in sent_before else claim
        )
        for dest, forward_meta in inline
    ]
    outcomes = run_all(sends)
    done = [o.value for o in outcomes if isinstance(o.value, Sent)]
    book(rt, key, done)
    error = next((o.error for o in outcomes if o.error is not None), None)
    if error is not None:
        raise error


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


def _hold_unroutable(
    rt: Runtime, key: str, status: str, exc: BaseException, common: dict[str, Any]
) -> None:
    """The rules cannot be applied to this instance: set it aside, audited and counted.

    Routing it again would fail the same way (a value that cannot be read, an
    action its values do not allow), so it leaves ``incoming/`` for
    ``unroutable/`` with any changed copies already written removed. The audit
    event holds the error's full text; the log names only its kind and the
    elements (router/error_text.py): pydicom's messages quote values.
    """
    for copy in rt.deliveries.take_derived(key):
        rt.spool.discard(copy)
    rt.spool.hold_unroutable(key)
    metrics.instances_unroutable.labels(status).inc()
    rt.audit.emit("routed", status=status, detail=f"{type(exc).__name__}: {exc}", **common)
    log.error("route: instance set aside in unroutable/", spool_key=key, outcome=status,
              sop_instance_uid=common["sop_instance_uid"], error=describe_error(exc))  # fmt: skip
    rt.inbox.done(key)


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


@app.task(name=FORWARD_TASK)  # type: ignore[untyped-decorator]
@_hand_back_on_broker_error
def forward(key: str, destination: str, meta: dict[str, Any], attempt: int = 1) -> None:
    """Deliver one spooled instance to one destination, once."""
    deliver(runtime(), key, destination, meta, attempt)
