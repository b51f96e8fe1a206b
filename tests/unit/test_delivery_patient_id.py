"""The Patient ID read for DICOM audit messages never fails a delivery, and a malformed
one never reaches the logs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException
from pydicom.uid import ExplicitVRLittleEndian
from structlog.testing import capture_logs

from router.deliver import _patient_id

RAW_ID = b"PID-4"  # five bytes: no whole number of US values


def _instance(path: Path, patient_id: str | None = None) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.7"
    ds.PatientName = "Doe^Jane"
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _with_malformed_patient_id(path: Path) -> Path:
    """Patient ID (0010,0020) encoded as US with an odd length, after Patient Name."""
    _instance(path)
    element = struct.pack("<HH", 0x0010, 0x0020) + b"US" + struct.pack("<H", len(RAW_ID))
    path.write_bytes(path.read_bytes() + element + RAW_ID)
    return path


def test_a_malformed_patient_id_gives_none_and_logs_no_value(tmp_path: Path) -> None:
    bad = _with_malformed_patient_id(tmp_path / "bad.dcm")
    # The case: pydicom fails with an error that is no ValueError and quotes the bytes.
    with pytest.raises(BytesLengthException) as info:
        dcmread(bad, specific_tags=["PatientID"]).get("PatientID")
    assert not isinstance(info.value, ValueError)
    assert repr(RAW_ID) in str(info.value)

    with capture_logs() as logs:
        assert _patient_id(bad) is None
    assert logs, "the unreadable header is logged"
    assert all(RAW_ID.decode() not in repr(entry) for entry in logs)
    assert _patient_id(_instance(tmp_path / "ok.dcm", "PID-0042")) == "PID-0042"
