"""The non-pixel part of the output: file meta information and data set fixes.

Everything except the top-level pixel data goes through pydicom's element writer,
so what needs doing here is only what a change of encoding implies:

* The meta group is rebuilt for the output (PS3.10 7.1): SOP class and instance
  from the data set (the file is a new file written by this implementation, and a
  meta instance UID that disagrees with the data set is an error dciodvfy
  reports), the target syntax, this implementation's class UID; the AE titles and
  private information of the source meta are kept.
* Big endian sources: pydicom re-encodes numbers, but OB/OW-like binary values are
  bytes to it, so OW/OL/OF/OD/OV values are swapped here.
* Nested pixel data (an Icon Image Sequence) that is encapsulated is in the source
  syntax's compression, which the output no longer names, so it is decoded to
  native; native nested pixel data is left as it is under any target.
* The source's Extended Offset Table describes the source's fragments and is
  dropped; the output writes its own when it needs one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydicom import __version__ as pydicom_version
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.utils import decompress
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from router.error_text import describe_error
from router.transcode.errors import ConversionError
from router.transcode.source import Source

__all__ = ["build_meta", "prepare_header"]

_EXTENDED_OFFSET_TABLE = (0x7FE00001, 0x7FE00002)
_KEPT_META = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)
_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def build_meta(source: Source, ds: Dataset, target: str) -> FileMetaDataset:
    """The File Meta Information for the output."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    sop_class = ds.get("SOPClassUID") or source.meta.get("MediaStorageSOPClassUID")
    sop_instance = ds.get("SOPInstanceUID") or source.meta.get("MediaStorageSOPInstanceUID")
    if not sop_class or not sop_instance:
        raise ConversionError("the instance has no SOP Class UID or SOP Instance UID")
    meta.MediaStorageSOPClassUID = UID(str(sop_class))
    meta.MediaStorageSOPInstanceUID = UID(str(sop_instance))
    meta.TransferSyntaxUID = UID(target)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom_version}"[:16]
    for keyword in _KEPT_META:
        if keyword in source.meta:
            meta[keyword] = source.meta[keyword]
    return meta


def prepare_header(source: Source, target: str) -> tuple[Dataset, Dataset]:
    """Return the header and trailing data sets of ``source`` ready for ``target``."""
    ds, trailing = source.dataset, source.trailing
    for tag in _EXTENDED_OFFSET_TABLE:
        if tag in ds:
            del ds[tag]
    if not source.little_endian:
        _swap_binary_values(ds)
        _swap_binary_values(trailing)
    if target != source.syntax:
        for item in _sequence_items(ds):
            _decode_nested_pixels(item, source.syntax)
    return ds, trailing


def _swap_binary_values(ds: Dataset) -> None:
    """Make big endian OW/OL/OF/OD/OV values little endian, at every nesting level."""
    for elem in ds.iterall():
        width = _SWAP_WIDTH.get(str(elem.VR))
        value = elem.value
        if width and isinstance(value, bytes) and len(value) % width == 0:
            swapped = np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}")
            elem.value = swapped.tobytes()


def _is_sequence(ds: Dataset, tag: int) -> bool:
    vr = ds.get_item(tag).VR
    if vr in (None, "UN") and dictionary_has_tag(tag):
        vr = dictionary_VR(tag)
    return vr == "SQ"


def _sequence_items(ds: Dataset) -> Iterator[Dataset]:
    """Every item of every sequence, depth first (only sequences are parsed)."""
    for tag in list(ds.keys()):
        if _is_sequence(ds, tag):
            for item in ds[tag].value:
                yield item
                yield from _sequence_items(item)


def _decode_nested_pixels(item: Dataset, syntax: str) -> None:
    if "PixelData" not in item or not item["PixelData"].is_undefined_length:
        return
    item.file_meta = FileMetaDataset()
    item.file_meta.TransferSyntaxUID = UID(syntax)
    try:
        decompress(item)
    except Exception as exc:
        raise ConversionError(
            f"cannot decode nested (icon) pixel data: {describe_error(exc)}"
        ) from exc
    finally:
        del item.file_meta
