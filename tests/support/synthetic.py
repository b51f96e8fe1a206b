"""Test data: synthetic CT series and a curated set of pydicom test files.

Nothing here touches the network.  In particular the pydicom test files are
located directly inside the installed package; ``pydicom.data.
get_testdata_file(s)`` is never called because it may try to download files.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

__all__ = [
    "PYDICOM_TEST_FILES",
    "pydicom_test_files",
    "pydicom_test_files_dir",
    "write_ct_series",
    "write_native_multiframe",
]


def write_ct_series(
    out_dir: Path,
    count: int,
    rows: int = 512,
    cols: int = 512,
    seed: int = 0,
    patient_name: str = "DOE^JOHN",
    patient_id: str = "PID123",
    modality: str = "CT",
    study_description: str = "HEAD CT",
    deterministic_uids: bool = False,
) -> list[Path]:
    """Write a synthetic CT series of ``count`` slices and return the paths.

    The instances are CT Image Storage, Explicit VR Little Endian, with a
    proper file meta header, all in one study and one series.  Pixels are
    signed 16-bit (BitsAllocated/BitsStored 16, PixelRepresentation 1) with
    RescaleIntercept -1024 / RescaleSlope 1: an elliptic "body" of soft
    tissue with a bone ring, padding value -2000 outside the field of view,
    and noise.  Pixel data depend only on ``seed`` (and the geometry), so the
    same arguments always give the same pixels.

    Each slice has its own SOP Instance UID, ImagePositionPatient,
    SliceLocation and InstanceNumber (1-based).  UIDs are random (unique on
    every call) unless ``deterministic_uids`` is true, in which case they are
    derived from ``seed``, ``patient_id`` and ``study_description``.

    Files are written as ``out_dir/CT_00001.dcm`` ...; ``out_dir`` is created
    if needed and existing files of the same name are overwritten, so use
    one directory per series.

    300 slices of 512x512 take a few seconds.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def new_uid(*parts: object) -> str:
        if deterministic_uids:
            key = [str(seed), patient_id, study_description, *map(str, parts)]
            return str(generate_uid(entropy_srcs=key))
        return str(generate_uid())

    study_uid = new_uid("study")
    series_uid = new_uid("series")
    frame_uid = new_uid("frame")
    now = datetime.datetime(2024, 1, 2, 3, 4, 5) + datetime.timedelta(seconds=seed)
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    spacing = 0.5 * 512 / max(rows, cols)
    thickness = 1.25
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    yy = (yy - rows / 2) / (rows / 2)
    xx = (xx - cols / 2) / (cols / 2)
    radius2 = xx * xx + yy * yy
    fov = radius2 <= 1.0
    # Stored value = HU + 1024.
    air, tissue, bone, padding = 0, 1064, 2024, -2000

    paths: list[Path] = []
    for index in range(count):
        z = -index * thickness
        scale = 0.75 + 0.1 * np.sin(index / max(count, 1) * np.pi)
        body = (xx / (0.85 * scale)) ** 2 + (yy / scale) ** 2
        image = np.full((rows, cols), air, dtype=np.int16)
        image[body <= 1.0] = tissue
        image[(body <= 0.92) & (body >= 0.80)] = bone
        image += rng.integers(-30, 31, size=(rows, cols), dtype=np.int16)
        image[~fov] = padding

        sop_uid = new_uid("instance", index)
        ds = _ct_dataset(
            sop_uid=sop_uid,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            index=index,
            z=z,
            rows=rows,
            cols=cols,
            spacing=spacing,
            thickness=thickness,
            date=date,
            time_=time_,
            patient_name=patient_name,
            patient_id=patient_id,
            modality=modality,
            study_description=study_description,
        )
        ds.PixelData = image.astype("<i2", copy=False).tobytes()

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "TESTSUPPORT"
        ds.file_meta = meta

        path = out_dir / f"CT_{index + 1:05d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _ct_dataset(
    *,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    index: int,
    z: float,
    rows: int,
    cols: int,
    spacing: float,
    thickness: float,
    date: str,
    time_: str,
    patient_name: str,
    patient_id: str,
    modality: str,
    study_description: str,
) -> Dataset:
    """Return the non-pixel attributes of one synthetic CT slice."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.ContentDate = date
    ds.StudyTime = time_
    ds.SeriesTime = time_
    ds.ContentTime = time_
    ds.AccessionNumber = f"ACC{patient_id}"[:16]
    ds.Modality = modality
    ds.Manufacturer = "DICOM-ROUTER TESTS"
    ds.InstitutionName = "TEST HOSPITAL"
    ds.ReferringPhysicianName = "REFERRING^DOCTOR"
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"{study_description} AXIAL"[:64]
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = f"{thickness:g}"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [
        f"{-spacing * cols / 2:g}",
        f"{-spacing * rows / 2:g}",
        f"{z:g}",
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [f"{spacing:g}", f"{spacing:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.add_new(0x7FE00010, "OW", b"")  # PixelData, filled by the caller
    return ds


def pydicom_test_files_dir() -> Path:
    """Return the ``data/test_files`` directory of the installed pydicom."""
    return Path(pydicom.__file__).parent / "data" / "test_files"


#: Curated pydicom test files: (file name, what it covers).  Each file was
#: checked to go through ``dcmsend -nuc --decompress-never`` to Orthanc 1.10
#: and to the capture SCP and to arrive unchanged per
#: :func:`tests.support.compare.dataset_differences` (see
#: tests/test_support_peers.py).  All SOP Instance UIDs are distinct: many
#: pydicom test files are re-encodings of one instance and share its UID
#: (all ``MR_small*``; ``JPEG2000*``; ``JPGExtended``/``JPEG-lossy``;
#: ``rtdose*``/``badVR``; ``SC_rgb_rle*``/``SC_rgb_jpeg_gdcm``;
#: ``SC_rgb_jpeg_app14_dcmd``/``SC_jpeg_no_color_transform_2``; ...), and
#: only one of each group is kept.
#:
#: Left out on purpose:
#:
#: * ``MR_small_jpeg_ls_lossless.dcm`` (JPEG-LS Lossless): shares its UID with
#:   ``MR_small_RLE.dcm``, and its encapsulated Pixel Data is declared ``OW``,
#:   which DCMTK rewrites to ``OB`` when sending, so it never arrives
#:   identical.  No other JPEG-LS Lossless file exists.
#: * ``JPEGLSNearLossless_08/16.dcm``, ``SC_rgb_jls_lossy_line/sample.dcm``
#:   (JPEG-LS Near-Lossless): no PatientID / Study / Series Instance UID;
#:   Orthanc refuses them ("required tags are missing") while ``dcmsend``
#:   still exits 0.  JPEG-LS is therefore not covered.
#: * ``rtdose_rle*.dcm`` (RLE): public elements such as SOPClassUID are
#:   encoded with VR ``UN`` and Pixel Data has an odd length; DCMTK sends SOP
#:   class "31" and the capture SCP aborts the association.
#: * ``SC_rgb_rle*.dcm``: share the UID of ``SC_rgb_jpeg_gdcm.dcm``, the only
#:   JPEG Lossless SV1 file, so RLE is covered by ``MR_small_RLE.dcm``.
#: * Files without file meta or with a broken one (``no_meta*``,
#:   ``ExplVR_*NoMeta``, ``rtstruct.dcm``, ``meta_missing_tsyntax``,
#:   ``*_truncated``), and fragments without a SOP class (``priv_SQ``,
#:   ``nested_priv_SQ``, ``UN_sequence``, ``empty_charset_LEI``).
#:
#: Note: ``rtplan.dcm`` has a MediaStorageSOPInstanceUID that differs from its
#: SOPInstanceUID; peers index it by the data set's SOPInstanceUID
#: (``dcmsend`` prints a warning).
PYDICOM_TEST_FILES: tuple[tuple[str, str], ...] = (
    ("CT_small.dcm", "CT, Explicit VR Little Endian, odd-length private values"),
    ("rtplan.dcm", "RT Plan, Implicit VR Little Endian, no pixel data"),
    ("rtdose.dcm", "RT Dose multi-frame 32-bit, Implicit VR Little Endian"),
    ("ExplVR_BigEnd.dcm", "US, Explicit VR Big Endian (retired)"),
    ("image_dfl.dcm", "SC, Deflated Explicit VR Little Endian"),
    ("MR_small_RLE.dcm", "MR, RLE Lossless"),
    ("SC_rgb_jpeg_dcmtk.dcm", "SC RGB, JPEG Baseline (Process 1)"),
    ("JPGExtended.dcm", "SC, JPEG Extended (Process 2 & 4)"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC RGB, JPEG Lossless SV1 (Process 14)"),
    ("GDCMJ2K_TextGBR.dcm", "SC, JPEG 2000 Lossless, GB18030 text"),
    ("JPEG2000.dcm", "SC, JPEG 2000 (lossy)"),
    ("examples_ybr_color.dcm", "US multi-frame, JPEG Baseline YBR"),
    ("test-SR.dcm", "Comprehensive SR, nested sequences"),
    ("liver_1frame.dcm", "Segmentation, Explicit VR Little Endian"),
    ("SC_rgb_small_odd.dcm", "SC RGB, odd-sized native pixel data"),
    ("waveform_ecg.dcm", "12-lead ECG Waveform"),
)


def pydicom_test_files() -> list[Path]:
    """Return the curated pydicom test files (see :data:`PYDICOM_TEST_FILES`).

    Raises
    ------
    FileNotFoundError
        If one of the files is missing from the installed pydicom.
    """
    base = pydicom_test_files_dir()
    paths = [base / name for name, _ in PYDICOM_TEST_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"pydicom test files missing from {base}: {', '.join(missing)}")
    return paths


def write_native_multiframe(
    path: Path,
    frames: int,
    frame: Callable[[int], np.ndarray],
    *,
    bits_stored: int = 16,
    signed: bool = False,
    patient_id: str = "MULTIFRAME",
    modality: str = "OT",
    study_instance_uid: str | None = None,
) -> int:
    """A native multi-frame grey instance (explicit VR little endian), written frame by
    frame so that a gigabyte-sized instance never sits in memory. ``frame(i)`` gives
    frame ``i`` as a 2-D 16-bit array; all frames share its shape. Returns the size."""
    first = frame(0)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = first.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta)
    write_dataset(header, ds)
    header.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, first.nbytes * frames))
    dtype = "<i2" if signed else "<u2"
    with path.open("wb") as fp:
        fp.write(header.getvalue())
        for index in range(frames):
            fp.write(np.asarray(frame(index)).astype(dtype).tobytes())
    return path.stat().st_size
