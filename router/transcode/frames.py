"""Pixel format of an instance and its frames, one at a time.

Frames are decoded by pydicom's decoders straight from the open source file (the
decoder seeks to each frame or fragment), so at most one decoded frame is alive at
a time whatever the number of frames.  Native little endian pixel data that only
changes its container (explicit/implicit/deflated) is not decoded at all: it is
copied in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from router.error_text import describe_error
from router.transcode.errors import ConversionError
from router.transcode.source import Source
from router.transcode.syntaxes import (
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    can_decode,
    describe,
)

__all__ = ["PixelFormat", "decoded_frames", "native_chunks", "pixel_format"]

_CHUNK = 1024 * 1024
#: Lossy JPEG stores colour as the JFIF YCbCr transform, a codec-internal step
#: whose natural decoded form is RGB (what dcmdjpeg writes too).  Every other
#: codec stores the samples it was given, so those are kept exactly as decoded.
_DECODE_TO_RGB = frozenset({JPEG_BASELINE, JPEG_EXTENDED})
_BITS_ALLOCATED = frozenset({1, 8, 16, 32, 64})
#: Plugins to use when installed, because pydicom would otherwise try a slower one
#: first (libjpeg decodes JPEG-LS about 4x slower than CharLS).
_PREFERRED_PLUGINS = {JPEG_LS_LOSSLESS: "pyjpegls", JPEG_LS_NEAR_LOSSLESS: "pyjpegls"}


@dataclass(frozen=True)
class PixelFormat:
    """The Image Pixel module values the conversion works with."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    frames: int

    @property
    def dtype(self) -> np.dtype[Any]:
        """Little endian array type of one sample, as written in native Pixel Data."""
        kind = "i" if self.pixel_representation else "u"
        return np.dtype(f"<{kind}{max(self.bits_allocated // 8, 1)}")

    @property
    def frame_pixels(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel

    @property
    def frame_bytes(self) -> int:
        """Bytes of one native frame (bit-packed for BitsAllocated 1)."""
        if self.bits_allocated == 1:
            return (self.frame_pixels + 7) // 8
        return self.frame_pixels * self.bits_allocated // 8

    def codec_options(
        self, photometric: str | None = None, planar: int | None = None, frames: int | None = None
    ) -> dict[str, Any]:
        """The image description pydicom's decoders and encoders take as keywords."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": photometric or self.photometric_interpretation,
            "planar_configuration": self.planar_configuration if planar is None else planar,
            "number_of_frames": self.frames if frames is None else frames,
        }

    def summary(self) -> str:
        """One line for error messages."""
        return (
            f"PhotometricInterpretation {self.photometric_interpretation}, "
            f"SamplesPerPixel {self.samples_per_pixel}, BitsAllocated {self.bits_allocated}, "
            f"BitsStored {self.bits_stored}, PixelRepresentation {self.pixel_representation}"
        )


def pixel_format(source: Source) -> PixelFormat:
    """Read the Image Pixel module of ``source``; ConversionError if it is unusable."""
    ds = source.dataset

    def number(keyword: str, default: int | None = None) -> int:
        value = ds.get(keyword, default)
        if value is None or value == "":
            if default is None:
                raise ConversionError(f"the instance has Pixel Data but no {keyword}")
            return default
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConversionError(f"{keyword} {value!r} is not a number") from exc

    bits_allocated = number("BitsAllocated")
    if bits_allocated not in _BITS_ALLOCATED:
        raise ConversionError(f"BitsAllocated {bits_allocated} is not supported (1, 8, 16, 32, 64)")
    return PixelFormat(
        rows=number("Rows"),
        columns=number("Columns"),
        samples_per_pixel=number("SamplesPerPixel", 1),
        bits_allocated=bits_allocated,
        bits_stored=number("BitsStored", bits_allocated),
        pixel_representation=number("PixelRepresentation", 0),
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "") or "").strip(),
        planar_configuration=number("PlanarConfiguration", 0),
        frames=source.frames,
    )


def decoded_photometric(decoded: str) -> str:
    """The photometric interpretation of decoded frames, as native data describes them.

    Decoders always return YBR_FULL_422 data upsampled, which natively is YBR_FULL.
    """
    return "YBR_FULL" if decoded == "YBR_FULL_422" else decoded


def decoded_frames(source: Source, fmt: PixelFormat) -> Iterator[tuple[np.ndarray, str]]:
    """Yield each frame as a little endian array shaped (rows, columns[, samples]).

    Alongside each frame comes its photometric interpretation as decoded (see
    ``_DECODE_TO_RGB``).  Raises :class:`ConversionError` when no codec can decode
    the source syntax or the data is broken.
    """
    pixel = source.pixel
    if pixel is None:
        return
    syntax = source.syntax
    if not can_decode(syntax):
        raise ConversionError(f"cannot decode {describe(syntax)}: no codec installed")
    options: dict[str, Any] = {
        "transfer_syntax_uid": UID(syntax),
        "pixel_keyword": pixel.keyword,
        **fmt.codec_options(),
    }
    if pixel.vr:
        options["pixel_vr"] = pixel.vr
    if source.extended_offsets is not None:
        options["extended_offsets"] = source.extended_offsets
    decoder = get_decoder(syntax)
    plugin = _PREFERRED_PLUGINS.get(syntax, "")
    if plugin not in decoder.available_plugins:
        plugin = ""
    source.body.seek(pixel.value_offset)
    raw = syntax not in _DECODE_TO_RGB
    try:
        frames = decoder.iter_array(source.body, raw=raw, decoding_plugin=plugin, **options)
        for arr, properties in frames:
            decoded = str(properties.get("photometric_interpretation", ""))
            photometric = decoded_photometric(decoded)
            yield np.asarray(arr).astype(fmt.dtype, copy=False), photometric
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"cannot decode the {describe(syntax)} pixel data: {describe_error(exc)}"
        ) from exc


def native_chunks(source: Source) -> Iterator[bytes]:
    """Yield the native pixel value bytes unchanged, in bounded chunks."""
    pixel = source.pixel
    if pixel is None or pixel.length is None:
        return
    source.body.seek(pixel.value_offset)
    remaining = pixel.length
    while remaining:
        chunk = source.body.read(min(_CHUNK, remaining))
        if not chunk:
            raise ConversionError(f"{pixel.keyword} is truncated")
        remaining -= len(chunk)
        yield chunk
