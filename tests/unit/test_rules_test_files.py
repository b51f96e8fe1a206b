"""Rule test files: how cases are written (unknown keys, cases that check nothing),
the called AE a case sees, and an empty rule file named on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.rules.loader import RulesetError, load_ruleset
from router.rules.ruletests import CaseResult, run_test_file, run_tests
from tests.support.files import write

RULES = """\
rules:
  - name: ct-to-pacs
    match: {Modality: CT}
    actions:
      - set: {InstitutionName: General Hospital}
    forward: [pacs]
  - name: to-our-ae
    match: {called_ae: GH_ROUTER}
    forward: [archive]
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    write(tmp_path, "rules.yaml", RULES)
    return tmp_path


def run(rules_dir: Path, text: str, called_ae: str = "ROUTER") -> list[CaseResult]:
    test_file = write(rules_dir, "rules_test.yaml", text)
    return run_test_file(test_file, load_ruleset(rules_dir), b"salt", called_ae)


def problems(results: list[CaseResult]) -> list[tuple[int, str]]:
    return [(p.line, p.message) for r in results for p in r.problems]


# --- unknown keys -----------------------------------------------------------------------
def test_misspelt_expect_key_fails_with_its_line(rules_dir: Path) -> None:
    results = run(
        rules_dir,
        """\
        cases:
          - name: CT goes to PACS
            input: {tags: {Modality: CT}}
            expect:
              destination: [archive]
        """,
    )
    assert [r.passed for r in results] == [False]
    assert problems(results) == [
        (5, "expect: unknown key 'destination'; known: destinations, tags, absent, "
            "transfer_syntax"),
    ]  # fmt: skip
    assert str(results[0].problems[0]).startswith(f"{rules_dir / 'rules_test.yaml'}:5: ")


def test_misspelt_case_and_input_keys_fail(rules_dir: Path) -> None:
    results = run(
        rules_dir,
        """\
        cases:
          - name: a
            inputs: {tags: {Modality: CT}}
            expect: {destinations: []}
          - name: b
            input: {tag: {Modality: CT}}
            expect: {destinations: []}
        """,
    )
    assert [r.passed for r in results] == [False, False]
    assert problems(results) == [
        (3, "unknown key 'inputs'; known: name, calling_ae, called_ae, peer_ip, input, expect"),
        (6, "input: unknown key 'tag'; known: tags, file"),
    ]


def test_unknown_top_level_key_fails(rules_dir: Path) -> None:
    results = run(
        rules_dir,
        """\
        cases:
          - input: {tags: {Modality: CT}}
            expect: {destinations: [pacs]}
        defaults: {calling_ae: CT01}
        """,
    )
    assert [r.passed for r in results] == [False, True]
    assert problems(results) == [(4, "unknown key 'defaults'; known: cases")]


def test_misspelt_keyword_in_absent_no_longer_passes(rules_dir: Path) -> None:
    results = run(
        rules_dir,
        """\
        cases:
          - input: {tags: {Modality: CT}}
            expect:
              absent:
                pacs: [PatientNmae]
        """,
    )
    assert problems(results) == [
        (5, "expect.absent.pacs: unknown keyword or malformed tag 'PatientNmae'")
    ]
    assert not results[0].passed


def test_wrong_shapes_are_reported_and_not_run(rules_dir: Path) -> None:
    results = run(
        rules_dir,
        """\
        cases:
          - input: {tags: {Modality: CT}}
            expect: {destinations: pacs}
          - input: {tags: {Modality: CT}}
            expect: {absent: {pacs: PatientName}}
          - input: {tags: {Modality: CT}, file: x.dcm}
            expect: {destinations: [pacs]}
        """,
    )
    assert problems(results) == [
        (3, "expect.destinations: expected a list of names"),
        (5, "expect.absent.pacs: expected a list of elements"),
        (6, "input: give tags or file, not both"),
    ]
    assert all(r.failures == [] and not r.passed for r in results)


# --- cases that check nothing -----------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("  - input: {tags: {Modality: CT}}\n", 2),
        ("  - input: {tags: {Modality: CT}}\n    expect: {}\n", 3),
        ("  - input: {tags: {Modality: CT}}\n    expect: {tags: {}, absent: {}}\n", 3),
    ],
)
def test_case_that_checks_nothing_fails(rules_dir: Path, case: str, line: int) -> None:
    results = run(rules_dir, "cases:\n" + case)
    assert not results[0].passed
    assert problems(results) == [
        (line, "the case checks nothing: expect one of destinations, tags, absent, "
               "transfer_syntax"),
    ]  # fmt: skip


def test_expecting_no_destination_is_a_check(rules_dir: Path) -> None:
    results = run(
        rules_dir, "cases:\n  - input: {tags: {Modality: MR}}\n    expect: {destinations: []}\n"
    )
    assert [r.passed for r in results] == [True]


def test_an_unreadable_test_file_is_one_failed_result(tmp_path: Path) -> None:
    write(tmp_path, "rules.yaml", RULES)
    results = run_tests([tmp_path / "gone_test.yaml"], load_ruleset(tmp_path), b"")
    assert [(r.name, r.failures) for r in results] == [
        ("(file)", ["cannot read: No such file or directory"])
    ]


# --- called AE ----------------------------------------------------------------------------
CALLED = """\
cases:
  - input: {tags: {Modality: MR}}
    expect: {destinations: [archive]}
  - input: {tags: {Modality: MR}}
    called_ae: OTHER
    expect: {destinations: []}
"""


def test_cases_see_the_routers_own_ae_title(rules_dir: Path) -> None:
    assert [r.passed for r in run(rules_dir, CALLED, called_ae="GH_ROUTER")] == [True, True]
    assert [r.passed for r in run(rules_dir, CALLED, called_ae="ROUTER")] == [False, True]


def test_run_tests_passes_the_called_ae_on(rules_dir: Path) -> None:
    test_file = write(rules_dir, "rules_test.yaml", CALLED)
    results = run_tests([test_file], load_ruleset(rules_dir), b"", "GH_ROUTER")
    assert [r.passed for r in results] == [True, True]


# --- an empty rule file -----------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_rule_file_says_so(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.yaml", text)
    with pytest.raises(RulesetError) as info:
        load_ruleset(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:1: the file is empty (no rules)"]
    with pytest.raises(RulesetError) as info:  # a folder keeps its message
        load_ruleset(tmp_path)
    assert [str(p) for p in info.value.problems] == [f"{tmp_path}:1: no rule files found"]
