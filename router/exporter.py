"""The metrics port: ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (able to work).

``/readyz`` answers 503 with the reasons when the broker is unreachable, the spool
is not writable or low on space, or no valid ruleset is loaded, so that a load
balancer or Kubernetes stops sending modalities to a router that would refuse them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

ReadinessCheck = Callable[[], list[str]]
"""Returns the reasons the router is not ready; empty when it is."""


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


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


def start_exporter(host: str, port: int, readiness: ReadinessCheck) -> ThreadingHTTPServer:
    """Serve the metrics port in a daemon thread; returns the server (for its port)."""
    handler = type("MetricsHandler", (_Handler,), {"readiness": staticmethod(readiness)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
