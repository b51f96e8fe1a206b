"""router.transcode.rle: the vectorised RLE encoder against pydicom's reference one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import RLELossless

from router.transcode.rle import encode_rle_frame


def options(arr: np.ndarray, bits: int) -> dict[str, object]:
    samples = 1 if arr.ndim == 2 else arr.shape[2]
    return {
        "rows": arr.shape[0],
        "columns": arr.shape[1],
        "samples_per_pixel": samples,
        "bits_allocated": bits,
        "bits_stored": bits,
        "pixel_representation": int(arr.dtype.kind == "i"),
        "photometric_interpretation": "RGB" if samples == 3 else "MONOCHROME2",
        "number_of_frames": 1,
        "planar_configuration": 0,
    }


def reference(arr: np.ndarray, bits: int) -> bytes:
    """pydicom's own (pure Python) RLE encoder."""
    encoder = get_encoder(RLELossless)
    return bytes(encoder.encode(arr, encoding_plugin="pydicom", **options(arr, bits)))


def decode(frame: bytes, like: np.ndarray, bits: int) -> np.ndarray:
    decoder = get_decoder(RLELossless)
    arr, _ = decoder.as_array(
        encapsulate([frame]),
        transfer_syntax_uid=RLELossless,
        pixel_keyword="PixelData",
        **options(like, bits),
    )
    return arr


EDGE_ROWS = [
    np.full(1, 5),  # one byte
    np.full(128, 5),  # longest replicate run
    np.full(129, 5),  # 128 + a lone byte
    np.full(130, 5),  # 128 + 2
    np.full(257, 5),
    np.arange(128),  # longest literal run
    np.arange(129),  # literal run split
    np.arange(300),
    np.array([1, 1, 2, 3, 3, 3, 4, 5, 6, 6]),  # alternating short runs
]


@pytest.mark.parametrize("row", EDGE_ROWS, ids=[f"{len(r)}:{r[0]}:{r[-1]}" for r in EDGE_ROWS])
def test_edge_cases_match_the_reference_encoder(row: np.ndarray) -> None:
    arr = np.tile(row.astype(np.uint8), (3, 1))  # runs must not cross rows
    assert encode_rle_frame(arr, 8) == reference(arr, 8)


@pytest.mark.parametrize(
    ("shape", "dtype", "bits"),
    [
        ((20, 33), np.int16, 16),
        ((1100, 130), np.uint8, 8),  # several 64 KiB blocks of rows
        ((17, 129, 3), np.uint8, 8),
        ((9, 7, 3), np.uint16, 16),
    ],
)
def test_multi_byte_and_colour_frames(shape: tuple[int, ...], dtype: type, bits: int) -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 4, size=shape).astype(dtype)
    arr[::3] = rng.integers(0, 200, size=arr[::3].shape).astype(dtype)
    assert encode_rle_frame(arr, bits) == reference(arr, bits)
    assert np.array_equal(decode(encode_rle_frame(arr, bits), arr, bits), arr)


def test_32_bit_frames_decode_back() -> None:
    """pydicom's profile stops its own encoder at 16 bits; Annex G itself does not."""
    arr = np.arange(5 * 6, dtype=np.uint32).reshape(5, 6) * 0x01010101
    assert np.array_equal(decode(encode_rle_frame(arr, 32), arr, 32), arr)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 6), st.integers(1, 300)),
        elements=st.integers(0, 3),
    )
)
def test_random_frames_match_the_reference_encoder(arr: np.ndarray) -> None:
    encoded = encode_rle_frame(arr, 8)
    assert encoded == reference(arr, 8)
    assert np.array_equal(decode(encoded, arr, 8), arr)


def test_too_many_segments_is_refused() -> None:
    with pytest.raises(ValueError, match="15 segments"):
        encode_rle_frame(np.zeros((2, 2, 3), dtype=np.uint64), 64)
