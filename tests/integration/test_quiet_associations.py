"""The router's receiving association side (router/quiet.py) against real peers:
reads of whole PDUs; the benchmarks' lean sink keeps what it receives."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_messages import C_STORE_RSP

from router import quiet
from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.ports import free_port
from tests.support.synthetic import write_ct_series

pytestmark = pytest.mark.integration


class _Transport:
    """The part of pynetdicom's AssociationSocket that ``bulk_reads`` relies on."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def recv(self, nr_bytes: int) -> bytearray:  # replaced by bulk_reads
        raise AssertionError("not replaced")


def test_bulk_reads_return_exactly_what_was_asked_for() -> None:
    ours, theirs = socket.socketpair()
    payload = bytes(range(256)) * 2048  # 512 KiB, arriving in pieces
    transport = _Transport(ours)
    assert quiet.bulk_reads(transport)

    def send_in_pieces() -> None:
        for start in range(0, len(payload), 70_000):
            theirs.sendall(payload[start : start + 70_000])
            time.sleep(0.001)

    writer = threading.Thread(target=send_in_pieces)
    writer.start()
    first = transport.recv(6)
    rest = transport.recv(len(payload) - 6)
    writer.join()
    assert bytes(first + rest) == payload

    theirs.sendall(b"abc")
    theirs.close()
    # A peer announcing 64 MiB and sending 3 bytes gets no 64 MiB buffer.
    tracemalloc.start()
    try:
        assert bytes(transport.recv(64 * 1024 * 1024)) == b"abc"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * quiet.READ_CHUNK
    ours.close()


def test_a_lean_capture_scp_stores_what_it_receives_unchanged(tmp_path: Path) -> None:
    """The benchmarks' sinks (capture_scp --lean) keep the data sets as sent."""
    files = write_ct_series(tmp_path / "series", 3, rows=64, cols=64)
    with CaptureSCP(extra_args=["--lean"]) as sink:
        assert storescu(files, sink.port).returncode == 0
        sink.wait_for_count(len(files))
        received = {dcmread(path).SOPInstanceUID: dcmread(path) for path in sink.received()}
    assert len(received) == len(files)
    for path in files:
        sent = dcmread(path)
        assert received[sent.SOPInstanceUID] == sent
        assert received[sent.SOPInstanceUID].PixelData == sent.PixelData


def test_success_responses_skip_pynetdicom_encoding_and_storescu_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``quick_store_responses``: dcmtk reads the directly built success response;
    other statuses still go through pynetdicom's encoder."""
    files = write_ct_series(tmp_path / "ct", 3, rows=64, cols=64)
    statuses = iter([0x0000, 0xA700, 0x0000])
    encoded = []
    original = C_STORE_RSP.primitive_to_message

    def counting(self: C_STORE_RSP, primitive: Any) -> None:
        encoded.append(int(primitive.Status))
        original(self, primitive)

    monkeypatch.setattr(C_STORE_RSP, "primitive_to_message", counting)
    # As in the router (router/logs.py): pynetdicom's own DIMSE logging, which wants
    # the encoded message, is not bound.
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    ae = AE(ae_title="QUICK")
    ae.add_supported_context(str(dcmread(files[0], stop_before_pixels=True).SOPClassUID),
                             ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])  # fmt: skip
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_ESTABLISHED, lambda event: quiet.quick_store_responses(event.assoc)),
        (evt.EVT_C_STORE, lambda event: next(statuses)),
    ])  # fmt: skip
    try:
        result = storescu(files, port, called_ae="QUICK", extra_args=("-nh", "-v"))
    finally:
        server.shutdown()
    assert encoded == [0xA700], "a success went through pynetdicom's encoder, or a failure did not"
    answers = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
               if "Received Store Response" in line]  # fmt: skip
    assert len(answers) == 3
    assert "Success" in answers[0] and "Success" in answers[2]
    assert "Success" not in answers[1]
