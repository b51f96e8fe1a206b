"""The upper layer of an outbound association, for router/store_association.py:
PDU framing, the association request and its answer, TLS (PS3.8 9, PS3.15 B.1).

Reads and writes are written as steps (router/steps.py), so one thread can wait
for several destinations at once; ``read_pdu`` runs them blocking. pynetdicom
encodes and decodes the negotiation PDUs (its PDU classes); nothing here keeps
state between calls.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Sequence

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from router.steps import Steps, Wait, run

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# PDU types (PS3.8 9.3.1)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

MAX_RECEIVED_PDU = 1024 * 1024
"""Longest PDU accepted from a destination: what it sends back (an association
answer, a C-STORE response) is small; a longer announcement is a broken peer."""

_MIN_ASSOCIATE_AC = 6 + 68
"""Header plus fixed fields of an A-ASSOCIATE-AC (PS3.8 9.3.3)."""

HEADER = struct.Struct(">BBL")


def control_pdu(pdu_type: int) -> bytes:
    """An A-RELEASE-RQ, A-RELEASE-RP or A-ABORT (source: service user, no reason):
    the header and four bytes of zeros (PS3.8 9.3.6-9.3.8)."""
    return HEADER.pack(pdu_type, 0, 4) + b"\0\0\0\0"


class AssociationError(Exception):
    """The association could not be set up, or broke; ``reason`` says how."""

    def __init__(self, reason: str, rejected: bool = False, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejected = rejected
        """The peer answered the association request with a rejection."""
        self.permanent = permanent
        """A rejection the peer marked permanent (PS3.8 9.3.4: result 1)."""


def recv_exactly(sock: socket.socket, count: int, timeout: float | None) -> Steps[bytes]:
    data = bytearray(count)
    view = memoryview(data)
    done = 0
    while done < count:
        try:
            got = sock.recv_into(view[done:], count - done)
        except (BlockingIOError, ssl.SSLWantReadError):
            yield Wait(sock, False, timeout)
            continue
        except ssl.SSLWantWriteError:
            yield Wait(sock, True, timeout)
            continue
        if not got:
            raise AssociationError("the destination closed the connection")
        done += got
    return bytes(data)


def send_exactly(sock: socket.socket, data: memoryview, timeout: float | None) -> Steps[None]:
    sent, total = 0, len(data)
    while sent < total:
        try:
            sent += sock.send(data[sent:])
        except (BlockingIOError, ssl.SSLWantWriteError):
            yield Wait(sock, True, timeout)
        except ssl.SSLWantReadError:
            yield Wait(sock, False, timeout)


def read_pdu_steps(sock: socket.socket, timeout: float | None) -> Steps[tuple[int, bytes]]:
    """One whole PDU: (type, bytes including its 6-byte header)."""
    header = yield from recv_exactly(sock, HEADER.size, timeout)
    pdu_type, _reserved, length = HEADER.unpack(header)
    if length > MAX_RECEIVED_PDU:
        raise AssociationError(f"the destination announced a PDU of {length} bytes")
    body = yield from recv_exactly(sock, length, timeout)
    return pdu_type, header + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One whole PDU from a blocking socket (its own timeout applies)."""
    return run(read_pdu_steps(sock, sock.gettimeout()))


def only_tls_housekeeping(sock: socket.socket) -> bool:
    """True if what made a TLS socket readable carried no data (a TLS 1.3 session
    ticket, say); False for data, a closed connection, or a plain socket."""
    if not isinstance(sock, ssl.SSLSocket):
        return False
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        sock.recv(1)  # data, or b"" for a closed connection: either way not housekeeping
        return False
    except ssl.SSLWantReadError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def request_pdu(calling_ae: str, called_ae: str, contexts: Sequence[PresentationContext]) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.presentation_context_definition_list = list(contexts)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 0  # responses are small; no limit asked
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    primitive.user_information = [max_length, class_uid, version]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def acceptance(raw: bytes) -> A_ASSOCIATE:
    if len(raw) < _MIN_ASSOCIATE_AC:
        raise AssociationError(f"unreadable association answer ({len(raw)} bytes)")
    try:
        pdu = A_ASSOCIATE_AC()
        pdu.decode(raw)
        return pdu.to_primitive()
    except Exception as exc:  # a broken peer: pynetdicom's decoders raise many kinds
        raise AssociationError(f"unreadable association answer ({exc!r})") from exc


def rejection(raw: bytes) -> AssociationError:
    try:
        pdu = A_ASSOCIATE_RJ()
        pdu.decode(raw)
        primitive = pdu.to_primitive()
    except Exception as exc:
        return AssociationError(f"association rejected, unreadably ({exc!r})", rejected=True)
    result = primitive.result
    kind = "permanently" if result == 0x01 else "transiently"
    return AssociationError(
        f"association rejected {kind} by the destination "
        f"(source {primitive.result_source}, reason {primitive.diagnostic})",
        rejected=True,
        permanent=result == 0x01,
    )


def tls_handshake(sock: socket.socket, tls: ssl.SSLContext, host: str) -> ssl.SSLSocket:
    """Wrap ``sock`` and shake hands (within the connect timeout); says why it failed.

    A certificate the router cannot verify is a permanent failure: trying again
    will not change it until the configuration or the certificate does.
    """
    try:
        return tls.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise AssociationError(
            f"TLS: the destination's certificate was not accepted ({exc.verify_message})",
            permanent=True,
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise AssociationError(f"TLS handshake failed ({exc})") from exc
