"""The metrics port: ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (able to work).

``/readyz`` answers 503 with the reasons when the broker is unreachable, the spool
is not writable or low on space, or no valid ruleset is loaded, so that a load
balancer or Kubernetes stops sending modalities to a router that would refuse them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import redis
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from router.deadletters import DeadLetters
from router.metrics import PREFIX

ReadinessCheck = Callable[[], list[str]]
"""Returns the reasons the router is not ready; empty when it is."""


class BrokerCollector:
    """Gauges read from Redis at scrape time: queue depths and dead letters.

    They describe shared state, not one process, so they are read where they live
    instead of being kept by any process.
    """

    def __init__(
        self, client: redis.Redis, queues: tuple[str, ...], destinations: tuple[str, ...] = ()
    ) -> None:
        self.client = client
        self.queues = queues
        self.destinations = destinations
        """Configured destinations: each has a sample, 0 before its first dead letter,
        so dashboards and alerts read 0 rather than "No data"."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depths = {queue: int(self.client.llen(queue)) for queue in self.queues}
            dead = dict.fromkeys(self.destinations, 0) | DeadLetters(self.client).counts()
        except redis.RedisError:
            return
        depth = GaugeMetricFamily(
            PREFIX + "queue_depth", "Tasks waiting in each queue.", labels=["queue"]
        )
        for queue, value in depths.items():
            depth.add_metric([queue], value)
        yield depth
        letters = GaugeMetricFamily(
            PREFIX + "dead_letters", "Deliveries given up on, by destination.",
            labels=["destination"],
        )  # fmt: skip
        for destination, value in dead.items():
            letters.add_metric([destination], max(0, value))
        yield letters


class AuditSyslogCollector:
    """``audit_syslog_pending``: DICOM audit messages waiting in the queue directory.

    Counted at scrape time from the directory every process writes to, so it is
    right whichever process queued the messages and whichever one sends them.
    """

    def __init__(self, pending: Callable[[], int]) -> None:
        self.pending = pending

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            value = self.pending()
        except OSError:
            return
        yield GaugeMetricFamily(
            PREFIX + "audit_syslog_pending",
            "DICOM audit messages queued on disk, not yet sent to the syslog collector.",
            value=value,
        )


class Collector(Protocol):
    def collect(self) -> Iterator[GaugeMetricFamily]: ...


_extra_collectors: list[Collector] = []


def add_collector(collector: Collector) -> None:
    """Expose ``collector`` on /metrics (of every exporter of this process)."""
    _extra_collectors.append(collector)


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Delegate(REGISTRY))
    for collector in _extra_collectors:
        registry.register(collector)
    return registry


class _Delegate:
    """Exposes the process-local default registry inside a per-scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        return iter(self.source.collect())


class _Handler(BaseHTTPRequestHandler):
    readiness: ReadinessCheck = staticmethod(lambda: [])

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(_registry()), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            problems = type(self).readiness()
            if problems:
                self._send(503, ("not ready: " + "; ".join(problems) + "\n").encode())
            else:
                self._send(200, b"ready\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def start_exporter(
    host: str, port: int, readiness: ReadinessCheck, broker: BrokerCollector | None = None
) -> ThreadingHTTPServer:
    """Serve the metrics port in a daemon thread; returns the server (for its port)."""
    if broker is not None:
        _extra_collectors.append(broker)
    handler = type("MetricsHandler", (_Handler,), {"readiness": staticmethod(readiness)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
