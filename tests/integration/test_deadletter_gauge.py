"""``dicom_router_dead_letters{destination}`` has a sample, 0, for every configured
destination from start-up, so dashboards and alerts see 0 rather than "No data"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.deadletters import DeadLetters
from router.exporter import BrokerCollector
from tests.support.ports import free_port
from tests.support.router_proc import RedisServer, start_router, write_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def _samples(collector: BrokerCollector) -> dict[tuple[str, str], float]:
    return {
        (sample.name, next(iter(sample.labels.values()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_configured_destinations_have_a_zero_sample_and_counts_are_kept(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    store = DeadLetters(client)
    store.add("k1", "pacs", "retries exhausted", "0xA700", 8, {"sop_instance_uid": "1.2.3"})
    collector = BrokerCollector(client, ("route", "forward"), ("pacs", "archive"))

    samples = _samples(collector)
    assert samples[("dicom_router_dead_letters", "pacs")] == 1
    assert samples[("dicom_router_dead_letters", "archive")] == 0
    letter = store.list()[0]
    assert store.take(letter.id) is not None
    assert _samples(collector)[("dicom_router_dead_letters", "pacs")] == 0


def test_serve_exposes_zero_dead_letters_and_queue_depths_before_any_instance(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    dests: dict[str, dict[str, Any]] = {
        name: {"ae_title": name.upper(), "host": "127.0.0.1", "port": free_port()}
        for name in ("pacs", "archive")
    }
    rules = "rules:\n  - name: all\n    forward: [pacs, archive]\n"
    path, config = write_config(tmp_path / "router", redis_server.url, dests, rules)
    router = start_router(path, config, workers=0)  # no worker: serve alone has the zeros
    try:
        wanted = [
            'dicom_router_dead_letters{destination="pacs"} 0.0',
            'dicom_router_dead_letters{destination="archive"} 0.0',
            'dicom_router_queue_depth{queue="route"} 0.0',
            'dicom_router_queue_depth{queue="forward"} 0.0',
        ]

        def exposed() -> bool:
            _status, text = router.http("/metrics")
            return all(line in text.splitlines() for line in wanted)

        wait_until(exposed, 20, "zero samples for every destination and queue")
        assert router.audit_events("received") == []  # the zeros come from start-up
    finally:
        router.stop()
