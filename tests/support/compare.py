"""Element-by-element comparison of two DICOM files.

:func:`dataset_differences` answers "did this instance arrive unchanged?",
regardless of the transfer syntax it travelled in (a forwarding peer may
legitimately rewrite the file meta information, or receive an uncompressed
instance in another uncompressed transfer syntax).

Values are compared *raw*: the encoded bytes of every element, normalised to
little endian for binary VRs (``US``, ``OW``, ``FL`` ...) so that an Explicit
VR Big Endian file equals its Little Endian re-encoding; string values are
compared as encoded, ignoring only trailing padding (space or NUL).
Encapsulated (compressed) pixel data are compared byte for byte, fragments
and offset table included.  (Big endian native Pixel Data of 32/64-bit cells
is accepted swapped either per cell or per 16-bit word, since pydicom and
DCMTK disagree on it.)

Ignored: file meta information (group 0002; the receiving side always
rebuilds it), group length elements ``(gggg,0000)``, and data set trailing
padding ``(FFFC,FFFC)``.  Sequences are compared item by item, recursively.

Differences are reported as short human-readable strings naming the element
path, e.g. ``"(0010,0010) PatientName: value differs (8 vs 9 bytes)"``.
Values are only shown for short, non-identifying elements (code strings,
numbers, UIDs); never for patient-identifying elements, person names, dates,
free text, private elements or binary data.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_keyword, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag, Tag

__all__ = ["dataset_differences", "read_dataset"]

#: Byte width of one value for VRs whose encoding depends on endianness.
_SWAP_WIDTH: dict[str, int] = {
    "AT": 2,
    "OW": 2,
    "SS": 2,
    "US": 2,
    "FL": 4,
    "OF": 4,
    "OL": 4,
    "SL": 4,
    "UL": 4,
    "FD": 8,
    "OD": 8,
    "OV": 8,
    "SV": 8,
    "UV": 8,
}
_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"}
    | {"UC", "UI", "UR", "UT"}
)
#: VRs whose values are safe and useful to show in a difference message.
_SHOWABLE_VRS = frozenset(
    ("AE", "CS", "DS", "IS", "UI", "US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV")
)
_LONG_HEADER_VRS = frozenset(
    ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)

#: Public elements outside group 0010 that can identify a patient or a
#: visit; their values are never shown.
_SENSITIVE_TAGS = frozenset(
    Tag(t)
    for t in (
        0x00080050,  # AccessionNumber
        0x00080080,  # InstitutionName
        0x00080081,  # InstitutionAddress
        0x00080090,  # ReferringPhysicianName
        0x00080092,  # ReferringPhysicianAddress
        0x00080094,  # ReferringPhysicianTelephoneNumbers
        0x00081010,  # StationName
        0x00081040,  # InstitutionalDepartmentName
        0x00081048,  # PhysiciansOfRecord
        0x00081050,  # PerformingPhysicianName
        0x00081060,  # NameOfPhysiciansReadingStudy
        0x00081070,  # OperatorsName
        0x00180010,  # ContrastBolusAgent
        0x00181000,  # DeviceSerialNumber
        0x00200010,  # StudyID
        0x00321032,  # RequestingPhysician
        0x00380010,  # AdmissionID
        0x00400006,  # ScheduledPerformingPhysicianName
        0x00401001,  # RequestedProcedureID
        0x00402016,  # PlacerOrderNumberImagingServiceRequest
        0x00402017,  # FillerOrderNumberImagingServiceRequest
    )
)
_TRAILING_PADDING = Tag(0xFFFC, 0xFFFC)
_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_MAX_SHOWN = 64


def read_dataset(source: Path | str | bytes) -> Dataset:
    """Read a DICOM file (path or the file's bytes) without decoding values."""
    if isinstance(source, bytes):
        return pydicom.dcmread(io.BytesIO(source))
    return pydicom.dcmread(source)


def dataset_differences(
    a: Path | str | bytes,
    b: Path | str | bytes,
    ignore_tags: Collection[int] = (),
) -> list[str]:
    """Return the differences between two DICOM files; ``[]`` if equal.

    Parameters
    ----------
    a, b:
        The files to compare, as paths or as the bytes of whole Part 10
        files (as returned by, e.g., Orthanc's ``/instances/ID/file``).
    ignore_tags:
        Extra tags (``0xGGGGEEEE`` ints or :class:`pydicom.tag.BaseTag`) to
        skip, at any nesting level.

    Returns
    -------
    list[str]
        One line per difference: element path, keyword and a description.
        Patient-identifying values are never included.

    Raises
    ------
    pydicom.errors.InvalidDicomError
        If either input is not a DICOM Part 10 file (no ``DICM`` prefix).
    """
    ds_a = read_dataset(a)
    ds_b = read_dataset(b)
    ignored = frozenset(Tag(t) for t in ignore_tags)
    differences: list[str] = []
    _compare_datasets(ds_a, ds_b, "", ignored, differences)
    return differences


# -- internals -----------------------------------------------------------


def _skipped(tag: BaseTag, ignored: frozenset[BaseTag]) -> bool:
    return (
        tag.group == 0x0002 or tag.element == 0x0000 or tag == _TRAILING_PADDING or tag in ignored
    )


def _name(tag: BaseTag) -> str:
    keyword = dictionary_keyword(tag) if dictionary_has_tag(tag) else ""
    if not keyword:
        keyword = "private" if tag.is_private else "unknown"
    return f"({tag.group:04X},{tag.element:04X}) {keyword}"


def _declared_vr(ds: Dataset, tag: BaseTag) -> str | None:
    """VR as written in the file; None if the encoding is implicit VR.

    An already converted element of an implicit VR data set carries a VR
    guessed by pydicom, and a converted element may carry an ambiguous
    dictionary VR (``"US or SS"``): neither is a declared VR.
    """
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        return elem.VR
    encoding = getattr(ds, "original_encoding", (None, None))
    if encoding[0] is not False:
        return None
    vr = elem.VR
    if vr is None or " or " in vr:
        return None
    return str(vr)


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _is_sequence(ds: Dataset, tag: BaseTag) -> bool:
    elem = ds.get_item(tag)
    vr = _declared_vr(ds, tag)
    if vr == "SQ":
        return True
    if vr is None or vr == "UN":
        # Implicit VR or UN: let pydicom decide (public or private dictionary,
        # undefined length), but only convert elements that may be sequences.
        undefined_length = isinstance(elem, RawDataElement) and elem.length == 0xFFFFFFFF
        maybe = undefined_length or _dictionary_vr(tag) == "SQ"
        maybe = maybe or (vr is None and tag.is_private)
        if not maybe:
            return False
        try:
            return bool(ds[tag].VR == "SQ")
        except Exception:  # unparsable as a sequence: compare as bytes
            return False
    return False


def _canonical_bytes(ds: Dataset, tag: BaseTag, vr: str) -> list[bytes]:
    """Return one element's value bytes, normalised to little endian.

    ``vr`` is the VR to interpret the value with (the declared VR of either
    file, so that an implicit VR file is read like its explicit twin).

    Usually one candidate is returned.  Big endian native Pixel Data with
    32 or 64 bits allocated gives two: swapped per pixel cell (as pydicom
    writes it) and per 16-bit word (``OW`` semantics, as DCMTK writes it),
    because encoders disagree; equality with either counts as equal.
    """
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        value = elem.value or b""
        little_endian = elem.is_little_endian
    else:
        value = _encode_element(ds, elem)
        little_endian = True
    candidates = [value]
    if not little_endian:
        width = _SWAP_WIDTH.get(vr.split(" or ")[0])
        widths = [width] if width else []
        if tag == _PIXEL_DATA and width == 2:
            bits = ds.get("BitsAllocated", 16)
            if isinstance(bits, int) and bits in (32, 64):
                widths = [bits // 8, 2]
        swapped = [_byteswap(value, w) for w in widths if len(value) % w == 0]
        candidates = swapped or candidates
    if vr in _STRING_VRS:
        candidates = [c.rstrip(b" \x00") for c in candidates]
    return candidates


def _byteswap(value: bytes, width: int) -> bytes:
    import numpy as np  # local: numpy is only needed for big endian data

    dtype = {2: "u2", 4: "u4", 8: "u8"}[width]
    return np.frombuffer(value, dtype=">" + dtype).astype("<" + dtype).tobytes()


def _encode_element(ds: Dataset, elem: DataElement) -> bytes:
    """Encode an already converted element's value (little endian)."""
    value = elem.value
    if value is None or value == "" or value == []:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    try:
        encodings = ds._character_set  # pydicom has no public accessor
    except Exception:
        encodings = None
    try:
        write_data_element(fp, elem, encodings)
    except Exception:  # fall back to the Python value
        return repr(value).encode()
    header = 12 if elem.VR in _LONG_HEADER_VRS else 8
    return fp.getvalue()[header:]


def _describe_value_difference(tag: BaseTag, vr: str, va: bytes, vb: bytes, path: str) -> str:
    where = f"{path}{_name(tag)}"
    showable = (
        vr in _SHOWABLE_VRS
        and not tag.is_private
        and tag.group != 0x0010
        and tag not in _SENSITIVE_TAGS
        and len(va) <= _MAX_SHOWN
        and len(vb) <= _MAX_SHOWN
    )
    if showable:
        return f"{where}: {_show(vr, va)} != {_show(vr, vb)}"
    if len(va) != len(vb):
        return f"{where}: value differs ({len(va)} vs {len(vb)} bytes)"
    first = next(i for i, (x, y) in enumerate(zip(va, vb, strict=True)) if x != y)
    count = sum(1 for x, y in zip(va, vb, strict=True) if x != y)
    return f"{where}: value differs ({len(va)} bytes, {count} differing, first at byte {first})"


def _show(vr: str, value: bytes) -> str:
    if vr in _STRING_VRS:
        return repr(value.decode("ascii", errors="replace"))
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"):
        import numpy as np

        dtype = {
            "US": "<u2",
            "SS": "<i2",
            "UL": "<u4",
            "SL": "<i4",
            "FL": "<f4",
            "FD": "<f8",
            "SV": "<i8",
            "UV": "<u8",
            "AT": "<u2",
        }[vr]
        width = np.dtype(dtype).itemsize
        if len(value) % width == 0:
            return str(np.frombuffer(value, dtype=dtype).tolist())
    return value.hex()


def _compare_datasets(
    a: Dataset,
    b: Dataset,
    path: str,
    ignored: frozenset[BaseTag],
    out: list[str],
) -> None:
    # Iterating a Dataset yields (converted) elements; keys() gives raw tags.
    tags_a = {Tag(t) for t in a.keys() if not _skipped(Tag(t), ignored)}  # noqa: SIM118
    tags_b = {Tag(t) for t in b.keys() if not _skipped(Tag(t), ignored)}  # noqa: SIM118
    for tag in sorted(tags_a | tags_b):
        if tag not in tags_b:
            out.append(f"{path}{_name(tag)}: only in first")
            continue
        if tag not in tags_a:
            out.append(f"{path}{_name(tag)}: only in second")
            continue
        _compare_elements(a, b, tag, path, ignored, out)


def _compare_elements(
    a: Dataset,
    b: Dataset,
    tag: BaseTag,
    path: str,
    ignored: frozenset[BaseTag],
    out: list[str],
) -> None:
    seq_a, seq_b = _is_sequence(a, tag), _is_sequence(b, tag)
    if seq_a != seq_b:
        out.append(f"{path}{_name(tag)}: sequence in one file only")
        return
    if seq_a:
        items_a, items_b = a[tag].value, b[tag].value
        if len(items_a) != len(items_b):
            out.append(f"{path}{_name(tag)}: {len(items_a)} vs {len(items_b)} items")
        for index, (item_a, item_b) in enumerate(zip(items_a, items_b, strict=False)):
            _compare_datasets(item_a, item_b, f"{path}{_name(tag)}[{index}].", ignored, out)
        return

    vr_a = _declared_vr(a, tag)
    vr_b = _declared_vr(b, tag)
    if vr_a is not None and vr_b is not None and vr_a != vr_b:
        out.append(f"{path}{_name(tag)}: VR {vr_a} != {vr_b}")
    vr = vr_a or vr_b or _dictionary_vr(tag)
    values_a = _canonical_bytes(a, tag, vr)
    values_b = _canonical_bytes(b, tag, vr)
    if not any(va == vb for va in values_a for vb in values_b):
        out.append(_describe_value_difference(tag, vr, values_a[0], values_b[0], path))
