"""The file meta information of a spooled instance, read directly (PS3.10 7.1).

Every send needs three values from it (transfer syntax, SOP class, SOP instance)
and where the data set begins. pydicom's reader builds a Dataset of validated
elements for that, about 0.06 ms each time, and a send read it twice: for each
destination of each instance. The group is a fixed format (preamble, ``DICM``,
group 0002 elements in explicit VR little endian), so it is read here in a few
microseconds. Pure parsing in ``parse_file_meta``, checked against pydicom in
tests/unit/test_file_meta.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PREAMBLE = 128
MAGIC = b"DICM"
FIRST_READ = 4096
"""Bytes read at first: a file meta group is usually a few hundred bytes long."""
MAX_META = 1 << 20
"""A longer group is not a file meta group this router wrote or accepts."""

TRANSFER_SYNTAX_UID = 0x0010
MEDIA_STORAGE_SOP_CLASS_UID = 0x0002
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x0003

# VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_HEADER = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<L")


class FileMetaError(ValueError):
    """Not a DICOM file with a readable file meta group."""


class IncompleteFileMetaError(FileMetaError):
    """The bytes end inside the file meta group: read more."""


@dataclass(frozen=True)
class FileMeta:
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    dataset_offset: int
    """Where the data set starts in the file: the first byte after group 0002."""


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\0 ").decode("ascii", "replace")


def parse_file_meta(head: bytes, complete: bool = False) -> FileMeta:
    """Read the file meta group at the start of ``head`` (preamble included).

    ``complete``: ``head`` is the whole file, so running out of bytes ends the
    group instead of raising :class:`IncompleteFileMetaError`.
    """
    if len(head) < PREAMBLE + len(MAGIC):
        raise FileMetaError("too short for a DICOM file")
    if head[PREAMBLE : PREAMBLE + len(MAGIC)] != MAGIC:
        raise FileMetaError("no DICM prefix after the preamble")
    values: dict[int, bytes] = {}
    position = PREAMBLE + len(MAGIC)
    while True:
        if len(head) - position < _HEADER.size:
            if complete and position == len(head):
                break  # a file of file meta only
            raise IncompleteFileMetaError("file meta group continues beyond the bytes read")
        group, element, vr, length = _HEADER.unpack_from(head, position)
        if group != 0x0002:
            break
        header = _HEADER.size
        if vr in _LONG_VRS:
            if len(head) - position < header + _LONG_LENGTH.size:
                raise IncompleteFileMetaError("file meta group continues beyond the bytes read")
            (length,) = _LONG_LENGTH.unpack_from(head, position + header)
            header += _LONG_LENGTH.size
        elif not vr.isalpha() or not vr.isupper():
            raise FileMetaError(f"element (0002,{element:04X}) has no explicit VR")
        end = position + header + length
        if end > len(head):
            if complete or end > MAX_META:
                raise FileMetaError(f"element (0002,{element:04X}) runs past the file meta")
            raise IncompleteFileMetaError("file meta group continues beyond the bytes read")
        values[element] = head[position + header : end]
        position = end
    missing = [
        name
        for name, element in (
            ("TransferSyntaxUID", TRANSFER_SYNTAX_UID),
            ("MediaStorageSOPClassUID", MEDIA_STORAGE_SOP_CLASS_UID),
            ("MediaStorageSOPInstanceUID", MEDIA_STORAGE_SOP_INSTANCE_UID),
        )
        if element not in values
    ]
    if missing:
        raise FileMetaError(f"file meta lacks {', '.join(missing)}")
    return FileMeta(
        transfer_syntax=_uid(values[TRANSFER_SYNTAX_UID]),
        sop_class_uid=_uid(values[MEDIA_STORAGE_SOP_CLASS_UID]),
        sop_instance_uid=_uid(values[MEDIA_STORAGE_SOP_INSTANCE_UID]),
        dataset_offset=position,
    )


def read_file_meta(path: Path) -> FileMeta:
    """The file meta of the DICOM file at ``path``; raises FileMetaError or OSError."""
    size = FIRST_READ
    with open(path, "rb") as handle:
        head = handle.read(size)
        while True:
            try:
                return parse_file_meta(head, complete=len(head) < size)
            except IncompleteFileMetaError:
                if size >= MAX_META:
                    raise FileMetaError("file meta group longer than 1 MiB") from None
                more = handle.read(size)
                size *= 2
                head += more
