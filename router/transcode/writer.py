"""Writing the output file as a stream: meta, header elements, pixel data, trailer.

Nothing is buffered beyond one element or one frame.  Values that are only known
once every frame has been written (the Basic or Extended Offset Table, the
achieved lossy compression ratio) are written as placeholders of their final size
and patched in place at the end; that needs a seekable plain file, which every
target that has such values gets (they are all encapsulated, never deflated).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Collection, Iterator
from typing import BinaryIO

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info

from router.error_text import describe_error
from router.transcode.errors import ConversionError
from router.transcode.frames import PixelFormat
from router.transcode.lossy import RATIO_TAG, ratio_value
from router.transcode.syntaxes import DEFLATED, IMPLICIT_LITTLE

__all__ = [
    "EncapsulatedPixels",
    "OutputStream",
    "encode_elements",
    "native_vr",
    "write_encapsulated_pixels",
    "write_native_pixels",
]

_Encode = Callable[[np.ndarray], bytes]
_MAX_LENGTH = 0xFFFFFFFE
_MAX_NATIVE = 0xFFFFFFFE
_EOT = 0x7FE00001
_EOT_LENGTHS = 0x7FE00002
#: Above this many uncompressed bytes, offsets may not fit the 32-bit Basic Offset
#: Table, so the Extended Offset Table (64-bit, PS3.5 A.4) is written instead.
_EXTENDED_TABLE_FROM = 2**31
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


class OutputStream:
    """The output file; the data set part is deflated on the fly for the deflated syntax."""

    def __init__(self, fp: BinaryIO, target: str) -> None:
        self._fp = fp
        self.implicit_vr = target == IMPLICIT_LITTLE
        self._deflate = target == DEFLATED
        self._deflater: zlib._Compress | None = None

    def write_meta(self, meta: FileMetaDataset) -> None:
        """Write the preamble, ``DICM`` and the File Meta Information group."""
        buffer = DicomBytesIO()
        buffer.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buffer, meta, enforce_standard=True)
        self._fp.write(buffer.getvalue())
        if self._deflate:
            self._deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)

    def write(self, data: bytes) -> None:
        if self._deflater is not None:
            self._fp.write(self._deflater.compress(data))
        else:
            self._fp.write(data)

    def tell(self) -> int:
        """Current position in the file (plain output only)."""
        if self._deflater is not None:
            raise RuntimeError("positions are not available in a deflated stream")
        return self._fp.tell()

    def patch(self, offset: int, data: bytes) -> None:
        """Overwrite ``data`` at ``offset`` (plain output only), then return to the end."""
        end = self.tell()
        self._fp.seek(offset)
        self._fp.write(data)
        self._fp.seek(end)

    def finish(self) -> None:
        if self._deflater is not None:
            self._fp.write(self._deflater.flush())
            self._deflater = None
        self._fp.flush()

    def element_header(self, tag: int, vr: str, length: int) -> bytes:
        """Header of a top-level element with a 32-bit length (OB, OW, OF, OD...)."""
        if self.implicit_vr:
            return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length)
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, length)


def encode_elements(
    ds: Dataset, implicit_vr: bool, marks: Collection[int] = ()
) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """Encode the top-level elements of ``ds`` (little endian) in tag order.

    Returns the bytes and, for each tag in ``marks``, the (offset, length) of the
    whole encoded element within them, so a placeholder can be patched later.
    Elements keep their raw bytes when the encoding does not change; otherwise
    they are decoded and re-encoded (ambiguous VRs resolved from the data set, as
    pydicom does when writing).  Group length elements are left out (PS3.5 7.2).
    """
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit_vr
    fp.is_little_endian = True
    if (implicit_vr, True) != tuple(ds.original_encoding[:2]):
        ds = correct_ambiguous_vr(ds, True)
        convert = True
    else:
        convert = False
    charset = ds.get("SpecificCharacterSet", "iso8859")
    positions: dict[int, tuple[int, int]] = {}
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue
        start = fp.tell()
        element = ds[tag] if convert else ds.get_item(tag)
        try:
            write_data_element(fp, element, charset)
        except Exception as exc:
            raise ConversionError(f"cannot encode element {tag}: {describe_error(exc)}") from exc
        if int(tag) in marks:
            positions[int(tag)] = (start, fp.tell() - start)
    return fp.getvalue(), positions


class EncapsulatedPixels:
    """Pixel Data as undefined-length OB: offset table item, one fragment per frame.

    With ``table="basic"`` the Basic Offset Table is reserved (4 bytes per frame)
    and filled in :meth:`finish`; with ``"extended"`` or ``"empty"`` it is empty and
    the caller writes the Extended Offset Table from :attr:`offsets`/:attr:`lengths`.
    """

    def __init__(self, out: OutputStream, frames: int, table: str) -> None:
        self._out = out
        self._table = table
        self._frames = frames
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        self.encoded_bytes = 0
        header = out.element_header(0x7FE00010, "OB", 0xFFFFFFFF)
        table_length = 4 * frames if table == "basic" else 0
        out.write(header + _ITEM + struct.pack("<L", table_length))
        self._table_at = out.tell() if table == "basic" else 0
        out.write(b"\x00" * table_length)
        self._position = 0

    def add(self, fragment: bytes) -> None:
        """Write one frame as one fragment (padded to even length)."""
        if self._table == "basic" and len(self.offsets) == self._frames:
            raise ConversionError("the pixel data holds more frames than NumberOfFrames says")
        padded = fragment + b"\x00" if len(fragment) % 2 else fragment
        if len(padded) > _MAX_LENGTH:
            raise ConversionError("an encoded frame is larger than a fragment can hold (4 GiB)")
        self.offsets.append(self._position)
        self.lengths.append(len(fragment))
        self._out.write(_ITEM + struct.pack("<L", len(padded)))
        self._out.write(padded)
        self._position += 8 + len(padded)
        self.encoded_bytes += len(fragment)

    def finish(self) -> None:
        self._out.write(_SEQUENCE_DELIMITER)
        if self._table == "basic":
            if self.offsets and self.offsets[-1] > 0xFFFFFFFF:
                raise ConversionError("frame offsets exceed the Basic Offset Table's 4 GiB range")
            table = struct.pack(f"<{len(self.offsets)}L", *self.offsets)
            self._out.patch(self._table_at, table)


def native_vr(ds: Dataset) -> str:
    """OB for 8-bit (or 1-bit) samples, OW otherwise (PS3.5 A.2)."""
    return "OB" if int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"


def write_native_pixels(
    out: OutputStream, ds: Dataset, fmt: PixelFormat, arrays: Iterator[np.ndarray], encode: _Encode
) -> int:
    """Pixel Data as one defined-length OB/OW value, frames written one after another."""
    total = fmt.frame_bytes * fmt.frames
    if total > _MAX_NATIVE:
        raise ConversionError(
            f"the uncompressed pixel data ({total} bytes) exceeds the 4 GiB a native "
            "syntax can hold; use an encapsulated transfer syntax"
        )
    out.write(encode_elements(ds, out.implicit_vr)[0])
    out.write(out.element_header(0x7FE00010, native_vr(ds), total + total % 2))
    count = 0
    for arr in arrays:
        data = encode(arr)
        if len(data) != fmt.frame_bytes:
            raise ConversionError(
                f"a decoded frame has {len(data)} bytes, {fmt.frame_bytes} expected"
            )
        out.write(data)
        count += 1
    out.write(b"\x00" * (total % 2))
    return count


def write_encapsulated_pixels(
    out: OutputStream,
    ds: Dataset,
    fmt: PixelFormat,
    arrays: Iterator[np.ndarray],
    encode: _Encode,
    earlier_ratios: list[str] | None,
) -> int:
    """Encapsulated Pixel Data with its offset table, and the achieved lossy ratio.

    ``earlier_ratios`` is given for a lossy step: the ratio element written with the
    header (by ``start_lossy_step``) then gets the achieved ratio in place.
    """
    uncompressed = fmt.frame_bytes * fmt.frames
    extended = fmt.frames > 1 and uncompressed >= _EXTENDED_TABLE_FROM
    if extended:
        ds[_EOT] = DataElement(_EOT, "OV", bytes(8 * fmt.frames))
        ds[_EOT_LENGTHS] = DataElement(_EOT_LENGTHS, "OV", bytes(8 * fmt.frames))
    header, positions = encode_elements(ds, False, (RATIO_TAG, _EOT, _EOT_LENGTHS))
    base = out.tell()
    out.write(header)
    table = "extended" if extended else ("basic" if fmt.frames > 1 else "empty")
    pixels = EncapsulatedPixels(out, fmt.frames, table)
    for arr in arrays:
        pixels.add(encode(arr))
    pixels.finish()
    count = len(pixels.offsets)
    if extended and count == fmt.frames:
        offsets = struct.pack(f"<{count}Q", *pixels.offsets)
        lengths = struct.pack(f"<{count}Q", *pixels.lengths)
        _patch(out, base, positions[_EOT], DataElement(_EOT, "OV", offsets))
        _patch(out, base, positions[_EOT_LENGTHS], DataElement(_EOT_LENGTHS, "OV", lengths))
    if earlier_ratios is not None:
        ratio = uncompressed / max(pixels.encoded_bytes, 1)
        start, length = positions[RATIO_TAG]
        value = ratio_value(earlier_ratios, ratio).encode("ascii")
        if len(value) > length - 8:
            raise ConversionError("internal error: the compression ratio does not fit its element")
        # Explicit VR DS: 8 header bytes, then the value; DS ignores trailing spaces.
        out.patch(base + start + 8, value.ljust(length - 8))
    return count


def _patch(out: OutputStream, base: int, where: tuple[int, int], element: DataElement) -> None:
    """Overwrite a placeholder element with its final value (same encoded length)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_data_element(fp, element)
    data = fp.getvalue()
    start, length = where
    if len(data) != length:
        raise ConversionError(f"internal error: {element.tag} changed size when finalised")
    out.patch(base + start, data)
