"""router.rules.conditions: operators, subjects and combinators of ``match:`` trees."""

from __future__ import annotations

import datetime as dt
import json
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.sequence import Sequence

from router.rules.conditions import (
    OPERATORS,
    CompileErrors,
    InstanceView,
    Predicate,
    Problem,
    compile_match,
    parse_tag,
    resolve_element,
)
from router.rules.yamlsource import load_yaml


# --- helpers ----------------------------------------------------------------------
def compile_rule_match(yaml_text: str) -> Predicate:
    """Compile a ``match:`` body written as YAML; fail the test on any compile problem."""
    errors = CompileErrors()
    predicate = compile_match(load_yaml(yaml_text, "t.yaml"), 1, errors)
    assert errors.problems == [], errors.problems
    return predicate


def compile_problems(yaml_text: str) -> list[Problem]:
    errors = CompileErrors()
    compile_match(load_yaml(yaml_text, "t.yaml"), 1, errors)
    return errors.problems


def matches(yaml_text: str, ds: Dataset, **assoc: str) -> bool:
    return compile_rule_match(yaml_text)(InstanceView(ds, **assoc))


def ct() -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.StudyDescription = "CT HEAD W/O CONTRAST"
    ds.PatientName = "DOE^JOHN"
    ds.SeriesNumber = "3"
    ds.SliceThickness = "3.0"
    ds.PatientWeight = "70.5"
    ds.StudyDate = "20240115"
    ds.StudyTime = "093000.123"
    ds.AcquisitionDateTime = "20240115120000"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AccessionNumber = ""
    ds.StationName = "CT1 "
    return ds


def item(**elements: str) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def q(value: str) -> str:
    """A string as a YAML scalar that stays a string (JSON strings are YAML)."""
    return json.dumps(value)


# --- equals / not_equals ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("Modality: CT", True),
        ("Modality: MR", False),
        ("Modality: ct", False),  # case-sensitive
        ("Modality: {equals: CT}", True),
        ("Modality: {equals: MR}", False),
        ("StationName: CT1", True),  # trailing padding ignored
        ("SeriesNumber: 3", True),  # IS "3" vs YAML int
        ("SeriesNumber: '3'", True),
        ("SeriesNumber: 3.0", True),
        ("SeriesNumber: 4", False),
        ("SliceThickness: 3", True),  # DS "3.0" vs YAML int: numeric equality
        ("SliceThickness: 3.0", True),
        ("SliceThickness: '3.0'", True),
        ("SliceThickness: 2.99", False),
        ("PatientWeight: 70.5", True),
        ("PatientName: DOE^JOHN", True),
        ("PatientName: DOE", False),
        ("Modality: 3", False),  # number vs non-numeric text
        ("Modality: {not_equals: MR}", True),
        ("Modality: {not_equals: CT}", False),
        ("SeriesNumber: {not_equals: 3}", False),
        ("SeriesNumber: {not_equals: 4}", True),
    ],
)
def test_equals_and_not_equals(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


# --- in / not_in ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("Modality: [CT, MR]", True),  # a list means in
        ("Modality: [MR, PT]", False),
        ("Modality: {in: [MR, CT]}", True),
        ("Modality: {in: []}", False),
        ("SeriesNumber: {in: [1, 3]}", True),
        ("SliceThickness: {in: [1, 3]}", True),
        ("SliceThickness: {in: [1, 2]}", False),
        ("Modality: {not_in: [MR, PT]}", True),
        ("Modality: {not_in: [MR, CT]}", False),
        ("Modality: {not_in: []}", True),
    ],
)
def test_in_and_not_in(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


# --- text operators -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("StudyDescription: {regex: HEAD}", True),  # search, not match
        ("StudyDescription: {regex: '^HEAD'}", False),
        ("StudyDescription: {regex: '^CT .*CONTRAST$'}", True),
        ("StudyDescription: {regex: '(?i)head'}", True),
        ("StudyDescription: {regex: head}", False),
        ("SeriesNumber: {regex: '^\\d$'}", True),
        ("StudyDescription: {contains: 'W/O'}", True),
        ("StudyDescription: {contains: 'W/C'}", False),
        ("StudyDescription: {startswith: 'CT HEAD'}", True),
        ("StudyDescription: {startswith: HEAD}", False),
        ("StudyDescription: {endswith: CONTRAST}", True),
        ("StudyDescription: {endswith: CT}", False),
        ("PatientName: {startswith: 'DOE^'}", True),
        ("StationName: {endswith: '1'}", True),  # padding stripped before endswith
    ],
)
def test_text_operators(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


# --- exists -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("Modality: {exists: true}", True),
        ("Modality: {exists: false}", False),
        ("AccessionNumber: {exists: true}", False),  # empty value counts as absent
        ("AccessionNumber: {exists: false}", True),
        ("BodyPartExamined: {exists: true}", False),
        ("BodyPartExamined: {exists: false}", True),
    ],
)
def test_exists(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


# --- ordering -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("SeriesNumber: {lt: 4}", True),
        ("SeriesNumber: {lt: 3}", False),
        ("SeriesNumber: {le: 3}", True),
        ("SeriesNumber: {le: 2}", False),
        ("SeriesNumber: {gt: 2}", True),
        ("SeriesNumber: {gt: 3}", False),
        ("SeriesNumber: {ge: 3}", True),
        ("SeriesNumber: {ge: 4}", False),
        ("SeriesNumber: {gt: '2'}", True),
        ("SeriesNumber: {lt: 10}", True),  # numeric, not lexicographic ("3" > "10")
        ("SliceThickness: {gt: 2.5}", True),
        ("SliceThickness: {lt: 2.5}", False),
        ("PatientWeight: {ge: 70.5, lt: 71}", True),  # several operators: all must hold
        ("PatientWeight: {ge: 70.5, lt: 70.6, gt: 70.55}", False),
        ("Modality: {gt: 1}", False),  # non-numeric value never orders
    ],
)
def test_numeric_ordering(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("StudyDate: {gt: 2024-01-01}", True),  # YAML date
        ("StudyDate: {gt: '20240101'}", True),  # DICOM string
        ("StudyDate: {gt: '2024-01-01'}", True),
        ("StudyDate: {lt: 2024-01-01}", False),
        ("StudyDate: {lt: 2024-02-01}", True),
        ("StudyDate: {gt: 2024-01-15}", False),
        ("StudyDate: {ge: 2024-01-15}", True),
        ("StudyDate: {le: '20240115'}", True),
        ("StudyDate: {le: '20240114'}", False),
        ("StudyDate: {lt: '20231231'}", False),
        ("StudyDate: 2024-01-15", True),  # equals with a YAML date
        ("StudyDate: 2024-01-16", False),
        ("StudyTime: {lt: '100000'}", True),
        ("StudyTime: {gt: '09:29'}", True),
        ("StudyTime: {gt: '093000.2'}", False),  # fractions count
        ("StudyTime: {gt: '093000.1'}", True),
        ("StudyTime: {ge: '0930'}", True),
        ("StudyTime: {lt: '09'}", False),
        ("AcquisitionDateTime: {gt: '20240101'}", True),
        ("AcquisitionDateTime: {lt: '20240115120001'}", True),
        ("AcquisitionDateTime: {lt: '20240115120000'}", False),
        ("AcquisitionDateTime: {ge: 2024-01-15 12:00:00}", True),  # YAML timestamp
        ("AcquisitionDateTime: {gt: 2024-01-15 12:00:01}", False),
    ],
)
def test_temporal_ordering(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(
    "value",
    [
        "not-a-date",
        "2024.01.15",
        pytest.param(
            "2024011",
        ),
    ],
)
def test_unparseable_date_never_orders(value: str) -> None:
    ds = ct()
    ds.StudyDate = value
    for op in ("lt", "le", "gt", "ge"):
        assert not matches(f"StudyDate: {{{op}: 2024-01-01}}", ds)
        assert not matches(f"StudyDate: {{{op}: '20240101'}}", ds)


@pytest.mark.parametrize(
    "cond",
    [
        "AcquisitionDateTime: {gt: 2024-01-01}",
        "AcquisitionDateTime: {ge: 2024-01-15}",
    ],
)
def test_datetime_compared_with_yaml_date(cond: str) -> None:
    assert matches(cond, ct())


# --- multi-valued elements ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("ImageType: AXIAL", True),
        ("ImageType: ORIGINAL", True),
        ("ImageType: LOCALIZER", False),
        ("ImageType: {in: [LOCALIZER, AXIAL]}", True),
        ("ImageType: {regex: '^AX'}", True),
        ("ImageType: {contains: RIM}", True),
        ("ImageType: {startswith: SEC}", False),
        ("ImageType: {exists: true}", True),
    ],
)
def test_multi_valued_any_value_matches(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


@pytest.mark.parametrize("cond", ["ImageType: {not_equals: AXIAL}", "ImageType: {not_in: [AXIAL]}"])
def test_multi_valued_negative_operators_exclude(cond: str) -> None:
    assert not matches(cond, ct())


# --- missing elements -----------------------------------------------------------------
MISSING_CONDITIONS = [
    "BodyPartExamined: HEAD",
    "BodyPartExamined: 3",
    "BodyPartExamined: 2024-01-01",
    "BodyPartExamined: [HEAD, CHEST]",
    "BodyPartExamined: {not_equals: HEAD}",
    "BodyPartExamined: {not_in: [HEAD]}",
    "BodyPartExamined: {regex: '.*'}",
    "BodyPartExamined: {contains: ''}",
    "BodyPartExamined: {startswith: ''}",
    "BodyPartExamined: {endswith: ''}",
    "BodyPartExamined: {exists: true}",
    "BodyPartExamined: {lt: 5}",
    "BodyPartExamined: {le: 5}",
    "BodyPartExamined: {gt: 5}",
    "BodyPartExamined: {ge: 5}",
    "'(0009,1001)': {regex: '.*'}",
    "RequestAttributesSequence[0].ScheduledProcedureStepID: {regex: '.*'}",
    "calling_ae: {regex: '.*'}",
]


@pytest.mark.parametrize("cond", MISSING_CONDITIONS)
def test_missing_element_never_matches(cond: str) -> None:
    assert matches(cond, Dataset()) is False
    assert matches(cond, ct()) is False


@pytest.mark.parametrize(
    "subject",
    ["BodyPartExamined", "(0009,1001)", "RequestAttributesSequence[0].ScheduledProcedureStepID"],
)
def test_missing_element_matches_exists_false(subject: str) -> None:
    assert matches(f"'{subject}': {{exists: false}}", Dataset())


@pytest.mark.parametrize("cond", ["AccessionNumber: {regex: '^$'}", "AccessionNumber: ''"])
def test_empty_value_has_no_values_to_match(cond: str) -> None:
    assert matches(cond, ct()) is False


# --- subjects ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("'(0008,0060)': CT", True),
        ("'(0008,0060)': MR", False),
        ("'(0008,1030)': {contains: HEAD}", True),
        ("'(0008,103e)': {exists: false}", True),  # lower-case hex accepted
        ("'( 0008 , 0060 )': CT", True),
    ],
)
def test_tag_subjects(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


def private_dataset() -> Dataset:
    ds = ct()
    ds.add_new((0x0009, 0x0010), "LO", "ACME 1.1")
    ds.add_new((0x0009, 0x1001), "LO", "FAST-LANE")
    return ds


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("'(0009,0010)': ACME 1.1", True),
        ("'(0009,0010)': {startswith: ACME}", True),
        ("'(0009,0010)': OTHER", False),
        ("'(0009,1001)': FAST-LANE", True),
        ("'(0009,1002)': {exists: false}", True),
    ],
)
def test_private_tags(cond: str, expected: bool) -> None:
    assert matches(cond, private_dataset()) is expected


def requested() -> Dataset:
    ds = ct()
    first = item(ScheduledProcedureStepID="SPS1", RequestedProcedureID="RP1")
    first.ScheduledProtocolCodeSequence = Sequence([item(CodeValue="A1"), item(CodeValue="A2")])
    second = item(ScheduledProcedureStepID="SPS2")
    second.ScheduledProtocolCodeSequence = Sequence([item(CodeValue="B1")])
    ds.RequestAttributesSequence = Sequence([first, second])
    return ds


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("RequestAttributesSequence[0].ScheduledProcedureStepID: SPS1", True),
        ("RequestAttributesSequence[0].ScheduledProcedureStepID: SPS2", False),
        ("RequestAttributesSequence[1].ScheduledProcedureStepID: SPS2", True),
        ("RequestAttributesSequence[2].ScheduledProcedureStepID: {exists: true}", False),
        ("RequestAttributesSequence[2].ScheduledProcedureStepID: {exists: false}", True),
        ("RequestAttributesSequence[5].ScheduledProcedureStepID: SPS1", False),
        ("RequestAttributesSequence[*].ScheduledProcedureStepID: SPS2", True),
        ("RequestAttributesSequence.ScheduledProcedureStepID: SPS2", True),  # no index = any
        ("RequestAttributesSequence[*].ScheduledProcedureStepID: SPS3", False),
        ("RequestAttributesSequence[1].RequestedProcedureID: {exists: false}", True),
        ("RequestAttributesSequence[*].RequestedProcedureID: RP1", True),
        ("RequestAttributesSequence[0].ScheduledProtocolCodeSequence[1].CodeValue: A2", True),
        ("RequestAttributesSequence[1].ScheduledProtocolCodeSequence[1].CodeValue: A2", False),
        ("RequestAttributesSequence[*].ScheduledProtocolCodeSequence[*].CodeValue: B1", True),
        ("RequestAttributesSequence[1].ScheduledProtocolCodeSequence[0].CodeValue: A1", False),
        ("'(0040,0275)[0].(0040,0009)': SPS1", True),  # tags in a path
        ("RequestAttributesSequence: {exists: true}", True),
        ("RequestAttributesSequence: SPS1", False),  # items are not values
        ("Modality[0].CodeValue: CT", False),  # not a sequence: no items, no error
        ("ReferencedStudySequence[0].ReferencedSOPInstanceUID: {exists: false}", True),
    ],
)
def test_sequence_paths(cond: str, expected: bool) -> None:
    assert matches(cond, requested()) is expected


def test_empty_sequence_has_no_items() -> None:
    ds = ct()
    ds.RequestAttributesSequence = Sequence([])
    assert not matches("RequestAttributesSequence[*].ScheduledProcedureStepID: {regex: ''}", ds)
    assert not matches("RequestAttributesSequence: {exists: true}", ds)


@pytest.mark.parametrize(
    ("cond", "assoc", "expected"),
    [
        ("calling_ae: CT_SCANNER1", {"calling_ae": "CT_SCANNER1"}, True),
        ("calling_ae: CT_SCANNER1", {"calling_ae": "MR1"}, False),
        ("calling_ae: {startswith: CT_}", {"calling_ae": "CT_SCANNER1"}, True),
        ("called_ae: ROUTER", {"called_ae": "ROUTER"}, True),
        ("called_ae: ROUTER", {"calling_ae": "ROUTER"}, False),
        ("peer_ip: {regex: '^10\\.1\\.'}", {"peer_ip": "10.1.2.3"}, True),
        ("peer_ip: {regex: '^10\\.1\\.'}", {"peer_ip": "192.168.0.1"}, False),
        ("peer_ip: [10.0.0.1, 10.0.0.2]", {"peer_ip": "10.0.0.2"}, True),
        ("calling_ae: {exists: false}", {}, True),
        ("calling_ae: {exists: true}", {}, False),
        ("calling_ae: {exists: true}", {"calling_ae": "X"}, True),
    ],
)
def test_association_subjects(cond: str, assoc: dict[str, str], expected: bool) -> None:
    assert matches(cond, ct(), **assoc) is expected


# --- combinators ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("Modality: CT\nSeriesNumber: 3", True),  # implicit all
        ("Modality: CT\nSeriesNumber: 4", False),
        ("all: [{Modality: CT}, {SeriesNumber: 3}]", True),
        ("all: [{Modality: CT}, {SeriesNumber: 4}]", False),
        ("all: {Modality: CT, SeriesNumber: 3}", True),  # single mapping accepted
        ("any: [{Modality: MR}, {SeriesNumber: 3}]", True),
        ("any: [{Modality: MR}, {SeriesNumber: 4}]", False),
        ("any: {Modality: MR}", False),
        ("not: [{Modality: MR}]", True),
        ("not: [{Modality: CT}]", False),
        ("not: [{Modality: MR}, {SeriesNumber: 3}]", False),  # not any
        ("not: [{Modality: MR}, {SeriesNumber: 4}]", True),
        ("not: {Modality: CT}", False),
        ("all: []", True),
        ("any: []", False),
        ("not: []", True),
        (
            "any:\n  - all: [{Modality: MR}, {SeriesNumber: 3}]\n"
            "  - all:\n      - Modality: CT\n      - not: [{ImageType: LOCALIZER}]",
            True,
        ),
        (
            "any:\n  - all: [{Modality: MR}, {SeriesNumber: 3}]\n"
            "  - all:\n      - Modality: CT\n      - not: [{ImageType: AXIAL}]",
            False,
        ),
        ("not: [{not: [{Modality: CT}]}]", True),
        ("Modality: CT\nnot: [{ImageType: LOCALIZER}]\nany: [{SeriesNumber: 9}]", False),
        ("Modality: CT\nnot: [{ImageType: LOCALIZER}]\nany: [{SeriesNumber: 3}]", True),
    ],
)
def test_combinators(cond: str, expected: bool) -> None:
    assert matches(cond, ct()) is expected


def test_empty_match_matches_everything() -> None:
    errors = CompileErrors()
    assert compile_match(None, 1, errors)(InstanceView(Dataset()))
    assert compile_rule_match("{}")(InstanceView(Dataset()))
    assert errors.problems == []


# --- laws (hypothesis) ------------------------------------------------------------------
modality = st.text(alphabet=string.ascii_uppercase + string.digits + "_", min_size=1, max_size=16)


def with_modality(value: str) -> Dataset:
    ds = Dataset()
    ds.Modality = value
    return ds


@settings(max_examples=60, deadline=None)
@given(actual=modality, wanted=modality)
def test_not_inverts_a_condition(actual: str, wanted: str) -> None:
    view = InstanceView(with_modality(actual))
    for clause in (f"Modality: {q(wanted)}", f"Modality: {{startswith: {q(wanted)}}}"):
        plain = compile_rule_match(clause)(view)
        negated = compile_rule_match(f"not: [{{{clause}}}]")(view)
        assert negated is (not plain)


@settings(max_examples=60, deadline=None)
@given(actual=modality, wanted=modality)
def test_all_and_any_of_one_clause_equal_that_clause(actual: str, wanted: str) -> None:
    view = InstanceView(with_modality(actual))
    clause = f"Modality: {q(wanted)}"
    plain = compile_rule_match(clause)(view)
    assert plain is (actual == wanted)
    assert compile_rule_match(f"all: [{{{clause}}}]")(view) is plain
    assert compile_rule_match(f"any: [{{{clause}}}]")(view) is plain


@settings(max_examples=60, deadline=None)
@given(actual=modality, others=st.lists(modality, max_size=4))
def test_in_is_equals_any_and_not_in_its_complement(actual: str, others: list[str]) -> None:
    view = InstanceView(with_modality(actual))
    listed = json.dumps(others)
    in_result = compile_rule_match(f"Modality: {{in: {listed}}}")(view)
    assert in_result is (actual in others)
    assert compile_rule_match(f"Modality: {listed}")(view) is in_result
    assert compile_rule_match(f"Modality: {{not_in: {listed}}}")(view) is (not in_result)


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=string.ascii_letters + string.digits + " ^.*+?()[]", max_size=20))
def test_regex_of_escaped_value_finds_it(text: str) -> None:
    ds = Dataset()
    ds.StudyDescription = f"<{text}>"
    pattern = q(re.escape(text))
    assert compile_rule_match(f"StudyDescription: {{regex: {pattern}}}")(InstanceView(ds))
    assert compile_rule_match(f"StudyDescription: {{contains: {q(text)}}}")(InstanceView(ds))


@settings(max_examples=60, deadline=None)
@given(value=st.integers(min_value=-(10**6), max_value=10**6), bound=st.integers(-(10**6), 10**6))
def test_ordering_operators_agree_with_python(value: int, bound: int) -> None:
    ds = Dataset()
    ds.InstanceNumber = str(value)
    view = InstanceView(ds)
    for op, expected in (
        ("lt", value < bound),
        ("le", value <= bound),
        ("gt", value > bound),
        ("ge", value >= bound),
    ):
        assert compile_rule_match(f"InstanceNumber: {{{op}: {bound}}}")(view) is expected


DATES = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2199, 12, 31))


@settings(max_examples=60, deadline=None)
@given(day=DATES, bound=DATES)
def test_date_ordering_agrees_with_python_dates(day: dt.date, bound: dt.date) -> None:
    ds = Dataset()
    ds.StudyDate = day.strftime("%Y%m%d")
    view = InstanceView(ds)
    quoted = q(bound.strftime("%Y%m%d"))
    assert compile_rule_match(f"StudyDate: {{gt: {quoted}}}")(view) is (day > bound)
    assert compile_rule_match(f"StudyDate: {{le: {quoted}}}")(view) is (day <= bound)


# --- compile problems ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("cond", "fragment"),
    [
        ("Modalty: CT", "unknown keyword or malformed tag 'Modalty'"),
        ("'(0008,006G)': CT", "malformed tag '(0008,006G)'"),
        ("'(0008,0060': CT", "malformed tag"),
        ("'(00080060)': CT", "malformed tag"),
        ("RequestAttributesSequence[0].Bogus: x", "'Bogus'"),
        ("RequestAttributesSequence[x].ScheduledProcedureStepID: x", "malformed tag"),
        ("ImageType[0]: AXIAL", "only sequences take an item index"),
        ("StudyDescription: {regex: '(unclosed'}", "invalid regex '(unclosed'"),
        ("Modality: {equal: CT}", "unknown operator 'equal'"),
        ("Modality: {exists: yes please}", "'exists' takes true or false"),
        ("Modality: {in: CT}", "'in' needs a list"),
        ("Modality: {not_in: CT}", "'not_in' needs a list"),
        ("SeriesNumber: {lt: abc}", "'lt' needs a number, date or time"),
        ("Modality: {}", "has no operator"),
        ("all: [CT]", "a condition must be a mapping"),
        ("any: CT", "expected a list of conditions"),
        ("1: CT", "neither a subject nor all/any/not"),
    ],
)
def test_compile_problems(cond: str, fragment: str) -> None:
    problems = compile_problems(cond)
    assert len(problems) == 1, problems
    assert fragment in problems[0].message


def test_unknown_operator_message_lists_known_operators() -> None:
    (problem,) = compile_problems("Modality: {eq: CT}")
    for op in OPERATORS:
        assert op in problem.message


def test_every_problem_is_collected_with_its_line() -> None:
    text = (
        "all:\n"  # 1
        "  - Modality: CT\n"  # 2
        "  - Modalty: MR\n"  # 3
        "  - StudyDescription:\n"  # 4
        "      regex: '('\n"  # 5
        "      bogus_op: 1\n"  # 6
        "not:\n"  # 7
        "  - '(zzzz,0010)': x\n"  # 8
    )
    assert sorted(p.line for p in compile_problems(text)) == [3, 5, 6, 8]


def test_erroneous_clause_never_matches_nor_raises() -> None:
    errors = CompileErrors()
    predicate = compile_match(load_yaml("Modalty: CT", "t.yaml"), 1, errors)
    assert errors.problems
    assert predicate(InstanceView(ct())) is False


def test_ordering_accepts_date_like_strings_at_compile_time() -> None:
    assert compile_problems("StudyDate: {gt: '2024-01-01'}") == []
    assert compile_problems("StudyTime: {lt: '10:30'}") == []


# --- tag parsing ----------------------------------------------------------------------
def test_parse_tag_and_resolve_element() -> None:
    assert parse_tag("(0010,0010)") == 0x00100010
    assert parse_tag("0010,0010") == 0x00100010
    assert parse_tag("(0009,1001)") == 0x00091001
    assert parse_tag("(0010;0010)") is None
    assert parse_tag("(00100,010)") is None
    assert resolve_element("PatientName") == 0x00100010
    assert resolve_element("(0008,0060)") == 0x00080060
    assert resolve_element("NotAKeyword") is None


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ("AccessionNumber:", "'equals' has no value"),
        ("AccessionNumber: {not_equals: }", "'not_equals' has no value"),
        ("StudyDate: {lt: '2024-13-99'}", "'lt' needs a number, date or time"),
        ("StudyTime: {ge: '25:99'}", "'ge' needs a number, date or time"),
    ],
)
def test_conditions_that_could_never_match_are_refused(condition: str, problem: str) -> None:
    """An empty YAML value compared with the text "None", and a date that is no date
    never matched anything: lint says so instead."""
    problems = compile_problems(f"all:\n  - {condition}\n")
    assert any(problem in p.message for p in problems), problems


@pytest.mark.parametrize(
    "condition", ["StudyDate: {lt: '2024-01-31'}", "StudyTime: {ge: '12:30'}", "Rows: {gt: 256}"]
)
def test_real_dates_times_and_numbers_are_accepted(condition: str) -> None:
    compile_rule_match(f"all:\n  - {condition}\n")
