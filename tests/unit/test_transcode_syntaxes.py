"""router.transcode.syntaxes: names, classification, codec availability."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

import router.transcode.syntaxes as syntaxes
from router.transcode import (
    TRANSFER_SYNTAX_NAMES,
    can_decode,
    can_encode,
    is_lossy,
    is_native,
    syntax_name,
    syntax_uid,
)


@pytest.fixture(autouse=True)
def fresh_capability_cache() -> Iterator[None]:
    syntaxes.can_decode.cache_clear()
    syntaxes.can_encode.cache_clear()
    yield
    syntaxes.can_decode.cache_clear()
    syntaxes.can_encode.cache_clear()


def test_name_table_is_the_contract() -> None:
    assert TRANSFER_SYNTAX_NAMES == {
        "explicit-little": "1.2.840.10008.1.2.1",
        "implicit-little": "1.2.840.10008.1.2",
        "deflated": "1.2.840.10008.1.2.1.99",
        "rle": "1.2.840.10008.1.2.5",
        "jpeg-ls-lossless": "1.2.840.10008.1.2.4.80",
        "jpeg2000-lossless": "1.2.840.10008.1.2.4.90",
        "jpeg2000": "1.2.840.10008.1.2.4.91",
        "jpeg-baseline": "1.2.840.10008.1.2.4.50",
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80"),
        (" rle ", "1.2.840.10008.1.2.5"),
        ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.70"),  # any syntax pydicom knows
        ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.2"),
        ("1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.93"),
        ("JPEG-LS-LOSSLESS", None),  # names are exact
        ("jpeg", None),
        ("1.2.840.10008.5.1.4.1.1.2", None),  # a SOP class, not a transfer syntax
        ("1.2.3.4", None),
        ("", None),
    ],
)
def test_syntax_uid(given: str, expected: str | None) -> None:
    assert syntax_uid(given) == expected


def test_syntax_name_round_trips_and_falls_back_to_the_uid() -> None:
    for name, uid in TRANSFER_SYNTAX_NAMES.items():
        assert syntax_name(uid) == name
        assert syntax_uid(syntax_name(uid)) == uid
    assert syntax_name("1.2.840.10008.1.2.4.70") == "1.2.840.10008.1.2.4.70"


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.51",  # JPEG extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (may be lossy)
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 (may be lossy)
        "1.2.840.10008.1.2.4.203",  # HTJ2K (may be lossy)
        "1.2.840.10008.1.2.4.102",  # H.264
    ],
)
def test_lossy_syntaxes(uid: str) -> None:
    assert is_lossy(uid)
    assert not is_native(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.201",
    ],
)
def test_lossless_syntaxes(uid: str) -> None:
    assert not is_lossy(uid)


def test_native_syntaxes() -> None:
    native = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"}
    native.add("1.2.840.10008.1.2.2")
    for uid in native:
        assert is_native(uid)
    assert not is_native("1.2.840.10008.1.2.5")


def test_installed_codecs() -> None:
    """What this environment's codecs (pydicom plugins, Pillow) can really do."""
    for uid in TRANSFER_SYNTAX_NAMES.values():
        assert can_encode(uid), uid
        assert can_decode(uid), uid
    assert can_decode("1.2.840.10008.1.2.2")
    assert can_decode("1.2.840.10008.1.2.4.70")  # JPEG lossless, via pylibjpeg-libjpeg
    assert not can_decode("1.2.840.10008.1.2.4.93")  # no JPEG 2000 Part 2 codec exists
    assert not can_decode("1.2.826.0.1.3680043.9999.1")  # a private syntax
    assert not can_encode("1.2.840.10008.1.2.2")  # big endian is never written
    assert not can_encode("1.2.840.10008.1.2.4.70")  # pydicom cannot encode it


def test_capabilities_follow_pydicom_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = SimpleNamespace(is_available=False)
    monkeypatch.setattr(syntaxes, "get_encoder", lambda uid: missing)
    monkeypatch.setattr(syntaxes, "get_decoder", lambda uid: missing)
    assert not can_encode("1.2.840.10008.1.2.4.80")
    assert not can_decode("1.2.840.10008.1.2.4.80")
    # Native syntaxes need no codec at all.
    assert can_encode("1.2.840.10008.1.2.1.99")
    assert can_decode("1.2.840.10008.1.2")


def test_jpeg_baseline_encoding_follows_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syntaxes, "_pillow_has_jpeg", lambda: False)
    assert not can_encode("1.2.840.10008.1.2.4.50")
