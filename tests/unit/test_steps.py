"""router.steps drives several waiting generators from one thread (socket pairs, no servers)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.steps import Start, Steps, Wait, run, run_all
from router.store_association import StoreAssociation
from tests.support.synthetic import write_ct_series


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(3)]
    yield made
    for a, b in made:
        a.close()
        b.close()


def _receive(sock: socket.socket, timeout: float, finished: list[str], name: str) -> Steps[bytes]:
    """Read 5 bytes, waiting as the steps protocol says."""
    yield Start(sock)
    data = b""
    while len(data) < 5:
        try:
            chunk = sock.recv(5 - len(data))
        except BlockingIOError:
            yield Wait(sock, False, timeout)
            continue
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    finished.append(name)
    return data


def test_each_generator_waits_only_for_its_own_socket(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    (a, a_peer), (b, b_peer), (c, _c_peer) = pairs
    finished: list[str] = []
    # b's data comes first, a's later, c's never: run one after the other, a would
    # hold b up, and c's timeout would come last.
    threading.Timer(0.1, b_peer.sendall, [b"bbbbb"]).start()
    threading.Timer(0.4, a_peer.sendall, [b"aaaaa"]).start()
    started = time.monotonic()
    outcomes = run_all(
        [
            _receive(a, 5.0, finished, "a"),
            _receive(b, 5.0, finished, "b"),
            _receive(c, 0.2, finished, "c"),
        ]
    )
    elapsed = time.monotonic() - started
    assert [o.value for o in outcomes[:2]] == [b"aaaaa", b"bbbbb"]
    assert isinstance(outcomes[2].error, TimeoutError) and outcomes[2].value is None
    assert finished == ["b", "a"]
    assert elapsed < 1.0
    # Sockets go back to blocking with their own timeout.
    assert a.gettimeout() is None and a.getblocking()


def test_run_waits_on_a_non_blocking_socket_and_times_out(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    (a, a_peer), _, _ = pairs
    a.setblocking(False)
    threading.Timer(0.1, a_peer.sendall, [b"12345"]).start()
    assert run(_receive(a, 5.0, [], "a")) == b"12345"
    with pytest.raises(TimeoutError):
        run(_receive(a, 0.1, [], "a"))


def test_a_c_store_stopped_half_way_aborts_its_association(tmp_path: Path) -> None:
    """Half a message on the wire leaves the association unusable: it is aborted, and
    with the peer not reading, that means the connection is closed under it."""
    (path,) = write_ct_series(tmp_path, 1)
    router_end, peer_end = socket.socketpair()
    router_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with peer_end:
        assoc = StoreAssociation(router_end, {("1.2.840.10008.5.1.4.1.1.2", "x"): 1}, 0)
        steps = assoc.c_store_steps(path, 1)
        assert isinstance(next(steps), Start)
        router_end.setblocking(False)
        request = next(steps)  # the 0.5 MB data set does not fit: it waits to write
        assert isinstance(request, Wait) and request.write
        steps.close()
        assert not assoc.usable()
        peer_end.settimeout(5)
        received = b""
        while chunk := peer_end.recv(1 << 20):  # ends: the connection is closed
            received += chunk
        assert received[:1] == b"\x04"  # the C-STORE's first P-DATA PDU, cut short
        assert len(received) < path.stat().st_size
