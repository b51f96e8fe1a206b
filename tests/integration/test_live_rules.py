"""Live rules with no traffic: every process of a real router loads or refuses an edit
within seconds, and says so in /metrics and the audit trail (never the rule text in
its log).

``serve --workers 2`` runs three processes holding a ruleset: the SCP process and two
worker pool processes. ``ruleset_info`` is summed across them with ``livemax``, so an
old version at 0 means every process has moved on.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port, wait_for_port
from tests.support.router_proc import (
    RedisServer,
    RouterProcess,
    standalone_worker,
    start_router,
    write_config,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PROCESSES = 3  # serve, and its worker's two pool processes
NOTICE_S = 8.0  # checks every 2 s; a pool process may start a little late
DEST = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}}
V1 = "rules:\n  - name: all\n    forward: [pacs]\n"
V2 = "rules:\n  - name: everything\n    forward: [pacs]\n"
LEAKY = (
    "rules:\n"
    "  - name: vip\n"
    "    match:\n"
    '      PatientID: {regex: "LEAKID123("}\n'
    "    forward: [pacs]\n"
)


def replace_rules(rules_dir: Path, text: str) -> None:
    """Swap the rule file in one step, as an editor saving or a ConfigMap update does."""
    tmp = rules_dir / ".rules.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, rules_dir / "rules.yaml")


def reloads(events: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
    return [e for e in events if e["status"] == status]


def metric(text: str, name: str, **labels: str) -> float | None:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(label_text)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


@pytest.fixture
def router(tmp_path: Path, redis_server: RedisServer) -> Iterator[RouterProcess]:
    path, config = write_config(tmp_path / "router", redis_server.url, DEST, V1)
    router = start_router(path, config, workers=2)
    try:
        yield router
    finally:
        router.stop()


def loaded_versions(router: RouterProcess) -> list[str]:
    return [e["ruleset_version"] for e in reloads(router.audit_events("rules_reloaded"), "loaded")]


def test_an_edit_reaches_every_process_with_no_traffic(router: RouterProcess) -> None:
    # Every process loads at start, whether or not an instance ever arrives.
    wait_until(lambda: len(loaded_versions(router)) == PROCESSES, NOTICE_S, "3 first loads")
    (v1,) = set(loaded_versions(router))

    replace_rules(router.workdir / "rules", V2)
    wait_until(
        lambda: len(loaded_versions(router)) == 2 * PROCESSES, NOTICE_S, "the edit in 3 processes"
    )
    (v2,) = set(loaded_versions(router)[PROCESSES:])
    assert v2 != v1

    def every_process_on_v2() -> bool:
        _status, text = router.http("/metrics")
        info = "dicom_router_ruleset_info"
        return metric(text, info, version=v2) == 1.0 and metric(text, info, version=v1) == 0.0

    wait_until(every_process_on_v2, NOTICE_S, "ruleset_info: v2 at 1, v1 at 0 everywhere")
    assert len(loaded_versions(router)) == 2 * PROCESSES  # one event per process and edit


def test_a_broken_edit_is_refused_with_no_traffic_and_logged_without_its_text(
    router: RouterProcess,
) -> None:
    wait_until(lambda: len(loaded_versions(router)) == PROCESSES, NOTICE_S, "3 first loads")

    replace_rules(router.workdir / "rules", LEAKY)

    def refusals() -> list[dict[str, Any]]:
        return reloads(router.audit_events("rules_reloaded"), "refused")

    wait_until(lambda: len(refusals()) == PROCESSES, NOTICE_S, "a refusal from each process")
    assert all("rules.yaml:4" in e["detail"] and "LEAKID123(" in e["detail"] for e in refusals())

    def refused_total() -> float | None:
        _status, text = router.http("/metrics")
        return metric(text, "dicom_router_rules_reload_total", outcome="refused")

    wait_until(lambda: refused_total() == float(PROCESSES), NOTICE_S, "refusals counted")
    time.sleep(5)  # checked again and again: the same broken file is refused once per process
    assert len(refusals()) == PROCESSES and refused_total() == float(PROCESSES)
    log = router.log_text()
    assert "ruleset refused" in log and "rules.yaml:4" in log and "rules lint" in log
    assert "LEAK" not in log


def test_a_standalone_worker_watches_its_rules(tmp_path: Path, redis_server: RedisServer) -> None:
    """``dicom-router worker`` alone: its pool processes and the process serving its
    metrics port all pick up an edit with no traffic."""
    path, _config = write_config(tmp_path / "router", redis_server.url, DEST, V1)
    rules_dir = path.parent / "rules"
    audit_path = path.parent / "audit.jsonl"
    port = free_port()

    def loaded() -> list[str]:
        lines = audit_path.read_text().splitlines() if audit_path.exists() else []
        events = [json.loads(line) for line in lines]
        return [e["ruleset_version"] for e in events
                if e["event"] == "rules_reloaded" and e["status"] == "loaded"]  # fmt: skip

    with standalone_worker(path, port, tmp_path / "worker.log"):
        wait_for_port("127.0.0.1", port, 30)
        wait_until(lambda: len(loaded()) == PROCESSES, 30, "3 first loads")
        (v1,) = set(loaded())
        replace_rules(rules_dir, V2)
        wait_until(lambda: len(loaded()) == 2 * PROCESSES, NOTICE_S, "the edit in 3 processes")
        (v2,) = set(loaded()[PROCESSES:])

        def every_process_on_v2() -> bool:
            text = get(port, "/metrics")
            info = "dicom_router_ruleset_info"
            return metric(text, info, version=v2) == 1.0 and metric(text, info, version=v1) == 0.0

        wait_until(every_process_on_v2, NOTICE_S, "ruleset_info: v2 at 1, v1 at 0 everywhere")
