"""router.file_meta reads what pydicom reads, and refuses what is not a DICOM file."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pynetdicom.dsutils import split_dataset

from router.file_meta import FileMetaError, parse_file_meta, read_file_meta
from tests.support.synthetic import pydicom_test_files_dir, write_ct_series


def _pydicom_reading(path: Path) -> tuple[str, str, str, int] | None:
    """What pydicom (as pynetdicom uses it) reads; None where it fails or lacks a UID."""
    try:
        meta, offset = split_dataset(path)
        return (
            str(meta.TransferSyntaxUID),
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            offset,
        )
    except Exception:
        return None


ALL_TEST_FILES = sorted(p for p in pydicom_test_files_dir().iterdir() if p.is_file())


@pytest.mark.parametrize("path", ALL_TEST_FILES, ids=lambda p: p.name)
def test_agrees_with_pydicom_on_all_its_test_files(path: Path) -> None:
    """Same values and offset where pydicom reads them; refused where it cannot.

    The set includes files without preamble or file meta, with a missing transfer
    syntax, truncated, big endian, deflated and encapsulated.
    """
    expected = _pydicom_reading(path)
    if expected is None:
        with pytest.raises(FileMetaError):
            read_file_meta(path)
        return
    meta = read_file_meta(path)
    assert (meta.transfer_syntax, meta.sop_class_uid, meta.sop_instance_uid,
            meta.dataset_offset) == expected  # fmt: skip


def test_the_test_files_include_both_kinds() -> None:
    readings = [_pydicom_reading(p) for p in ALL_TEST_FILES]
    assert sum(r is not None for r in readings) >= 50
    assert sum(r is None for r in readings) >= 5


def test_matches_pydicom_on_a_synthetic_ct(tmp_path: Path) -> None:
    (path,) = write_ct_series(tmp_path, 1)
    expected = read_file_meta_info(path)
    meta = read_file_meta(path)
    assert (meta.transfer_syntax, meta.sop_class_uid, meta.sop_instance_uid) == (
        expected.TransferSyntaxUID,
        expected.MediaStorageSOPClassUID,
        expected.MediaStorageSOPInstanceUID,
    )
    assert meta.dataset_offset == split_dataset(path)[1]


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2s2xL", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _file(*elements: bytes, data_set: bytes = b"\x08\x00\x16\x00UI\x02\x001\x00") -> bytes:
    return b"\0" * 128 + b"DICM" + b"".join(elements) + data_set


UIDS = (
    _element(0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
    _element(0x0003, b"UI", b"1.2.3.4"),
    _element(0x0010, b"UI", b"1.2.840.10008.1.2.1\0"),
)


def test_long_vr_elements_and_padding() -> None:
    head = _file(_element(0x0001, b"OB", b"\0\1"), *UIDS)
    meta = parse_file_meta(head)
    assert meta.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"  # NUL padding dropped
    assert meta.transfer_syntax == "1.2.840.10008.1.2.1"
    assert head[meta.dataset_offset : meta.dataset_offset + 2] == b"\x08\x00"


def test_a_long_group_is_read_in_more_than_one_go(tmp_path: Path) -> None:
    private = _element(0x0102, b"OB", b"x" * 10_000)  # PrivateInformation
    path = tmp_path / "long.dcm"
    path.write_bytes(_file(private, *UIDS))
    meta = read_file_meta(path)
    assert meta.sop_instance_uid == "1.2.3.4"
    assert meta.dataset_offset == 132 + len(private) + sum(len(e) for e in UIDS)


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"\0" * 100, "too short"),
        (b"\0" * 128 + b"XXXX" + b"".join(UIDS), "no DICM"),
        (_file(*UIDS[:2]), "lacks TransferSyntaxUID"),
        (_file(struct.pack("<HHL", 2, 0x0010, 4) + b"1.2\0", *UIDS), "no explicit VR"),
    ],
)
def test_refuses_what_is_not_a_dicom_file(head: bytes, reason: str) -> None:
    with pytest.raises(FileMetaError, match=reason):
        parse_file_meta(head, complete=True)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.dcm"
    path.write_bytes(_file(*UIDS, data_set=b"")[:-3])
    with pytest.raises(FileMetaError, match="runs past"):
        read_file_meta(path)
