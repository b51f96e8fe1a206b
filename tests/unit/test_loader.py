"""router.rules.loader: rule files -> compiled Ruleset, or located problems."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom import Dataset

from router.rules.conditions import InstanceView
from router.rules.loader import Ruleset, RulesetError, load_ruleset, rule_files
from tests.support.files import write

DESTS = ("pacs", "research", "archive")


def load(folder: Path, destinations: tuple[str, ...] | None = DESTS) -> Ruleset:
    return load_ruleset(folder, destinations)


def problems_of(path: Path, destinations: tuple[str, ...] | None = DESTS) -> list[str]:
    """Every problem as 'file:line: message'."""
    with pytest.raises(RulesetError) as info:
        load_ruleset(path, destinations)
    rendered = [str(p) for p in info.value.problems]
    assert str(info.value) == "\n".join(rendered)
    return rendered


def only_problem(path: Path, destinations: tuple[str, ...] | None = DESTS) -> str:
    problems = problems_of(path, destinations)
    assert len(problems) == 1, problems
    return problems[0]


def view(**elements: str) -> InstanceView:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return InstanceView(ds)


GOOD = """\
rules:
  - name: ct
    match: {Modality: CT}
    forward: [pacs]
  - name: mr
    match: {Modality: MR}
    forward: [pacs, research]
    continue: true
"""


# --- happy path -----------------------------------------------------------------------
def test_loads_single_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rules.yaml", GOOD)
    ruleset = load(path)
    assert [r.name for r in ruleset.rules] == ["ct", "mr"]
    ct, mr = ruleset.rules
    assert ct.forward == ("pacs",)
    assert mr.forward == ("pacs", "research")
    assert (ct.continue_, mr.continue_) == (False, True)
    assert (ct.file, ct.line, mr.line) == (str(path), 2, 5)
    assert ruleset.files == (str(path),)
    assert ruleset.unmatched == "keep"
    assert re.fullmatch(r"[0-9a-f]{12}", ruleset.version)
    assert ct.predicate(view(Modality="CT")) and not ct.predicate(view(Modality="MR"))


def test_catch_all_flag(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.yaml",
        "rules:\n"
        "  - {name: a, match: {Modality: CT}, forward: [pacs]}\n"
        "  - {name: b, forward: [pacs], continue: true}\n"
        "  - {name: c, match: {}, forward: [pacs]}\n",
    )
    rules = load(tmp_path).rules
    assert [r.catch_all for r in rules] == [False, True, True]
    assert rules[2].predicate(view())


def test_empty_rules_list_is_valid(tmp_path: Path) -> None:
    ruleset = load(write(tmp_path, "r.yaml", "rules: []\nunmatched: discard\n"))
    assert ruleset.rules == ()
    assert ruleset.unmatched == "discard"


# --- file:line problems ---------------------------------------------------------------
def test_yaml_syntax_error_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - name: a\n    match:\n      Modality: CT\n     bad: 1\n    forward: [pacs]\n",
    )
    assert only_problem(path).startswith(f"{path}:5: invalid YAML")


def test_yaml_tab_error_line(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "rules:\n  - name: a\n\t  forward: [pacs]\n")
    assert only_problem(path).startswith(f"{path}:3: invalid YAML")


def test_duplicate_yaml_key_reported_at_second_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - name: a\n    forward: [pacs]\n    forward: [research]\n",
    )
    problem = only_problem(path)
    assert problem.startswith(f"{path}:4: ")
    assert "duplicate key 'forward'" in problem


def test_unknown_key_in_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - name: a\n    forward: [pacs]\n    destination: pacs\n",
    )
    assert only_problem(path) == f"{path}:4: destination: unknown key"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "rules: []\n\nrulez: []\n")
    assert only_problem(path) == f"{path}:3: rulez: unknown key"


def test_bad_unmatched_value(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "rules: []\nunmatched: drop\n")
    problem = only_problem(path)
    assert problem.startswith(f"{path}:2: unmatched: ")
    assert "'keep'" in problem and "'discard'" in problem


def test_missing_forward_reported_at_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - name: ok\n    forward: [pacs]\n  - name: a\n    match: {Modality: CT}\n",
    )
    problem = only_problem(path)
    assert problem.startswith(f"{path}:4: forward: ")
    assert "required" in problem.lower()


def test_missing_name(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "rules:\n  - forward: [pacs]\n")
    assert only_problem(path).startswith(f"{path}:2: name: ")


def test_rule_must_be_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path, "r.yaml", "rules:\n  - name: a\n    forward: [pacs]\n  - just-a-string\n"
    )
    assert only_problem(path) == f"{path}:4: a rule must be a mapping with name and forward"


def test_file_must_be_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "- name: a\n  forward: [pacs]\n")
    assert "a rule file is a mapping with a 'rules' list" in only_problem(path)


@pytest.mark.parametrize(
    ("match_lines", "line", "fragment"),
    [
        ("      Modalty: CT\n", 5, "unknown keyword or malformed tag 'Modalty'"),
        ("      '(0008,00ZZ)': CT\n", 5, "malformed tag '(0008,00ZZ)'"),
        ("      StudyDescription: {regex: '[a-'}\n", 5, "invalid regex '[a-'"),
        ("      Modality:\n        equal: CT\n", 6, "unknown operator 'equal'"),
        ("      all:\n        - Modality: CT\n        - Bogus: 1\n", 7, "'Bogus'"),
    ],
)
def test_condition_problems_are_located(
    tmp_path: Path, match_lines: str, line: int, fragment: str
) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - name: first\n    forward: [pacs]\n    match:\n"
        + match_lines
        + "    continue: true\n",
    )
    problem = only_problem(path)
    assert problem.startswith(f"{path}:{line}: rule 'first': "), problem
    assert fragment in problem


def test_unknown_destination_when_destinations_given(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - name: a\n    forward: [pacs]\n    continue: true\n"
        "  - name: b\n    forward: [pacs, nowhere]\n",
    )
    assert only_problem(path) == f"{path}:5: rule 'b': unknown destination 'nowhere'"


def test_destinations_not_checked_when_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "rules:\n  - name: b\n    forward: [nowhere]\n")
    assert load_ruleset(path, None).rules[0].forward == ("nowhere",)


def test_duplicate_rule_name_mentions_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n"
        "  - name: same\n"
        "    match: {Modality: CT}\n"
        "    forward: [pacs]\n"
        "  - name: same\n"
        "    match: {Modality: MR}\n"
        "    forward: [pacs]\n",
    )
    problem = only_problem(path)
    assert problem.startswith(f"{path}:5: duplicate rule name 'same'")
    assert f"(first at {path}:2)" in problem


def test_duplicate_rule_name_across_files(tmp_path: Path) -> None:
    first = write(
        tmp_path, "10-a.yaml", "rules:\n  - {name: x, match: {Modality: CT}, forward: [pacs]}\n"
    )
    second = write(
        tmp_path, "20-b.yaml", "\nrules:\n  - {name: x, match: {Modality: MR}, forward: [pacs]}\n"
    )
    problem = only_problem(tmp_path)
    assert problem.startswith(f"{second}:3: duplicate rule name 'x'")
    assert f"first at {first}:2" in problem


def test_action_that_cannot_apply_is_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - name: a\n    forward: [pacs]\n    actions:\n"
        "      - set: {StationName: X}\n      - set: {ReferencedStudySequence: X}\n",
    )
    assert only_problem(path) == (
        f"{path}:6: rule 'a': set: ReferencedStudySequence is a sequence; "
        "set applies to values only"
    )


def test_empty_actions_list_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "rules:\n  - {name: a, forward: [pacs], actions: []}\n")
    assert [r.name for r in load(path).rules] == ["a"]


# --- reachability ---------------------------------------------------------------------
def test_rule_after_catch_all_is_unreachable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n"
        "  - name: everything\n"
        "    forward: [pacs]\n"
        "  - name: never\n"
        "    match: {Modality: CT}\n"
        "    forward: [research]\n",
    )
    problem = only_problem(path)
    assert problem.startswith(f"{path}:4: rule 'never' can never be reached")
    assert f"'everything' ({path}:2)" in problem


def test_empty_match_mapping_is_a_catch_all(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - {name: all, match: {}, forward: [pacs]}\n  - {name: b, forward: [pacs]}\n",
    )
    assert "rule 'b' can never be reached" in only_problem(path)


def test_every_rule_after_catch_all_reported_across_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        "10.yaml",
        "rules:\n  - {name: all, forward: [pacs]}\n  - {name: b, forward: [pacs]}\n",
    )
    write(tmp_path, "20.yaml", "rules:\n  - {name: c, match: {Modality: CT}, forward: [pacs]}\n")
    problems = problems_of(tmp_path)
    assert len(problems) == 2
    assert "rule 'b' can never be reached" in problems[0]
    assert "rule 'c' can never be reached" in problems[1]


def test_catch_all_with_continue_does_not_block(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n"
        "  - {name: copy-all, forward: [archive], continue: true}\n"
        "  - {name: ct, match: {Modality: CT}, forward: [pacs]}\n",
    )
    assert [r.name for r in load(path).rules] == ["copy-all", "ct"]


def test_disabled_rules_are_skipped_and_do_not_block(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n"
        "  - {name: old-catch-all, forward: [pacs], enabled: false}\n"
        "  - {name: ct, match: {Modality: CT}, forward: [pacs]}\n"
        "  - {name: catch-all, forward: [archive]}\n"
        "  - {name: parked, match: {Modality: MR}, forward: [pacs], enabled: false}\n",
    )
    ruleset = load(path)
    assert [r.name for r in ruleset.rules] == ["ct", "catch-all"]


def test_disabled_rules_are_still_linted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        "rules:\n  - {name: parked, match: {Modalty: CT}, forward: [pacs], enabled: false}\n",
    )
    assert "unknown keyword or malformed tag 'Modalty'" in only_problem(path)


@pytest.mark.parametrize("spelling", ['"false"', '"no"', '"off"', '"0"'])
def test_enabled_false_spelt_as_string_disables(tmp_path: Path, spelling: str) -> None:
    path = write(
        tmp_path,
        "r.yaml",
        f"rules:\n  - {{name: a, match: {{Modality: CT}}, forward: [pacs], enabled: {spelling}}}\n",
    )
    assert load(path).rules == ()


# --- ordering of problems --------------------------------------------------------------
def test_all_problems_reported_sorted_by_file_then_line(tmp_path: Path) -> None:
    b = write(
        tmp_path,
        "20-b.yaml",
        "rules:\n"
        "  - {name: b1, forward: [nowhere]}\n"  # unknown destination, line 2
        "  - {name: b2, match: {Modalty: CT}, forward: [pacs]}\n",  # line 3 (also unreachable)
    )
    a = write(
        tmp_path,
        "10-a.yaml",
        "rules:\n"
        "  - name: a1\n"
        "    forward: [pacs]\n"
        "    match: {Modality: CT}\n"
        "    bogus: 1\n"  # line 5
        "  - {name: a2, match: {StudyDescription: {regex: '('}}, forward: [pacs]}\n",  # line 6
    )
    problems = problems_of(tmp_path)
    located = [tuple(p.split(":", 2)[:2]) for p in problems]
    assert located == [
        (str(a), "5"),
        (str(a), "6"),
        (str(b), "2"),
        (str(b), "3"),
        (str(b), "3"),
    ]
    assert "bogus: unknown key" in problems[0]
    assert "invalid regex" in problems[1]
    assert "unknown destination 'nowhere'" in problems[2]
    joined = "\n".join(problems[3:])
    assert "'Modalty'" in joined and "can never be reached" in joined


def test_problem_lines_sort_numerically(tmp_path: Path) -> None:
    body = "rules:\n" + "".join(
        f"  - {{name: r{i}, match: {{Modality: CT}}, forward: [pacs]}}\n" for i in range(9)
    )
    body += "  - {name: r0, match: {Modality: MR}, forward: [pacs]}\n"  # line 11
    body += "  - {name: bad, match: {Modality: CT}, forward: [x]}\n"  # line 12
    path = write(tmp_path, "r.yaml", body)
    lines = [int(p.split(":")[1]) for p in problems_of(path)]
    assert lines == [11, 12]


# --- folders ----------------------------------------------------------------------------
def test_folder_in_file_name_order_ignoring_tests_and_other_files(tmp_path: Path) -> None:
    write(
        tmp_path, "20-mr.yaml", "rules:\n  - {name: mr, match: {Modality: MR}, forward: [pacs]}\n"
    )
    write(
        tmp_path, "10-ct.yaml", "rules:\n  - {name: ct, match: {Modality: CT}, forward: [pacs]}\n"
    )
    write(tmp_path, "30-pt.yml", "rules:\n  - {name: pt, match: {Modality: PT}, forward: [pacs]}\n")
    write(tmp_path, "10-ct_test.yaml", "this: is [not a rule file\n")
    write(tmp_path, "notes.txt", "rules: [garbage\n")
    write(tmp_path, "20-mr.yaml.bak", "rules: [garbage\n")
    (tmp_path / "sub.yaml").mkdir()
    ruleset = load(tmp_path)
    assert [r.name for r in ruleset.rules] == ["ct", "mr", "pt"]
    assert [Path(f).name for f in ruleset.files] == ["10-ct.yaml", "20-mr.yaml", "30-pt.yml"]
    assert [p.name for p in rule_files(tmp_path)] == ["10-ct.yaml", "20-mr.yaml", "30-pt.yml"]


def test_rule_files_of_single_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    assert rule_files(path) == [path]


@pytest.mark.parametrize("setup", ["empty-dir", "missing", "only-tests"])
def test_no_rule_files(tmp_path: Path, setup: str) -> None:
    target = tmp_path / "rules"
    if setup != "missing":
        target.mkdir()
    if setup == "only-tests":
        write(target, "a_test.yaml", "rules: []\n")
    assert "no rule files found" in only_problem(target)


def test_only_empty_files_is_no_rules(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "")
    write(tmp_path, "b.yaml", "# just a comment\n")
    assert "no rule files found" in only_problem(tmp_path)


def test_empty_file_next_to_real_one_is_ignored(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "")
    write(tmp_path, "b.yaml", GOOD)
    assert [r.name for r in load(tmp_path).rules] == ["ct", "mr"]


# --- version ----------------------------------------------------------------------------
def test_version_stable_and_content_sensitive(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", GOOD)
    v1 = load(tmp_path).version
    assert load(tmp_path).version == v1
    write(tmp_path, "r_test.yaml", "anything: 1\n")
    write(tmp_path, "README.md", "docs\n")
    assert load(tmp_path).version == v1  # non-rule files do not count
    path.write_text(GOOD.replace("[pacs]", "[archive]"), encoding="utf-8")
    v2 = load(tmp_path).version
    assert v2 != v1
    path.write_text(GOOD, encoding="utf-8")
    assert load(tmp_path).version == v1


def test_version_changes_when_a_file_is_added(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    v1 = load(tmp_path).version
    write(tmp_path, "b.yaml", "rules: []\n")
    assert load(tmp_path).version != v1


def test_same_content_in_other_folder_same_version(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    write(one, "r.yaml", GOOD)
    write(two, "r.yaml", GOOD)
    assert load(one).version == load(two).version


# --- unmatched policy -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        (["keep"], "keep"),
        (["discard"], "discard"),
        ([None], "keep"),
        (["discard", "discard"], "discard"),
        (["discard", None], "keep"),
        (["discard", "keep"], "keep"),
        ([None, "discard"], "keep"),
    ],
)
def test_unmatched_policy(tmp_path: Path, policies: list[str | None], expected: str) -> None:
    for i, policy in enumerate(policies):
        tail = f"unmatched: {policy}\n" if policy else ""
        write(
            tmp_path,
            f"{i}.yaml",
            f"rules:\n  - {{name: r{i}, match: {{Modality: CT}}, forward: [pacs]}}\n{tail}",
        )
    assert load(tmp_path).unmatched == expected


def test_empty_file_does_not_force_keep(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "rules: []\nunmatched: discard\n")
    write(tmp_path, "b.yaml", "")
    assert load(tmp_path).unmatched == "discard"
