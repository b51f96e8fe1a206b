"""Transfer syntax names, classification and codec availability.

Rules and destinations name transfer syntaxes by short names (``jpeg-ls-lossless``)
or by UID; everything else in the router works with UIDs.  This module is the one
place that maps between the two, says which syntaxes lose information, and answers
"can this process decode / produce that syntax?" from the codecs that are really
installed (pydicom's decoder and encoder registries, plus Pillow for JPEG baseline),
so a rule asking for a codec that is missing is caught when the rules are loaded
rather than when an instance is already waiting to be sent.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache

from pydicom import uid as pydicom_uid
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder

__all__ = [
    "DEFLATED",
    "EXPLICIT_LITTLE",
    "IMPLICIT_LITTLE",
    "TRANSFER_SYNTAX_NAMES",
    "can_decode",
    "can_encode",
    "is_lossy",
    "is_native",
    "syntax_name",
    "syntax_uid",
]

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
RLE = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"

#: The short names accepted in rules and destination lists (a contract: see
#: DESIGN.md), each mapped to its transfer syntax UID.
TRANSFER_SYNTAX_NAMES: dict[str, str] = {
    "explicit-little": EXPLICIT_LITTLE,
    "implicit-little": IMPLICIT_LITTLE,
    "deflated": DEFLATED,
    "rle": RLE,
    "jpeg-ls-lossless": JPEG_LS_LOSSLESS,
    "jpeg2000-lossless": JPEG2000_LOSSLESS,
    "jpeg2000": JPEG2000,
    "jpeg-baseline": JPEG_BASELINE,
}
_NAMES_BY_UID = {uid: name for name, uid in TRANSFER_SYNTAX_NAMES.items()}

#: Uncompressed syntaxes: the whole data set, Pixel Data included, is plain values.
_NATIVE = frozenset({IMPLICIT_LITTLE, EXPLICIT_LITTLE, DEFLATED, EXPLICIT_BIG})

#: Syntaxes whose pixel data may have lost information.  Syntaxes that *may* be
#: lossy (JPEG 2000 4.91, HTJ2K 4.203, JPEG 2000 Part 2 4.93) count as lossy:
#: nothing in the data set says whether a given codestream is reversible, and
#: calling lossy data lossless is the mistake that must never happen.
_LOSSY = frozenset(
    {
        JPEG_BASELINE,
        JPEG_EXTENDED,
        # Retired lossy JPEG processes (spectral selection, progressive, hierarchical).
        *(f"1.2.840.10008.1.2.4.{n}" for n in (52, 53, 54, 55, 56, 59, 60, 61, 62, 63, 64)),
        JPEG_LS_NEAR_LOSSLESS,
        JPEG2000,
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
        # MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 video.
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),
        *(f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)),
        "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG recompression (of lossy JPEG)
        "1.2.840.10008.1.2.4.112",  # JPEG XL
    }
)

_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)+")

#: What :func:`router.transcode.convert_file` can write, codec permitting.
_PRODUCIBLE = frozenset(TRANSFER_SYNTAX_NAMES.values())


def syntax_uid(name_or_uid: str) -> str | None:
    """Return the UID for a short name or a transfer syntax UID, else ``None``.

    A UID is accepted when pydicom knows it as a transfer syntax (standard or one
    of the private ones it registers); anything else is ``None`` so that a typo in
    a rule is reported instead of being sent to a peer.
    """
    text = name_or_uid.strip()
    if text in TRANSFER_SYNTAX_NAMES:
        return TRANSFER_SYNTAX_NAMES[text]
    if text in pydicom_uid.AllTransferSyntaxes or text in pydicom_uid.PrivateTransferSyntaxes:
        return text
    if _UID_PATTERN.fullmatch(text) and pydicom_uid.UID(text).is_transfer_syntax:
        return text
    return None


def syntax_name(uid: str) -> str:
    """Return the short name of ``uid`` if it has one, else the UID itself."""
    return _NAMES_BY_UID.get(str(uid), str(uid))


def describe(uid: str) -> str:
    """Return ``uid`` in a form for messages: short name, else pydicom's name and the UID."""
    if str(uid) in _NAMES_BY_UID:
        return _NAMES_BY_UID[str(uid)]
    name = pydicom_uid.UID(str(uid)).name
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def is_lossy(uid: str) -> bool:
    """True if pixel data in ``uid`` may have lost information to compression."""
    return str(uid) in _LOSSY


def is_native(uid: str) -> bool:
    """True for the uncompressed syntaxes (implicit/explicit little, deflated, big endian)."""
    return str(uid) in _NATIVE


@cache
def can_decode(uid: str) -> bool:
    """True if the installed codecs can decode pixel data in ``uid``.

    Native syntaxes need no codec.  For the others pydicom's decoder registry is
    asked whether at least one of its plugins has its dependencies installed.
    """
    uid = str(uid)
    if uid in _NATIVE:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


@cache
def can_encode(uid: str) -> bool:
    """True if :func:`router.transcode.convert_file` can write ``uid`` here.

    Explicit/implicit VR little endian and deflated need no codec and are always
    producible.  JPEG baseline is written with Pillow (pydicom has no encoder for
    it); the other compressed syntaxes with pydicom's encoders, when one of their
    plugins is installed.  Syntaxes the converter does not write (big endian, video,
    JPEG-LS near-lossless, ...) are ``False`` even if pydicom could encode them.
    """
    uid = str(uid)
    if uid not in _PRODUCIBLE:
        return False
    if uid in _NATIVE:
        return True
    if uid == JPEG_BASELINE:
        return _pillow_has_jpeg()
    try:
        return bool(get_encoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def _pillow_has_jpeg() -> bool:
    if importlib.util.find_spec("PIL") is None:
        return False
    from PIL import features

    return bool(features.check("jpg"))
