"""router.transcode: memory stays at a few frames, whatever the number of frames.

Native multi-frame instances of 512x512 16-bit frames (0.5 MB each) are written
frame by frame, then converted while tracemalloc (which sees numpy's buffers too)
records the peak.  An implementation that held the pixel data would need 10 MB
for 20 frames and 50 MB for 100; this one must stay at the same few megabytes.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import iter_pixels

import router.transcode.writer as writer_module
from router.transcode import convert_file
from tests.support.synthetic import write_native_multiframe

ROWS = COLUMNS = 512
FRAME_BYTES = ROWS * COLUMNS * 2
#: Peak allowed, whatever the frame count: 12 frames' worth.
BOUND = 12 * FRAME_BYTES


def frame(index: int) -> np.ndarray:
    """Deterministic 12-bit test frame ``index``: a gradient plus noise."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS]
    image = (xx + 2 * yy + 37 * index) % 3000 + rng.integers(0, 64, size=(ROWS, COLUMNS))
    return image.astype("<u2")


def write_multiframe(path: Path, frames: int) -> None:
    """A native Explicit VR Little Endian multi-frame instance, written frame by frame."""
    write_native_multiframe(path, frames, frame, bits_stored=12, patient_id="STREAM")


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """The 20- and 100-frame instances in explicit, deflated and JPEG-LS encodings."""
    folder = tmp_path_factory.mktemp("streaming")
    made: dict[tuple[str, int], Path] = {}
    for frames in (20, 100):
        native = folder / f"explicit-{frames}.dcm"
        write_multiframe(native, frames)
        made[("explicit-little", frames)] = native
        for syntax in ("deflated", "jpeg-ls-lossless"):
            path = folder / f"{syntax}-{frames}.dcm"
            convert_file(native, path, syntax)
            made[(syntax, frames)] = path
    return made


def peak_bytes(src: Path, dst: Path, target: str) -> int:
    tracemalloc.start()
    try:
        convert_file(src, dst, target)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


CONVERSIONS = [
    ("explicit-little", "jpeg-ls-lossless"),
    ("explicit-little", "deflated"),
    ("deflated", "explicit-little"),
    ("jpeg-ls-lossless", "implicit-little"),
]


@pytest.mark.parametrize(
    ("source", "target"), CONVERSIONS, ids=[f"{s}->{t}" for s, t in CONVERSIONS]
)
def test_peak_memory_is_independent_of_frame_count(
    source: str, target: str, instances: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    small = peak_bytes(instances[(source, 20)], tmp_path / "small.dcm", target)
    large = peak_bytes(instances[(source, 100)], tmp_path / "large.dcm", target)
    assert large < BOUND, f"peak {large / 1e6:.1f} MB for 100 frames"
    assert large < 1.5 * small + FRAME_BYTES, f"{small / 1e6:.1f} MB -> {large / 1e6:.1f} MB"

    # The large output is complete and right: first, middle and last frame.
    out = pydicom.dcmread(tmp_path / "large.dcm", stop_before_pixels=True)
    assert out.NumberOfFrames == 100
    wanted = (0, 57, 99)
    if target == "deflated":  # pydicom reads deflated files only as a whole
        everything = pydicom.dcmread(tmp_path / "large.dcm").pixel_array
        decoded = [everything[index] for index in wanted]
    else:
        decoded = list(iter_pixels(tmp_path / "large.dcm", indices=wanted))
    for index, arr in zip(wanted, decoded, strict=True):
        assert np.array_equal(arr, frame(index))


def item_headers(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each item in the file's encapsulated Pixel Data."""
    data = path.read_bytes()
    start = data.rindex(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12
    items, position = [], start
    while True:
        group, element, length = struct.unpack_from("<HHL", data, position)
        if (group, element) == (0xFFFE, 0xE0DD):
            return items
        items.append((position - start, length))
        position += 8 + length


def test_basic_offset_table_points_at_every_frame(
    instances: dict[tuple[str, int], Path],
) -> None:
    path = instances[("jpeg-ls-lossless", 20)]
    (_table, table_length), *fragments = item_headers(path)
    assert table_length == 4 * 20
    data = path.read_bytes()
    start = data.rindex(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12
    table = struct.unpack_from("<20L", data, start + 8)
    first = 8 + table_length
    assert list(table) == [offset - first for offset, _ in fragments]
    assert len(fragments) == 20


def test_extended_offset_table_for_large_instances(
    instances: dict[tuple[str, int], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above 2 GiB the 32-bit Basic Offset Table may overflow: EOT instead (PS3.5 A.4)."""
    monkeypatch.setattr(writer_module, "_EXTENDED_TABLE_FROM", 0)
    dst = tmp_path / "eot.dcm"
    convert_file(instances[("explicit-little", 20)], dst, "jpeg-ls-lossless")
    (_table, table_length), *fragments = item_headers(dst)
    assert table_length == 0  # the Basic Offset Table is empty when the EOT is used
    ds = pydicom.dcmread(dst, stop_before_pixels=True)
    offsets = struct.unpack("<20Q", ds.ExtendedOffsetTable)
    lengths = struct.unpack("<20Q", ds.ExtendedOffsetTableLengths)
    assert list(offsets) == [offset - 8 for offset, _ in fragments]
    assert all(
        length in (size, size - 1) for length, (_, size) in zip(lengths, fragments, strict=True)
    )
    for index, arr in zip((3, 19), iter_pixels(dst, indices=(3, 19)), strict=True):
        assert np.array_equal(arr, frame(index))
