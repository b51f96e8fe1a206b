"""``dicom-router rules test`` and ``rules explain`` as an operator runs them."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from router.cli import build_parser

SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"

RULES = """\
rules:
  - name: sent-to-us
    match: {called_ae: GH_ROUTER}
    forward: [pacs]
  - name: sent-elsewhere
    match: {not: [{called_ae: GH_ROUTER}]}
    forward: [archive]
"""
CASES = """\
cases:
  - name: an instance sent to the router's own AE title
    input: {tags: {Modality: CT}}
    expect: {destinations: [pacs]}
"""


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run one command in this process (no logging set-up) and capture what it prints."""
    args = build_parser().parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    """A rules folder, its test file and a config whose ae_title is GH_ROUTER."""
    rules = tmp_path / "rules"
    rules.mkdir()
    write(rules / "routing.yaml", RULES)
    write(rules / "routing_test.yaml", CASES)
    write(
        tmp_path / "router.yaml",
        f"""\
        ae_title: GH_ROUTER
        rules: {rules}
        destinations:
          pacs: {{ae_title: PACS, host: 127.0.0.1, port: 4242}}
          archive: {{ae_title: ARCHIVE, host: 127.0.0.1, port: 4243}}
        """,
    )
    return tmp_path


def ct_file(path: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "DOE^JANE"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


# --- called AE ----------------------------------------------------------------------------
def test_rules_test_uses_the_configs_ae_title(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = cli(capsys, "rules", "test", "--config", str(setup / "router.yaml"))
    assert (code, out.splitlines()[-1]) == (0, "rules test: 1 passed, 0 failed")


def test_explain_uses_the_configs_ae_title(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dcm = ct_file(setup / "ct.dcm")
    code, out, _err = cli(
        capsys, "rules", "explain", str(dcm), "--config", str(setup / "router.yaml")
    )
    assert code == 0
    assert any(
        line.startswith("rule sent-to-us (") and line.endswith("MATCHED")
        for line in out.splitlines()
    )
    assert "-> pacs (rule sent-to-us), transfer syntax" in out


def test_explain_called_ae_overrides_the_config(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dcm = ct_file(setup / "ct.dcm")
    config = setup / "router.yaml"
    config.write_text(config.read_text().replace("GH_ROUTER", "MAIN"), encoding="utf-8")
    argv = ["rules", "explain", str(dcm), "--config", str(config)]
    _code, out, _err = cli(capsys, *argv)
    assert "-> archive (rule sent-elsewhere), transfer syntax" in out
    code, out, _err = cli(capsys, *argv, "--called-ae", "GH_ROUTER")
    assert code == 0
    assert "-> pacs (rule sent-to-us), transfer syntax" in out
    assert "-> archive" not in out


# --- explain on a file it cannot read ------------------------------------------------------
def make_unreadable(path: Path, kind: str) -> None:
    if kind == "not-dicom":
        write(path, "PatientName DOE^JANE, not DICOM\n")
    elif kind == "directory":
        path.mkdir()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "No such file or directory"),
        ("not-dicom", "not a DICOM file (no DICM prefix)"),
        ("directory", "Is a directory"),
    ],
)
def test_explain_on_an_unreadable_file_is_one_line(
    setup: Path, capsys: pytest.CaptureFixture[str], kind: str, reason: str
) -> None:
    target = setup / "input.dcm"
    make_unreadable(target, kind)
    config = str(setup / "router.yaml")
    code, out, err = cli(capsys, "rules", "explain", str(target), "--config", config)
    assert (code, out, err) == (1, "", f"{target}: cannot read: {reason}\n")


# --- rules test on a test file -------------------------------------------------------------
def test_rules_test_on_a_test_file_runs_it_against_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = shutil.copytree(SHIPPED_RULES, tmp_path / "rules")
    code, out, _err = cli(capsys, "rules", "test", str(rules / "example_test.yaml"))
    assert code == 0, out
    assert "unknown key" not in out
    assert out.splitlines()[-1] == "rules test: 5 passed, 0 failed"
    assert all(line.startswith("ok   ") for line in out.splitlines()[:-1])


def test_rules_test_on_a_test_file_runs_only_that_file(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = setup / "rules"
    write(rules / "other_test.yaml", CASES.replace("[pacs]", "[archive]"))
    config = str(setup / "router.yaml")
    code, out, _err = cli(
        capsys, "rules", "test", str(rules / "routing_test.yaml"), "--config", config
    )
    assert (code, out.splitlines()[-1]) == (0, "rules test: 1 passed, 0 failed")
    code, out, _err = cli(
        capsys, "rules", "test", str(rules / "other_test.yaml"), "--config", config
    )
    assert (code, out.splitlines()[-1]) == (1, "rules test: 0 passed, 1 failed")


def test_rules_test_prints_writing_problems_as_file_line_message(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_file = write(
        setup / "rules" / "routing_test.yaml",
        """\
        cases:
          - name: misspelt
            input: {tags: {Modality: CT}}
            expect: {destination: [pacs]}
        """,
    )
    code, out, _err = cli(
        capsys, "rules", "test", str(test_file), "--config", str(setup / "router.yaml")
    )
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{test_file}:4: expect: unknown key 'destination'; known: ")
    assert lines[1] == f"FAIL {test_file}:2: misspelt: the case is written wrongly"
    assert lines[-1] == "rules test: 0 passed, 1 failed"


# --- an empty rule file ----------------------------------------------------------------------
def test_lint_of_an_empty_rule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write(tmp_path / "empty.yaml", "")
    code, out, _err = cli(
        capsys, "rules", "lint", str(empty), "--config", str(tmp_path / "none.yaml")
    )
    assert (code, out) == (1, f"{empty}:1: the file is empty (no rules)\n")


def test_rule_tests_run_where_the_salt_file_is_not(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Rule tests use a test salt: a CI job or a laptop without the production salt
    file runs them; lint still says the salt file is missing."""
    config = tmp_path / "router.yaml"
    shutil.copytree(SHIPPED_RULES, tmp_path / "rules")
    write(config, f"""\
        rules: {tmp_path / "rules"}
        salt_file: {tmp_path / "no-such-salt"}
        destinations:
          pacs_main: {{ae_title: PACS, host: 127.0.0.1, port: 4242}}
          research: {{ae_title: RESEARCH, host: 127.0.0.1, port: 4243}}
        """)  # fmt: skip
    code, out, _err = cli(capsys, "--config", str(config), "rules", "test")
    assert code == 0, out
    assert " 0 failed" in out
    code, out, _err = cli(capsys, "--config", str(config), "rules", "lint")
    assert code == 1 and "no-such-salt: cannot read" in out
