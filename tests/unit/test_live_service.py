"""Live rules in the router's processes: the serve process audits what it notices, logs
no rule text, and each worker pool process watches its rules from its start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery.signals import worker_process_init, worker_process_shutdown
from structlog.testing import capture_logs

from router import queue, runtime
from router.config import ConfigError, RouterConfig, load_config
from router.rules.live import LiveRuleset
from router.service import live_rules, load_rules_at_start, readiness_check
from router.spool import Spool
from tests.support.waiting import wait_until

GOOD = "rules:\n  - {name: all, forward: [pacs]}\n"
LEAKY = (
    'rules:\n  - name: vip\n    match: {PatientID: {regex: "LEAKID123("}}\n    forward: [pacs]\n'
)


def make_config(tmp_path: Path, rules: str) -> RouterConfig:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(rules)
    path = tmp_path / "router.yaml"
    path.write_text(
        f"broker_url: redis://127.0.0.1:1/0\n"
        f"rules: {tmp_path / 'rules'}\n"
        f"spool: {{dir: {tmp_path / 'spool'}}}\n"
        f"audit: {{file: {tmp_path / 'audit.jsonl'}}}\n"
        "destinations:\n  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}\n"
    )
    return load_config(path, environ={})


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def emit(self, event: str, **fields: object) -> None:
        self.events.append((event, fields))


def test_a_refusal_noticed_through_readyz_is_audited_once(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, LEAKY)
    audit = FakeAudit()
    rules = live_rules(cfg, audit)
    spool = Spool(cfg.spool.dir)
    spool.ensure()
    for _probe in range(3):
        assert "no valid ruleset loaded" in readiness_check(cfg, spool, rules)
    assert [(e, f["status"]) for e, f in audit.events] == [("rules_reloaded", "refused")]
    assert "LEAKID123(" in str(audit.events[0][1]["detail"])


def test_a_load_in_the_serve_process_is_audited(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, GOOD)
    audit = FakeAudit()
    version = live_rules(cfg, audit).current().version
    assert audit.events == [
        ("rules_reloaded", {"status": "loaded", "ruleset_version": version, "detail": "1 rules"})
    ]


def test_start_up_log_names_places_not_the_rule_text(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, LEAKY)
    rules = live_rules(cfg, FakeAudit())
    with capture_logs() as logs:
        load_rules_at_start(rules)
    (start_up,) = [e for e in logs if e["event"].startswith("no valid ruleset at start-up")]
    assert start_up["problems"] == [f"{tmp_path / 'rules' / 'r.yaml'}:3"]
    assert start_up["problem_count"] == 1
    assert "rules lint" in start_up["hint"]
    assert "LEAK" not in repr(logs)


@pytest.fixture
def pool_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LiveRuleset]:
    """A pool process whose runtime holds ``rules``; its watcher is stopped afterwards."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(GOOD)
    rules = LiveRuleset(tmp_path / "rules", ("pacs",), interval_s=3600)
    monkeypatch.setattr(runtime, "runtime", lambda: SimpleNamespace(rules=rules))
    yield rules
    queue._stop_watching_rules()


def test_a_new_pool_process_watches_its_rules(pool_process: LiveRuleset) -> None:
    worker_process_init.send(sender=None)
    assert queue._watcher is not None and queue._watcher.rules is pool_process
    wait_until(lambda: pool_process._ruleset is not None, 5, "the first load, with no task")
    watcher = queue._watcher
    worker_process_shutdown.send(sender=None, pid=0, exitcode=0)
    assert queue._watcher is None and not watcher.running


def test_a_pool_process_without_a_runtime_starts_anyway(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise ConfigError("router.yaml: cannot read config")

    monkeypatch.setattr(runtime, "runtime", broken)
    with capture_logs() as logs:
        queue._watch_rules()
    assert queue._watcher is None
    assert [e["error"] for e in logs if e["log_level"] == "error"] == ["ConfigError"]
