"""``dicom-router serve``: the SCP, the metrics port, and optionally embedded workers.

The single-box mode runs the Celery worker as a child process (its own prefork
pool), not threads in this process: routing and sending then never compete with
the SCP for the GIL, and a crashed worker is restarted without dropping the
listener. SIGTERM or SIGINT stops the listener first, then lets the worker finish
its current tasks (Celery's warm shutdown); unfinished tasks stay on the queue.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType

import kombu.exceptions
import redis
from celery.signals import worker_shutdown

from router.admission import RouteAdmission
from router.audit import audit_log_from_config
from router.config import (
    ConfigError,
    RouterConfig,
    association_shortfalls,
    destination_syntaxes,
    load_salt,
)
from router.deliveries import Deliveries
from router.exporter import AuditSyslogCollector, BrokerCollector, add_collector, start_exporter
from router.inbox import Inbox
from router.logs import get_logger
from router.queue import (
    FORWARD_QUEUE,
    ROUTE_QUEUE,
    configure,
    enqueue_forward,
    visibility_timeout,
)
from router.retries import RetrySchedule, start_pump_thread
from router.rules.live import (
    AuditTrail,
    LiveRuleset,
    RulesWatcher,
    audit_reloads,
    problem_locations,
)
from router.rules.loader import RulesetError
from router.scp import StorageSCP
from router.spool import Spool
from router.stalled import requeue_stalled
from router.syslog_out import SyslogQueue, SyslogSender, TlsTransport, Transport, UdpTransport
from router.tls import client_context, shared_client_context

log = get_logger(__name__)

SWEEP_INTERVAL_S = 60.0
WORKER_STOP_TIMEOUT_S = 60.0
AUDIT_FLUSH_TIMEOUT_S = 5.0
SYSLOG_TIMEOUT_S = 10.0


class WorkerProcess:
    """A supervised ``dicom-router worker`` child process."""

    def __init__(self, config_path: Path, concurrency: int) -> None:
        self.config_path = config_path
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "router.cli", "--config", str(self.config_path),
            "worker", "--concurrency", str(self.concurrency),
        ]  # fmt: skip
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        self.proc = subprocess.Popen(cmd, env=env)
        log.info("worker started", pid=self.proc.pid, concurrency=self.concurrency)

    def check(self) -> None:
        """Restart the worker if it died."""
        if self.proc is not None and self.proc.poll() is not None:
            log.error("worker exited; restarting", returncode=self.proc.returncode)
            self.restarts += 1
            time.sleep(min(10, self.restarts))
            self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("worker did not stop in time; killing it")
            self.proc.kill()
            self.proc.wait()


PARENT_ENV = "DICOM_ROUTER_SERVE_PID"  # not ROUTER_*: those are config keys


def die_with_parent() -> None:
    """In a worker started by ``serve``: get SIGTERM (a warm shutdown) if ``serve`` dies.

    Without this a killed ``serve`` would leave its worker running, and a restarted
    ``serve`` would start a second one beside it.
    """
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != int(parent):  # serve died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def start_retry_pump(cfg: RouterConfig) -> threading.Event:
    """Move due retries onto the forward queue from this process; returns its stop event."""
    client = redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=2, socket_timeout=5)
    return start_pump_thread(
        RetrySchedule(client),
        enqueue_forward,
        lambda exc: log.warning("retry pump: broker unavailable", error=type(exc).__name__),
    )


STALLED_SWEEP_INTERVAL_S = 15.0


def start_stalled_sweeper(cfg: RouterConfig) -> threading.Event:
    """Queue again, from this process, deliveries whose task was lost (router/stalled.py)."""
    client = redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=2, socket_timeout=10)
    deliveries = Deliveries(client)
    inbox = Inbox(client)
    older_than = 2 * visibility_timeout(cfg)
    stop = threading.Event()

    def run() -> None:
        # Often enough to notice within a quarter of the threshold, at most every 15 s.
        while not stop.wait(min(STALLED_SWEEP_INTERVAL_S, older_than / 4)):
            try:
                requeue_stalled(client, deliveries, inbox, older_than)
            except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
                log.warning("stalled-delivery sweep: broker unavailable", error=type(exc).__name__)

    threading.Thread(target=run, name="stalled-sweep", daemon=True).start()
    return stop


def check_destination_tls(cfg: RouterConfig) -> None:
    """Load every destination's TLS files now: a file that cannot be loaded stops
    start-up (ConfigError naming the key) instead of failing each delivery later."""
    for name, dest in cfg.destinations.items():
        if dest.tls is None:
            continue
        try:
            shared_client_context(dest.tls.ca, dest.tls.cert, dest.tls.key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"destinations.{name}.tls: cannot load the TLS files: {exc}") from exc


def start_audit_sender(cfg: RouterConfig) -> SyslogSender | None:
    """Send the queued DICOM audit messages from this process (None without audit.syslog).

    Raises ConfigError when the TLS files cannot be loaded: better refused at
    start-up than an audit trail that silently never leaves the host.
    """
    syslog = cfg.audit.syslog
    if syslog is None:
        return None
    host, port = syslog.host, syslog.port
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(syslog, key)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"audit.syslog.{key}: cannot read {path}")
    if syslog.transport == "tls":
        try:
            context = client_context(syslog.ca_file, syslog.cert_file, syslog.key_file,
                                     syslog.verify)  # fmt: skip
        except (OSError, ValueError) as exc:
            raise ConfigError(f"audit.syslog: cannot load the TLS files: {exc}") from exc

        def connect() -> Transport:
            return TlsTransport(host, port, context, SYSLOG_TIMEOUT_S)
    else:

        def connect() -> Transport:
            return UdpTransport(host, port)

    sender = SyslogSender(SyslogQueue(syslog.queue_dir), connect, f"{host}:{port}",
                          max_delay=syslog.reconnect_max_delay)  # fmt: skip
    return sender.start()


def readiness_check(cfg: RouterConfig, spool: Spool, rules: LiveRuleset) -> list[str]:
    """Reasons the router cannot accept work right now (empty list: ready)."""
    problems = []
    try:
        redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=1, socket_timeout=1).ping()
    except redis.RedisError as exc:
        problems.append(f"broker unreachable ({type(exc).__name__})")
    if not os.access(spool.tmp, os.W_OK) or not os.access(spool.incoming, os.W_OK):
        problems.append("spool not writable")
    elif not spool.has_room(cfg.spool.min_free_mb):
        problems.append(f"spool free space below {cfg.spool.min_free_mb} MiB")
    try:
        rules.current()
    except Exception:
        problems.append("no valid ruleset loaded")
    return problems


def live_rules(cfg: RouterConfig, audit: AuditTrail) -> LiveRuleset:
    """The ruleset as workers load it: checked against the destinations and the salt.

    Its loads and refusals go to the audit trail as the workers' do: this process
    may be the one that notices an edit (through its watcher or ``/readyz``).
    """
    return LiveRuleset(
        cfg.rules,
        destination_syntaxes(cfg),
        on_reload=audit_reloads(audit),
        salt_available=bool(load_salt(cfg)),
    )


def load_rules_at_start(rules: LiveRuleset) -> None:
    """Load the rules once before accepting work; a failure is logged, not raised.

    Only the problems' locations are logged: their messages may quote a rule's
    operands (a patient ID in a condition); the audit event has them in full.
    """
    message = "no valid ruleset at start-up; instances will wait in the queue"
    try:
        rules.current()
    except RulesetError as exc:
        log.error(message, **problem_locations(exc.problems))
    except Exception as exc:
        log.error(message, error=type(exc).__name__)


def start_metrics_endpoint(
    cfg: RouterConfig, port: int, spool: Spool, rules: LiveRuleset
) -> ThreadingHTTPServer:
    """/metrics (with the broker's queue depths), /healthz and /readyz on ``port``."""
    broker = BrokerCollector(
        redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=1, socket_timeout=2),
        (ROUTE_QUEUE, FORWARD_QUEUE),
        tuple(cfg.destinations),
    )
    return start_exporter(
        cfg.metrics.host, port, lambda: readiness_check(cfg, spool, rules), broker
    )


def start_worker_exporter(cfg: RouterConfig, port: int) -> None:
    """The metrics endpoint of a standalone worker: its own processes' metrics, the
    broker's queue depths, and readiness (broker, spool, rules) as for ``serve``.

    Its ruleset is watched like every other process's, and the watcher stops with
    the worker (Celery's ``worker_shutdown``).
    """
    rules = live_rules(cfg, audit_log_from_config(cfg))
    server = start_metrics_endpoint(cfg, port, Spool(cfg.spool.dir), rules)
    watcher = RulesWatcher(rules).start()
    worker_shutdown.connect(lambda **_kwargs: watcher.stop(), weak=False)
    log.info("worker metrics listening", host=cfg.metrics.host, port=server.server_address[1])


def serve(cfg: RouterConfig, config_path: Path, workers: int) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    celery_app = configure(cfg)
    spool = Spool(cfg.spool.dir)
    spool.ensure()
    audit = audit_log_from_config(cfg)
    try:
        check_destination_tls(cfg)
        audit_sender = start_audit_sender(cfg)
    except ConfigError as exc:
        log.error("cannot start", error=str(exc))
        return 2
    if cfg.audit.syslog is not None:
        queue = SyslogQueue(cfg.audit.syslog.queue_dir)
        add_collector(AuditSyslogCollector(lambda: len(queue.pending())))
    rules = live_rules(cfg, audit)
    load_rules_at_start(rules)
    watcher = RulesWatcher(rules).start()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    broker = redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=1, socket_timeout=5)
    scp = StorageSCP(cfg, spool, audit, enqueue=RouteAdmission(celery_app, broker))
    scp.start()
    pump = start_retry_pump(cfg)
    sweeper = start_stalled_sweeper(cfg)
    exporter = start_metrics_endpoint(cfg, cfg.metrics.port, spool, rules)
    worker = WorkerProcess(config_path, workers) if workers > 0 else None
    if worker is not None:
        worker.start()
    log.info(
        "router listening",
        ae_title=cfg.ae_title,
        host=cfg.listen.host,
        ports=scp.ports(),
        metrics_port=exporter.server_address[1],
        workers=workers,
    )
    for destination, limit in association_shortfalls(cfg, workers).items():
        log.warning(
            "destination allows fewer associations than there are worker processes; "
            "deliveries to it will wait for a free slot (raise its max_associations)",
            destination=destination, max_associations=limit, workers=workers,
        )  # fmt: skip
    audit.application(started=True)
    last_sweep = 0.0
    try:
        while not stop.wait(0.5):
            if worker is not None:
                worker.check()
            if time.monotonic() - last_sweep > SWEEP_INTERVAL_S:
                last_sweep = time.monotonic()
                spool.sweep_done(cfg.spool.retention_hours)
                spool.sweep_tmp()
    finally:
        pump.set()
        sweeper.set()
        watcher.stop()
        scp.stop()
        log.info("listener stopped; stopping the worker")
        if worker is not None:
            worker.stop()
        audit.application(started=False)
        if audit_sender is not None:
            audit_sender.stop(AUDIT_FLUSH_TIMEOUT_S)
        exporter.shutdown()
        log.info("stopped")
    return 0
