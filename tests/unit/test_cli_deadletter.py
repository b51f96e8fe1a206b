"""``dicom-router deadletter`` and ``echo``: what an operator is told.

The commands run in a child process: they point the shared Celery app at the
test's broker, which must not leak into other tests.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from router.deadletters import DeadLetters
from tests.support.router_proc import RedisServer

RECEIVED_AT = 1_700_000_000.25
RECEIVED_AT_ISO = "2023-11-14T22:13:20+00:00"


def run(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *argv, "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def config(tmp_path: Path, redis_server: RedisServer) -> Path:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: r, forward: [pacs]}\n", encoding="utf-8")
    path = tmp_path / "router.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        broker_url: {redis_server.url}
        spool: {{dir: {tmp_path / "spool"}}}
        rules: {rules}
        destinations:
          pacs: {{ae_title: PACS, host: 127.0.0.1, port: 4242}}
        """),
        encoding="utf-8",
    )
    return path


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def test_show_needs_an_id(config: Path) -> None:
    shown = run(config, "deadletter", "show")
    assert shown.returncode == 2
    assert "the following arguments are required: ID" in shown.stderr
    assert shown.stdout == ""


def test_show_prints_times_as_iso_8601_utc(config: Path, redis_server: RedisServer) -> None:
    meta = {"sop_instance_uid": "1.2.3", "received_at": RECEIVED_AT}
    letter = DeadLetters(redis_server.client()).add("key-1", "pacs", "permanent", "0xC000", 1, meta)
    shown = run(config, "deadletter", "show", letter.id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"dead_at: {iso(letter.dead_at)}" in lines
    assert f"  received_at: {RECEIVED_AT_ISO}" in lines
    assert "attempts: 1" in lines and "destination: pacs" in lines
    listed = run(config, "deadletter", "list")
    assert f"{letter.id}  {iso(letter.dead_at)}  pacs" in listed.stdout


@pytest.mark.parametrize("action", ["retry", "purge"])
def test_all_on_an_empty_store_says_so(config: Path, action: str) -> None:
    done = run(config, "deadletter", action, "--all")
    assert (done.returncode, done.stdout, done.stderr) == (0, "no dead letters\n", "")


@pytest.mark.parametrize("action", ["retry", "purge"])
def test_retry_and_purge_still_need_ids_or_all(config: Path, action: str) -> None:
    done = run(config, "deadletter", action)
    assert done.returncode == 2
    assert f"deadletter {action}: name IDs or --all" in done.stderr


def test_echo_with_a_long_ae_title_says_what_is_wrong(config: Path) -> None:
    echoed = run(config, "echo", "A_VERY_LONG_AE_TITLE@127.0.0.1:104")
    assert echoed.returncode == 2
    assert echoed.stderr == (
        "dicom-router echo: AE title 'A_VERY_LONG_AE_TITLE' is longer than 16 characters\n"
    )
