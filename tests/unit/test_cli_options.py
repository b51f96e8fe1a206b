"""The top-level options are accepted before and after the subcommand."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from router.cli import build_parser

COMMANDS = [
    ["serve"],
    ["worker"],
    ["echo", "pacs"],
    ["status"],
    ["deadletter", "list"],
    ["deadletter", "show", "abc"],
    ["deadletter", "retry", "--all"],
    ["rules", "lint"],
    ["rules", "test"],
    ["rules", "reference"],
    ["rules", "explain", "x.dcm"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_config_and_log_level_before_or_after_the_subcommand(command: list[str]) -> None:
    def parsed(argv: list[str]) -> tuple[str | None, str | None]:
        args = build_parser().parse_args(argv)
        return args.config, args.log_level

    after = ["--config", "after.yaml", "--log-level", "DEBUG"]
    before = ["--config", "before.yaml", "--log-level", "ERROR"]
    assert parsed([*command, *after]) == ("after.yaml", "DEBUG")
    assert parsed([*before, *command]) == ("before.yaml", "ERROR")
    assert parsed([*before, *command, *after]) == ("after.yaml", "DEBUG"), "after wins"
    assert parsed([*before, *command, "--config", "x.yaml"]) == ("x.yaml", "ERROR")
    assert parsed(command) == (None, None)


def test_between_rules_and_its_subcommand() -> None:
    args = build_parser().parse_args(["rules", "--config", "mid.yaml", "lint"])
    assert args.config == "mid.yaml"


def test_rules_lint_reads_the_config_given_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the config knows the destinations, so an unknown one proves it was read."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: r, forward: [nowhere]}\n", encoding="utf-8")
    config = tmp_path / "router.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        rules: {rules}
        destinations:
          pacs: {{ae_title: PACS, host: 127.0.0.1, port: 4242}}
        """),
        encoding="utf-8",
    )
    args = build_parser().parse_args(["rules", "lint", "--config", str(config)])
    assert args.func(args) == 1
    assert f"{rules}:2: rule 'r': unknown destination 'nowhere'" in capsys.readouterr().out
