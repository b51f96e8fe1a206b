"""Crashes and broker restarts, with real processes: what the SCP acknowledged is
delivered once the router or the broker is back.

A delivery that was on the wire when its worker was SIGKILLed may reach the
destination twice (the destination stored it, the router never learned it); the
tests allow at most as many duplicates as deliveries can be in flight.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import write_ct_series
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

RULES = "rules:\n  - name: all\n    forward: [pacs]\n"
IN_FLIGHT = 2  # worker processes, each with at most one delivery on the wire


def config_for(
    tmp_path: Path, redis_url: str, capture: CaptureSCP
) -> tuple[Path, dict[str, object]]:
    dest = {
        "pacs": {
            "ae_title": capture.ae_title,
            "host": "127.0.0.1",
            "port": capture.port,
            "retry": {"max_attempts": 30, "initial_delay": "0.5s", "max_delay": "2s"},
        }
    }
    return write_config(tmp_path / "router", redis_url, dest, RULES,
                        broker_visibility_timeout="10s")  # fmt: skip


def received_uids(router: RouterProcess) -> set[str]:
    return {e["sop_instance_uid"] for e in router.audit_events("received")}


def assert_delivered(capture: CaptureSCP, expected: set[str], max_duplicates: int) -> None:
    arrived = Counter(capture.sop_instance_uids())
    assert expected <= set(arrived), f"{len(expected - set(arrived))} acknowledged instances lost"
    duplicates = sum(n - 1 for n in arrived.values())
    assert duplicates <= max_duplicates


def worker_pid(router: RouterProcess) -> int:
    children = psutil.Process(router.proc.pid).children()
    (worker,) = [c for c in children if "worker" in " ".join(c.cmdline())]
    return int(worker.pid)


def test_worker_killed_mid_stream_is_replaced_and_nothing_is_lost(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with CaptureSCP() as capture:
        path, config = config_for(tmp_path, redis_server.url, capture)
        router = start_router(path, config)
        try:
            files = write_ct_series(tmp_path / "ct", 300, rows=128, cols=128, seed=21)
            sender = threading.Thread(target=storescu, args=(files, router.port))
            sender.start()
            wait_until(lambda: len(capture.received()) >= 60, 60, "deliveries to start")
            os.kill(worker_pid(router), signal.SIGKILL)
            sender.join(120)
            expected = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
            assert received_uids(router) == expected  # the SCP kept accepting meanwhile
            wait_until(lambda: expected <= set(capture.sop_instance_uids()), 120,
                       "every instance to arrive after the worker was replaced")  # fmt: skip
            assert_delivered(capture, expected, IN_FLIGHT)
            assert "worker exited; restarting" in router.log_text()
        finally:
            router.stop()


def test_router_killed_and_restarted_delivers_everything_acknowledged(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with CaptureSCP() as capture:
        path, config = config_for(tmp_path, redis_server.url, capture)
        router = start_router(path, config)
        files = write_ct_series(tmp_path / "ct", 200, rows=128, cols=128, seed=22)
        sender = threading.Thread(target=storescu, args=(files, router.port))
        sender.start()
        wait_until(lambda: len(router.audit_events("received")) >= 80, 60, "receipts")
        router.kill()  # SCP and workers, no chance to clean up
        sender.join(60)
        acknowledged = received_uids(router)
        assert 80 <= len(acknowledged) < 200
        restarted = start_router(path, config)
        try:
            wait_until(lambda: acknowledged <= set(capture.sop_instance_uids()), 120,
                       "every acknowledged instance to arrive after the restart")  # fmt: skip
            assert_delivered(capture, acknowledged, IN_FLIGHT)
        finally:
            restarted.stop()


def store_status(port: int, path: Path) -> int:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dcmread(path)).Status)
    finally:
        assoc.release()


def test_broker_restart_refuses_while_down_and_delivers_everything_after(
    tmp_path: Path,
) -> None:
    broker = RedisServer(tmp_path / "redis", durable=True)
    broker.start()
    with CaptureSCP() as capture:
        path, config = config_for(tmp_path, broker.url, capture)
        router = start_router(path, config)
        try:
            first = write_ct_series(tmp_path / "a", 50, rows=128, cols=128, seed=23)
            assert storescu(first, router.port).returncode == 0
            broker.stop()  # right after the acknowledgements: most are not delivered yet
            during = write_ct_series(tmp_path / "b", 5, rows=64, cols=64, seed=24)
            assert [store_status(router.port, f) for f in during] == [0xA700] * 5
            assert not (received_uids(router) & {str(dcmread(f).SOPInstanceUID) for f in during})
            time.sleep(2)
            broker.start()  # same port, same AOF file
            expected = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in first}
            wait_until(
                lambda: expected <= set(capture.sop_instance_uids()),
                120,
                "every acknowledged instance to arrive after the broker restart",
            )
            assert_delivered(capture, expected, IN_FLIGHT)
            # And the router accepts again.
            after = write_ct_series(tmp_path / "c", 3, rows=64, cols=64, seed=25)
            wait_until(lambda: store_status(router.port, after[0]) == 0, 30, "acceptance")
        finally:
            router.stop()
            broker.stop()


def test_sigterm_lets_an_open_association_finish_and_loses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with CaptureSCP() as capture:
        path, config = config_for(tmp_path, redis_server.url, capture)
        router = start_router(path, config)
        files = write_ct_series(tmp_path / "ct", 150, rows=256, cols=256, seed=26)
        result: list[int] = []
        sender = threading.Thread(
            target=lambda: result.append(storescu(files, router.port).returncode)
        )
        sender.start()
        wait_until(lambda: len(router.audit_events("received")) >= 20, 60, "receipts")
        router.proc.send_signal(signal.SIGTERM)
        sender.join(120)
        assert router.proc.wait(120) == 0
        # The modality's association was allowed to finish: every instance acknowledged.
        assert result == [0]
        expected = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert received_uids(router) == expected
        # Whatever was not delivered before the stop is delivered after a restart.
        restarted = start_router(path, config)
        try:
            wait_until(lambda: expected <= set(capture.sop_instance_uids()), 120,
                       "every instance to arrive after the restart")  # fmt: skip
            assert_delivered(capture, expected, IN_FLIGHT)
        finally:
            restarted.stop()
