"""router.transcode: lossless round trips over pydicom's bundled test files.

For each source and each lossless target the pixel format allows, the converted
file must decode to exactly the source's pixels, keep every non-pixel element
(except those the conversion has to change, checked separately), and add no
dciodvfy error the source did not already have.  Pairs the target cannot hold
must be refused with a reason, and only those.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from router.transcode import ConversionError, convert_file, is_lossy, syntax_uid
from tests.support.compare import dataset_differences
from tests.support.synthetic import pydicom_test_files_dir

LOSSLESS = (
    "explicit-little",
    "implicit-little",
    "deflated",
    "rle",
    "jpeg-ls-lossless",
    "jpeg2000-lossless",
)
NATIVE_LITTLE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")
COMPRESSED = ("rle", "jpeg-ls-lossless", "jpeg2000-lossless")

#: Source file -> what it covers.
SOURCES = {
    "CT_small.dcm": "CT, 16-bit signed, explicit VR",
    "MR_small_implicit.dcm": "MR, 16-bit signed, implicit VR",
    "MR_small_bigendian.dcm": "MR, explicit VR big endian",
    "MR_small_RLE.dcm": "MR, RLE source",
    "MR_small_jp2klossless.dcm": "MR, JPEG 2000 lossless source",
    "MR_small_jpeg_ls_lossless.dcm": "MR, JPEG-LS lossless source",
    "SC_rgb_small_odd.dcm": "RGB secondary capture, 3x3 (odd sizes)",
    "examples_rgb_color.dcm": "RGB 8-bit",
    "ExplVR_BigEnd.dcm": "RGB, big endian, planar configuration 1",
    "examples_ybr_color.dcm": "JPEG baseline YBR_FULL_422, 30 frames",
    "SC_ybr_full_422_uncompressed.dcm": "native YBR_FULL_422",
    "rtdose.dcm": "RT dose, 32-bit, 15 frames",
    "SC_rgb_rle_16bit_2frame.dcm": "RGB 16-bit, 2 frames, RLE",
    "image_dfl.dcm": "8-bit, deflated source",
    "examples_palette.dcm": "PALETTE COLOR",
    "liver_1frame.dcm": "segmentation, BitsAllocated 1",
    "liver_expb_1frame.dcm": "segmentation, BitsAllocated 1, big endian",
    "JPEG2000.dcm": "lossy JPEG 2000, 16-bit signed",
    "GDCMJ2K_TextGBR.dcm": "JPEG 2000 lossless YBR_RCT, GB18030 text",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless SV1, RGB",
    "examples_overlay.dcm": "12 of 16 bits stored, overlay data",
    "rtplan.dcm": "RT plan, no pixel data",
    "test-SR.dcm": "structured report, no pixel data",
}

#: (source, target) pairs that must be refused, with a fragment of the reason.
REFUSED = {
    **{("rtdose.dcm", t): "32" for t in COMPRESSED},
    **{("liver_1frame.dcm", t): "BitsAllocated 1" for t in COMPRESSED},
    **{("liver_expb_1frame.dcm", t): "BitsAllocated 1" for t in COMPRESSED},
    ("SC_rgb_small_odd.dcm", "jpeg-ls-lossless"): "encoding failed",
    ("SC_rgb_small_odd.dcm", "jpeg2000-lossless"): "at least 32 rows and columns",
}

#: Elements a conversion may change; their new values are asserted on their own.
CHANGED = (
    0x7FE00010,  # PixelData
    0x00280004,  # PhotometricInterpretation
    0x00280006,  # PlanarConfiguration
    0x00282110,  # LossyImageCompression
    0x00282112,  # LossyImageCompressionRatio
    0x00282114,  # LossyImageCompressionMethod
)

DCIODVFY = shutil.which("dciodvfy")
DCMCONV = shutil.which("dcmconv")


def source(name: str) -> Path:
    return pydicom_test_files_dir() / name


def pixels(path: Path) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        return ds.pixel_array if "PixelData" in ds else None


def value_count(ds: pydicom.Dataset, keyword: str) -> int:
    return ds[keyword].VM if keyword in ds else 0


def dciodvfy_errors(path: Path, scratch: Path) -> set[str]:
    """dciodvfy's error lines, whitespace normalised.

    dciodvfy cannot read deflated files at all, so those are first rewritten as
    explicit VR little endian by dcmtk (which also proves dcmtk reads them).
    """
    assert DCIODVFY
    meta = pydicom.filereader.read_file_meta_info(path)
    if meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian:
        assert DCMCONV, "dcmconv is needed to validate deflated files"
        plain = scratch / (path.name + ".inflated.dcm")
        subprocess.run([DCMCONV, "+te", str(path), str(plain)], check=True)
        path = plain
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r"\s+", " ", line).strip() for line in lines if line.startswith("Error")}


@pytest.fixture(scope="module")
def source_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    if not DCIODVFY:
        return {}
    scratch = tmp_path_factory.mktemp("dciodvfy")
    return {name: dciodvfy_errors(source(name), scratch) for name in SOURCES}


def expected_photometric(name: str, target: str) -> str | None:
    """The photometric interpretation the output must carry, where it changes."""
    ds = pydicom.dcmread(source(name), stop_before_pixels=True)
    if "PixelData" not in pydicom.dcmread(source(name), specific_tags=["PixelData"]):
        return None
    original = str(ds.PhotometricInterpretation)
    native_copy = target in LOSSLESS[:3] and ds.file_meta.TransferSyntaxUID in (
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
    )
    if native_copy:
        return original
    decoded = original
    if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit and original.startswith(
        "YBR"
    ):
        decoded = "RGB"  # lossy JPEG colour comes out as RGB
    elif original == "YBR_FULL_422":
        decoded = "YBR_FULL"  # decoded data is upsampled
    elif original in ("YBR_RCT", "YBR_ICT"):
        decoded = "RGB"  # the decoder undid the transform
    if target == "jpeg2000-lossless" and decoded == "RGB":
        return "YBR_RCT"
    return decoded


CASES = [(name, target) for name in SOURCES for target in LOSSLESS]


@pytest.mark.parametrize(("name", "target"), CASES, ids=[f"{n}->{t}" for n, t in CASES])
def test_lossless_round_trip(
    name: str, target: str, tmp_path: Path, source_errors: dict[str, set[str]]
) -> None:
    src = source(name)
    dst = tmp_path / "out.dcm"
    if (name, target) in REFUSED:
        with pytest.raises(ConversionError) as refused:
            convert_file(src, dst, target)
        assert REFUSED[(name, target)] in refused.value.reason
        assert not dst.exists()
        return

    result = convert_file(src, dst, target)

    out = pydicom.dcmread(dst)
    assert out.file_meta.TransferSyntaxUID == syntax_uid(target)
    assert result.target_syntax == syntax_uid(target)
    assert result.lossy is False
    assert result.bytes_out == dst.stat().st_size
    # The SOP Instance UID is kept by a lossless change of syntax.
    assert out.SOPInstanceUID == pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    if not result.copied:
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID

    before, after = pixels(src), pixels(dst)
    if before is None:
        assert after is None and result.frames == 0
    else:
        assert after is not None
        assert (after.dtype.kind, after.dtype.itemsize) == (
            before.dtype.kind,
            before.dtype.itemsize,
        )
        assert np.array_equal(after, before)
        assert result.frames == int(out.get("NumberOfFrames", 1))
        assert out.PhotometricInterpretation == expected_photometric(name, target)
        pixels_copied = result.copied or (
            target in LOSSLESS[:3] and result.source_syntax in NATIVE_LITTLE
        )
        if out.SamplesPerPixel > 1 and not pixels_copied:
            assert out.PlanarConfiguration == (1 if target == "rle" else 0)

    assert dataset_differences(src, dst, ignore_tags=CHANGED) == []
    # Lossy history is only ever added to, never removed or reset.
    original = pydicom.dcmread(src, stop_before_pixels=True)
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        assert value_count(out, keyword) >= value_count(original, keyword)
    if original.get("LossyImageCompression") == "01" or is_lossy(result.source_syntax):
        assert out.LossyImageCompression == "01"

    if DCIODVFY:
        new_errors = dciodvfy_errors(dst, tmp_path) - source_errors[name]
        assert new_errors == set()


def test_already_in_target_syntax_is_copied_byte_for_byte(tmp_path: Path) -> None:
    src = source("MR_small_RLE.dcm")
    dst = tmp_path / "out.dcm"
    result = convert_file(src, dst, "rle")
    assert result.copied
    assert dst.read_bytes() == src.read_bytes()


def test_lossy_source_stays_marked_lossy_when_stored_losslessly(tmp_path: Path) -> None:
    """A JPEG baseline source without any lossy flag gets "01", method and ratio."""
    src = tmp_path / "jpeg.dcm"
    ds = pydicom.dcmread(source("SC_rgb_jpeg_dcmtk.dcm"))
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(src)
    for target in ("explicit-little", "jpeg-ls-lossless"):
        dst = tmp_path / f"{target}.dcm"
        convert_file(src, dst, target)
        out = pydicom.dcmread(dst)
        assert out.LossyImageCompression == "01"
        assert out.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(out.LossyImageCompressionRatio) > 1.0


def test_big_endian_binary_values_are_swapped(tmp_path: Path) -> None:
    """OW/OF values besides Pixel Data (overlay, float LUT-like data) come out little endian."""
    ds = pydicom.dcmread(source("MR_small.dcm"))
    original = ds.pixel_array.copy()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    ds.PixelData = original.astype(">i2").tobytes()
    ds.add_new(0x60003000, "OW", np.arange(8, dtype=">u2").tobytes())  # Overlay Data
    ds.add_new(0x00660016, "OF", np.linspace(0, 1, 4, dtype=">f4").tobytes())  # Point Coords
    src = tmp_path / "big.dcm"
    pydicom.dcmwrite(src, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    for target in ("explicit-little", "jpeg-ls-lossless"):
        dst = tmp_path / f"{target}.dcm"
        convert_file(src, dst, target)
        out = pydicom.dcmread(dst)
        assert out[0x60003000].value == np.arange(8, dtype="<u2").tobytes()
        assert out[0x00660016].value == np.linspace(0, 1, 4, dtype="<f4").tobytes()
        assert np.array_equal(out.pixel_array, original)


DCMTK_DECODERS = {"rle": "dcmdrle", "jpeg-ls-lossless": "dcmdjpls"}
INTEROP = [
    (name, target)
    for name in ("CT_small.dcm", "ExplVR_BigEnd.dcm", "examples_ybr_color.dcm")
    for target in DCMTK_DECODERS
]


@pytest.mark.parametrize(("name", "target"), INTEROP, ids=[f"{n}->{t}" for n, t in INTEROP])
def test_dcmtk_decodes_the_output_to_the_same_pixels(
    name: str, target: str, tmp_path: Path
) -> None:
    """A second implementation (dcmtk) reads the compressed output back identically."""
    tool = shutil.which(DCMTK_DECODERS[target])
    if tool is None:
        pytest.skip(f"{DCMTK_DECODERS[target]} is not installed")
    converted = tmp_path / "converted.dcm"
    convert_file(source(name), converted, target)
    decoded = tmp_path / "decoded.dcm"
    subprocess.run([tool, str(converted), str(decoded)], check=True)
    assert np.array_equal(pixels(decoded), pixels(source(name)))


@pytest.mark.parametrize("target", ["explicit-little", "jpeg-ls-lossless"])
def test_encapsulated_icon_is_decoded_when_the_syntax_changes(target: str, tmp_path: Path) -> None:
    """An icon compressed in the source syntax cannot stay so under another syntax."""
    icon_pixels = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(icon_pixels).save(jpeg, format="JPEG", quality=95)
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = icon.Columns = 8
    icon.BitsAllocated, icon.BitsStored, icon.HighBit = 8, 8, 7
    icon.PixelRepresentation = 0
    icon.PixelData = encapsulate([jpeg.getvalue()])
    icon["PixelData"].VR = "OB"
    icon["PixelData"].is_undefined_length = True
    ds = pydicom.dcmread(source("SC_rgb_jpeg_dcmtk.dcm"))  # JPEG baseline
    ds.IconImageSequence = [icon]
    src = tmp_path / "with-icon.dcm"
    ds.save_as(src)
    expected = pydicom.dcmread(src).IconImageSequence[0]
    expected.file_meta = FileMetaDataset()
    expected.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    expected_pixels = expected.pixel_array

    dst = tmp_path / "out.dcm"
    convert_file(src, dst, target)
    out_icon = pydicom.dcmread(dst).IconImageSequence[0]
    assert not out_icon["PixelData"].is_undefined_length
    assert len(out_icon.PixelData) == 64
    decoded = np.frombuffer(out_icon.PixelData, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(decoded, expected_pixels)
    assert np.array_equal(pixels(dst), pixels(source("SC_rgb_jpeg_dcmtk.dcm")))


def test_odd_length_native_output_is_padded(tmp_path: Path) -> None:
    """3x3 RGB is 27 bytes: decoded to native it gets one pad byte (PS3.5 7.1.1)."""
    compressed, native = tmp_path / "rle.dcm", tmp_path / "native.dcm"
    convert_file(source("SC_rgb_small_odd.dcm"), compressed, "rle")
    convert_file(compressed, native, "implicit-little")
    out = pydicom.dcmread(native)
    assert len(out.PixelData) == 28
    assert np.array_equal(out.pixel_array, pixels(source("SC_rgb_small_odd.dcm")))
