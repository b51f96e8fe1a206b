"""router.transcode: lossy targets, only when allowed, and the record they leave."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_fragments

from router.transcode import ConversionError, convert_file
from tests.support.synthetic import pydicom_test_files_dir

DCIODVFY = shutil.which("dciodvfy")


def source(name: str) -> Path:
    return pydicom_test_files_dir() / name


def encapsulated_bytes(path: Path) -> int:
    """Sum of the fragment lengths (without item headers) of the file's Pixel Data."""
    ds = pydicom.dcmread(path)
    fragments = list(generate_fragments(ds.PixelData))
    return sum(len(f) for f in fragments[1:])  # the first item is the offset table


def dciodvfy_errors(path: Path, scratch: Path) -> set[str]:
    """dciodvfy's error lines; deflated files (which it cannot read) via dcmconv."""
    assert DCIODVFY
    if pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID.is_deflated:
        plain = scratch / (path.name + ".inflated.dcm")
        subprocess.run(["dcmconv", "+te", str(path), str(plain)], check=True)
        path = plain
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    return {
        " ".join(line.split())
        for line in (run.stdout + run.stderr).splitlines()
        if line.startswith("Error")
    }


@pytest.mark.parametrize("target", ["jpeg-baseline", "jpeg2000"])
def test_lossy_target_is_refused_unless_allowed(target: str, tmp_path: Path) -> None:
    dst = tmp_path / "out.dcm"
    with pytest.raises(ConversionError) as refused:
        convert_file(source("examples_rgb_color.dcm"), dst, target)
    assert refused.value.reason == f"{target} is lossy and no rule asked for lossy compression"
    assert not dst.exists()


@pytest.mark.parametrize(
    ("name", "target", "method", "photometric"),
    [
        ("CT_small.dcm", "jpeg2000", "ISO_15444_1", "MONOCHROME2"),
        ("examples_rgb_color.dcm", "jpeg2000", "ISO_15444_1", "YBR_ICT"),
        ("examples_rgb_color.dcm", "jpeg-baseline", "ISO_10918_1", "YBR_FULL_422"),
        ("image_dfl.dcm", "jpeg-baseline", "ISO_10918_1", "MONOCHROME2"),
    ],
)
def test_lossy_compression_records_itself(
    name: str, target: str, method: str, photometric: str, tmp_path: Path
) -> None:
    src = source(name)
    dst = tmp_path / "out.dcm"
    result = convert_file(src, dst, target, allow_lossy=True)
    original = pydicom.dcmread(src)
    out = pydicom.dcmread(dst)

    assert result.lossy is True
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == method
    uncompressed = original.pixel_array.nbytes
    achieved = uncompressed / encapsulated_bytes(dst)
    assert float(out.LossyImageCompressionRatio) == pytest.approx(achieved, rel=0.01)
    assert out.PhotometricInterpretation == photometric
    assert out.get("PlanarConfiguration", 0) == 0

    # A lossy derivative is a new instance referencing its predecessor (PS3.3 C.7.6.1.1.5).
    assert out.SOPInstanceUID != original.SOPInstanceUID
    assert result.sop_instance_uid == out.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.StudyInstanceUID == original.StudyInstanceUID
    assert out.SeriesInstanceUID == original.SeriesInstanceUID
    reference = out.SourceImageSequence[-1]
    assert reference.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == original.SOPClassUID
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    assert out.DerivationCodeSequence[-1].CodeValue == "113040"
    if "ImageType" in original:
        assert out.ImageType[0] == "DERIVED"
        assert list(out.ImageType[1:]) == list(original.ImageType[1:])

    # Close to, but not necessarily equal to, the original pixels.
    before = original.pixel_array.astype(np.float64)
    after = out.pixel_array.astype(np.float64)
    assert before.shape == after.shape
    spread = before.max() - before.min()
    assert np.abs(after - before).mean() < 0.02 * spread

    if DCIODVFY:
        assert dciodvfy_errors(dst, tmp_path) - dciodvfy_errors(src, tmp_path) == set()


def test_lossy_uid_is_stable_for_the_same_conversion(tmp_path: Path) -> None:
    """Converting the same instance twice must not make two different instances."""
    first, second = tmp_path / "a.dcm", tmp_path / "b.dcm"
    convert_file(source("CT_small.dcm"), first, "jpeg2000", allow_lossy=True)
    convert_file(source("CT_small.dcm"), second, "jpeg2000", allow_lossy=True)
    assert pydicom.dcmread(first).SOPInstanceUID == pydicom.dcmread(second).SOPInstanceUID


def test_lossless_conversion_of_the_lossy_output_keeps_it_marked(tmp_path: Path) -> None:
    lossy, back = tmp_path / "lossy.dcm", tmp_path / "back.dcm"
    convert_file(source("CT_small.dcm"), lossy, "jpeg2000", allow_lossy=True)
    convert_file(lossy, back, "explicit-little")
    out = pydicom.dcmread(back)
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_15444_1"
    assert out.SOPInstanceUID == pydicom.dcmread(lossy).SOPInstanceUID


def test_second_lossy_step_appends_ratio_and_method(tmp_path: Path) -> None:
    """JPEG baseline source (ratio recorded, method not) compressed again with JPEG 2000."""
    src = source("examples_ybr_color.dcm")
    dst = tmp_path / "out.dcm"
    result = convert_file(src, dst, "jpeg2000", allow_lossy=True)
    original = pydicom.dcmread(src, stop_before_pixels=True)
    out = pydicom.dcmread(dst)
    assert result.frames == 30
    assert out.LossyImageCompression == "01"
    assert list(out.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    ratios = [float(r) for r in out.LossyImageCompressionRatio]
    assert len(ratios) == 2
    assert ratios[0] == float(original.LossyImageCompressionRatio)
    assert ratios[1] > 1
    purpose = out.SourceImageSequence[-1].PurposeOfReferenceCodeSequence[0]
    assert purpose.CodeValue == "121330"  # lossy compressed predecessor
    assert out.pixel_array.shape == (30, 240, 320, 3)


def test_jpeg_baseline_output_is_read_by_dcmtk(tmp_path: Path) -> None:
    tool = shutil.which("dcmdjpeg")
    if tool is None:
        pytest.skip("dcmdjpeg is not installed")
    converted, decoded = tmp_path / "jpeg.dcm", tmp_path / "plain.dcm"
    convert_file(source("examples_rgb_color.dcm"), converted, "jpeg-baseline", allow_lossy=True)
    subprocess.run([tool, str(converted), str(decoded)], check=True)
    original = pydicom.dcmread(source("examples_rgb_color.dcm")).pixel_array.astype(np.int16)
    ours = pydicom.dcmread(converted).pixel_array.astype(np.int16)
    theirs = pydicom.dcmread(decoded).pixel_array.astype(np.int16)
    # Decoders may upsample chroma and round YCbCr->RGB differently, so compare
    # on average: both decodings are close to each other and to the original.
    assert np.abs(ours - theirs).mean() < 1.0
    assert np.abs(theirs - original).mean() < 0.02 * 255
