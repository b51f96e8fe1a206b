"""The router's outbound C-STORE association (router/store_association.py) against real
peers: dcmtk's storescp, and pynetdicom SCPs that accept, refuse, stall or drop."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from router.scu import AssociationPool, DeliveryError, Peer
from router.steps import run, run_all
from router.store_association import AssociationError, StoreAssociation
from tests.support.capture_scp import CaptureSCP
from tests.support.compare import dataset_differences
from tests.support.dcmtk import storescp as run_storescp
from tests.support.ports import free_port
from tests.support.synthetic import pydicom_test_files, write_ct_series

pytestmark = pytest.mark.integration

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT = str(CTImageStorage)


def _send(pool: AssociationPool, peer: Peer, path: Path, syntax: str = EXPLICIT_LE) -> int:
    sop_class = str(dcmread(path, stop_before_pixels=True).SOPClassUID)
    status, _ = run(pool.send_steps("dest", peer, sop_class, [syntax], lambda chosen: path))
    return status


def _meta_matches(path: Path) -> bool:
    header = dcmread(path, stop_before_pixels=True)
    return bool(header.file_meta.MediaStorageSOPInstanceUID == header.SOPInstanceUID)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp accepting every transfer syntax, writing into a folder."""
    out = tmp_path / "storescp"
    out.mkdir()
    with run_storescp(out, options=["+xa"]) as port:
        yield port, out


def test_instances_in_several_syntaxes_reach_storescp_unchanged_on_one_association(
    tmp_path: Path, storescp: tuple[int, Path]
) -> None:
    port, out = storescp
    # As in the spool: file meta naming the instance it holds (the SCP refuses others).
    samples = [p for p in pydicom_test_files() if _meta_matches(p)][:8]
    files = write_ct_series(tmp_path / "ct", 3) + samples
    pool = AssociationPool("ROUTER")
    peer = Peer("STORESCP", "127.0.0.1", port)
    for path in files:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        assert _send(pool, peer, path, syntax) == 0x0000
    pool.close_all()
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
                for p in out.rglob("*") if p.is_file()}  # fmt: skip
    assert len(received) == len({dcmread(p, stop_before_pixels=True).SOPInstanceUID
                                 for p in files})  # fmt: skip
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        # storescp writes its own file meta; the data set must be the one sent.
        assert dataset_differences(path, received[uid]) == [], path.name


def test_pdus_are_at_most_128_kib_or_what_the_peer_accepts(tmp_path: Path) -> None:
    (path,) = write_ct_series(tmp_path / "ct", 1)
    for announced, used in ((0, 128 * 1024), (16384, 16384)):
        with CaptureSCP(max_pdu=announced) as sink:
            assoc = StoreAssociation.open("127.0.0.1", sink.port, "ROUTER", sink.ae_title,
                                          [(CT, EXPLICIT_LE)], 10, 5)  # fmt: skip
            assert assoc.send_pdu_size == used
            assert assoc.send_c_store(path, assoc.accepted[(CT, EXPLICIT_LE)]) == 0x0000
            assoc.release()
            sink.wait_for_count(1)
            (received,) = sink.received()
            assert dataset_differences(path, received) == []


def test_many_instances_share_one_association(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "ct", 20, rows=64, cols=64)
    with CaptureSCP() as sink:
        pool = AssociationPool("ROUTER")
        peer = Peer(sink.ae_title, "127.0.0.1", sink.port)
        assert all(_send(pool, peer, path) == 0x0000 for path in files)
        sink.wait_for_count(len(files))
        assert sink.max_concurrent_associations() == 1
        pool.close_all()
        assert sorted(sink.sop_instance_uids()) == sorted(
            str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files
        )


class _Peer:
    """An in-process pynetdicom SCP whose behaviour a test chooses."""

    def __init__(self, handle_store: Any, **ae_options: Any) -> None:
        self.ae = AE(ae_title="PEER")
        self.ae.add_supported_context(CT, [EXPLICIT_LE])
        for key, value in ae_options.items():
            setattr(self.ae, key, value)
        self.port = free_port()
        self.released = threading.Event()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, handle_store),
                          (evt.EVT_RELEASED, lambda event: self.released.set())],
        )  # fmt: skip

    def __enter__(self) -> _Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def test_the_destination_status_is_returned(tmp_path: Path) -> None:
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=64, cols=64)
    with _Peer(lambda event: 0xA701) as peer:
        pool = AssociationPool("ROUTER")
        assert _send(pool, Peer("PEER", "127.0.0.1", peer.port), path) == 0xA701
        assert pool.answering("dest")
        pool.close_all()
        assert peer.released.wait(5), "the association was not released"


def test_a_destination_that_does_not_answer_times_out(tmp_path: Path) -> None:
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=64, cols=64)

    def stall(event: Any) -> int:
        time.sleep(3)
        return 0x0000

    with _Peer(stall) as peer:
        pool = AssociationPool("ROUTER")
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            _send(pool, Peer("PEER", "127.0.0.1", peer.port, timeout=1.0), path)
        assert time.monotonic() - started < 2.5
        assert caught.value.transient and "no C-STORE response" in caught.value.reason
        assert not pool.answering("dest")


def test_a_dropped_association_is_noticed_and_replaced(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "ct", 2, rows=64, cols=64)
    with _Peer(lambda event: 0x0000) as peer:
        pool = AssociationPool("ROUTER")
        dest = Peer("PEER", "127.0.0.1", peer.port)
        assert _send(pool, dest, files[0]) == 0x0000
        first = pool._pooled["dest"].assoc
        for assoc in peer.server.active_associations:
            assoc.abort()
        deadline = time.monotonic() + 5
        while pool.answering("dest") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pool.answering("dest")
        assert _send(pool, dest, files[1]) == 0x0000
        assert pool._pooled["dest"].assoc is not first
        pool.close_all()


def test_rejections_and_refusals_say_why() -> None:
    with _Peer(lambda event: 0x0000, require_called_aet=True) as peer:
        with pytest.raises(AssociationError) as rejected:
            StoreAssociation.open("127.0.0.1", peer.port, "ROUTER", "WRONG",
                                  [(CT, EXPLICIT_LE)], 5, 5)  # fmt: skip
        assert rejected.value.rejected and rejected.value.permanent
        assert "rejected permanently" in rejected.value.reason
        pool = AssociationPool("ROUTER")
        with pytest.raises(DeliveryError) as refused:
            run(pool.send_steps("dest", Peer("PEER", "127.0.0.1", peer.port), "1.2.3.4",
                                [EXPLICIT_LE], lambda chosen: Path("unused")))  # fmt: skip
        assert not refused.value.transient
        assert "does not accept SOP class 1.2.3.4" in refused.value.reason
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(AssociationError, match="cannot connect"):
        StoreAssociation.open("127.0.0.1", port, "ROUTER", "PEER", [(CT, EXPLICIT_LE)], 5, 5)


def _answering_once(reply: bytes) -> int:
    """A TCP peer that reads the association request, answers ``reply`` and closes."""
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return port


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"\x02\x00\x00\x00\x00\x08garbage!", "unreadable association answer"),
        (b"\x04\x00\x00\x00\x00\x02\x00\x00", "unexpected PDU type 0x04"),
        (b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00", "aborted the association request"),
        (b"", "closed the connection"),
    ],
)
def test_a_broken_answer_to_the_association_request_says_what_was_wrong(
    reply: bytes, reason: str
) -> None:
    port = _answering_once(reply)
    with pytest.raises(AssociationError, match=reason):
        StoreAssociation.open("127.0.0.1", port, "ROUTER", "PEER", [(CT, EXPLICIT_LE)], 5, 5)


def test_one_thread_sends_to_several_destinations_at_once(tmp_path: Path) -> None:
    """router.steps.run_all: each send waits only for its own peer, a timeout ends only
    its own send, and the sockets are blocking again afterwards."""
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=64, cols=64)

    def answer_after(seconds: float, status: int) -> Any:
        def handle(event: Any) -> int:
            time.sleep(seconds)
            return status

        return handle

    with (
        _Peer(answer_after(1.0, 0x0000)) as fast,
        _Peer(answer_after(1.0, 0xA701)) as busy,
        _Peer(answer_after(4.0, 0x0000)) as stalled,
    ):
        pool = AssociationPool("ROUTER")
        peers = {
            "fast": Peer("PEER", "127.0.0.1", fast.port, timeout=7.0),
            "busy": Peer("PEER", "127.0.0.1", busy.port),
            "stalled": Peer("PEER", "127.0.0.1", stalled.port, timeout=1.5),
        }
        started = time.monotonic()
        sends = [
            pool.send_steps(name, peer, CT, [EXPLICIT_LE], lambda chosen: path)
            for name, peer in peers.items()
        ]
        outcomes = run_all(sends)
        elapsed = time.monotonic() - started
        assert elapsed < 2.5, f"sends took {elapsed:.1f} s: one after the other"
        assert outcomes[0].value == (0x0000, EXPLICIT_LE)
        assert outcomes[1].value == (0xA701, EXPLICIT_LE)
        error = outcomes[2].error
        assert isinstance(error, DeliveryError) and "no C-STORE response" in error.reason
        assert not pool.answering("stalled") and pool.answering("fast")
        sock = pool._pooled["fast"].assoc._sock
        assert sock is not None and sock.gettimeout() == 7.0
        assert _send_to(pool, "fast", peers["fast"], path) == 0x0000  # same association
        pool.close_all()


def _send_to(pool: AssociationPool, name: str, peer: Peer, path: Path) -> int:
    status, _ = run(pool.send_steps(name, peer, CT, [EXPLICIT_LE], lambda chosen: path))
    return status
