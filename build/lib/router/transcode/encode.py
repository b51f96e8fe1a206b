"""Encoding one decoded frame for the target syntax, and what the output then says.

Each target gets a :class:`FrameEncoding`: a function from one decoded frame to the
bytes of one native frame or one compressed fragment, plus the Image Pixel values
the output must carry.  Whether the target can hold the pixel format at all is
checked first, against the encoding profiles of PS3.5 section 8.2 (as pydicom
tabulates them), so the refusal names the offending attribute instead of being a
codec's stack trace.

Choices (all following PS3.5 section 8.2):

* JPEG 2000 of RGB uses the codec's multi-component transform and says so:
  YBR_RCT (reversible, lossless) or YBR_ICT (irreversible, lossy), as PS3.5 8.2.4
  prescribes when MCT is applied.  Decoders undo the transform, so the decoded
  samples are the RGB that went in.  (RGB without MCT is also allowed by recent
  editions, but older validators such as dciodvfy reject it, and MCT compresses
  better.)  Other photometric interpretations are encoded as they are.
* Planar Configuration is 0 for native, JPEG-LS, JPEG 2000 and JPEG output; RLE
  output says 1, because RLE segments hold one colour plane each (PS3.5 G.2).
  RLE is coded by ``rle.py`` (pydicom's pure-Python encoder is ~20x slower).
* JPEG baseline is written with Pillow (pydicom has no JPEG baseline encoder):
  8-bit greyscale stays MONOCHROME1/2, colour becomes YBR_FULL_422 (JFIF YCbCr
  with 2:1 horizontal chroma subsampling, the form PS3.5 8.2.1 names), quality 90.
* Lossy JPEG 2000 uses a target compression ratio of 10:1 (``J2K_RATIO``): a
  conservative value within the 8:1 to 15:1 range that published evaluations of
  irreversible compression (such as the Canadian Association of Radiologists'
  standard) accept for most CT and MR.  The achieved ratio is recorded anyway.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.pixels.encoders.base import ENCODING_PROFILES, get_encoder
from pydicom.pixels.processing import convert_color_space
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from router.transcode.errors import ConversionError
from router.transcode.frames import PixelFormat
from router.transcode.rle import encode_rle_frame
from router.transcode.syntaxes import (
    JPEG2000,
    JPEG2000_LOSSLESS,
    JPEG_BASELINE,
    RLE,
    is_native,
    syntax_name,
)

__all__ = ["J2K_RATIO", "JPEG_QUALITY", "FrameEncoding", "frame_encoding"]

J2K_RATIO = 10.0
JPEG_QUALITY = 90
#: Largest sample precision the installed JPEG 2000 encoder (openjpeg) accepts.
_OPENJPEG_MAX_BITS = 24
#: It always uses 6 wavelet resolutions, which needs 2**5 pixels in each direction.
_OPENJPEG_MIN_SIZE = 32
#: Defined terms for Lossy Image Compression Method (0028,2114), PS3.3 C.7.6.1.1.5.1.
LOSSY_METHODS = {JPEG_BASELINE: "ISO_10918_1", JPEG2000: "ISO_15444_1"}


@dataclass(frozen=True)
class FrameEncoding:
    """How frames are written in the target syntax."""

    encode: Callable[[np.ndarray], bytes]
    photometric_interpretation: str
    planar_configuration: int | None
    """Value for PlanarConfiguration, ``None`` for single-sample data (left as is)."""
    lossy_method: str | None = None
    """The Lossy Image Compression Method defined term when the encoding is lossy."""


def frame_encoding(target: str, fmt: PixelFormat, photometric: str) -> FrameEncoding:
    """Return the encoding of frames in ``photometric`` for ``target``.

    Raises :class:`ConversionError` when ``target`` cannot hold this pixel format.
    """
    colour = fmt.samples_per_pixel > 1
    if is_native(target):
        return FrameEncoding(_native_encoder(fmt), photometric, 0 if colour else None)
    name = syntax_name(target)
    if fmt.bits_allocated == 1:
        raise ConversionError(f"{name} cannot encode 1-bit (BitsAllocated 1) pixel data")
    if target == JPEG_BASELINE:
        return _jpeg_baseline(fmt, photometric)
    if target in (JPEG2000, JPEG2000_LOSSLESS):
        _check_openjpeg(name, fmt)
        if photometric == "RGB":
            photometric = "YBR_RCT" if target == JPEG2000_LOSSLESS else "YBR_ICT"
    _check_profile(target, fmt, photometric)
    options: dict[str, Any] = fmt.codec_options(photometric, planar=0, frames=1)
    if target == JPEG2000:
        options["j2k_cr"] = [J2K_RATIO]
    encoder = get_encoder(UID(target))

    def encode(arr: np.ndarray) -> bytes:
        try:
            if target == RLE:
                return encode_rle_frame(arr, fmt.bits_allocated)
            return bytes(encoder.encode(arr, **options))
        except Exception as exc:
            raise ConversionError(f"{name} encoding failed: {_first_line(exc)}") from exc

    planar = (1 if target == RLE else 0) if colour else None
    return FrameEncoding(encode, photometric, planar, LOSSY_METHODS.get(target))


def _check_openjpeg(name: str, fmt: PixelFormat) -> None:
    """Limits of the installed JPEG 2000 encoder (openjpeg via pylibjpeg)."""
    if fmt.bits_stored > _OPENJPEG_MAX_BITS:
        raise ConversionError(
            f"{name}: the installed encoder supports at most {_OPENJPEG_MAX_BITS} bits per "
            f"sample; this instance has BitsStored {fmt.bits_stored}"
        )
    if min(fmt.rows, fmt.columns) < _OPENJPEG_MIN_SIZE:
        raise ConversionError(
            f"{name}: the installed encoder needs at least {_OPENJPEG_MIN_SIZE} rows and "
            f"columns; this instance is {fmt.rows}x{fmt.columns}"
        )


def _native_encoder(fmt: PixelFormat) -> Callable[[np.ndarray], bytes]:
    if fmt.bits_allocated == 1:
        return lambda arr: bytes(pack_bits(arr, pad=False))
    return lambda arr: arr.astype(fmt.dtype, copy=False).tobytes()


def _check_profile(target: str, fmt: PixelFormat, photometric: str) -> None:
    """Refuse pixel formats outside the target's encoding profiles (PS3.5 8.2)."""
    profiles = ENCODING_PROFILES.get(UID(target), [])
    for pi, spp, representations, allocated, stored in profiles:
        if (
            pi == photometric
            and spp == fmt.samples_per_pixel
            and fmt.pixel_representation in representations
            and fmt.bits_allocated in allocated
            and fmt.bits_stored in stored
        ):
            return
    if not profiles:
        return
    name = syntax_name(target)
    allocated_any = sorted({b for p in profiles for b in p[3]})
    if fmt.bits_allocated not in allocated_any:
        listed = ", ".join(str(b) for b in allocated_any)
        raise ConversionError(
            f"{name} needs BitsAllocated {listed}; this instance has "
            f"BitsAllocated {fmt.bits_allocated}"
        )
    if photometric not in {p[0] for p in profiles}:
        raise ConversionError(f"{name} cannot encode PhotometricInterpretation {photometric}")
    raise ConversionError(
        f"{name} cannot encode this pixel data ({fmt.summary()}, decoded as {photometric})"
    )


def _jpeg_baseline(fmt: PixelFormat, photometric: str) -> FrameEncoding:
    """JPEG baseline (process 1) with Pillow: 8-bit unsigned greyscale or colour."""
    name = syntax_name(JPEG_BASELINE)
    if fmt.bits_allocated != 8 or fmt.bits_stored != 8:
        bits = f"BitsAllocated {fmt.bits_allocated}"
        if fmt.bits_allocated == 8:
            bits = f"BitsStored {fmt.bits_stored}"
        raise ConversionError(f"{name} needs 8-bit samples; this instance has {bits}")
    if fmt.pixel_representation != 0:
        raise ConversionError(f"{name} needs unsigned samples; this instance has signed data")
    grey = photometric in ("MONOCHROME1", "MONOCHROME2") and fmt.samples_per_pixel == 1
    colour = photometric in ("RGB", "YBR_FULL") and fmt.samples_per_pixel == 3
    if not (grey or colour):
        raise ConversionError(f"{name} cannot encode PhotometricInterpretation {photometric}")
    from PIL import Image

    def encode(arr: np.ndarray) -> bytes:
        if photometric == "YBR_FULL":
            arr = convert_color_space(arr, "YBR_FULL", "RGB")
        buffer = io.BytesIO()
        image = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
        options: dict[str, Any] = {"quality": JPEG_QUALITY}
        if colour:
            options["subsampling"] = 1  # 4:2:2, i.e. YBR_FULL_422
        try:
            image.save(buffer, format="JPEG", **options)
        except Exception as exc:
            raise ConversionError(f"{name} encoding failed: {_first_line(exc)}") from exc
        return buffer.getvalue()

    if grey:
        return FrameEncoding(encode, photometric, None, LOSSY_METHODS[JPEG_BASELINE])
    return FrameEncoding(encode, "YBR_FULL_422", 0, LOSSY_METHODS[JPEG_BASELINE])


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # pydicom reports "Unable to encode ... by all available plugins:" then the cause.
    return lines[-1] if lines else type(exc).__name__
