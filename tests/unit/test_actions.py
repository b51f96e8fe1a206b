"""router.rules.actions: compiled rule actions and how the loader checks them."""

from __future__ import annotations

import string
import textwrap
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from router.rules.actions import (
    ActionContext,
    ActionError,
    CompiledActions,
    compile_actions,
    is_number_text,
)
from router.rules.conditions import CompileErrors, Problem
from router.rules.keyed import UID_ROOT
from router.rules.loader import RulesetError, load_ruleset
from router.rules.yamlsource import load_yaml
from router.transcode import syntax_uid

SALT = b"unit-test-salt"
CTX = ActionContext(calling_ae="CT01", called_ae="ROUTER", peer_ip="10.0.0.7", salt=SALT)


def compile_text(yaml_text: str, line: int = 1) -> tuple[CompiledActions, list[Problem]]:
    """Compile an ``actions:`` list written as YAML (line numbers as in the text)."""
    errors = CompileErrors()
    tree = load_yaml(textwrap.dedent(yaml_text), "actions.yaml")
    return compile_actions(tree, line, errors), errors.problems


def compiled(yaml_text: str) -> CompiledActions:
    actions, problems = compile_text(yaml_text)
    assert problems == [], problems
    return actions


def problems_of(yaml_text: str) -> list[tuple[int, str]]:
    _actions, problems = compile_text(yaml_text)
    assert problems, "expected a compile problem"
    return [(p.line, p.message) for p in problems]


def applied(yaml_text: str, ds: Dataset, ctx: ActionContext = CTX) -> Dataset:
    compiled(yaml_text).apply(ds, ctx)
    return ds


def dataset(**elements: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def private_dataset() -> Dataset:
    ds = dataset(Modality="CT", PatientID="123", PatientName="DOE^JANE")
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "secret")
    ds.add_new(0x00091010, "LO", "more")
    ds.add_new(0x00110010, "LO", "OTHER")
    ds.add_new(0x00111010, "LO", "other value")
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50020010, "US", 2)
    ds.add_new(0x60000010, "US", 512)
    return ds


def tags_of(ds: Dataset) -> set[int]:
    return {int(elem.tag) for elem in ds}


# --- set ------------------------------------------------------------------------------
def test_set_literal_value_replaces_existing() -> None:
    ds = applied("- set: {InstitutionName: General Hospital}", dataset(InstitutionName="Old"))
    assert ds.InstitutionName == "General Hospital"


def test_set_template_reads_dataset_and_association() -> None:
    ds = applied(
        '- set: {InstitutionName: "{PatientID}-{calling_ae}/{called_ae}@{peer_ip}"}',
        dataset(PatientID="123"),
    )
    assert ds.InstitutionName == "123-CT01/ROUTER@10.0.0.7"


def test_set_template_missing_element_renders_empty() -> None:
    ds = applied('- set: {StudyDescription: "[{AccessionNumber}]x"}', dataset())
    assert ds.StudyDescription == "[]x"


def test_set_template_double_braces_are_literal() -> None:
    ds = applied(
        '- set: {StudyDescription: "{{PatientID}} is {PatientID}"}', dataset(PatientID="7")
    )
    assert ds.StudyDescription == "{PatientID} is 7"


def test_set_template_does_not_expand_placeholders_inside_values() -> None:
    ds = applied(
        '- set: {PatientID: "{PatientID}-{calling_ae}"}', dataset(PatientID="{calling_ae}")
    )
    assert ds.PatientID == "{calling_ae}-CT01"


def test_set_template_escaped_brace_next_to_field() -> None:
    ds = applied('- set: {StudyDescription: "{{{PatientID}}}"}', dataset(PatientID="123"))
    assert ds.StudyDescription == "{123}"


def test_set_template_format_spec_is_rejected() -> None:
    _actions, problems = compile_text('- set: {StudyDescription: "{PatientID:>10}"}')
    assert problems


def test_set_creates_absent_elements_with_dictionary_vr() -> None:
    ds = applied(
        '- set: {InstitutionName: X, StudyDate: "20240102", ReferringPhysicianName: "A^B"}',
        dataset(),
    )
    assert (ds["InstitutionName"].VR, ds.InstitutionName) == ("LO", "X")
    assert (ds["StudyDate"].VR, ds.StudyDate) == ("DA", "20240102")
    assert (ds["ReferringPhysicianName"].VR, str(ds.ReferringPhysicianName)) == ("PN", "A^B")


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_set_yaml_date_is_written_as_dicom_date() -> None:
    ds = applied("- set: {StudyDate: 2024-01-02}", dataset())
    assert ds.StudyDate == "20240102"


def test_set_private_tag() -> None:
    ds = applied('- set: {"(0009,1001)": "{PatientID}"}', dataset(PatientID="123"))
    assert ds[0x00091001].value == "123"
    assert ds[0x00091001].VR == "LO"


def test_set_errors_are_located() -> None:
    text = """\
    - set:
        InstitutionName: ok
        StudyDescription: "{NoSuchKeyword}"
        NoSuchTarget: x
        ReferencedStudySequence: x
        Rows: "512"
    """
    found = problems_of(text)
    assert [line for line, _ in found] == [3, 4, 5, 6]
    messages = [message for _, message in found]
    assert "unknown keyword 'NoSuchKeyword'" in messages[0]
    assert "unknown keyword or malformed tag 'NoSuchTarget'" in messages[1]
    assert "ReferencedStudySequence is a sequence" in messages[2]
    assert "Rows has VR US" in messages[3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- set: {SeriesNumber: '{PatientID}'}", "set: the value for SeriesNumber is not an IS"),
        ("- set: {SliceThickness: '{PatientID}'}", "set: the value for SliceThickness is not a DS"),
        ("- copy: {from: PatientID, to: SeriesNumber}",
         "copy: the value for SeriesNumber is not an IS"),
        (r"- rewrite: {tag: SliceThickness, pattern: '^(.*)$', replace: 'X\1'}",
         "rewrite: the value for SliceThickness is not a DS"),
    ],
)  # fmt: skip
def test_text_into_a_number_element_is_refused_without_the_value(text: str, message: str) -> None:
    ds = dataset(PatientID="DOE-4711", SliceThickness="1.5")
    with pytest.raises(ActionError) as info:
        applied(text, ds)
    assert str(info.value) == message + " number"
    assert "4711" not in str(info.value) and "1.5" not in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still do


def test_number_into_an_existing_element_is_checked_against_its_own_vr() -> None:
    ds = dataset(PatientID="PID-1")
    ds.add_new(0x00091001, "IS", "7")  # private, so the dictionary does not know it
    with pytest.raises(ActionError, match=r"^copy: the value for \(0009,1001\) is not an IS"):
        applied("- copy: {from: PatientID, to: '(0009,1001)'}", ds)


def test_numbers_are_stored_and_only_numbers() -> None:
    valid = [("SeriesNumber", "12"), ("SeriesNumber", " -3 "), ("SliceThickness", "1.25"),
             ("SliceThickness", "-.5E+3"), ("SliceThickness", "1\\2.5"),
             ("SliceThickness", "")]  # fmt: skip
    for keyword, value in valid:
        ds = applied(f"- set: {{{keyword}: '{{StudyID}}'}}", dataset(StudyID=value))
        assert keyword in ds, (keyword, value)
    with pytest.raises(ActionError):
        applied("- set: {SliceThickness: '{StudyID}'}", dataset(StudyID="1.2.3"))


@pytest.mark.parametrize(
    ("vr", "text", "valid"),
    [
        ("IS", "2147483647", True), ("IS", "2147483648", False), ("IS", "1.0", False),
        ("IS", "1_000", False), ("IS", "1234567890123", False),
        ("DS", "1e3", True), ("DS", "1.", True), ("DS", "nan", False), ("DS", "inf", False),
        ("DS", "0x10", False), ("DS", "12345678901234567", False), ("DS", "1\\a", False),
    ],
)  # fmt: skip
def test_is_number_text_follows_ps3_5(vr: str, text: str, valid: bool) -> None:
    assert is_number_text(text, vr) is valid


def test_lint_refuses_a_literal_non_number_for_ds_and_is() -> None:
    text = """\
    - set:
        SeriesNumber: "twelve"
        SliceThickness: 1.5.2
        InstanceNumber: 3
        ImagesInAcquisition: "{StudyID}"
    """
    assert problems_of(text) == [
        (2, "set: the value for SeriesNumber is not an IS number"),
        (3, "set: the value for SliceThickness is not a DS number"),
    ]


def test_lint_refuses_hash_into_a_number_element() -> None:
    assert problems_of("- hash: [SeriesNumber]") == [
        (1, "hash: SeriesNumber has VR IS; a hash is text, not a number")
    ]


def test_set_needs_a_mapping() -> None:
    assert problems_of("- set: [PatientID]")[0][0] == 1


# --- delete ---------------------------------------------------------------------------
def test_delete_keywords_and_tags() -> None:
    ds = dataset(PatientName="A^B", PatientBirthDate="19700101", PatientID="1", Modality="CT")
    applied("- delete: [PatientName, '(0010,0030)', PatientID]", ds)
    assert set(ds.dir()) == {"Modality"}


def test_delete_single_keyword_and_absent_is_fine() -> None:
    ds = applied("- delete: PatientName", dataset(PatientName="A^B", Modality="CT"))
    assert "PatientName" not in ds
    applied("- delete: PatientName", ds)  # absent: nothing to do, no error
    assert "Modality" in ds


def test_delete_private_group_pattern_removes_that_group_only() -> None:
    ds = private_dataset()
    before = tags_of(ds)
    applied("- delete: ['(0009,xxxx)']", ds)
    assert tags_of(ds) == {t for t in before if t >> 16 != 0x0009}
    assert 0x00110010 in ds and 0x00111010 in ds


def test_delete_element_pattern() -> None:
    ds = private_dataset()
    applied("- delete: ['(0009,xx10)']", ds)
    assert 0x00091010 not in ds
    assert 0x00091001 in ds and 0x00111010 in ds and 0x00110010 in ds
    assert ds[0x00090010].value == "ACME 1.0"  # its private creator stays


def test_delete_private_block_pattern_matches_every_block_and_no_creator() -> None:
    """(gggg,xxee) in a private group is element ee of blocks 10-FF, as DICOM writes it."""
    ds = Dataset()
    low = [0x00090000 | e for e in range(0x0000, 0x0100)]  # group length, creators
    blocks = [0x00090010 | block << 8 for block in range(0x10, 0x100)]
    for tag in (*low, *blocks):
        ds.add_new(tag, "LO", "v")
    applied("- delete: ['(0009,xx10)']", ds)
    assert not any(tag in ds for tag in blocks)
    assert all(tag in ds for tag in low), "creators (0009,0010)-(0009,00FF) must stay"


def test_delete_patterns_other_than_private_blocks_keep_their_meaning() -> None:
    """Only ``xx`` as the element's high byte in an odd group means a private block."""
    table = {
        "(0009,xx10)": {0x00091010, 0x0009FF10},
        "(0009,xxxx)": {0x00090010, 0x00091010, 0x00091001, 0x0009FF10},
        "(60xx,3000)": {0x60003000, 0x60013000, 0x60023000},
        "(0028,xx10)": {0x00280010},  # an even group: any element xx10, Rows included
    }
    for pattern, removed in table.items():
        ds = private_dataset()
        for tag in (0x0009FF10, 0x60003000, 0x60013000, 0x60023000, 0x00280010):
            ds.add_new(tag, "LO", "v")
        before = tags_of(ds)
        applied(f"- delete: ['{pattern}']", ds)
        assert before - tags_of(ds) == removed, pattern


def test_delete_repeating_group_pattern() -> None:
    ds = private_dataset()
    applied("- delete: ['(50xx,xxxx)']", ds)
    assert 0x50000005 not in ds and 0x50020010 not in ds
    assert 0x60000010 in ds and 0x00091001 in ds


def test_delete_malformed_patterns_are_located() -> None:
    text = """\
    - delete:
        - PatientName
        - "(00G9,xxxx)"
        - "(0009,xxxxx)"
        - NoSuchKeyword
    """
    found = problems_of(text)
    assert [line for line, _ in found] == [3, 4, 5]
    assert all("delete: unknown keyword or malformed tag" in m for _, m in found)


# --- rewrite --------------------------------------------------------------------------
REWRITE = r"""- rewrite: {tag: AccessionNumber, pattern: '^(\d+)$', replace: 'GH\1'}"""


def test_rewrite_matching_value() -> None:
    assert applied(REWRITE, dataset(AccessionNumber="12345")).AccessionNumber == "GH12345"


def test_rewrite_non_matching_value_unchanged() -> None:
    assert applied(REWRITE, dataset(AccessionNumber="A12345")).AccessionNumber == "A12345"


def test_rewrite_absent_element_stays_absent() -> None:
    assert "AccessionNumber" not in applied(REWRITE, dataset(Modality="CT"))


def test_rewrite_each_value_of_multi_valued_element() -> None:
    ds = dataset(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    applied("- rewrite: {tag: ImageType, pattern: '^ORIGINAL$', replace: DERIVED}", ds)
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "AXIAL"]


def test_rewrite_invalid_regex_and_replacement_are_errors() -> None:
    text = r"""
    - rewrite: {tag: AccessionNumber, pattern: '^(\d+', replace: x}
    - rewrite: {tag: AccessionNumber, pattern: '^(\d+)$', replace: 'GH\2'}
    - rewrite: {tag: AccessionNumber, pattern: x}
    """
    found = problems_of(text)
    assert [line for line, _ in found] == [2, 3, 4]
    assert "invalid regex" in found[0][1]
    assert "invalid replacement" in found[1][1]
    assert "expected {tag: ..., pattern: ..., replace: ...}" in found[2][1]


# --- copy -----------------------------------------------------------------------------
def test_copy_from_to() -> None:
    ds = applied("- copy: {from: StudyID, to: AccessionNumber}", dataset(StudyID="S1"))
    assert ds.AccessionNumber == "S1"
    assert ds.StudyID == "S1"


def test_copy_absent_source_leaves_target() -> None:
    ds = applied("- copy: {from: StudyID, to: AccessionNumber}", dataset(AccessionNumber="A"))
    assert ds.AccessionNumber == "A"


@pytest.mark.parametrize(
    "spec",
    [
        "[StudyID, AccessionNumber]",
        "{from: StudyID}",
        "{from: StudyID, to: AccessionNumber, also: PatientID}",
        "{from: NoSuchKeyword, to: AccessionNumber}",
    ],
)
def test_copy_wrong_shape_is_error(spec: str) -> None:
    assert problems_of(f"\n- copy: {spec}")[0][0] == 2


# --- hash -----------------------------------------------------------------------------
HASH = "- hash: [PatientID]"


def hashed(value: str, salt: bytes, text: str = HASH) -> str:
    ds = applied(text, dataset(PatientID=value), ActionContext(salt=salt))
    return str(ds.PatientID)


def test_hash_is_deterministic_per_salt() -> None:
    assert hashed("12345", SALT) == hashed("12345", SALT)
    assert hashed("12345", SALT) != hashed("12345", b"another salt")
    assert hashed("12345", SALT) != hashed("12346", SALT)
    assert len(hashed("12345", SALT)) == 16


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=string.ascii_uppercase + string.digits, min_size=1, max_size=16))
def test_hash_never_equals_input(value: str) -> None:
    assert hashed(value, SALT) != value


def test_hash_respects_length_and_vr_maximum() -> None:
    ds = dataset(PatientID="123", PatientName="DOE^JANE", AccessionNumber="A1")
    applied("- hash: {tags: [PatientID, PatientName, AccessionNumber], length: 40}", ds)
    assert len(ds.PatientID) == 40  # LO: 64
    assert len(str(ds.PatientName)) == 40  # PN: 64
    assert len(ds.AccessionNumber) == 16  # SH: 16
    short = applied("- hash: {tags: PatientID, length: 8}", dataset(PatientID="123"))
    assert len(short.PatientID) == 8


def test_hash_absent_element_stays_absent() -> None:
    assert "PatientID" not in applied(HASH, dataset(Modality="CT"))


@pytest.mark.parametrize("length", ["4", "65", "abc", "true"])
def test_hash_bad_length_is_error(length: str) -> None:
    found = problems_of(f"\n- hash: {{tags: [PatientID], length: {length}}}")
    assert found == [(2, "hash: length must be a whole number from 8 to 64")]


def test_hash_on_non_text_vr_is_error() -> None:
    _actions, problems = compile_text("- hash: [Rows]")
    assert problems


@pytest.mark.parametrize(
    ("text", "needs"),
    [
        (HASH, True),
        ("- uid_remap: [StudyInstanceUID]", True),
        ("- uid_remap: all", True),
        ("- set: {InstitutionName: X}", False),
        ("- delete: [PatientName]", False),
    ],
)
def test_needs_salt(text: str, needs: bool) -> None:
    assert compiled(text).needs_salt is needs


def test_deidentify_basic() -> None:
    pytest.importorskip("router.rules.deid")
    actions = compiled("- deidentify: basic")
    assert actions.needs_salt is True
    assert actions.described == ("deidentify",)
    ds = dataset(PatientName="DOE^JANE", PatientID="123", Modality="CT")
    actions.apply(ds, CTX)
    assert str(ds.get("PatientName", "")) != "DOE^JANE"


# --- uid_remap ------------------------------------------------------------------------
def instance(study: str, sop: str) -> Dataset:
    ds = dataset(SOPClassUID=CTImageStorage, SOPInstanceUID=sop, StudyInstanceUID=study)
    ds.SeriesInstanceUID = study + ".1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_uid_remap_listed_is_consistent_across_a_study() -> None:
    text = "- uid_remap: [StudyInstanceUID, SOPInstanceUID]"
    one = applied(text, instance("1.2.3.4", "1.2.3.4.5.1"))
    two = applied(text, instance("1.2.3.4", "1.2.3.4.5.2"))
    assert one.StudyInstanceUID == two.StudyInstanceUID != "1.2.3.4"
    assert one.SOPInstanceUID != two.SOPInstanceUID
    for ds in (one, two):
        for uid in (ds.StudyInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith(UID_ROOT) and len(uid) <= 64 and uid.is_valid
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SeriesInstanceUID == "1.2.3.4.1"  # not listed: kept
        assert ds.SOPClassUID == CTImageStorage
    other_salt = applied(text, instance("1.2.3.4", "1.2.3.4.5.1"), ActionContext(salt=b"x"))
    assert other_salt.StudyInstanceUID != one.StudyInstanceUID


def test_uid_remap_all_is_recursive_and_keeps_standard_uids() -> None:
    ds = instance("1.2.3.4", "1.2.3.4.5.1")
    ds.FrameOfReferenceUID = "1.2.3.9"
    ds.RelatedGeneralSOPClassUID = [CTImageStorage, "1.2.3.77"]
    ds.add_new(0x00041512, "UI", ExplicitVRLittleEndian)  # ReferencedTransferSyntaxUIDInFile
    item = dataset(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID="1.2.3.4.5.2")
    ds.ReferencedImageSequence = Sequence([item])
    sibling = applied("- uid_remap: all", instance("1.2.3.4", "1.2.3.4.5.2"))

    applied("- uid_remap: all", ds)

    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                ds.FrameOfReferenceUID):  # fmt: skip
        assert uid.startswith(UID_ROOT) and len(uid) <= 64
    assert ds.StudyInstanceUID == sibling.StudyInstanceUID
    ref = ds.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == sibling.SOPInstanceUID  # references stay valid
    assert ref.ReferencedSOPClassUID == CTImageStorage
    assert ds.SOPClassUID == CTImageStorage
    assert ds.RelatedGeneralSOPClassUID[0] == CTImageStorage
    assert ds.RelatedGeneralSOPClassUID[1].startswith(UID_ROOT)
    assert ds[0x00041512].value == ExplicitVRLittleEndian
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_uid_remap_on_non_uid_element_is_error() -> None:
    found = problems_of("\n- uid_remap: [StudyInstanceUID, PatientID]")
    assert found == [(2, "uid_remap: PatientID is not a UID (VR LO)")]


# --- transcode ------------------------------------------------------------------------
def test_transcode_from_name_and_uid() -> None:
    assert compiled("- transcode: jpeg-ls-lossless").transfer_syntax == "1.2.840.10008.1.2.4.80"
    assert compiled("- transcode: 1.2.840.10008.1.2.5").transfer_syntax == "1.2.840.10008.1.2.5"
    assert compiled("- transcode: explicit-little").changes_dataset is False
    assert compiled("- set: {InstitutionName: X}").transfer_syntax is None


def test_transcode_unknown_name_is_error() -> None:
    found = problems_of("- set: {InstitutionName: X}\n- transcode: jpeg-xl")
    assert found[0][0] == 2
    assert "transcode: unknown transfer syntax 'jpeg-xl'" in found[0][1]


def test_transcode_to_a_sop_class_uid_is_error() -> None:
    assert syntax_uid(CTImageStorage) is None


# --- order and shape ----------------------------------------------------------------------
def test_actions_apply_in_order() -> None:
    set_first = f"- set: {{AccessionNumber: '123'}}\n{REWRITE}"
    rewrite_first = f"{REWRITE}\n- set: {{AccessionNumber: '123'}}"
    assert applied(set_first, dataset()).AccessionNumber == "GH123"
    assert applied(rewrite_first, dataset()).AccessionNumber == "123"
    assert compiled(set_first).described == ("set", "rewrite")


def test_no_actions() -> None:
    actions = compile_actions(None, 1, CompileErrors())
    assert actions.steps == () and not actions.changes_dataset and not actions.needs_salt


def test_action_list_shape_errors() -> None:
    assert problems_of("set: {InstitutionName: X}") == [
        (1, "actions: expected a list such as [{set: {...}}, {delete: [...]}]")
    ]
    text = """\
    - set: {InstitutionName: X}
    - {set: {InstitutionName: X}, delete: [PatientName]}
    - frobnicate: [PatientName]
    - just a string
    """
    found = problems_of(text)
    assert [line for line, _ in found] == [2, 3, 4]
    assert found[0][1].startswith("each action is a mapping with one of: set, delete")
    assert found[1][1].startswith("unknown action 'frobnicate'")


# --- isolation law ----------------------------------------------------------------------
ISOLATION_RULES = [
    r"""
    - set: {InstitutionName: "{PatientID}-{calling_ae}", StudyDescription: x}
    - delete: [PatientBirthDate, "(0009,xxxx)"]
    - rewrite: {tag: AccessionNumber, pattern: '^(\d+)$', replace: 'GH\1'}
    - copy: {from: StudyID, to: AccessionNumber}
    - hash: [PatientID, PatientName]
    - uid_remap: all
    """,
    """
    - uid_remap: [StudyInstanceUID, SOPInstanceUID]
    - rewrite: {tag: ImageType, pattern: ORIGINAL, replace: DERIVED}
    """,
]
texts = st.text(alphabet=string.ascii_uppercase + string.digits, max_size=12)
uids = st.lists(st.integers(0, 99999), min_size=1, max_size=5).map(
    lambda parts: "1.2." + ".".join(str(p) for p in parts)
)


def build(values: dict[str, str], uid_values: list[str]) -> Dataset:
    study, sop, ref = uid_values
    ds = instance(study, sop)
    ds.PatientID = values["id"]
    ds.PatientName = values["name"]
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = values["acc"]
    ds.StudyID = values["study_id"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", values["id"])
    item = dataset(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=ref)
    ds.ReferencedImageSequence = Sequence([item])
    return ds


@settings(max_examples=30, deadline=None)
@given(
    rule=st.sampled_from(ISOLATION_RULES),
    values=st.fixed_dictionaries({k: texts for k in ("id", "name", "acc", "study_id")}),
    uid_values=st.lists(uids, min_size=3, max_size=3),
)
def test_applying_to_a_copy_never_changes_the_original(
    rule: str, values: dict[str, str], uid_values: list[str]
) -> None:
    actions = compiled(rule)
    original = build(values, uid_values)
    copy = deepcopy(original)
    actions.apply(copy, CTX)
    assert copy != original or copy.file_meta != original.file_meta  # the rule did something
    pristine = build(values, uid_values)
    assert original == pristine
    assert original.file_meta == pristine.file_meta
    assert original.ReferencedImageSequence[0] == pristine.ReferencedImageSequence[0]


# --- loader integration -----------------------------------------------------------------
def write_rules(tmp_path: Path, actions: str, forward: str = "pacs") -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: r\n"
        "    match: {Modality: CT}\n"
        "    actions:\n"
        f"      - {actions}\n"
        f"    forward: [{forward}]\n",
        encoding="utf-8",
    )
    return path


def test_loader_refuses_transcode_the_destination_does_not_accept(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "transcode: jpeg-ls-lossless")
    with pytest.raises(RulesetError) as info:
        load_ruleset(path, {"pacs": ["1.2.840.10008.1.2.1"]})
    rendered = [str(p) for p in info.value.problems]
    assert any(
        "transcodes to 1.2.840.10008.1.2.4.80, which destination 'pacs' does not accept" in p
        for p in rendered
    ), rendered
    accepted = load_ruleset(path, {"pacs": ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80"]})
    assert accepted.rules[0].actions.transfer_syntax == "1.2.840.10008.1.2.4.80"


def test_loader_refuses_transcode_without_an_encoder(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "transcode: 1.2.840.10008.1.2.4.51")  # JPEG extended
    with pytest.raises(RulesetError) as info:
        load_ruleset(path, ("pacs",))
    assert [str(p) for p in info.value.problems] == [
        f"{path}:4: rule 'r': transcode: no encoder is installed for 1.2.840.10008.1.2.4.51"
    ]


def test_loader_locates_action_errors(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "set: {Rows: '1'}")
    with pytest.raises(RulesetError) as info:
        load_ruleset(path, ("pacs",))
    assert [str(p) for p in info.value.problems] == [
        f"{path}:5: rule 'r': set: Rows has VR US; only text values can be set"
    ]


def test_loader_keyed_actions_need_a_salt(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "hash: [PatientID]")
    with pytest.raises(RulesetError, match="need a secret salt"):
        load_ruleset(path, ("pacs",), salt_available=False)
    ruleset = load_ruleset(path, ("pacs",), salt_available=True)
    assert ruleset.rules[0].actions.needs_salt
    plain = write_rules(tmp_path, "set: {InstitutionName: X}")
    assert load_ruleset(plain, ("pacs",), salt_available=False).rules[0].name == "r"
