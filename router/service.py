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
from pathlib import Path
from types import FrameType

import redis

from router.audit import AuditLog
from router.config import RouterConfig, destination_syntaxes, load_salt
from router.exporter import BrokerCollector, start_exporter
from router.logs import get_logger
from router.queue import FORWARD_QUEUE, ROUTE_QUEUE, configure, enqueue_forward
from router.retries import RetrySchedule, start_pump_thread
from router.rules.live import LiveRuleset
from router.scp import StorageSCP
from router.spool import Spool

log = get_logger(__name__)

SWEEP_INTERVAL_S = 60.0
WORKER_STOP_TIMEOUT_S = 60.0


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


def serve(cfg: RouterConfig, config_path: Path, workers: int) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    configure(cfg)
    spool = Spool(cfg.spool.dir)
    spool.ensure()
    audit = AuditLog(cfg.audit.file, int(cfg.audit.max_mb * 1024 * 1024), cfg.audit.backups)
    rules = LiveRuleset(cfg.rules, destination_syntaxes(cfg), salt_available=bool(load_salt(cfg)))
    try:
        rules.current()
    except Exception as exc:
        log.error("no valid ruleset at start-up; instances will wait in the queue", error=str(exc))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    scp = StorageSCP(cfg, spool, audit)
    scp.start()
    pump = start_retry_pump(cfg)
    broker = BrokerCollector(
        redis.Redis.from_url(cfg.broker_url, socket_connect_timeout=1, socket_timeout=2),
        (ROUTE_QUEUE, FORWARD_QUEUE),
    )
    exporter = start_exporter(
        cfg.metrics.host, cfg.metrics.port, lambda: readiness_check(cfg, spool, rules), broker
    )
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
        scp.stop()
        log.info("listener stopped; stopping the worker")
        if worker is not None:
            worker.stop()
        exporter.shutdown()
        log.info("stopped")
    return 0
