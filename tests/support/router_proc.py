"""Run the real router (``dicom-router serve``) and a private Redis as test processes.

Each test session gets its own ``redis-server`` on a free port, so tests never see
another run's queues and can stop or restart the broker at will.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.support.ports import free_port, wait_for_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1."""

    def __init__(self, workdir: Path, port: int | None = None, durable: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.durable = durable  # AOF with fsync on every write, as a production broker
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.durable else "no", "--appendfsync", "always",
             "--dir", str(self.workdir), "--daemonize", "no",
             "--maxmemory-policy", "noeviction", "--logfile", str(self.workdir / "redis.log")],
        )  # fmt: skip
        wait_for_port("127.0.0.1", self.port, 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@dataclass
class RouterProcess:
    """A running ``dicom-router serve --workers N`` with its files and ports."""

    workdir: Path
    config_path: Path
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def audit_path(self) -> Path:
        return self.workdir / "audit.jsonl"

    @property
    def spool_dir(self) -> Path:
        return self.workdir / "spool"

    def audit_events(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        # Only whole lines: a line being written right now has no newline yet.
        lines = self.audit_path.read_text().split("\n")[:-1]
        records = [json.loads(line) for line in lines if line.strip()]
        return [r for r in records if event is None or r["event"] == event]

    def wait_for_audit(self, event: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.audit_events(event)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the router and every process it started (its own process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def write_config(
    workdir: Path,
    broker_url: str,
    destinations: dict[str, dict[str, Any]],
    rules_yaml: str,
    **overrides: Any,
) -> tuple[Path, dict[str, Any]]:
    """A router.yaml on free ports with its spool, audit and rules inside ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules_dir = workdir / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "rules.yaml").write_text(rules_yaml)
    config: dict[str, Any] = {
        "ae_title": "ROUTER",
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "spool": {"dir": "spool", "min_free_mb": 1, "retention_hours": 0},
        "broker_url": broker_url,
        "rules": "rules",
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "audit": {"file": "audit.jsonl"},
        "destinations": destinations,
    }
    config.update(overrides)
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def start_router(
    config_path: Path,
    config: dict[str, Any],
    workers: int = 2,
    timeout: float = 30,
    log_level: str = "INFO",
) -> RouterProcess:
    """Start ``dicom-router serve`` and wait until its port and /readyz answer."""
    workdir = config_path.parent
    log_path = workdir / "router.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["ROUTER_LOG_LEVEL"] = log_level
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "--config", str(config_path), "serve",
             "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env,
            start_new_session=True,
        )  # fmt: skip
    router = RouterProcess(
        workdir=workdir,
        config_path=config_path,
        port=int(config["listen"]["port"]),
        metrics_port=int(config["metrics"]["port"]),
        proc=proc,
        log_path=log_path,
        config=config,
    )
    try:
        wait_for_port("127.0.0.1", router.port, timeout)
        wait_for_port("127.0.0.1", router.metrics_port, timeout)
        if workers > 0:
            _wait_worker_ready(router, timeout)
    except Exception:
        router.stop()
        raise RuntimeError(f"router did not start:\n{router.log_text()[-3000:]}") from None
    return router


def _wait_worker_ready(router: RouterProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if router.proc.poll() is not None:
            raise RuntimeError("router exited")
        if " ready." in router.log_text():
            return
        time.sleep(0.1)
    raise TimeoutError("worker not ready")


def running_router(*args: Any, **kwargs: Any) -> Iterator[RouterProcess]:
    """Generator form of :func:`start_router` for fixtures (stops it afterwards)."""
    router = start_router(*args, **kwargs)
    try:
        yield router
    finally:
        router.stop()


@contextlib.contextmanager
def standalone_worker(config: Path, metrics_port: int, log_path: Path) -> Iterator[None]:
    """``dicom-router worker --concurrency 2 --metrics-port PORT`` for a ``with`` block,
    in its own session (stopped with SIGTERM, SIGKILL after 30 s); output to ``log_path``.
    The test's own ROUTER_* settings are not passed on: the config file is the worker's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ROUTER_") and k != "PROMETHEUS_MULTIPROC_DIR"}  # fmt: skip
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "--config", str(config), "worker",
             "--concurrency", "2", "--metrics-port", str(metrics_port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
