"""Quick checks that the test peers in ``tests/support`` work.

They exercise the real peers (DCMTK tools, Orthanc, the pynetdicom capture
SCP in its own process) on 127.0.0.1 only, and the comparison helper that
the router's integration tests rely on.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from tests.support.capture_scp import CaptureSCP
from tests.support.compare import dataset_differences
from tests.support.dcmtk import dcmsend, echoscu, storescu
from tests.support.orthanc import Orthanc, OrthancError
from tests.support.ports import free_port, wait_for_port
from tests.support.synthetic import (
    pydicom_test_files,
    pydicom_test_files_dir,
    write_ct_series,
)


def _sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _transfer_syntax(source: Path | bytes) -> UID:
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    return UID(ds.file_meta.TransferSyntaxUID)


@pytest.fixture(scope="module")
def orthanc() -> Iterator[Orthanc]:
    # SIGKILL on exit: a graceful Orthanc shutdown takes ~3 s.
    with Orthanc(graceful_stop=False) as server:
        yield server


@pytest.fixture()
def capture() -> Iterator[CaptureSCP]:
    with CaptureSCP() as scp:
        yield scp


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("ct"), 20, seed=7)


# -- data -------------------------------------------------------------------


def test_synthetic_series_is_one_realistic_series(ct_series: list[Path]) -> None:
    datasets = [pydicom.dcmread(p) for p in ct_series]
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(ct_series)
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, 21))
    assert len({float(ds.SliceLocation) for ds in datasets}) == len(ct_series)
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert (first.BitsAllocated, first.PixelRepresentation) == (16, 1)
    assert first.pixel_array.shape == (512, 512)
    assert first.pixel_array.dtype == np.int16


def test_synthetic_pixels_are_deterministic(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path / "a", 2, rows=64, cols=64, seed=3)
    b = write_ct_series(tmp_path / "b", 2, rows=64, cols=64, seed=3)
    assert pydicom.dcmread(a[1]).PixelData == pydicom.dcmread(b[1]).PixelData
    assert _sop_instance_uid(a[1]) != _sop_instance_uid(b[1])


def test_pydicom_test_files_are_distinct_instances() -> None:
    files = pydicom_test_files()
    assert len(files) >= 12
    uids = [_sop_instance_uid(p) for p in files]
    assert len(set(uids)) == len(uids)
    syntaxes = {_transfer_syntax(p) for p in files}
    assert len(syntaxes) >= 10


# -- comparison -------------------------------------------------------------


def test_dataset_differences_equal_across_encodings() -> None:
    base = pydicom_test_files_dir()
    assert dataset_differences(base / "CT_small.dcm", base / "CT_small.dcm") == []
    # Same instance, Explicit VR Little vs Big Endian and Implicit VR.
    assert dataset_differences(base / "MR_small.dcm", base / "MR_small_bigendian.dcm") == []
    assert dataset_differences(base / "MR_small.dcm", base / "MR_small_implicit.dcm") == []
    assert dataset_differences(base / "rtdose.dcm", base / "rtdose_expb.dcm") == []
    # Different pixel encoding is a difference.
    assert dataset_differences(base / "MR_small.dcm", base / "MR_small_RLE.dcm")


def test_dataset_differences_detects_pixel_and_name(ct_series: list[Path]) -> None:
    original = ct_series[0]
    ds = pydicom.dcmread(original)
    pixels = ds.pixel_array.copy()
    pixels[100, 200] += 1
    ds.PixelData = pixels.tobytes()
    ds.PatientName = "ROE^JANE"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    differences = dataset_differences(original, buffer.getvalue())
    assert len(differences) == 2, differences
    name_diff, pixel_diff = differences
    assert name_diff.startswith("(0010,0010) PatientName")
    assert pixel_diff.startswith("(7FE0,0010) PixelData")
    assert "1 differing" in pixel_diff
    text = "\n".join(differences)
    assert "DOE" not in text and "ROE" not in text  # never shows identifying values


def test_dataset_differences_nested_and_ignored(tmp_path: Path) -> None:
    source = pydicom_test_files_dir() / "test-SR.dcm"
    ds = pydicom.dcmread(source)
    ds.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning = "Changed"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    differences = dataset_differences(source, changed)
    assert len(differences) == 1, differences
    assert "ContentSequence[0]" in differences[0]
    assert "CodeMeaning" in differences[0]
    assert dataset_differences(source, changed, ignore_tags=[0x00080104]) == []


# -- peers ------------------------------------------------------------------


def test_wait_for_port_times_out() -> None:
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_for_port("127.0.0.1", port, timeout=0.2)


@pytest.mark.integration
def test_orthanc_start_failure_reports_log() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OrthancError, match="log tail"):
            Orthanc(dicom_port=port, startup_timeout=10).start()


@pytest.mark.integration
def test_echoscu_against_orthanc_and_capture(orthanc: Orthanc, capture: CaptureSCP) -> None:
    result = echoscu(orthanc.dicom_port, called_ae=orthanc.aet)
    assert result.returncode == 0, result.stderr
    result = echoscu(capture.port, called_ae=capture.ae_title)
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_storescu_synthetic_series_to_capture(ct_series: list[Path], capture: CaptureSCP) -> None:
    result = storescu(ct_series, capture.port, called_ae=capture.ae_title)
    assert result.returncode == 0, result.stderr
    capture.wait_for_count(len(ct_series), timeout=20)

    sent = {_sop_instance_uid(p): p for p in ct_series}
    assert sorted(capture.sop_instance_uids()) == sorted(sent)
    for received in capture.received():
        uid = received.name.split("__")[0]
        assert dataset_differences(sent[uid], received) == [], uid


@pytest.mark.integration
def test_capture_keeps_duplicates(ct_series: list[Path], capture: CaptureSCP) -> None:
    result = storescu([ct_series[0], ct_series[0]], capture.port)
    assert result.returncode == 0, result.stderr
    capture.wait_for_count(2, timeout=10)
    uid = _sop_instance_uid(ct_series[0])
    assert capture.sop_instance_uids() == [uid, uid]


@pytest.mark.integration
def test_dcmsend_pydicom_files_to_orthanc(orthanc: Orthanc) -> None:
    files = pydicom_test_files()
    before = orthanc.count_instances()
    result = dcmsend(files, orthanc.dicom_port, called_ae=orthanc.aet)
    # dcmsend exits 0 even when the peer refuses an instance: count too.
    assert result.returncode == 0, result.stderr
    orthanc.wait_for_count(before + len(files), timeout=20)

    stored = orthanc.sop_instance_uids()
    for path in files:
        uid = _sop_instance_uid(path)
        assert uid in stored, path.name
        data = orthanc.instance_file(stored[uid])
        assert dataset_differences(path, data) == [], path.name
        original_ts = _transfer_syntax(path)
        if original_ts.is_compressed:
            assert _transfer_syntax(data) == original_ts, path.name


@pytest.mark.integration
def test_dcmsend_pydicom_files_to_capture(capture: CaptureSCP) -> None:
    files = pydicom_test_files()
    result = dcmsend(files, capture.port, called_ae=capture.ae_title)
    assert result.returncode == 0, result.stderr
    capture.wait_for_count(len(files), timeout=20)

    received = {p.name.split("__")[0]: p for p in capture.received()}
    assert len(received) == len(files)
    for path in files:
        uid = _sop_instance_uid(path)
        assert uid in received, path.name
        assert dataset_differences(path, received[uid]) == [], path.name
        original_ts = _transfer_syntax(path)
        if original_ts.is_compressed:
            assert _transfer_syntax(received[uid]) == original_ts, path.name


@pytest.mark.integration
def test_storescu_many_files_via_directory(
    ct_series: list[Path], capture: CaptureSCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.support.dcmtk as dcmtk

    monkeypatch.setattr(dcmtk, "_MAX_INLINE_ARGS_BYTES", 0)  # force +sd +r
    result = storescu(ct_series, capture.port)
    assert result.returncode == 0, result.stderr
    capture.wait_for_count(len(ct_series), timeout=20)
    assert sorted(capture.sop_instance_uids()) == sorted(map(_sop_instance_uid, ct_series))
