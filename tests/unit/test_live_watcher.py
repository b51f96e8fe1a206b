"""router.rules.live.RulesWatcher: edits are loaded or refused without any traffic."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from router.rules.live import LiveRuleset, RulesWatcher
from tests.support.waiting import wait_until

DESTS = ("pacs", "research")
CT_TO_PACS = "rules:\n  - {name: ct, match: {Modality: CT}, forward: [pacs]}\n"
CT_TO_RESEARCH = CT_TO_PACS.replace("pacs]", "research]")
INVALID = "rules:\n  - {name: ct, match: {Modalty: CT}, forward: [pacs]}\n"
INTERVAL_S = 0.1


class Recorder:
    """An on_reload that remembers its calls, from whichever thread makes them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail_next = 0

    def __call__(self, outcome: str, version: str, detail: str) -> None:
        self.calls.append((outcome, version, detail))
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("audit trail not writable")

    @property
    def outcomes(self) -> list[str]:
        return [c[0] for c in self.calls]


_bump = [0]


def edit(path: Path, text: str) -> None:
    """Replace the file at once (as an editor or a ConfigMap swap does), mtime moved on."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    _bump[0] += 10
    stamp = tmp.stat().st_mtime + _bump[0]
    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    edit(tmp_path / "rules" / "r.yaml", CT_TO_PACS)
    return tmp_path / "rules"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def live(folder: Path, recorder: Recorder) -> LiveRuleset:
    # A long interval: only the watcher's own checks can notice anything.
    return LiveRuleset(folder, DESTS, on_reload=recorder, interval_s=3600)


@pytest.fixture
def watcher(live: LiveRuleset) -> Iterator[RulesWatcher]:
    watcher = RulesWatcher(live, interval_s=INTERVAL_S)
    yield watcher
    watcher.stop()


def test_loads_at_start_without_being_asked(watcher: RulesWatcher, recorder: Recorder) -> None:
    """A worker process with no traffic still loads its rules (and shows its version)."""
    watcher.start()
    wait_until(lambda: recorder.outcomes == ["loaded"], 5, "the first load")


def test_an_edit_is_loaded_with_no_traffic(
    folder: Path, watcher: RulesWatcher, recorder: Recorder, live: LiveRuleset
) -> None:
    watcher.start()
    wait_until(lambda: recorder.outcomes == ["loaded"], 5, "the first load")
    edit(folder / "r.yaml", CT_TO_RESEARCH)
    wait_until(lambda: recorder.outcomes == ["loaded", "loaded"], 5, "the edit loaded")
    assert live.current().version == recorder.calls[-1][1]


def test_a_broken_edit_is_refused_once_with_no_traffic(
    folder: Path, watcher: RulesWatcher, recorder: Recorder
) -> None:
    watcher.start()
    wait_until(lambda: recorder.outcomes == ["loaded"], 5, "the first load")
    edit(folder / "r.yaml", INVALID)
    wait_until(lambda: recorder.outcomes == ["loaded", "refused"], 5, "the refusal")
    threading.Event().wait(10 * INTERVAL_S)  # many more checks of the same broken file
    assert recorder.outcomes == ["loaded", "refused"]


def test_a_failing_check_is_logged_and_the_thread_goes_on(
    folder: Path, watcher: RulesWatcher, recorder: Recorder
) -> None:
    recorder.fail_next = 1  # the first load's audit write fails
    with capture_logs() as logs:
        watcher.start()
        wait_until(lambda: len(recorder.calls) == 1, 5, "the first load")
        edit(folder / "r.yaml", CT_TO_RESEARCH)
        wait_until(lambda: recorder.outcomes == ["loaded", "loaded"], 5, "the next edit")
    assert watcher.running
    failures = [e for e in logs if e["log_level"] == "error"]
    assert [e["error"] for e in failures] == ["OSError"]
    assert "not writable" not in repr(failures)  # the kind only, never the text


def test_stop_ends_the_thread_promptly(watcher: RulesWatcher, recorder: Recorder) -> None:
    watcher.start()
    wait_until(lambda: recorder.outcomes == ["loaded"], 5, "the first load")
    assert watcher.running
    watcher.stop(timeout_s=2)
    assert not watcher.running


def test_the_thread_is_a_daemon(watcher: RulesWatcher) -> None:
    """It must never keep a stopping process alive."""
    watcher.start()
    assert watcher._thread is not None and watcher._thread.daemon


def test_interval_has_a_floor(live: LiveRuleset) -> None:
    live.interval_s = 0
    assert RulesWatcher(live).interval_s > 0
    assert RulesWatcher(live, interval_s=2.0).interval_s == 2.0
