"""Flawed instances, and sending them as they are.

dcmtk's senders parse what they send and would repair or refuse a flawed file;
pynetdicom's chunked send passes a file's bytes on unparsed, so the router gets
exactly the flaw under test.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]


def store(port: int, source: Any, calling_ae: str = "CT01") -> int:
    """C-STORE one dataset (or file path) with pynetdicom; returns the DIMSE status."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established
    try:
        response = assoc.send_c_store(source)
        return int(response.Status)
    finally:
        assoc.release()


def store_file_as_is(port: int, path: Path, calling_ae: str = "CT01") -> int:
    """C-STORE a file's bytes unparsed (pynetdicom's chunked send): the request's
    SOP Class and Instance UIDs come from its file meta, the data set is not read."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return store(port, path, calling_ae)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def mislabelled_as_ul(source: Path, target: Path, tag: int, vr: str, text: str) -> Path:
    """A copy of ``source`` (explicit VR little endian) whose element ``tag`` holds
    ``text`` but says VR UL (4-byte numbers) instead of ``vr``: reading its value
    fails, with an error that quotes the bytes. ``text`` must have an even length
    that is not a multiple of 4."""
    dataset = dcmread(source)
    dataset.add_new(tag, vr, text)
    dataset.save_as(target, enforce_file_format=True)
    data = target.read_bytes()
    header = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(text))
    assert data.count(header) == 1, "the element's header must be unique in the file"
    target.write_bytes(data.replace(header, header[:4] + b"UL" + header[6:]))
    return target
