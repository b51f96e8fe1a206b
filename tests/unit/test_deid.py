"""router.rules.deid: the PS3.15 Basic Application Level Confidentiality Profile."""

from __future__ import annotations

import copy
import datetime
import io
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from router.rules import deid
from router.rules.deid_table import ACTION_CODES, PROFILE_ROWS, row_for_tag
from router.rules.keyed import remap_uid

SALT = b"test-salt"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.1.1"


def make_instance(sop_uid: str = "1.2.826.0.1.3680043.2.1125.1.1.9", **values: object) -> Dataset:
    """A CT-like instance full of identifying attributes, with file meta."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "SCANNER_ROOM7"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = STUDY_UID + ".2"
    ds.FrameOfReferenceUID = STUDY_UID + ".3"
    ds.Modality = "CT"
    ds.PatientName = "DOE^JANE^Q"
    ds.PatientID = "MRN-123456"
    ds.PatientBirthDate = "19610203"
    ds.PatientSex = "F"
    ds.PatientAge = "062Y"
    ds.PatientWeight = "71.5"
    ds.AccessionNumber = "ACC-998877"
    ds.InstitutionName = "Saint Elsewhere Hospital"
    ds.InstitutionAddress = "1 Main Street, Springfield"
    ds.ReferringPhysicianName = "SMITH^JOHN"
    ds.OperatorsName = "TECH^TINA"
    ds.StationName = "CTROOM7"
    ds.DeviceSerialNumber = "SN-55555"
    ds.StudyDate = "20240315"
    ds.StudyTime = "101500"
    ds.AcquisitionDate = "20240315"
    ds.AcquisitionDateTime = "20240315102030.5+0100"
    ds.InstanceCreationDate = "20240316"
    ds.StudyID = "S-42"
    ds.StudyDescription = "CT chest - Dr. Smith"
    ds.SeriesDescription = "Axial 5mm"
    ds.add_new(0x00091010, "LO", "PrivCreator")
    ds.add_new(0x00091001, "LO", "MRN-123456 in private")
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def all_values(ds: Dataset) -> list[str]:
    """Every element value as text, at every depth."""
    found: list[str] = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found.extend(all_values(item))
        else:
            found.append(str(elem.value))
    return found


def private_tags(ds: Dataset) -> list[int]:
    found: list[int] = []
    for elem in ds:
        if elem.tag.is_private:
            found.append(int(elem.tag))
        if elem.VR == "SQ":
            for item in elem.value:
                found.extend(private_tags(item))
    return found


def shifted(date: str, days: int) -> str:
    return (datetime.datetime.strptime(date, "%Y%m%d") + datetime.timedelta(days=days)).strftime(
        "%Y%m%d"
    )


# --- the table --------------------------------------------------------------------------


def test_table_rows_are_well_formed() -> None:
    assert len(PROFILE_ROWS) == 442
    option_fields = [f for f in PROFILE_ROWS[0].__slots__ if f.startswith(("retain", "clean"))]
    for row in PROFILE_ROWS:
        assert row.basic in ACTION_CODES, row
        for name in option_fields:
            assert getattr(row, name) in (None, "K", "C", "X"), (row, name)
    assert row_for_tag(0x00100010) is not None and row_for_tag(0x00100010).basic == "Z"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (0x50000005, "(50xx,xxxx)"),
        (0x501E3000, "(50xx,xxxx)"),
        (0x60023000, "(60xx,3000)"),
        (0x60004000, "(60xx,4000)"),
        (0x00091001, "(gggg,eeee)"),
        (0x60FF3000, "(gggg,eeee)"),  # odd group: private, not an overlay
        (0x00080018, 0x00080018),
    ],
)
def test_row_for_tag_resolves_patterns(tag: int, expected: object) -> None:
    row = row_for_tag(tag)
    assert row is not None and row.tag == expected


def test_row_for_tag_unlisted() -> None:
    assert row_for_tag(0x00080060) is None  # Modality
    assert row_for_tag(0x60000010) is None  # overlay rows: not listed themselves
    assert row_for_tag(0x50203000) is None  # group 5020 is outside the repeating range


def test_profile_attribute_tags() -> None:
    uids = deid.profile_attribute_tags({"U"})
    assert {0x00080018, 0x0020000D, 0x0020000E, 0x00200052} <= uids
    assert all(isinstance(t, int) for t in uids)
    assert 0x00100010 in deid.profile_attribute_tags({"Z"})
    assert 0x00100010 not in uids


# --- options -----------------------------------------------------------------------------


def test_options_offered() -> None:
    assert {
        "retain-longitudinal-full-dates",
        "retain-longitudinal-modified-dates",
        "retain-device-identity",
        "retain-institution-identity",
        "retain-uids",
        "retain-patient-characteristics",
        "clean-descriptors",
    } == deid.OPTIONS


def test_bad_options_rejected() -> None:
    with pytest.raises(ValueError, match="unknown"):
        deid.deidentify(make_instance(), frozenset({"retain-safe-private"}), SALT)
    both = frozenset({"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"})
    with pytest.raises(ValueError, match="exclude"):
        deid.validate_options(both)


# --- the basic profile -----------------------------------------------------------------


def test_basic_profile_removes_or_replaces_identifiers() -> None:
    ds = make_instance()
    deid.deidentify(ds, frozenset(), SALT)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert keyword in ds and not ds[keyword].value, keyword  # Z: present, empty
    assert not ds.ReferringPhysicianName and not ds.StudyID
    for keyword in ("InstitutionName", "InstitutionAddress", "OperatorsName", "StationName"):
        assert keyword not in ds, keyword
    for keyword in ("DeviceSerialNumber", "PatientAge", "PatientWeight", "StudyDescription"):
        assert keyword not in ds, keyword
    assert not ds.PatientSex
    assert ds.SeriesDescription != "Axial 5mm" if "SeriesDescription" in ds else True
    data = encoded(ds)
    for original in (b"DOE", b"MRN-123456", b"19610203", b"ACC-998877", b"Elsewhere", b"SMITH"):
        assert original not in data, original
    assert b"SCANNER_ROOM7" not in data  # file meta source AE title dropped
    assert ds.Modality == "CT" and ds.SOPClassUID == CT_IMAGE_STORAGE


def test_private_attributes_removed_everywhere() -> None:
    ds = make_instance()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.add_new(0x00111010, "LO", "Creator")
    item.add_new(0x00111001, "SH", "secret")
    ds.ReferencedSeriesSequence = Sequence([item])
    assert private_tags(ds)
    deid.deidentify(ds, frozenset(), SALT)
    assert private_tags(ds) == []
    assert b"secret" not in encoded(ds)


def test_dates_removed_by_default() -> None:
    ds = make_instance()
    deid.deidentify(ds, frozenset(), SALT)
    assert not ds.StudyDate and not ds.StudyTime  # Z
    assert "AcquisitionDate" not in ds and "AcquisitionDateTime" not in ds  # X/Z, X/Z/D
    assert "InstanceCreationDate" not in ds  # unlisted dates are handled like listed ones
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"


def test_overlays_and_curves_removed() -> None:
    ds = make_instance()
    ds.add_new(0x60000010, "US", 512)
    ds.add_new(0x60000011, "US", 512)
    ds.add_new(0x60003000, "OW", b"\x00" * 16)
    ds.add_new(0x60024000, "LT", "overlay comment naming DOE")
    ds.add_new(0x50000005, "US", 1)
    deid.deidentify(ds, frozenset(), SALT)
    groups = {elem.tag.group for elem in ds}
    assert not groups & {0x5000, 0x6000, 0x6002}


def test_dummies_are_valid_for_the_vr() -> None:
    ds = make_instance()
    ds.ContainerIdentifier = "BOX-17"  # LO, D
    ds.VerifyingObserverName = "CHECKER^CARL"  # PN, D
    ds.DeviceLabel = "Linac 3"  # LO, D
    content = Dataset()
    content.ValueType = "TEXT"
    content.TextValue = "Patient Jane Doe, seen by Dr. Smith"
    ds.ContentSequence = Sequence([content])  # D: emptied, its text is not in the table
    deid.deidentify(ds, frozenset(), SALT)
    assert ds.ContainerIdentifier == "ANONYMIZED"
    assert ds.VerifyingObserverName == "ANONYMOUS"
    assert ds.DeviceLabel == "ANONYMIZED"
    assert len(ds.ContentSequence) == 0
    reread = pydicom.dcmread(io.BytesIO(encoded(ds)))
    assert reread.ContainerIdentifier == "ANONYMIZED"


# --- UIDs -------------------------------------------------------------------------------


def test_uids_replaced_consistently_across_instances() -> None:
    first = make_instance("1.2.826.0.1.3680043.2.1125.1.1.10")
    second = make_instance("1.2.826.0.1.3680043.2.1125.1.1.11")
    deid.deidentify(first, frozenset(), SALT)
    deid.deidentify(second, frozenset(), SALT)
    assert first.StudyInstanceUID == second.StudyInstanceUID != STUDY_UID
    assert first.StudyInstanceUID == remap_uid(STUDY_UID, SALT)
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    for ds in (first, second):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == CT_IMAGE_STORAGE  # structural UIDs are not touched
    other_salt = make_instance("1.2.826.0.1.3680043.2.1125.1.1.10")
    deid.deidentify(other_salt, frozenset(), b"another salt")
    assert other_salt.StudyInstanceUID != first.StudyInstanceUID


def test_multivalued_uid_maps_each_value() -> None:
    ds = make_instance()
    ds.FailedSOPInstanceUIDList = ["1.2.3.1", "1.2.3.2"]
    deid.deidentify(ds, frozenset(), SALT)
    assert list(ds.FailedSOPInstanceUIDList) == [remap_uid(u, SALT) for u in ("1.2.3.1", "1.2.3.2")]


def test_retain_uids_keeps_them() -> None:
    ds = make_instance()
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedStudySequence = Sequence([ref])
    deid.deidentify(ds, frozenset({"retain-uids"}), SALT)
    assert ds.StudyInstanceUID == STUDY_UID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113110"]


# --- sequences ----------------------------------------------------------------------------


def test_nested_sequences_are_deidentified() -> None:
    ds = make_instance()
    instance_ref = Dataset()
    instance_ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    instance_ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    instance_ref.PersonName = "NESTED^NORA"  # (0040,A123) D
    instance_ref.add_new(0x00131001, "LO", "private nested")
    series_ref = Dataset()  # Referenced Series Sequence is not listed: kept, items processed
    series_ref.SeriesInstanceUID = STUDY_UID + ".2"
    series_ref.ReferencedInstanceSequence = Sequence([instance_ref])
    ds.ReferencedSeriesSequence = Sequence([series_ref])
    study_ref = Dataset()
    study_ref.ReferencedSOPInstanceUID = STUDY_UID
    ds.ReferencedStudySequence = Sequence([study_ref])  # X/Z: removed
    deid.deidentify(ds, frozenset(), SALT)
    item = ds.ReferencedSeriesSequence[0]
    assert item.SeriesInstanceUID == ds.SeriesInstanceUID == remap_uid(STUDY_UID + ".2", SALT)
    nested = item.ReferencedInstanceSequence[0]
    assert nested.ReferencedSOPInstanceUID == remap_uid("1.2.3.4.5.6", SALT)
    assert nested.ReferencedSOPClassUID == CT_IMAGE_STORAGE
    assert nested.PersonName == "ANONYMOUS"
    assert private_tags(ds) == []
    assert "ReferencedStudySequence" not in ds


def request_attributes() -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = "RP-777"  # X
    item.RequestedProcedureDescription = "CT abdomen for DOE"  # X/Z, Clean Descriptors C
    item.ScheduledProcedureStepDescription = "Contrast per Dr. SMITH"  # X, C
    item.ScheduledPerformingPhysicianName = "SCHEDULER^SAM"  # X
    return item


def test_request_attributes_removed_by_basic_profile() -> None:
    ds = make_instance(RequestAttributesSequence=Sequence([request_attributes()]))
    deid.deidentify(ds, frozenset(), SALT)
    assert "RequestAttributesSequence" not in ds
    assert b"RP-777" not in encoded(ds)


def test_request_attributes_cleaned_with_clean_descriptors() -> None:
    ds = make_instance(RequestAttributesSequence=Sequence([request_attributes()]))
    deid.deidentify(ds, frozenset({"clean-descriptors"}), SALT)
    item = ds.RequestAttributesSequence[0]
    assert "RequestedProcedureID" not in item
    assert "ScheduledPerformingPhysicianName" not in item
    assert item.RequestedProcedureDescription == "CT abdomen for *"
    assert item.ScheduledProcedureStepDescription == "Contrast per Dr. *"
    data = encoded(ds)
    assert b"RP-777" not in data and b"SMITH" not in data and b"DOE" not in data


# --- option columns --------------------------------------------------------------------


def test_clean_descriptors_keeps_descriptors_without_known_identifiers() -> None:
    ds = make_instance(SeriesDescription="Axial MRN-123456 jane", ImageComments="ok 19610203")
    deid.deidentify(ds, frozenset({"clean-descriptors"}), SALT)
    assert ds.StudyDescription == "CT chest - Dr. *"
    assert ds.SeriesDescription == "Axial * *"  # PatientID and a name component, any case
    assert ds.ImageComments == "ok *"  # the birth date
    assert "113105" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]


def test_device_identity_option() -> None:
    kept = make_instance()
    deid.deidentify(kept, frozenset({"retain-device-identity"}), SALT)
    assert kept.DeviceSerialNumber == "SN-55555"
    assert kept.StationName == "CTROOM7"
    assert not kept.PatientName and "InstitutionName" not in kept


def test_institution_identity_option() -> None:
    ds = make_instance()
    deid.deidentify(ds, frozenset({"retain-institution-identity"}), SALT)
    assert ds.InstitutionName == "Saint Elsewhere Hospital"
    assert ds.InstitutionAddress == "1 Main Street, Springfield"
    assert "StationName" not in ds


def test_patient_characteristics_option() -> None:
    ds = make_instance(Allergies="Penicillin, noted by Dr. Smith")
    deid.deidentify(ds, frozenset({"retain-patient-characteristics"}), SALT)
    assert (ds.PatientSex, ds.PatientAge, ds.PatientWeight) == ("F", "062Y", 71.5)
    assert ds.Allergies == "Penicillin, noted by Dr. *"  # C in that column: kept cleaned
    assert not ds.PatientName and not ds.PatientBirthDate


def test_full_dates_keep_dates_and_times() -> None:
    ds = make_instance()
    deid.deidentify(ds, frozenset({"retain-longitudinal-full-dates"}), SALT)
    assert (ds.StudyDate, ds.StudyTime) == ("20240315", "101500")
    assert ds.AcquisitionDateTime == "20240315102030.5+0100"
    assert ds.InstanceCreationDate == "20240316"
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert not ds.PatientBirthDate  # not a longitudinal date: still Z


def test_modified_dates_shift_a_patient_alike_and_keep_times() -> None:
    option = frozenset({"retain-longitudinal-modified-dates"})
    first = make_instance("1.2.3.10", StudyDate="20240315", AcquisitionDate="20240315")
    second = make_instance("1.2.3.11", StudyDate="20240601", AcquisitionDate="20240602")
    deid.deidentify(first, option, SALT)
    deid.deidentify(second, option, SALT)
    shift = (
        datetime.datetime.strptime(first.StudyDate, "%Y%m%d")
        - datetime.datetime.strptime("20240315", "%Y%m%d")
    ).days
    assert -365 <= shift <= -1
    assert second.StudyDate == shifted("20240601", shift)
    assert second.AcquisitionDate == shifted("20240602", shift)
    assert first.InstanceCreationDate == shifted("20240316", shift)
    assert first.AcquisitionDateTime == shifted("20240315", shift) + "102030.5+0100"
    assert first.StudyTime == second.StudyTime == "101500"
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    assert not first.PatientBirthDate


def test_modified_dates_explicit_shift_and_unparsable_values() -> None:
    ds = make_instance(AcquisitionDateTime="2024", SeriesDate="20240229")
    deid.deidentify(ds, frozenset({"retain-longitudinal-modified-dates"}), SALT, -10)
    assert ds.StudyDate == "20240305"
    assert ds.SeriesDate == "20240219"
    assert "AcquisitionDateTime" not in ds  # a year only: Basic Profile action (X/Z/D: X)


def test_derived_shift_depends_on_the_patient() -> None:
    shifts = set()
    for patient in ("P1", "P2", "P3", "P4"):
        ds = make_instance(PatientID=patient)
        deid.deidentify(ds, frozenset({"retain-longitudinal-modified-dates"}), SALT)
        shifts.add(ds.StudyDate)
    assert len(shifts) > 1


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (frozenset(), ["113100"]),
        (frozenset({"retain-uids"}), ["113100", "113110"]),
        (frozenset({"retain-longitudinal-full-dates"}), ["113100", "113106"]),
        (frozenset({"retain-longitudinal-modified-dates"}), ["113100", "113107"]),
        (frozenset({"retain-patient-characteristics"}), ["113100", "113108"]),
        (frozenset({"retain-device-identity"}), ["113100", "113109"]),
        (frozenset({"retain-institution-identity"}), ["113100", "113112"]),
        (frozenset({"clean-descriptors"}), ["113100", "113105"]),
        (
            frozenset({"retain-uids", "clean-descriptors", "retain-device-identity"}),
            ["113100", "113105", "113109", "113110"],
        ),
    ],
)
def test_method_is_recorded(options: frozenset[str], expected: list[str]) -> None:
    ds = make_instance()
    deid.deidentify(ds, options, SALT)
    assert ds.PatientIdentityRemoved == "YES"
    items = ds.DeidentificationMethodCodeSequence
    assert sorted(i.CodeValue for i in items) == expected
    cid7050 = {
        c.value: c.meaning
        for c in (
            codes.DCM.BasicApplicationConfidentialityProfile,
            codes.DCM.CleanDescriptorsOption,
            codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
            codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
            codes.DCM.RetainPatientCharacteristicsOption,
            codes.DCM.RetainDeviceIdentityOption,
            codes.DCM.RetainUidsOption,
            codes.DCM.RetainInstitutionIdentityOption,
        )
    }
    for item in items:
        assert item.CodingSchemeDesignator == "DCM"
        assert item.CodeMeaning == cid7050[item.CodeValue]
    method = ds["DeidentificationMethod"].value
    method = [method] if isinstance(method, str) else list(method)
    assert "Basic Application Confidentiality Profile" in method[0]
    assert all(len(v) <= 64 for v in method)
    assert all(any(option in v for v in method) for option in options)


def test_deterministic() -> None:
    first, second = make_instance(), make_instance()
    options = frozenset({"retain-longitudinal-modified-dates", "clean-descriptors"})
    deid.deidentify(first, options, SALT)
    deid.deidentify(second, options, SALT)
    assert encoded(first) == encoded(second)


# --- property: nothing listed for removal survives ----------------------------------------

TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT"}
REMOVED_CODES = {"X", "Z", "D", "X/Z", "X/D", "Z/D", "X/Z/D"}
TEXT_TAGS = sorted(
    t
    for t in deid.profile_attribute_tags(REMOVED_CODES)
    if t >> 16 not in (0x0000, 0x0002) and dictionary_VR(t) in TEXT_VRS
)


def test_text_tags_cover_the_usual_suspects() -> None:
    assert len(TEXT_TAGS) > 100
    assert {0x00100010, 0x00100020, 0x00080050, 0x00080080, 0x00080090} <= set(TEXT_TAGS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWYZ", min_size=4, max_size=8))
def test_no_original_text_survives(prefix: str) -> None:
    ds = make_instance()
    nested = Dataset()
    originals = []
    for index, tag in enumerate(TEXT_TAGS):
        value = f"Q{prefix}{index:03d}"  # distinctive, and short enough for SH
        originals.append(value)
        vr = dictionary_VR(tag)
        ds.add_new(tag, vr, value)
        nested.add_new(tag, vr, value)
    holder = Dataset()
    holder.ReferencedSOPInstanceUID = "1.2.3"
    holder.ReferencedInstanceSequence = Sequence([nested])
    ds.ReferencedSeriesSequence = Sequence([holder])
    deid.deidentify(ds, frozenset(), SALT)
    data = encoded(ds)
    values = "\n".join(all_values(ds))
    for value in originals:
        assert value.encode() not in data, value
        assert value not in values, value


# --- real files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm"])
@pytest.mark.parametrize(
    "options",
    [
        frozenset(),
        frozenset(deid.OPTIONS - {"retain-longitudinal-full-dates"}),
    ],
)
def test_real_files_still_write(name: str, options: frozenset[str]) -> None:
    ds = pydicom.dcmread(TEST_FILES / name)
    original_name = str(ds.PatientName)
    deid.deidentify(ds, options, SALT)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    reread = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert str(reread.get("PatientName", "")) != original_name
    assert reread.PatientIdentityRemoved == "YES"
    assert private_tags(reread) == []
    if "SOPInstanceUID" in reread and "MediaStorageSOPInstanceUID" in reread.file_meta:
        assert reread.file_meta.MediaStorageSOPInstanceUID == reread.SOPInstanceUID


def test_real_file_copy_is_untouched_by_deepcopy_semantics() -> None:
    original = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    work = copy.deepcopy(original)
    deid.deidentify(work, frozenset(), SALT)
    assert original.PatientName != work.PatientName
    assert work.StudyInstanceUID == remap_uid(original.StudyInstanceUID, SALT)
