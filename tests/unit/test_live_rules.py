"""router.rules.live.LiveRuleset: hot reload that refuses invalid edits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from structlog.testing import capture_logs

from router.audit import AuditLog
from router.rules import live as live_module
from router.rules.conditions import InstanceView
from router.rules.engine import decide
from router.rules.live import LiveRuleset, audit_reloads
from router.rules.loader import Ruleset, RulesetError
from router.rules.yamlsource import SourceError

DESTS = ("pacs", "research")
CT_TO_PACS = "rules:\n  - {name: ct, match: {Modality: CT}, forward: [pacs]}\n"
CT_TO_RESEARCH = "rules:\n  - {name: ct, match: {Modality: CT}, forward: [research]}\n"
INVALID = "rules:\n  - {name: ct, match: {Modalty: CT}, forward: [pacs]}\n"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, outcome: str, version: str, detail: str) -> None:
        self.calls.append((outcome, version, detail))

    @property
    def outcomes(self) -> list[str]:
        return [c[0] for c in self.calls]


_bump = [0]


def edit(path: Path, text: str) -> None:
    """Rewrite and move the mtime forward so the change is visible whatever the clock."""
    path.write_text(text, encoding="utf-8")
    _bump[0] += 10
    stamp = path.stat().st_mtime + _bump[0]
    os.utime(path, (stamp, stamp))


def ct() -> InstanceView:
    ds = Dataset()
    ds.Modality = "CT"
    return InstanceView(ds)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    return tmp_path / "rules"


def test_loads_and_reports(folder: Path) -> None:
    edit(folder / "r.yaml", CT_TO_PACS)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    ruleset = live.current()
    assert decide(ruleset, ct()).destinations == {"pacs": "ct"}
    assert recorder.calls == [("loaded", ruleset.version, "1 rules")]


def test_unchanged_files_keep_the_same_object(folder: Path) -> None:
    edit(folder / "r.yaml", CT_TO_PACS)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    first = live.current()
    assert live.current() is first
    assert live.current() is first
    assert recorder.outcomes == ["loaded"]


def test_picks_up_edited_file(folder: Path) -> None:
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    old = live.current()
    edit(path, CT_TO_RESEARCH)
    new = live.current()
    assert new.version != old.version
    assert decide(new, ct()).destinations == {"research": "ct"}
    assert recorder.outcomes == ["loaded", "loaded"]
    assert recorder.calls[-1][1] == new.version


def test_picks_up_added_file(folder: Path) -> None:
    edit(folder / "10.yaml", "rules:\n  - {name: a, match: {Modality: MR}, forward: [pacs]}\n")
    live = LiveRuleset(folder, DESTS, interval_s=0)
    assert decide(live.current(), ct()).unmatched
    edit(folder / "20.yaml", CT_TO_PACS)
    assert decide(live.current(), ct()).destinations == {"pacs": "ct"}


def test_invalid_edit_is_refused_and_old_ruleset_kept(folder: Path) -> None:
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    good = live.current()
    edit(path, INVALID)
    assert live.current() is good
    assert decide(live.current(), ct()).destinations == {"pacs": "ct"}
    assert recorder.outcomes == ["loaded", "refused"]
    _outcome, version, detail = recorder.calls[1]
    assert version == ""
    assert f"{path}:2:" in detail and "Modalty" in detail
    # Fixing the file is picked up again.
    edit(path, CT_TO_RESEARCH)
    assert decide(live.current(), ct()).destinations == {"research": "ct"}
    assert recorder.outcomes == ["loaded", "refused", "loaded"]


def test_unknown_destination_edit_is_refused(folder: Path) -> None:
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    good = live.current()
    edit(path, CT_TO_PACS.replace("[pacs]", "[nowhere]"))
    assert live.current() is good
    assert recorder.outcomes == ["loaded", "refused"]
    assert "unknown destination 'nowhere'" in recorder.calls[1][2]


def test_deleting_every_rule_file_keeps_old_ruleset(folder: Path) -> None:
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    good = live.current()
    path.unlink()
    assert live.current() is good
    assert recorder.outcomes == ["loaded", "refused"]


def test_reverting_to_identical_content_does_not_announce_a_new_version(folder: Path) -> None:
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    first = live.current()
    edit(path, CT_TO_PACS)  # touched, same content
    assert live.current() is first
    assert recorder.outcomes == ["loaded"]


def test_nothing_valid_ever_loaded_raises(folder: Path) -> None:
    path = folder / "r.yaml"
    edit(path, INVALID)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    with pytest.raises(RulesetError) as info:
        live.current()
    assert any("Modalty" in str(p) for p in info.value.problems)
    assert recorder.outcomes == ["refused"]
    edit(path, CT_TO_PACS)
    assert decide(live.current(), ct()).destinations == {"pacs": "ct"}


def test_missing_folder_raises(tmp_path: Path) -> None:
    live = LiveRuleset(tmp_path / "absent", DESTS, interval_s=0)
    with pytest.raises(RulesetError, match="no rule files found"):
        live.current()


def test_interval_delays_checks(folder: Path) -> None:
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    live = LiveRuleset(folder, DESTS, interval_s=3600)
    first = live.current()
    edit(path, CT_TO_RESEARCH)
    assert live.current() is first  # not re-checked within the interval
    live.interval_s = 0
    assert decide(live.current(), ct()).destinations == {"research": "ct"}


def test_a_kubernetes_configmap_update_is_picked_up(folder: Path) -> None:
    """Rules mounted from a ConfigMap (the Helm chart): each file is a symlink through
    ``..data`` to a timestamped folder, and an update swaps ``..data`` at once. The
    hidden folders are not rule files; the swap is an edit."""

    def publish(stamp: str, text: str) -> None:
        version = folder / f"..{stamp}"
        version.mkdir()
        edit(version / "r.yaml", text)
        link = folder / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, folder / "..data")

    publish("2026_11_27_08_00_00.1", CT_TO_PACS)
    (folder / "r.yaml").symlink_to("..data/r.yaml")
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    assert decide(live.current(), ct()).destinations == {"pacs": "ct"}
    publish("2026_11_27_08_05_00.2", CT_TO_RESEARCH)
    assert decide(live.current(), ct()).destinations == {"research": "ct"}
    assert recorder.outcomes == ["loaded", "loaded"]


LEAKY = (
    "rules:\n"
    "  - name: vip\n"
    "    match:\n"
    '      PatientID: {regex: "LEAKID123("}\n'
    "    forward: [pacs]\n"
    "  - name: old\n"
    "    match:\n"
    '      PatientBirthDate: {gt: "LEAK 1901-01-01"}\n'
    "    forward: [pacs]\n"
)


def test_refusal_log_names_places_not_the_rule_text(folder: Path) -> None:
    """A rule that names a patient must not put the patient into the application log;
    the audit detail (on_reload) keeps the messages."""
    path = folder / "r.yaml"
    edit(path, LEAKY)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    with capture_logs() as logs, pytest.raises(RulesetError):
        live.current()
    (refusal,) = [e for e in logs if e["event"].startswith("ruleset refused")]
    assert refusal["problems"] == [f"{path}:4", f"{path}:8"]
    assert refusal["problem_count"] == 2
    assert "dicom-router rules lint" in refusal["hint"]
    assert "LEAK" not in repr(logs)
    _outcome, _version, detail = recorder.calls[0]
    assert "LEAKID123(" in detail and "LEAK 1901-01-01" in detail


def test_refusal_log_lists_at_most_twenty_places_but_counts_all(folder: Path) -> None:
    rules = "".join(
        f"  - {{name: r{i}, match: {{Modalty: CT}}, forward: [pacs]}}\n" for i in range(25)
    )
    edit(folder / "r.yaml", "rules:\n" + rules)
    live = LiveRuleset(folder, DESTS, interval_s=0)
    with capture_logs() as logs, pytest.raises(RulesetError):
        live.current()
    (refusal,) = [e for e in logs if e["event"].startswith("ruleset refused")]
    assert len(refusal["problems"]) == 20
    assert refusal["problem_count"] == 25


def test_a_broken_edit_is_refused_once_not_on_every_check(folder: Path) -> None:
    """Checked every 2 s by a watcher, a broken file must not fill the audit trail."""
    path = folder / "r.yaml"
    edit(path, INVALID)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    for _ in range(3):
        with pytest.raises(RulesetError, match="Modalty"):
            live.current()
        live.refresh()
    assert recorder.outcomes == ["refused"]
    edit(path, INVALID.replace("ct", "ct2"))  # edited, still broken: said again
    live.refresh()
    assert recorder.outcomes == ["refused", "refused"]


def test_refresh_checks_now_whatever_the_interval(folder: Path) -> None:
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    live = LiveRuleset(folder, DESTS, interval_s=3600)
    live.current()
    edit(path, CT_TO_RESEARCH)
    live.refresh()
    assert decide(live.current(), ct()).destinations == {"research": "ct"}


def test_a_permission_fix_is_noticed_without_an_edit(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chmod changes neither content nor mtime; an unreadable file made readable must
    still be read again, now that a broken ruleset is not retried on every check."""
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    real_load = live_module.load_ruleset
    readable = [False]

    def load(*args: Any) -> Ruleset:
        if not readable[0]:  # as an unreadable file would (root reads any file)
            raise RulesetError([SourceError(path, 1, "cannot read rule file: denied")])
        return real_load(*args)

    monkeypatch.setattr(live_module, "load_ruleset", load)
    recorder = Recorder()
    live = LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=0)
    with pytest.raises(RulesetError, match="cannot read"):
        live.current()
    readable[0] = True
    with pytest.raises(RulesetError, match="cannot read"):
        live.current()  # nothing changed on disk: not read again
    path.chmod(0o600)
    assert decide(live.current(), ct()).destinations == {"pacs": "ct"}
    assert recorder.outcomes == ["refused", "loaded"]


def test_audit_reloads_writes_rules_reloaded_events(folder: Path, tmp_path: Path) -> None:
    path = folder / "r.yaml"
    edit(path, CT_TO_PACS)
    audit = AuditLog(tmp_path / "audit.jsonl")
    live = LiveRuleset(folder, DESTS, on_reload=audit_reloads(audit), interval_s=0)
    version = live.current().version
    edit(path, LEAKY)
    live.current()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["event"], r["status"], r["ruleset_version"]) for r in lines] == [
        ("rules_reloaded", "loaded", version),
        ("rules_reloaded", "refused", None),
    ]
    assert "LEAKID123(" in lines[1]["detail"]
