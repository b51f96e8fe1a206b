"""Reading a source instance without loading its pixel data.

An instance can be gigabytes of frames; the converter must hold at most one frame
of it.  So the data set is parsed only up to Pixel Data, the position and size of
the Pixel Data value are recorded (for encapsulated data by walking the item
headers, seeking over the fragments), and the elements after it are parsed from
there.  Frames are then read from the open file on demand (see ``frames.py``).

A deflated source is inflated, as a stream, into an anonymous temporary file
next to the output, because pixel data can only be located in the plain bytes;
that costs disk, never memory.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag

from router.error_text import describe_error
from router.transcode.errors import ConversionError
from router.transcode.syntaxes import (
    DEFLATED,
    EXPLICIT_BIG,
    IMPLICIT_LITTLE,
    describe,
    is_lossy,
)

__all__ = ["PIXEL_KEYWORDS", "PixelLocation", "Source", "open_source"]

#: Top-level elements holding an image's pixels.
PIXEL_KEYWORDS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TRAILING_PADDING = 0xFFFCFFFC
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PixelLocation:
    """Where the top-level pixel element's value lies in the (plain) data set stream."""

    tag: int
    vr: str | None
    """VR as written (``None`` in implicit VR)."""
    value_offset: int
    length: int | None
    """Value length; ``None`` for undefined length (encapsulated)."""
    end_offset: int
    """Offset just after the element (after the sequence delimiter if encapsulated)."""

    @property
    def keyword(self) -> str:
        return PIXEL_KEYWORDS[self.tag]

    @property
    def encapsulated(self) -> bool:
        return self.length is None


@dataclass
class Source:
    """A parsed source instance; ``body`` stays open while the conversion runs."""

    path: Path
    meta: FileMetaDataset
    syntax: str
    dataset: Dataset
    """The elements before the pixel element (the "header")."""
    pixel: PixelLocation | None
    trailing: Dataset
    """Elements after the pixel element, without trailing padding."""
    body: BinaryIO
    """The plain data set stream (the file itself, or the inflated copy)."""
    implicit_vr: bool
    little_endian: bool
    size: int
    """Size of the source file in bytes."""
    extended_offsets: tuple[bytes, bytes] | None = None
    """The source's Extended Offset Table and its lengths, for decoding its fragments."""

    @property
    def frames(self) -> int:
        """Number of frames (0 without pixel data); invalid NumberOfFrames counts as 1."""
        if self.pixel is None:
            return 0
        value = self.dataset.get("NumberOfFrames", 1)
        try:
            return max(int(float(str(value))), 1)
        except (TypeError, ValueError):
            return 1

    @property
    def lossy(self) -> bool:
        """True if the pixel data has already been through lossy compression."""
        flag = str(self.dataset.get("LossyImageCompression", "") or "").strip()
        return is_lossy(self.syntax) or flag == "01"


@contextmanager
def open_source(path: Path, scratch_dir: Path) -> Iterator[Source]:
    """Parse ``path`` up to its pixel data; yield the :class:`Source`, then close it.

    ``scratch_dir`` receives the anonymous inflated copy of a deflated source.
    Raises :class:`ConversionError` when the file is not a DICOM Part 10 file or
    its data set cannot be parsed.
    """
    with ExitStack() as stack:
        try:
            fp = stack.enter_context(path.open("rb"))
        except OSError as exc:
            raise ConversionError(f"cannot read the source file: {exc.strerror}") from exc
        size = os.fstat(fp.fileno()).st_size
        meta = _read_meta(fp)
        syntax = str(meta.TransferSyntaxUID)
        implicit_vr = syntax == IMPLICIT_LITTLE
        little_endian = syntax != EXPLICIT_BIG
        body: BinaryIO = fp
        if syntax == DEFLATED:
            body = stack.enter_context(tempfile.TemporaryFile(dir=scratch_dir))
            _inflate(fp, body)
            body.seek(0)
        dataset, pixel, trailing = _read_body(body, implicit_vr, little_endian, syntax)
        if dataset.original_encoding[0] is not None:
            implicit_vr = bool(dataset.original_encoding[0])
        extended = None
        if 0x7FE00001 in dataset and 0x7FE00002 in dataset:
            extended = (dataset[0x7FE00001].value, dataset[0x7FE00002].value)
        yield Source(
            path=path,
            meta=meta,
            syntax=syntax,
            dataset=dataset,
            pixel=pixel,
            trailing=trailing,
            body=body,
            implicit_vr=implicit_vr,
            little_endian=little_endian,
            size=size,
            extended_offsets=extended,
        )


def _read_meta(fp: BinaryIO) -> FileMetaDataset:
    """Read the preamble and the File Meta Information group; leave ``fp`` after them."""
    try:
        read_preamble(fp, True)
        group2 = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
        meta = FileMetaDataset(group2)
        syntax = meta.get("TransferSyntaxUID")
    except Exception as exc:
        raise ConversionError(
            f"cannot read the file meta information: {describe_error(exc)}"
        ) from exc
    if not syntax:
        raise ConversionError("the file has no file meta information with a TransferSyntaxUID")
    return meta


def _inflate(src: BinaryIO, dst: BinaryIO) -> None:
    """Inflate the raw deflate stream after the meta group, chunk by chunk."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        while chunk := src.read(_CHUNK):
            # Bounded output per call: a small compressed chunk can inflate to a lot.
            while chunk:
                dst.write(inflater.decompress(chunk, _CHUNK))
                chunk = inflater.unconsumed_tail
        dst.write(inflater.flush())
    except zlib.error as exc:
        raise ConversionError(f"the deflated data set is corrupt: {describe_error(exc)}") from exc


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in PIXEL_KEYWORDS


def _read_body(
    body: BinaryIO, implicit_vr: bool, little_endian: bool, syntax: str
) -> tuple[Dataset, PixelLocation | None, Dataset]:
    """Parse the header, locate the pixel element, parse what follows it."""
    try:
        dataset = read_dataset(body, implicit_vr, little_endian, stop_when=_at_pixels)
    except Exception as exc:
        raise ConversionError(
            f"cannot parse the {describe(syntax)} data set: {describe_error(exc)}"
        ) from exc
    if dataset.original_encoding[0] is not None:
        implicit_vr = bool(dataset.original_encoding[0])
    start = body.tell()
    total = body.seek(0, os.SEEK_END)
    body.seek(start)
    pixel = _locate_pixels(body, implicit_vr, little_endian, total)
    trailing = Dataset()
    if pixel is not None and pixel.end_offset < total:
        body.seek(pixel.end_offset)
        try:
            trailing = read_dataset(body, implicit_vr, little_endian)
        except Exception as exc:
            raise ConversionError(
                f"cannot parse the elements after {pixel.keyword}: {describe_error(exc)}"
            ) from exc
        if _TRAILING_PADDING in trailing:
            del trailing[_TRAILING_PADDING]
    return dataset, pixel, trailing


def _locate_pixels(
    body: BinaryIO, implicit_vr: bool, little_endian: bool, total: int
) -> PixelLocation | None:
    """Parse the pixel element header at the current position (``None`` at end of data)."""
    endian = "<" if little_endian else ">"
    head = body.read(8)
    if len(head) < 8:
        return None
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if tag not in PIXEL_KEYWORDS:
        return None
    vr: str | None = None
    if implicit_vr:
        (length,) = struct.unpack(f"{endian}L", head[4:])
    elif head[4:6] in _LONG_VRS:
        vr = head[4:6].decode("ascii")
        (length,) = struct.unpack(f"{endian}L", body.read(4))
    else:
        vr = head[4:6].decode("ascii", errors="replace")
        (length,) = struct.unpack(f"{endian}H", head[6:])
    value_offset = body.tell()
    name = PIXEL_KEYWORDS[tag]
    if length != _UNDEFINED:
        if value_offset + length > total:
            raise ConversionError(
                f"{name} is truncated: {length} bytes declared, "
                f"{total - value_offset} present in the file"
            )
        return PixelLocation(tag, vr, value_offset, length, value_offset + length)
    end = _skip_items(body, endian, total, name)
    return PixelLocation(tag, vr, value_offset, None, end)


def _skip_items(body: BinaryIO, endian: str, total: int, name: str) -> int:
    """Seek over encapsulated items up to the sequence delimiter; return the end offset."""
    while True:
        head = body.read(8)
        if len(head) < 8:
            raise ConversionError(f"encapsulated {name} ends without a sequence delimiter")
        group, element, length = struct.unpack(f"{endian}HHL", head)
        if (group, element) == _SEQUENCE_DELIMITER:
            return body.tell()
        if (group, element) != _ITEM or length == _UNDEFINED:
            raise ConversionError(
                f"encapsulated {name} is malformed: unexpected ({group:04X},{element:04X}) "
                f"at byte {body.tell() - 8}"
            )
        if body.tell() + length > total:
            raise ConversionError(f"encapsulated {name} is truncated")
        body.seek(length, os.SEEK_CUR)
