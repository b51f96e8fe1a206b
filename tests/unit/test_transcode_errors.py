"""router.transcode: conversions that cannot be done say why, in words."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from router.transcode import ConversionError, convert_file
from tests.support.malformed import mislabelled_as_ul
from tests.support.synthetic import pydicom_test_files_dir, write_ct_series


def source(name: str) -> Path:
    return pydicom_test_files_dir() / name


def with_syntax(tmp_path: Path, name: str, syntax: str, fake_pixels: bool = True) -> Path:
    """A copy of a test file claiming ``syntax``, with made-up encapsulated pixel data."""
    ds = pydicom.dcmread(source(name))
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    if fake_pixels:
        ds.PixelData = encapsulate([b"\x00\x01" * 16])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    path = tmp_path / "claimed.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


@pytest.mark.parametrize(
    ("syntax", "reason"),
    [
        (
            "1.2.840.10008.1.2.4.93",
            "cannot decode JPEG 2000 Part 2 Multi-component Image Compression "
            "(1.2.840.10008.1.2.4.93): no codec installed",
        ),
        (
            "1.2.826.0.1.3680043.9999.1.2",
            "cannot decode 1.2.826.0.1.3680043.9999.1.2: no codec installed",
        ),
    ],
)
def test_source_without_decoder(syntax: str, reason: str, tmp_path: Path) -> None:
    src = with_syntax(tmp_path, "CT_small.dcm", syntax)
    dst = tmp_path / "out.dcm"
    with pytest.raises(ConversionError) as refused:
        convert_file(src, dst, "explicit-little")
    assert refused.value.reason == reason
    assert not dst.exists()


def test_non_image_in_undecodable_syntax_still_converts(tmp_path: Path) -> None:
    """Without pixel data no codec is needed, whatever the source syntax."""
    src = with_syntax(tmp_path, "rtplan.dcm", "1.2.840.10008.1.2.4.93", fake_pixels=False)
    dst = tmp_path / "out.dcm"
    result = convert_file(src, dst, "implicit-little")
    assert result.frames == 0
    assert pydicom.dcmread(dst).RTPlanLabel == pydicom.dcmread(src).RTPlanLabel


def test_jpeg_baseline_of_16_bit_data(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as refused:
        convert_file(
            source("CT_small.dcm"), tmp_path / "out.dcm", "jpeg-baseline", allow_lossy=True
        )
    assert refused.value.reason == (
        "jpeg-baseline needs 8-bit samples; this instance has BitsAllocated 16"
    )


def test_jpeg_baseline_of_palette_colour(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as refused:
        convert_file(
            source("examples_palette.dcm"), tmp_path / "o.dcm", "jpeg-baseline", allow_lossy=True
        )
    assert (
        refused.value.reason
        == "jpeg-baseline cannot encode PhotometricInterpretation PALETTE COLOR"
    )


def test_compressing_32_bit_data_names_the_limit(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as refused:
        convert_file(source("rtdose.dcm"), tmp_path / "o.dcm", "jpeg-ls-lossless")
    assert refused.value.reason == (
        "jpeg-ls-lossless needs BitsAllocated 8, 16; this instance has BitsAllocated 32"
    )


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("jpeg-xl", "unknown transfer syntax 'jpeg-xl'"),
        ("1.2.3.4", "unknown transfer syntax '1.2.3.4'"),
        (
            "1.2.840.10008.1.2.2",
            "cannot write Explicit VR Big Endian (1.2.840.10008.1.2.2): "
            "not a transfer syntax the router writes",
        ),
    ],
)
def test_unusable_target(target: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as refused:
        convert_file(source("CT_small.dcm"), tmp_path / "o.dcm", target)
    assert refused.value.reason == reason


def test_truncated_pixel_data(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as refused:
        convert_file(source("MR_truncated.dcm"), tmp_path / "o.dcm", "jpeg-ls-lossless")
    assert "truncated" in refused.value.reason


def test_not_a_dicom_file(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("not DICOM at all\n" * 20)
    with pytest.raises(ConversionError) as refused:
        convert_file(src, tmp_path / "o.dcm", "explicit-little")
    assert "file meta information" in refused.value.reason


def test_missing_source_file(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as refused:
        convert_file(tmp_path / "gone.dcm", tmp_path / "o.dcm", "explicit-little")
    assert refused.value.reason == "cannot read the source file: No such file or directory"


def test_corrupt_compressed_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(source("MR_small_jp2klossless.dcm"))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    ds["PixelData"].is_undefined_length = True
    src = tmp_path / "corrupt.dcm"
    ds.save_as(src)
    dst = tmp_path / "o.dcm"
    with pytest.raises(ConversionError) as refused:
        convert_file(src, dst, "explicit-little")
    assert refused.value.reason.startswith("cannot decode the jpeg2000-lossless pixel data: ")
    assert not dst.exists()


def test_unreadable_value_is_named_by_its_element_not_quoted(tmp_path: Path) -> None:
    """The reason is logged and kept with a dead letter: pydicom's error quotes the
    value (here a patient name under VR UL, which implicit VR must encode), the
    reason names only the element."""
    (plain,) = write_ct_series(tmp_path / "ct", 1, rows=16, cols=16)
    bad = mislabelled_as_ul(plain, tmp_path / "bad.dcm", 0x00091001, "LO", "LEAK^NAME ")
    with pytest.raises(ConversionError) as refused:
        convert_file(bad, tmp_path / "out.dcm", "1.2.840.10008.1.2")
    assert "LEAK" not in refused.value.reason
    assert "(0009,1001)" in refused.value.reason
