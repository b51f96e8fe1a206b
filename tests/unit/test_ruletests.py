"""router.rules.ruletests: rule test files, dry-run explanations and dataset diffs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from router.rules.actions import compile_actions
from router.rules.conditions import CompileErrors, InstanceView
from router.rules.loader import CompiledRule, Ruleset, load_ruleset
from router.rules.ruletests import (
    CaseResult,
    dataset_changes,
    dataset_from_tags,
    explain,
    run_test_file,
    run_tests,
)
from router.rules.ruletests import test_files as find_test_files
from router.rules.yamlsource import load_yaml
from tests.support.files import write

RULES = """\
rules:
  - name: ct-to-pacs
    match:
      Modality: CT
      not:
        - PatientName: {startswith: "TEST^"}
    actions:
      - set: {InstitutionName: General Hospital}
      - delete: [PatientBirthDate]
    forward: [pacs]
    continue: true
  - name: research
    match: {StudyDescription: {contains: RESEARCH}}
    forward: [research]
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    write(folder, "rules.yaml", RULES)
    return folder


def run_cases(rules_dir: Path, text: str) -> list[CaseResult]:
    test_file = write(rules_dir, "rules_test.yaml", text)
    return run_test_file(test_file, load_ruleset(rules_dir), b"salt")


def only_result(rules_dir: Path, text: str) -> CaseResult:
    results = run_cases(rules_dir, text)
    assert len(results) == 1, results
    return results[0]


# --- dataset_from_tags ----------------------------------------------------------------
def test_dataset_from_tags_keywords_tags_and_lists() -> None:
    ds = dataset_from_tags(
        {
            "Modality": "CT",
            "(0010,0020)": 12345,
            "ImageType": ["ORIGINAL", "PRIMARY"],
            "Rows": 512,
            "(0009,1001)": "private",
        }
    )
    assert (ds["Modality"].VR, ds.Modality) == ("CS", "CT")
    assert (ds["PatientID"].VR, ds.PatientID) == ("LO", "12345")
    assert isinstance(ds.ImageType, MultiValue)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert (ds["Rows"].VR, ds.Rows) == ("US", 512)
    assert (ds[0x00091001].VR, ds[0x00091001].value) == ("LO", "private")
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


@pytest.mark.parametrize("name", ["NoSuchKeyword", "(00G0,0010)"])
def test_dataset_from_tags_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match="unknown keyword or malformed tag"):
        dataset_from_tags({name: "x"})


# --- run_test_file ----------------------------------------------------------------------
def test_passing_case(rules_dir: Path) -> None:
    result = only_result(
        rules_dir,
        """\
        cases:
          - name: CT with research description
            calling_ae: CT01
            input:
              tags: {Modality: CT, StudyDescription: RESEARCH HEAD, PatientName: "DOE^J"}
            expect:
              destinations: [research, pacs]
        """,
    )
    assert result.passed, result.failures
    assert (result.name, result.line) == ("CT with research description", 2)


def test_failing_destinations_case(rules_dir: Path) -> None:
    result = only_result(
        rules_dir,
        """\
        cases:
          - name: test patient
            input:
              tags: {Modality: CT, PatientName: "TEST^PHANTOM"}
            expect:
              destinations: [pacs]
        """,
    )
    assert not result.passed
    assert result.failures == ["destinations: expected ['pacs'], got []"]


def test_tags_expectation_after_set(rules_dir: Path) -> None:
    results = run_cases(
        rules_dir,
        """\
        cases:
          - name: right
            input: {tags: {Modality: CT, InstitutionName: Old}}
            expect:
              tags: {pacs: {InstitutionName: General Hospital, Modality: CT}}
          - name: wrong
            input: {tags: {Modality: CT, InstitutionName: Old}}
            expect:
              tags: {pacs: {InstitutionName: Old}}
          - name: nothing received
            input: {tags: {Modality: MR}}
            expect:
              tags: {pacs: {Modality: MR}}
        """,
    )
    assert [r.passed for r in results] == [True, False, False]
    assert results[1].failures == ["pacs: InstitutionName expected 'Old', got 'General Hospital'"]
    assert results[2].failures == ["tags: pacs receives nothing"]


def test_absent_expectation(rules_dir: Path) -> None:
    results = run_cases(
        rules_dir,
        """\
        cases:
          - name: deleted
            input: {tags: {Modality: CT, PatientBirthDate: "19700101"}}
            expect:
              absent: {pacs: [PatientBirthDate]}
          - name: still there
            input: {tags: {Modality: CT, PatientID: "1"}}
            expect:
              absent: {pacs: [PatientID]}
        """,
    )
    assert results[0].passed, results[0].failures
    assert results[1].failures == ["pacs: PatientID should be absent"]


def test_transfer_syntax_expectation(rules_dir: Path) -> None:
    results = run_cases(
        rules_dir,
        """\
        cases:
          - name: kept as received
            input: {tags: {Modality: CT}}
            expect:
              transfer_syntax: {pacs: explicit-little}
          - name: by uid
            input: {tags: {Modality: CT}}
            expect:
              transfer_syntax: {pacs: 1.2.840.10008.1.2.1}
          - name: wrong
            input: {tags: {Modality: CT}}
            expect:
              transfer_syntax: {pacs: jpeg-ls-lossless}
        """,
    )
    assert [r.passed for r in results] == [True, True, False]
    assert results[2].failures == [
        "pacs: transfer syntax expected jpeg-ls-lossless, got 1.2.840.10008.1.2.1"
    ]


def test_transfer_syntax_of_a_transcoding_rule(tmp_path: Path) -> None:
    errors = CompileErrors()
    actions = compile_actions(load_yaml("- transcode: rle", "x.yaml"), 1, errors)
    assert not errors.problems
    rule = CompiledRule("all", lambda view: True, ("pacs",), False, actions, "x.yaml", 1, True)
    ruleset = Ruleset((rule,), "keep", "v1", ("x.yaml",))
    test_file = write(
        tmp_path,
        "x_test.yaml",
        """\
        cases:
          - input: {tags: {Modality: CT}}
            expect: {transfer_syntax: {pacs: rle}}
          - input: {tags: {Modality: CT}}
            expect: {transfer_syntax: {pacs: explicit-little}}
        """,
    )
    results = run_test_file(test_file, ruleset, b"salt")
    assert [r.passed for r in results] == [True, False]
    assert results[0].name == "case at line 2"


def test_transfer_syntax_expectation_for_unreached_destination_fails(rules_dir: Path) -> None:
    result = only_result(
        rules_dir,
        """\
        cases:
          - input: {tags: {Modality: MR}}
            expect: {transfer_syntax: {pacs: explicit-little}}
        """,
    )
    assert not result.passed


def test_broken_yaml_is_one_failed_result_naming_the_line(rules_dir: Path) -> None:
    results = run_cases(
        rules_dir,
        """\
        cases:
          - name: a
            input: {tags: {Modality: CT}}
            name: b
        """,
    )
    assert len(results) == 1
    assert (results[0].name, results[0].line, results[0].passed) == ("(file)", 4, False)
    assert "duplicate key 'name'" in results[0].failures[0]


def test_file_without_cases_list(rules_dir: Path) -> None:
    result = only_result(rules_dir, "cases: 3\n")
    assert result.failures == ["expected a 'cases' list"]


def test_unknown_input_keyword_cannot_run(rules_dir: Path) -> None:
    result = only_result(
        rules_dir,
        """\
        cases:
          - input: {tags: {NoSuchKeyword: 1}}
            expect: {destinations: []}
        """,
    )
    assert result.failures[0].startswith("cannot run: unknown keyword or malformed tag")


def test_malformed_case_is_a_failed_result(rules_dir: Path) -> None:
    result = only_result(
        rules_dir,
        """\
        cases:
          - input: {tags: {Modality: CT}}
            expect: [pacs]
        """,
    )
    assert not result.passed


def test_case_reading_a_dicom_file(rules_dir: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.StudyDescription = "RESEARCH"
    ds.PatientName = "DOE^J"
    ds.InstitutionName = "Old"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(rules_dir / "x.dcm", enforce_file_format=True)
    result = only_result(
        rules_dir,
        """\
        cases:
          - name: from a file
            input: {file: x.dcm}
            expect:
              destinations: [pacs, research]
              tags:
                pacs: {InstitutionName: General Hospital}
                research: {InstitutionName: Old}
              transfer_syntax: {pacs: explicit-little}
        """,
    )
    assert result.passed, result.failures


def test_missing_dicom_file_cannot_run(rules_dir: Path) -> None:
    result = only_result(rules_dir, "cases:\n  - input: {file: nope.dcm}\n")
    assert result.failures[0].startswith("cannot run:")


def test_run_tests_uses_a_salt_when_none_is_configured(rules_dir: Path) -> None:
    write(
        rules_dir,
        "rules_test.yaml",
        "cases:\n  - input: {tags: {Modality: CT}}\n    expect: {destinations: [pacs]}\n",
    )
    results = run_tests(find_test_files(rules_dir), load_ruleset(rules_dir), b"")
    assert [r.passed for r in results] == [True]


# --- test_files ---------------------------------------------------------------------------
def test_test_files_of_folder_and_rule_file(rules_dir: Path) -> None:
    write(rules_dir, "other.yaml", "rules: []\n")
    b_test = write(rules_dir, "b_test.yaml", "cases: []\n")
    a_test = write(rules_dir, "a_test.yaml", "cases: []\n")
    assert find_test_files(rules_dir) == [a_test, b_test]
    assert find_test_files(rules_dir / "rules.yaml") == []
    sibling = write(rules_dir, "rules_test.yaml", "cases: []\n")
    assert find_test_files(rules_dir / "rules.yaml") == [sibling]
    assert find_test_files(rules_dir / "other.yaml") == []


# --- explain, dataset_changes -------------------------------------------------------------
def test_explain_names_rules_values_and_changes(rules_dir: Path) -> None:
    ruleset = load_ruleset(rules_dir)
    ds = dataset_from_tags({"Modality": "CT", "PatientName": "DOE^J", "InstitutionName": "A"})
    out = explain(ruleset, InstanceView(ds, calling_ae="CT01"), b"")
    rules_file = str(rules_dir / "rules.yaml")
    assert out[0] == f"ruleset version {ruleset.version}"
    assert f"rule ct-to-pacs ({rules_file}:2): MATCHED" in out
    assert f"rule research ({rules_file}:12): no match" in out
    assert "    Modality equals 'CT': read ['CT'] -> holds" in out
    assert "    [not] PatientName startswith 'TEST^': read ['DOE^J'] -> fails" in out
    assert "    StudyDescription contains 'RESEARCH': read absent -> fails" in out
    assert "-> pacs (rule ct-to-pacs), transfer syntax explicit-little (1.2.840.10008.1.2.1)" in out
    assert "    ~ InstitutionName: A -> General Hospital" in out
    assert not any(line.startswith("no rule matched") for line in out)
    assert ds.InstitutionName == "A"  # explaining changes nothing


def test_explain_unmatched(rules_dir: Path) -> None:
    out = explain(load_ruleset(rules_dir), InstanceView(dataset_from_tags({"Modality": "MR"})), b"")
    assert "no rule matched; unmatched policy: keep" in out
    assert not any(line.startswith("->") for line in out)


def test_dataset_changes() -> None:
    before = dataset_from_tags({"PatientID": "1", "PatientBirthDate": "19700101", "Modality": "CT"})
    after = dataset_from_tags({"PatientID": "2", "InstitutionName": "X", "Modality": "CT"})
    assert dataset_changes(before, after) == [
        "+ InstitutionName: X",
        "~ PatientID: 1 -> 2",
        "- PatientBirthDate",
    ]
    assert dataset_changes(before, before) == ["(unchanged)"]


# --- the shipped rules ------------------------------------------------------------------------
def test_shipped_rules_pass_their_tests() -> None:
    rules = Path(__file__).parents[2] / "rules"
    files = find_test_files(rules)
    assert files, "rules/ has no *_test.yaml"
    results = run_tests(files, load_ruleset(rules), b"")
    assert results
    failed = [f"{r.file}:{r.line} {r.name}: {r.failures}" for r in results if not r.passed]
    assert not failed, failed
