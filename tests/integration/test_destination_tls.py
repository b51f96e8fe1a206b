"""DICOM TLS to destinations (``destinations.NAME.tls``) against dcmtk's storescp with
TLS and a client certificate required: sends, reuse, echo, and the refusals."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from router.config import ConfigError, load_config
from router.scu import AssociationPool, DeliveryError, Peer, destination_peer
from router.service import check_destination_tls
from router.steps import ready, run
from router.store_association import AssociationError, StoreAssociation
from router.tls import client_context
from tests.support.compare import dataset_differences
from tests.support.dcmtk import storescp, storescu
from tests.support.router_proc import RedisServer, start_router, write_config
from tests.support.synthetic import write_ct_series
from tests.support.syslog_receiver import TlsFiles, make_tls_files
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_storescp(tmp_path: Path, tls_files: TlsFiles) -> Iterator[tuple[int, Path]]:
    """storescp speaking only TLS, requiring a client certificate from our CA."""
    out = tmp_path / "received"
    out.mkdir()
    tls = ["+tls", str(tls_files.server_key), str(tls_files.server_cert), "-pw",
           "+cf", str(tls_files.ca), "-rc"]  # fmt: skip
    with storescp(out, ae_title="SECURE", options=tls) as port:
        yield port, out


def _peer(port: int, files: TlsFiles, with_client_cert: bool = True) -> Peer:
    cert, key = (files.client_cert, files.client_key) if with_client_cert else (None, None)
    return Peer("SECURE", "127.0.0.1", port, timeout=10, tls=client_context(files.ca, cert, key))


def test_instances_go_over_tls_on_one_reused_association(
    tmp_path: Path, tls_storescp: tuple[int, Path], tls_files: TlsFiles
) -> None:
    port, out = tls_storescp
    files = write_ct_series(tmp_path / "ct", 3)
    pool = AssociationPool("ROUTER")
    peer = _peer(port, tls_files)
    first = None
    for path in files:
        status, _ = run(
            pool.send_steps("secure", peer, CT, [EXPLICIT_LE], lambda chosen, p=path: p)
        )
        assert status == 0x0000
        first = first or pool._pooled["secure"].assoc
        time.sleep(0.2)  # an idle moment between instances, as in a real series
        assert pool.answering("secure"), "the TLS association did not stay usable"
    assert pool._pooled["secure"].assoc is first
    pool.close_all()
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
                for p in out.iterdir()}  # fmt: skip
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_differences(path, received[uid]) == []


def test_an_unknown_certificate_is_a_permanent_failure(
    tmp_path: Path, tls_storescp: tuple[int, Path], tls_files: TlsFiles
) -> None:
    port, _out = tls_storescp
    other = make_tls_files(tmp_path / "other-ca")
    wrong = Peer("SECURE", "127.0.0.1", port, timeout=10,
                 tls=client_context(other.ca, other.client_cert, other.client_key))  # fmt: skip
    with pytest.raises(AssociationError) as caught:
        StoreAssociation.open("127.0.0.1", port, "ROUTER", "SECURE", [(CT, EXPLICIT_LE)],
                              10, 5, tls=wrong.tls)  # fmt: skip
    assert caught.value.permanent
    assert "certificate was not accepted" in caught.value.reason
    (path,) = write_ct_series(tmp_path / "ct", 1, rows=64, cols=64)
    with pytest.raises(DeliveryError) as delivery:
        run(
            AssociationPool("ROUTER").send_steps(
                "secure", wrong, CT, [EXPLICIT_LE], lambda chosen: path
            )
        )
    assert not delivery.value.transient


def test_without_a_client_certificate_the_destination_refuses(
    tls_storescp: tuple[int, Path], tls_files: TlsFiles
) -> None:
    port, _out = tls_storescp
    with pytest.raises(AssociationError) as caught:
        StoreAssociation.open("127.0.0.1", port, "ROUTER", "SECURE", [(CT, EXPLICIT_LE)], 10, 5,
                              tls=_peer(port, tls_files, with_client_cert=False).tls)  # fmt: skip
    assert not caught.value.permanent  # the destination's side: may be fixed there


def test_the_router_forwards_and_echoes_over_tls(
    tmp_path: Path, tls_storescp: tuple[int, Path], tls_files: TlsFiles,
    redis_server: RedisServer,
) -> None:  # fmt: skip
    port, out = tls_storescp
    tls = {"ca": str(tls_files.ca), "cert": str(tls_files.client_cert),
           "key": str(tls_files.client_key)}  # fmt: skip
    dests = {"secure": {"ae_title": "SECURE", "host": "127.0.0.1", "port": port, "tls": tls}}
    path, config = write_config(tmp_path / "router", redis_server.url, dests,
                                "rules:\n  - name: all\n    forward: [secure]\n")  # fmt: skip
    echo = subprocess.run(
        [sys.executable, "-m", "router.cli", "--config", str(path), "echo", "secure"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert echo.returncode == 0, echo.stderr
    files = write_ct_series(tmp_path / "ct", 5, rows=64, cols=64)
    router = start_router(path, config, workers=1)
    try:
        assert storescu(files, router.port).returncode == 0
        deadline = time.monotonic() + 30
        while len(list(out.iterdir())) < len(files) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        router.stop()
    assert sorted(dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.iterdir()) == (
        sorted(dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files)
    )
    assert len(router.audit_events("forwarded")) == len(files)


def test_tls_files_that_cannot_be_loaded_stop_start_up(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        "destinations:\n  pacs:\n    ae_title: PACS\n    host: 127.0.0.1\n    port: 104\n"
        f"    tls: {{ca: {tmp_path / 'missing-ca.pem'}}}\n"
    )
    cfg = load_config(config, environ={})
    with pytest.raises(ConfigError, match=r"destinations\.pacs\.tls: cannot load the TLS files"):
        check_destination_tls(cfg)
    with pytest.raises(OSError):
        destination_peer(cfg.destinations["pacs"])


def _tls13_pair(files: TlsFiles) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """A connected TLS 1.3 client and server on 127.0.0.1; the server sends session
    tickets after the handshake, records that carry no application data."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    assert server_ctx.num_tickets > 0
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[ssl.SSLSocket] = []
    thread = threading.Thread(
        target=lambda: accepted.append(
            server_ctx.wrap_socket(listener.accept()[0], server_side=True)
        )
    )
    thread.start()
    raw = socket.create_connection(listener.getsockname(), timeout=5)
    client = client_context(files.ca, None, None).wrap_socket(raw, server_hostname="127.0.0.1")
    thread.join(5)
    listener.close()
    assert client.version() == "TLSv1.3"
    return client, accepted[0]


def test_tls_session_tickets_between_requests_keep_the_association_usable(
    tls_files: TlsFiles,
) -> None:
    """TLS 1.3 servers send session tickets after the handshake: the socket turns
    readable with no DICOM data behind it. That must not end a pooled association;
    data, or a closed connection, must."""
    client, server = _tls13_pair(tls_files)
    assoc = StoreAssociation(client, {}, 0)
    wait_until(lambda: ready(client, False, 0), 5, "the session tickets to arrive")
    assert assoc.usable()
    assert assoc.usable(), "the tickets were read; nothing is pending"

    server.sendall(b"\x07\x00")  # the start of an A-ABORT: the destination has spoken
    wait_until(lambda: ready(client, False, 0), 5, "the data to arrive")
    assert not assoc.usable()
    server.close()

    client, server = _tls13_pair(tls_files)
    assoc = StoreAssociation(client, {}, 0)
    wait_until(lambda: ready(client, False, 0), 5, "the session tickets to arrive")
    assert assoc.usable()
    server.close()
    wait_until(lambda: ready(client, False, 0), 5, "the close to be seen")
    assert not assoc.usable()
