"""The record a lossy compression leaves in the data set (PS3.3 C.7.6.1.1.5).

* Once pixel data has been through lossy compression it says so forever:
  LossyImageCompression (0028,2110) "01", never reset, also when the data is later
  stored losslessly or uncompressed.  A source in a lossy syntax that does not say
  so yet gets "01", and, if it carries no history at all, the method of its own
  syntax with the ratio its encapsulated data achieved (or just the method, when
  the ratio is recorded without it).
* A new lossy step appends its ratio to LossyImageCompressionRatio (0028,2112) and
  its defined term to LossyImageCompressionMethod (0028,2114), keeping the earlier
  values in order.
* PS3.3 C.7.6.1.1.5: "If an image is a compressed version of another image ...
  Value 1 of Image Type shall be set to DERIVED, and if the predecessor was a DICOM
  image, then the Image shall receive a new SOP Instance UID".  So a lossy step
  gives the instance a new SOP Instance UID and ImageType DERIVED, and references
  the predecessor in Source Image Sequence (General Reference module, purpose
  "Uncompressed predecessor" or "Lossy compressed predecessor", CID 7202) with
  Derivation Code "Lossy Compression" (CID 7203).  Study, series and everything
  else stay: the new instance belongs where its predecessor was.
* The new UID is derived from the predecessor's UID and the target syntax, not
  random: the router delivers at least once, and a repeated conversion of the same
  instance must not create a second copy at the destination.  (A lossless change
  of syntax keeps the SOP Instance UID.)
"""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from router.transcode.syntaxes import (
    JPEG2000,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LS_NEAR_LOSSLESS,
    is_lossy,
)

__all__ = [
    "RATIO_TAG",
    "derive_lossy_instance",
    "keep_lossy_history",
    "ratio_placeholder",
    "ratio_value",
    "start_lossy_step",
]

RATIO_TAG = 0x00282112
#: Width reserved for the new ratio value before it is known (the DS maximum).
_RATIO_WIDTH = 16
_SOURCE_METHODS = {
    JPEG_BASELINE: "ISO_10918_1",
    JPEG_EXTENDED: "ISO_10918_1",
    JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1",
    JPEG2000: "ISO_15444_1",
    "1.2.840.10008.1.2.4.93": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}
_UNCOMPRESSED_PREDECESSOR = ("121320", "Uncompressed predecessor")
_LOSSY_PREDECESSOR = ("121330", "Lossy compressed predecessor")
_LOSSY_COMPRESSION = ("113040", "Lossy Compression")


def _values(ds: Dataset, keyword: str) -> list[str]:
    """The values of a possibly multi-valued element as strings, [] when absent or empty."""
    if keyword not in ds:
        return []
    value = ds[keyword].value
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    return [str(item).strip() for item in items]


def format_ratio(ratio: float) -> str:
    """A compression ratio as a DS value, e.g. ``10.24``."""
    text = f"{ratio:.2f}"
    return text if len(text) <= _RATIO_WIDTH else f"{ratio:.6g}"


def keep_lossy_history(ds: Dataset, syntax: str, ratio: float | None) -> None:
    """Mark a source that is already lossy so no output ever claims otherwise."""
    ds.LossyImageCompression = "01"
    ratios = _values(ds, "LossyImageCompressionRatio")
    methods = _values(ds, "LossyImageCompressionMethod")
    method = _SOURCE_METHODS.get(syntax) if is_lossy(syntax) else None
    if method is None:
        return
    # The source's own compression is the last step.  Record what is missing of
    # it, so that methods and ratios stay paired when a new step is appended.
    if len(methods) == len(ratios) - 1 or (not ratios and not methods and ratio):
        ds.LossyImageCompressionMethod = [*methods, method]
    if ratio and (len(ratios) == len(methods) - 1 or (not ratios and not methods)):
        ds.LossyImageCompressionRatio = [*ratios, format_ratio(ratio)]


def ratio_placeholder(earlier: list[str]) -> DataElement:
    """LossyImageCompressionRatio with ``earlier`` values and a placeholder for the new one.

    The placeholder has the full DS width, so the element can be written before the
    ratio is known and overwritten in place by :func:`ratio_value` afterwards.
    """
    return DataElement(RATIO_TAG, "DS", [*earlier, "0" * _RATIO_WIDTH])


def ratio_value(earlier: list[str], ratio: float) -> str:
    """The final LossyImageCompressionRatio value text (the caller pads it with spaces)."""
    return "\\".join([*earlier, format_ratio(ratio)])


def start_lossy_step(ds: Dataset, method: str) -> list[str]:
    """Record a new lossy step with a placeholder ratio; return the earlier ratios."""
    ds.LossyImageCompression = "01"
    earlier = _values(ds, "LossyImageCompressionRatio")
    ds.LossyImageCompressionMethod = [*_values(ds, "LossyImageCompressionMethod"), method]
    ds[RATIO_TAG] = ratio_placeholder(earlier)
    return earlier


def derive_lossy_instance(ds: Dataset, target: str, source_was_lossy: bool) -> str:
    """Turn ``ds`` into the lossy-compressed derivative of itself; return the new UID."""
    class_uid = str(ds.get("SOPClassUID", "") or "")
    old_uid = str(ds.get("SOPInstanceUID", "") or "")
    new_uid = str(generate_uid(entropy_srcs=[old_uid, target, "lossy-compression"]))
    ds.SOPInstanceUID = new_uid
    image_type = ds.get("ImageType")
    if image_type:
        values = [str(v) for v in image_type] if not isinstance(image_type, str) else [image_type]
        ds.ImageType = ["DERIVED", *values[1:]]
    if class_uid and old_uid:
        purpose = _LOSSY_PREDECESSOR if source_was_lossy else _UNCOMPRESSED_PREDECESSOR
        reference = Dataset()
        reference.ReferencedSOPClassUID = class_uid
        reference.ReferencedSOPInstanceUID = old_uid
        reference.PurposeOfReferenceCodeSequence = Sequence([_code(*purpose)])
        ds.SourceImageSequence = Sequence([*ds.get("SourceImageSequence", []), reference])
    ds.DerivationCodeSequence = Sequence(
        [*ds.get("DerivationCodeSequence", []), _code(*_LOSSY_COMPRESSION)]
    )
    return new_uid


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
