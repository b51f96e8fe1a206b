"""router.rules.engine.decide: first match stops, continue goes on, de-duplication."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from router.rules.conditions import InstanceView
from router.rules.engine import Decision, decide
from router.rules.loader import CompiledRule, Ruleset, load_ruleset


def ruleset_from(tmp_path: Path, yaml_text: str) -> Ruleset:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return load_ruleset(path)


def instance(modality: str = "CT", calling_ae: str = "", **elements: str) -> InstanceView:
    ds = Dataset()
    ds.Modality = modality
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return InstanceView(ds, calling_ae=calling_ae)


RULES = """\
rules:
  - name: archive-everything
    forward: [archive]
    continue: true
  - name: ct-to-pacs
    match: {Modality: CT}
    forward: [pacs, archive]
  - name: ct-research
    match: {Modality: CT, StudyDescription: {contains: RESEARCH}}
    forward: [research]
  - name: mr
    match: {Modality: MR}
    forward: [pacs, research]
    continue: true
  - name: mr-too
    match: {Modality: MR}
    forward: [research, mr_pacs]
"""


@pytest.fixture
def rules(tmp_path: Path) -> Ruleset:
    return ruleset_from(tmp_path, RULES)


def test_first_match_stops(rules: Ruleset) -> None:
    decision = decide(rules, instance("CT", StudyDescription="RESEARCH HEAD"))
    assert decision.matched_rules == ("archive-everything", "ct-to-pacs")
    assert "research" not in decision.destinations  # ct-research never evaluated


def test_destinations_deduplicated_and_attributed_to_first_rule(rules: Ruleset) -> None:
    decision = decide(rules, instance("CT"))
    assert decision.destinations == {"archive": "archive-everything", "pacs": "ct-to-pacs"}
    assert list(decision.destinations) == ["archive", "pacs"]  # order of first choice


def test_continue_goes_on(rules: Ruleset) -> None:
    decision = decide(rules, instance("MR"))
    assert decision.matched_rules == ("archive-everything", "mr", "mr-too")
    assert decision.destinations == {
        "archive": "archive-everything",
        "pacs": "mr",
        "research": "mr",
        "mr_pacs": "mr-too",
    }
    assert not decision.unmatched


def test_only_continuing_rule_matches(rules: Ruleset) -> None:
    decision = decide(rules, instance("US"))
    assert decision.matched_rules == ("archive-everything",)
    assert decision.destinations == {"archive": "archive-everything"}
    assert decision.unmatched is False


def test_unmatched(tmp_path: Path) -> None:
    ruleset = ruleset_from(
        tmp_path, "rules:\n  - {name: ct, match: {Modality: CT}, forward: [pacs]}\n"
    )
    decision = decide(ruleset, instance("MR"))
    assert decision == Decision((), {}, {})
    assert decision.unmatched is True
    assert decide(ruleset, instance("CT")).unmatched is False


def test_empty_ruleset_leaves_everything_unmatched(tmp_path: Path) -> None:
    assert decide(ruleset_from(tmp_path, "rules: []\n"), instance()).unmatched


def test_disabled_rule_never_matches(tmp_path: Path) -> None:
    ruleset = ruleset_from(
        tmp_path,
        "rules:\n"
        "  - {name: off-rule, match: {Modality: CT}, forward: [x], enabled: false}\n"
        "  - {name: ct, match: {Modality: CT}, forward: [pacs]}\n",
    )
    assert decide(ruleset, instance("CT")).matched_rules == ("ct",)


def test_association_subject_routes(tmp_path: Path) -> None:
    ruleset = ruleset_from(
        tmp_path,
        "rules:\n"
        "  - {name: from-er, match: {calling_ae: ER_CT}, forward: [er_pacs]}\n"
        "  - {name: rest, forward: [pacs]}\n",
    )
    assert decide(ruleset, instance(calling_ae="ER_CT")).destinations == {"er_pacs": "from-er"}
    assert decide(ruleset, instance(calling_ae="OTHER")).destinations == {"pacs": "rest"}


def test_same_rule_listing_destination_twice_sends_once(tmp_path: Path) -> None:
    ruleset = ruleset_from(tmp_path, "rules:\n  - {name: a, forward: [pacs, pacs]}\n")
    assert decide(ruleset, instance()).destinations == {"pacs": "a"}


@settings(max_examples=40, deadline=None)
@given(flags=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6))
def test_decide_agrees_with_reference_model(flags: list[tuple[bool, bool]]) -> None:
    """Rules i match when flag says so; each forwards to d{i} and shared; compare to a model."""
    compiled = tuple(
        CompiledRule(
            name=f"r{i}",
            predicate=(lambda view, m=match: m),
            forward=(f"d{i}", "shared"),
            continue_=cont,
            actions=(),
            file="f",
            line=i + 1,
            catch_all=False,
        )
        for i, (match, cont) in enumerate(flags)
    )
    ruleset = Ruleset(rules=compiled, unmatched="keep", version="v", files=("f",))
    expected_rules: list[str] = []
    for i, (match, cont) in enumerate(flags):
        if match:
            expected_rules.append(f"r{i}")
            if not cont:
                break
    decision = decide(ruleset, instance())
    assert decision.matched_rules == tuple(expected_rules)
    expected_dests = {f"d{r[1:]}": r for r in expected_rules}
    if expected_rules:
        expected_dests["shared"] = expected_rules[0]
    assert decision.destinations == expected_dests
    assert decision.unmatched is (not expected_rules)
