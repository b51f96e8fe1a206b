"""Scale-out mode: `serve` without workers plus a separate `dicom-router worker`.

The standalone worker routes and delivers, and exposes its own /metrics, /healthz
and /readyz on its metrics port, with the counts of its pool processes summed.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.ports import free_port, wait_for_port
from tests.support.router_proc import (
    RedisServer,
    standalone_worker,
    start_router,
    write_config,
)
from tests.support.synthetic import write_ct_series
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FORWARDED_TO_PACS = r'dicom_router_forward_total\{destination="pacs",outcome="success"\} (\S+)'


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def capture() -> Iterator[CaptureSCP]:
    with CaptureSCP() as scp:
        yield scp


def test_standalone_worker_delivers_and_exposes_its_metrics(
    tmp_path: Path, redis_server: RedisServer, capture: CaptureSCP
) -> None:
    dest = {"pacs": {"ae_title": capture.ae_title, "host": "127.0.0.1", "port": capture.port}}
    rules = "rules:\n  - name: all\n    forward: [pacs]\n"
    path, config = write_config(tmp_path / "router", redis_server.url, dest, rules)
    router = start_router(path, config, workers=0)
    worker_port = free_port()
    try:
        with standalone_worker(path, worker_port, tmp_path / "worker.log"):
            wait_for_port("127.0.0.1", worker_port, 30)
            assert _get(worker_port, "/healthz") == (200, "ok\n")
            wait_until(lambda: _get(worker_port, "/readyz") == (200, "ready\n"), 30, "worker ready")

            files = write_ct_series(tmp_path / "ct", 6, rows=64, cols=64, seed=21)
            sent = storescu(files, router.port, calling_ae="CT01")
            assert sent.returncode == 0, sent.stdout + sent.stderr
            capture.wait_for_count(6, timeout=60)

            def forwarded() -> float:
                _status, text = _get(worker_port, "/metrics")
                pattern = (
                    r'dicom_router_forward_total\{destination="pacs",outcome="success"\} (\S+)'
                )
                found = re.search(pattern, text)
                return float(found.group(1)) if found else 0.0

            wait_until(lambda: forwarded() == 6.0, 30, "forward_total on the worker's port")
            _status, text = _get(worker_port, "/metrics")
            assert 'dicom_router_queue_depth{queue="forward"}' in text
            # The SCP's endpoint counts what it received; the worker's, what it delivered.
            _status, scp_text = router.http("/metrics")
            assert 'dicom_router_instances_received_total{calling_ae="CT01"} 6.0' in scp_text

            router.stop()  # the broker stays up: the worker stays ready without the SCP
            assert _get(worker_port, "/readyz") == (200, "ready\n")
            redis_server.stop()
            wait_until(lambda: _get(worker_port, "/readyz")[0] == 503, 30, "worker not ready")
            assert "broker unreachable" in _get(worker_port, "/readyz")[1]
    finally:
        router.stop()
        redis_server.start()
