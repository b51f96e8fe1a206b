"""router.scp.read_identifiers: the few tags the SCP needs, read without the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from router.scp import LAST_TAG_READ, read_identifiers
from tests.support.synthetic import write_ct_series


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return write_ct_series(tmp_path, 1, rows=16, cols=16)[0]


def test_reads_the_identifiers_a_full_read_finds(ct_file: Path) -> None:
    full = dcmread(ct_file, stop_before_pixels=True)
    header = read_identifiers(ct_file)
    for keyword in ("SOPInstanceUID", "PatientID", "StudyInstanceUID"):
        assert header[keyword].value == full[keyword].value, keyword
    assert header.file_meta.TransferSyntaxUID == full.file_meta.TransferSyntaxUID


def test_stops_after_the_study_instance_uid(ct_file: Path) -> None:
    header = read_identifiers(ct_file)
    assert max(int(element.tag) for element in header) <= LAST_TAG_READ
    assert "Rows" not in header and "PixelData" not in header
    assert "Rows" in dcmread(ct_file, stop_before_pixels=True)  # the file has them


def test_missing_sop_instance_uid_shows_as_an_attribute_error(tmp_path: Path) -> None:
    source = write_ct_series(tmp_path / "src", 1, rows=16, cols=16)[0]
    dataset = dcmread(source)
    del dataset.SOPInstanceUID
    broken = tmp_path / "broken.dcm"
    dataset.save_as(broken, enforce_file_format=True)
    with pytest.raises(AttributeError):
        _ = read_identifiers(broken).SOPInstanceUID  # the SCP answers 0xC000 for this
