"""How a failed attempt is counted and audited: by what happens next, not by the status
class alone. Deliveries run in this process against a real Redis and real peers
(a port nobody listens on, a capturing SCP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from router import deliver as deliver_module
from router.audit_messages import AuditContext, Node, audit_message
from router.config import RouterConfig
from router.deliver import deliver
from router.deliveries import pending_key
from router.runtime import Runtime, build_runtime
from tests.support.capture_scp import CaptureSCP
from tests.support.ports import free_port
from tests.support.router_proc import RedisServer
from tests.support.synthetic import write_ct_series
from tests.support.syslog_receiver import validate_audit_xml

pytestmark = pytest.mark.integration

TWO_TRIES = {"max_attempts": 2, "initial_delay": "0.1s", "max_delay": "0.2s"}
Queued = list[tuple[str, str, dict[str, Any]]]


def _destination(ae_title: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"ae_title": ae_title, "host": "127.0.0.1", "port": port, "timeout": "3s",
            "retry": TWO_TRIES, **extra}  # fmt: skip


def _runtime(tmp_path: Path, redis_url: str, backup_port: int) -> Runtime:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text("rules:\n  - name: all\n    forward: [primary]\n")
    cfg = RouterConfig.model_validate({
        "broker_url": redis_url,
        "spool": {"dir": str(tmp_path / "spool")},
        "rules": str(tmp_path / "rules"),
        "audit": {"file": str(tmp_path / "audit.jsonl")},
        "destinations": {
            "primary": _destination("PRIMARY", free_port(), alternate="backup"),  # refused
            "backup": _destination("BACKUP", backup_port),
            "lonely": _destination("LONELY", free_port()),  # refused, no alternate
        },
    })  # fmt: skip
    rt = build_runtime(cfg)
    rt.spool.ensure()
    return rt


@pytest.fixture()
def queued(monkeypatch: pytest.MonkeyPatch) -> Queued:
    """Forward tasks the deliveries queue (the alternate's), captured instead of sent."""
    tasks: Queued = []
    monkeypatch.setattr(
        deliver_module, "enqueue_forward", lambda key, dest, meta: tasks.append((key, dest, meta))
    )
    return tasks


def _spooled(rt: Runtime, tmp_path: Path, destinations: list[str]) -> tuple[str, dict[str, Any]]:
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=16, cols=16, seed=3)
    key = rt.spool.write_bytes(path.read_bytes())
    meta = {"sop_instance_uid": "1.2.826.0.1.3680043.8.498.1", "study_instance_uid": "1.2.3",
            "calling_ae": "CT01", "peer": "127.0.0.1:4000", "rule": "all"}  # fmt: skip
    rt.deliveries.expect(key, destinations, tasks={d: meta for d in destinations})
    return key, meta


def _forward_total(destination: str, outcome: str) -> float:
    labels = {"destination": destination, "outcome": outcome}
    return REGISTRY.get_sample_value("dicom_router_forward_total", labels) or 0.0


def _events(rt: Runtime, event: str) -> list[dict[str, Any]]:
    lines = rt.cfg.audit.file.read_text().splitlines() if rt.cfg.audit.file.exists() else []
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _fail_over_to_backup(tmp_path: Path, redis_server: RedisServer, queued: Queued) -> Runtime:
    """The primary gives up on its last attempt; the alternate's queued task delivers."""
    with CaptureSCP(ae_title="BACKUP") as backup:
        rt = _runtime(tmp_path, redis_server.url, backup.port)
        key, meta = _spooled(rt, tmp_path, ["primary"])
        deliver(rt, key, "primary", meta, attempt=2)
        ((_key, alternate, alternate_meta),) = queued
        deliver(rt, key, alternate, alternate_meta, attempt=1)
        backup.wait_for_count(1, timeout=20)
        rt.pool.close_all()
    return rt


def test_retry_means_another_attempt_follows_and_failed_means_none_does(
    tmp_path: Path, redis_server: RedisServer, queued: Queued
) -> None:
    rt = _runtime(tmp_path, redis_server.url, free_port())
    key, meta = _spooled(rt, tmp_path, ["lonely"])
    retry, failed = _forward_total("lonely", "retry"), _forward_total("lonely", "failed")

    deliver(rt, key, "lonely", meta, attempt=1)  # transient failure, one attempt left
    assert (_forward_total("lonely", "retry"), _forward_total("lonely", "failed")) == (
        retry + 1, failed,
    )  # fmt: skip
    assert rt.deadletters.counts().get("lonely", 0) == 0

    deliver(rt, key, "lonely", meta, attempt=2)  # the same failure, no attempt left
    assert (_forward_total("lonely", "retry"), _forward_total("lonely", "failed")) == (
        retry + 1, failed + 1,
    ), "the last attempt is given up on: nothing will retry it"  # fmt: skip
    assert rt.deadletters.counts()["lonely"] == 1
    (dead,) = _events(rt, "dead_lettered")
    assert dead["status"].startswith("retries exhausted: ")


def test_a_fail_over_counts_as_failed_and_audits_the_primary_as_given_up(
    tmp_path: Path, redis_server: RedisServer, queued: Queued
) -> None:
    rt = _runtime(tmp_path, redis_server.url, free_port())
    key, meta = _spooled(rt, tmp_path, ["primary"])
    retry, failed = _forward_total("primary", "retry"), _forward_total("primary", "failed")

    deliver(rt, key, "primary", meta, attempt=2)

    assert _forward_total("primary", "failed") == failed + 1
    assert _forward_total("primary", "retry") == retry
    (given_up,) = _events(rt, "forward_failed")  # one event for the one attempt
    assert given_up["destination"] == "primary"
    assert given_up["attempt"] == 2
    assert given_up["status"].startswith("retries exhausted: ")
    assert given_up["status"].endswith("; sent to the alternate backup")
    assert given_up["alternate"] == "backup"
    assert _events(rt, "dead_lettered") == []
    assert queued == [(key, "backup", {**meta, "alternate_of": "primary"})]
    state = redis_server.client().hget(pending_key(key), "backup")
    assert state is not None and state.startswith(b"alternate-of-primary@")


def test_the_alternate_says_which_destination_it_stands_in_for(
    tmp_path: Path, redis_server: RedisServer, queued: Queued
) -> None:
    rt = _fail_over_to_backup(tmp_path, redis_server, queued)
    (forwarded,) = _events(rt, "forwarded")
    assert forwarded["destination"] == "backup"
    assert forwarded["alternate_of"] == "primary"
    assert forwarded["status"].startswith("0x0000")
    (failed,) = _events(rt, "forward_failed")
    assert "alternate_of" not in failed  # the primary stands in for nobody


def test_dicom_audit_messages_of_a_fail_over_name_each_destination(
    tmp_path: Path, redis_server: RedisServer, queued: Queued
) -> None:
    """The primary's given-up attempt is a failed transfer to the primary (outcome 4:
    the transfer goes on elsewhere), the alternate's a transfer to the alternate."""
    rt = _fail_over_to_backup(tmp_path, redis_server, queued)
    nodes = {n: Node(d.ae_title, d.host) for n, d in rt.cfg.destinations.items()}
    ctx = AuditContext("ROUTER", "router1", "ROUTER", pid=1, destinations=nodes)

    def message(record: dict[str, Any]) -> Any:
        body = audit_message(record, ctx)
        assert body is not None
        return validate_audit_xml(body)

    def receiver(root: Any) -> str:
        (node,) = [p for p in root.findall("ActiveParticipant")
                   if p.find("RoleIDCode").get("csd-code") == "110152"]  # fmt: skip
        return str(node.get("AlternativeUserID"))

    (failed,) = _events(rt, "forward_failed")
    root = message(failed)
    event = root.find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == "4"
    assert "sent to the alternate backup" in event.find("EventOutcomeDescription").text
    assert receiver(root) == "AETITLES=PRIMARY"
    (forwarded,) = _events(rt, "forwarded")
    root = message(forwarded)
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "0"
    assert receiver(root) == "AETITLES=BACKUP"


def test_a_late_task_for_a_settled_delivery_does_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Every destination booked, the file released; a task redelivered late finds no
    file and nothing pending: no failure to report, nothing to dead-letter."""
    rt = _runtime(tmp_path, redis_server.url, free_port())
    key, meta = _spooled(rt, tmp_path, ["lonely"])
    rt.deliveries.delivered(key, "lonely", meta["sop_instance_uid"], "digest")
    rt.spool.discard(key)
    deliver(rt, key, "lonely", meta, 1)
    assert _events(rt, "forward_failed") == [] and rt.deadletters.list() == []


def test_a_delivery_whose_file_is_gone_is_dead_lettered(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Still pending, but its spool file is gone (removed by hand, a lost volume):
    nothing can ever send it. Dead-lettered, visible, instead of failing at every
    sweep for ever."""
    rt = _runtime(tmp_path, redis_server.url, free_port())
    key, meta = _spooled(rt, tmp_path, ["lonely"])
    rt.spool.discard(key)
    deliver(rt, key, "lonely", meta, 1)
    (letter,) = rt.deadletters.list()
    assert (letter.destination, letter.last_status) == ("lonely", "spool file missing")
    assert [e["status"] for e in _events(rt, "dead_lettered")] == [
        "permanent failure: spool file missing"
    ]
    state = redis_server.client().hget(pending_key(key), "lonely")
    assert state is not None and state.startswith(b"dead-")  # the sweep leaves it alone


def test_no_fail_over_to_an_alternate_that_owes_the_instance_already(
    tmp_path: Path, redis_server: RedisServer, queued: Queued
) -> None:
    """The alternate is also a destination of this instance's rules (another copy of
    it, say). One pending entry per destination cannot hold both deliveries: the one
    booked first would clear it and release the file the other still needs. The
    primary's delivery is dead-lettered instead, saying why; the alternate's own stays."""
    rt = _runtime(tmp_path, redis_server.url, free_port())
    key, meta = _spooled(rt, tmp_path, ["primary", "backup"])

    deliver(rt, key, "primary", meta, attempt=2)

    assert queued == []
    (letter,) = rt.deadletters.list()
    assert letter.destination == "primary"
    assert letter.last_status.endswith("; alternate backup already has its own delivery")
    pending = redis_server.client().hgetall(pending_key(key))
    assert pending[b"backup"].startswith(b"queued@")  # its own delivery, untouched
    assert pending[b"primary"].startswith(b"dead-")
