"""Converting one DICOM file to another transfer syntax, streaming.

The output is written element by element and frame by frame: memory holds the
non-pixel elements, one decoded frame and one encoded frame, never the whole pixel
data (see ``source.py`` for reading, ``writer.py`` for writing).

Paths through the converter:

* Already in the target syntax: the file is copied unchanged.
* Native little endian to native (explicit, implicit, deflated): the pixel bytes
  are copied as they are; no codec is involved.
* Anything else with pixel data: each frame is decoded and re-encoded.
* No pixel data at all (SR, presentation states, RT plans, ...): only the data set
  encoding changes.  For a compressed target the instance is written as Explicit
  VR Little Endian with the compressed syntax in its meta: PS3.5 A.4 defines the
  encapsulated syntaxes as Explicit VR Little Endian for everything except the
  pixel data, so such a file is exactly what the syntax says (dciodvfy and dcmtk
  read it) and a destination that negotiated only that syntax can still get it.

A lossy target is refused unless the caller allows it; what a lossy step records
in the data set, and why it gets a new SOP Instance UID, is in ``lossy.py``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from router.error_text import describe_error
from router.transcode.encode import frame_encoding
from router.transcode.errors import ConversionError
from router.transcode.frames import decoded_frames, native_chunks, pixel_format
from router.transcode.header import build_meta, prepare_header
from router.transcode.lossy import (
    derive_lossy_instance,
    keep_lossy_history,
    start_lossy_step,
)
from router.transcode.source import Source, open_source
from router.transcode.syntaxes import (
    TRANSFER_SYNTAX_NAMES,
    can_decode,
    can_encode,
    describe,
    is_lossy,
    is_native,
    syntax_name,
    syntax_uid,
)
from router.transcode.writer import (
    OutputStream,
    encode_elements,
    native_vr,
    write_encapsulated_pixels,
    write_native_pixels,
)

__all__ = ["ConversionResult", "convert_file"]


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_file` did."""

    source_syntax: str
    target_syntax: str
    frames: int
    """Frames in the instance (0 without pixel data)."""
    bytes_in: int
    bytes_out: int
    seconds: float
    lossy: bool
    """True when this conversion applied lossy compression (not when the source was lossy)."""
    sop_instance_uid: str
    """SOP Instance UID of the output (new after a lossy step)."""
    copied: bool = False
    """True when no conversion was needed and the file was copied unchanged."""


@dataclass
class _Written:
    frames: int
    lossy: bool = False


def convert_file(
    src: Path, dst: Path, target_uid: str, *, allow_lossy: bool = False
) -> ConversionResult:
    """Write ``src`` converted to the transfer syntax ``target_uid`` (name or UID) at ``dst``.

    ``dst`` is overwritten; it is removed again if the conversion fails.  Syncing
    it to disk is the caller's business.  Raises :class:`ConversionError` with a
    readable ``reason`` when the conversion is impossible or not allowed.
    """
    started = time.perf_counter()
    target = syntax_uid(target_uid)
    if target is None:
        raise ConversionError(f"unknown transfer syntax {target_uid!r}")
    with open_source(Path(src), Path(dst).parent) as source:
        if source.syntax == target:
            shutil.copyfile(src, dst)
            written = _Written(source.frames)
        else:
            if is_lossy(target) and not allow_lossy:
                raise ConversionError(
                    f"{syntax_name(target)} is lossy and no rule asked for lossy compression"
                )
            if not can_encode(target):
                why = "no encoder installed"
                if target not in TRANSFER_SYNTAX_NAMES.values():
                    why = "not a transfer syntax the router writes"
                raise ConversionError(f"cannot write {describe(target)}: {why}")
            try:
                with Path(dst).open("wb") as fp:
                    out = OutputStream(fp, target)
                    written = _convert(source, out, target)
                    out.finish()
            except (ConversionError, OSError, MemoryError):
                Path(dst).unlink(missing_ok=True)
                raise
            except Exception as exc:
                # Malformed data surfaces as all kinds of errors from the parser and
                # codecs; it will fail again on every retry, so it is a reason too.
                Path(dst).unlink(missing_ok=True)
                raise ConversionError(f"cannot convert: {describe_error(exc)}") from exc
            except BaseException:
                Path(dst).unlink(missing_ok=True)
                raise
        return ConversionResult(
            source_syntax=source.syntax,
            target_syntax=target,
            frames=written.frames,
            bytes_in=source.size,
            bytes_out=Path(dst).stat().st_size,
            seconds=time.perf_counter() - started,
            lossy=written.lossy,
            sop_instance_uid=str(source.dataset.get("SOPInstanceUID", "")),
            copied=source.syntax == target,
        )


def _convert(source: Source, out: OutputStream, target: str) -> _Written:
    was_lossy = source.lossy  # before the header is changed
    ds, trailing = prepare_header(source, target)
    pixel = source.pixel
    if pixel is not None and was_lossy:
        keep_lossy_history(ds, source.syntax, _source_ratio(source))
    if pixel is None:
        out.write_meta(build_meta(source, ds, target))
        out.write(encode_elements(ds, out.implicit_vr)[0])
        written = _Written(0)
    elif pixel.keyword != "PixelData" or (
        is_native(target) and is_native(source.syntax) and source.little_endian
    ):
        written = _copy_native(source, out, target, ds)
    else:
        written = _transcode(source, out, target, ds, was_lossy)
    out.write(encode_elements(trailing, out.implicit_vr)[0])
    return written


def _copy_native(source: Source, out: OutputStream, target: str, ds: Dataset) -> _Written:
    """Native pixel data into a native syntax: bytes copied (swapped if big endian floats)."""
    pixel = source.pixel
    assert pixel is not None
    if pixel.length is None:
        raise ConversionError(f"{pixel.keyword} must not be encapsulated")
    if not is_native(target):
        raise ConversionError(f"{syntax_name(target)} cannot hold {pixel.keyword}")
    out.write_meta(build_meta(source, ds, target))
    out.write(encode_elements(ds, out.implicit_vr)[0])
    vr = {"FloatPixelData": "OF", "DoubleFloatPixelData": "OD"}.get(pixel.keyword)
    if vr is None:
        vr = pixel.vr if pixel.vr in ("OB", "OW") else native_vr(ds)
    pad = pixel.length % 2
    out.write(out.element_header(pixel.tag, vr, pixel.length + pad))
    width = {"OF": 4, "OD": 8}.get(vr, 1)
    for chunk in native_chunks(source):
        if not source.little_endian and width > 1:
            chunk = np.frombuffer(chunk, f">u{width}").astype(f"<u{width}").tobytes()
        out.write(chunk)
    out.write(b"\x00" * pad)
    return _Written(source.frames)


def _transcode(
    source: Source, out: OutputStream, target: str, ds: Dataset, was_lossy: bool
) -> _Written:
    """Decode every frame and encode it for ``target``."""
    fmt = pixel_format(source)
    if fmt.bits_allocated == 1 and fmt.frames > 1 and fmt.frame_pixels % 8:
        raise ConversionError(
            "1-bit multi-frame pixel data whose frames do not end on a byte boundary "
            "can only be copied between native little endian syntaxes"
        )
    if not can_decode(source.syntax):
        raise ConversionError(f"cannot decode {describe(source.syntax)}: no codec installed")
    frames = decoded_frames(source, fmt)
    first = next(frames, None)
    if first is None:
        raise ConversionError("the pixel data holds no frames")
    encoding = frame_encoding(target, fmt, first[1])
    ds.PhotometricInterpretation = encoding.photometric_interpretation
    if encoding.planar_configuration is not None:
        ds.PlanarConfiguration = encoding.planar_configuration
    arrays = _arrays([first[0]], frames)
    del first
    earlier: list[str] | None = None
    if encoding.lossy_method is not None:
        earlier = start_lossy_step(ds, encoding.lossy_method)
        derive_lossy_instance(ds, target, was_lossy)
    out.write_meta(build_meta(source, ds, target))
    if is_native(target):
        count = write_native_pixels(out, ds, fmt, arrays, encoding.encode)
    else:
        count = write_encapsulated_pixels(out, ds, fmt, arrays, encoding.encode, earlier)
    if count != fmt.frames:
        raise ConversionError(f"NumberOfFrames is {fmt.frames} but the pixel data holds {count}")
    return _Written(count, lossy=earlier is not None)


def _arrays(
    first: list[np.ndarray], rest: Iterator[tuple[np.ndarray, str]]
) -> Iterator[np.ndarray]:
    """The first (already decoded) frame, then the rest, holding none of them."""
    yield first.pop()
    for arr, _ in rest:
        yield arr


def _source_ratio(source: Source) -> float | None:
    """Compression ratio achieved by the source's own encapsulated pixel data."""
    pixel = source.pixel
    if pixel is None or not pixel.encapsulated:
        return None
    try:
        fmt = pixel_format(source)
    except ConversionError:
        return None
    encoded = pixel.end_offset - pixel.value_offset
    return fmt.frame_bytes * fmt.frames / encoded if encoded > 0 else None
