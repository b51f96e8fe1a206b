"""docs/rules-reference.md is generated from the compiler's tables and must be current."""

from __future__ import annotations

from pathlib import Path

from router.rules.actions import ACTIONS
from router.rules.conditions import OPERATORS
from router.rules.reference import render

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "rules-reference.md"


def test_checked_in_reference_is_current() -> None:
    assert CHECKED_IN.read_text() == render(), (
        "docs/rules-reference.md is stale: run "
        "`dicom-router rules reference > docs/rules-reference.md`"
    )


def test_every_operator_and_action_is_documented() -> None:
    text = render()
    for name in (*OPERATORS, *ACTIONS):
        assert f"| `{name}` |" in text, name
