"""The Celery application: broker settings, queue names, and enqueueing a route task.

Settings follow what loses nothing on Redis: a task is acknowledged only after it
ran (``acks_late``), handed back if its worker dies (``reject_on_worker_lost``),
and a worker takes one task at a time (prefetch 1) so a slow destination cannot
hoard work another worker could do. Delayed retries wait in Redis, not in a
worker (see ``router.retries``), so the visibility timeout only covers one task.

Each pool process builds its runtime as soon as it starts (after the fork) and
watches its rule files from then on, so an edit is loaded or refused in every
process within seconds, with or without traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from router.config import RouterConfig
from router.logs import get_logger

if TYPE_CHECKING:
    from router.rules.live import RulesWatcher

log = get_logger(__name__)

ROUTE_TASK = "router.route"
FORWARD_TASK = "router.forward"
ROUTE_QUEUE = "route"
FORWARD_QUEUE = "forward"

app = Celery("dicom_router")


def visibility_timeout(cfg: RouterConfig) -> int:
    """Seconds a task may stay unacknowledged before Redis hands it to another worker.

    Retries wait in the router's own schedule (``router.retries``), not in
    workers, so this only has to exceed one task's run time; it bounds how long
    the tasks of a killed worker take to come back.
    """
    return int(cfg.broker_visibility_timeout)


def configure(cfg: RouterConfig) -> Celery:
    """Point the shared Celery app at the configured broker; returns it."""
    app.conf.update(
        broker_url=cfg.broker_url,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=ROUTE_QUEUE,
        task_routes={ROUTE_TASK: {"queue": ROUTE_QUEUE}, FORWARD_TASK: {"queue": FORWARD_QUEUE}},
        broker_transport_options={
            "visibility_timeout": visibility_timeout(cfg),
            # Look for tasks of dead workers every 5 s (kombu's default scans every
            # 100 s), so they return soon after the visibility timeout.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def enqueue_route(key: str, meta: dict[str, Any]) -> None:
    """Put a route task on the queue; raises if the broker did not take it.

    No publish retries: the SCP is waiting to answer a modality, and an
    Out-of-Resources answer it can retry is better than a long stall.
    """
    app.send_task(ROUTE_TASK, args=[key, meta], queue=ROUTE_QUEUE, retry=False)


def enqueue_forward(key: str, destination: str, meta: dict[str, Any], attempt: int = 1) -> None:
    """Queue one delivery of a spooled instance to one destination."""
    app.send_task(
        FORWARD_TASK,
        args=[key, destination, meta],
        kwargs={"attempt": attempt},
        queue=FORWARD_QUEUE,
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    )


_watcher: RulesWatcher | None = None
"""This pool process's rules watcher, started after the fork."""


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _watch_rules(**_kwargs: Any) -> None:
    """In a new pool process: build its runtime and start watching its rules.

    It runs in the child, after the fork (threads do not survive a fork), and
    before the process takes a task, so the runtime is built once, here, and the
    watcher shares its ruleset: one load, one audit event per edit. Never raises:
    a pool process without a watcher still checks its rules when tasks arrive.
    """
    global _watcher
    # Imported here: the runtime pulls in the worker's metrics and association
    # pool, which the SCP process (also a user of this module) does not need.
    from router.rules.live import RulesWatcher
    from router.runtime import runtime

    try:
        rules = runtime().rules
    except Exception as exc:
        log.error("rules watcher not started", error=type(exc).__name__)
        return
    _watcher = RulesWatcher(rules).start()


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_watching_rules(**_kwargs: Any) -> None:
    """A stopping pool process ends its rules watcher."""
    global _watcher
    if _watcher is not None:
        _watcher.stop()
        _watcher = None
