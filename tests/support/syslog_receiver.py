"""A syslog collector for tests: RFC 5425 (TLS, octet counting) and RFC 5426 (UDP).

Received messages are parsed strictly: the RFC 5424 header, the BOM, and the XML
body validated against the DICOM audit schema (``dicom_audit.rng``, PS3.15
A.5.1), so a test that reads a message has also checked its format.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

SCHEMA_PATH = Path(__file__).with_name("dicom_audit.rng")
_schema: etree.RelaxNG | None = None

# RFC 5424 section 6: HEADER SP STRUCTURED-DATA SP MSG
_HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) "
    rb"(?P<timestamp>-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    rb"(?P<msgid>[!-~]{1,32}) (?P<sd>-|\[.*?\]) "
)
BOM = b"\xef\xbb\xbf"


def audit_schema() -> etree.RelaxNG:
    global _schema
    if _schema is None:
        _schema = etree.RelaxNG(etree.parse(str(SCHEMA_PATH)))
    return _schema


def validate_audit_xml(body: bytes) -> Any:
    """Parse and validate one DICOM audit message; returns the root element."""
    root = etree.fromstring(body)
    schema = audit_schema()
    if not schema.validate(root):
        raise AssertionError(f"not a valid DICOM audit message: {schema.error_log}\n{body!r}")
    return root


@dataclass
class SyslogMessage:
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    body: bytes
    xml: Any

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8

    def event_id(self) -> str:
        return str(self.xml.find("EventIdentification/EventID").get("csd-code"))

    def event_type(self) -> str | None:
        code = self.xml.find("EventIdentification/EventTypeCode")
        return None if code is None else str(code.get("csd-code"))

    def action(self) -> str | None:
        return self.xml.find("EventIdentification").get("EventActionCode")


def parse_syslog(message: bytes) -> SyslogMessage:
    """One RFC 5424 message whose MSG is a BOM and a DICOM audit message."""
    match = _HEADER.match(message)
    if match is None:
        raise AssertionError(f"not an RFC 5424 header: {message[:200]!r}")
    rest = message[match.end() :]
    if not rest.startswith(BOM):
        raise AssertionError("MSG does not start with the UTF-8 BOM")
    body = rest[len(BOM) :]
    g = {k: v.decode() for k, v in match.groupdict().items()}
    return SyslogMessage(int(g["pri"]), int(g["version"]), g["timestamp"], g["hostname"],
                         g["app"], g["procid"], g["msgid"], g["sd"], body,
                         validate_audit_xml(body))  # fmt: skip


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls_files(directory: Path) -> TlsFiles:
    """A private CA, a server certificate for 127.0.0.1/localhost and a client one."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=test audit CA", "-keyout", "ca.key", "-out", "ca.pem",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):  # fmt: skip
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=test {name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)  # fmt: skip
        (directory / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=directory)  # fmt: skip
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                    directory / "client.pem", directory / "client.key")  # fmt: skip


class _Collected:
    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.lock = threading.Lock()

    def add(self, message: bytes) -> None:
        with self.lock:
            self.raw.append(message)

    def messages(self) -> list[SyslogMessage]:
        with self.lock:
            raw = list(self.raw)
        return [parse_syslog(m) for m in raw]

    def wait_for(
        self, condition: Callable[[list[SyslogMessage]], bool], timeout: float, what: str
    ) -> list[SyslogMessage]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if condition(found):
                return found
            if time.monotonic() > deadline:
                summary = [(m.event_id(), m.event_type(), m.action()) for m in found]
                raise TimeoutError(f"timed out waiting for {what}; received {summary}")
            time.sleep(0.05)


class TlsSyslogReceiver(_Collected):
    """RFC 5425 collector on 127.0.0.1:``port``; a frame is ``MSG-LEN SP SYSLOG-MSG``."""

    def __init__(self, port: int, files: TlsFiles, require_client_cert: bool = True) -> None:
        super().__init__()
        self.port = port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(files.server_cert), str(files.server_key))
        self.context.load_verify_locations(str(files.ca))
        self.context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        self.connections = 0
        self._open: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._stop = threading.Event()

    def __enter__(self) -> TlsSyslogReceiver:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        server.settimeout(0.2)
        self._server = server
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop listening and drop every connection, as a collector that goes down."""
        self._stop.set()
        self._acceptor.join(5)  # the port is free again once accept() has returned
        if self._server is not None:
            self._server.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            tls = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        self.connections += 1
        self._open.append(tls)
        buffer = b""
        with tls:
            while not self._stop.is_set():
                try:
                    chunk = tls.recv(65536)
                except (OSError, ssl.SSLError):
                    return
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length_text, _, rest = buffer.partition(b" ")
                    if not length_text.isdigit() or length_text.startswith(b"0"):
                        raise AssertionError(f"bad octet-counting frame: {buffer[:40]!r}")
                    length = int(length_text)
                    if len(rest) < length:
                        break
                    self.add(rest[:length])
                    buffer = rest[length:]


class UdpSyslogReceiver(_Collected):
    """RFC 5426 collector: each datagram is one message."""

    def __init__(self) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self._stop = threading.Event()

    def __enter__(self) -> UdpSyslogReceiver:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.add(data)
