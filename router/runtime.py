"""Per-process state of a worker: configuration, spool, Redis-held state, the
association pool. Built after the fork, on first use, from ``$ROUTER_CONFIG``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import redis
from celery.signals import worker_process_shutdown

from router.audit import AuditLog, audit_log_from_config
from router.circuit import Circuits
from router.config import RouterConfig, destination_syntaxes, load_config, load_salt
from router.deadletters import DeadLetters
from router.deliveries import Deliveries
from router.inbox import Inbox
from router.logs import get_logger
from router.retries import RetrySchedule
from router.rules.live import LiveRuleset, audit_reloads
from router.scu import AssociationPool
from router.slots import AssociationSlots
from router.spool import Spool

log = get_logger(__name__)


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
    inbox: Inbox
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
    salt = load_salt(cfg)
    client = redis.Redis.from_url(cfg.broker_url)
    accepts = destination_syntaxes(cfg)
    return Runtime(
        cfg=cfg,
        spool=Spool(cfg.spool.dir),
        audit=audit,
        rules=LiveRuleset(
            cfg.rules, accepts, on_reload=audit_reloads(audit), salt_available=bool(salt)
        ),
        deliveries=Deliveries(client),
        pool=AssociationPool(cfg.ae_title, slots=AssociationSlots(client)),
        salt=salt,
        deadletters=DeadLetters(client),
        retries=RetrySchedule(client),
        circuits=Circuits(client),
        inbox=Inbox(client),
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
