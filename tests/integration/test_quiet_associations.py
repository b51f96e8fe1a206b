"""The router's association sides (router/quiet.py) against a real pynetdicom peer:
reads of whole PDUs, and an outbound reactor that stays parked yet exits at the end."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from pydicom import dcmread

from router import quiet
from router.scu import AssociationPool, Peer
from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
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


def test_a_parked_outbound_association_stays_paused_and_exits_when_closed(
    tmp_path: Path,
) -> None:
    files = write_ct_series(tmp_path / "series", 4, rows=64, cols=64)
    sop_class = str(dcmread(files[0], stop_before_pixels=True).SOPClassUID)
    with CaptureSCP() as sink:
        pool = AssociationPool("ROUTER")
        peer = Peer(sink.ae_title, "127.0.0.1", sink.port)

        def send(path: Path) -> None:
            status, _ = pool.send("sink", peer, sop_class, ["1.2.840.10008.1.2.1"],
                                  lambda syntax: path)  # fmt: skip
            assert status == 0x0000

        send(files[0])
        assoc = pool._pooled["sink"].assoc
        # Every loop of a running reactor looks at the DIMSE queue without blocking.
        looks = []
        original = assoc.dimse.get_msg

        def counting_get_msg(block: bool = False) -> object:
            if not block:
                looks.append(1)
            return original(block)

        assoc.dimse.get_msg = counting_get_msg
        for path in files[1:]:
            send(path)
            time.sleep(0.02)  # time enough for a resumed reactor to loop
        assert looks == [], "the reactor ran between or after requests"
        sink.wait_for_count(len(files))
        assert pool.answering("sink")
        pool.close_all()
        deadline = time.monotonic() + 5
        while assoc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not assoc.is_alive(), "the association's reactor thread did not exit"
        assert assoc.is_released


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


@pytest.mark.parametrize(("announced", "used"), [(0, 128 * 1024), (16384, 16384)])
def test_outgoing_pdus_are_capped_at_128_kib(tmp_path: Path, announced: int, used: int) -> None:
    """A peer announcing "unlimited" gets 128 KiB PDUs, one announcing less gets its size;
    a 0.5 MB slice arrives whole either way."""
    (path,) = write_ct_series(tmp_path / "series", 1)
    sent = dcmread(path)
    with CaptureSCP(max_pdu=announced) as sink:
        pool = AssociationPool("ROUTER")
        status, _ = pool.send(
            "sink", Peer(sink.ae_title, "127.0.0.1", sink.port), str(sent.SOPClassUID),
            ["1.2.840.10008.1.2.1"], lambda syntax: path,
        )  # fmt: skip
        assert status == 0x0000
        assert pool._pooled["sink"].assoc.dimse.maximum_pdu_size == used
        sink.wait_for_count(1)
        pool.close_all()
        (received,) = sink.received()
        assert dcmread(received) == sent
