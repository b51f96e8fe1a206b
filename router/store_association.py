"""An outbound association that sends C-STOREs from the calling thread (PS3.8, PS3.7).

Why not pynetdicom's ``Association`` here: it runs each association as two
threads (the DUL reactor and the association reactor) that hand every PDU to
each other through queues and a state machine, and builds each C-STORE through
DIMSE primitives and messages. For a router that sends every instance it
receives to two or three destinations, measured on the benchmark machine, that
machinery cost more CPU than the rest of a delivery together (see
docs/performance.md, "synchronous sending"). A storage SCU needs little of it:
negotiate once, then for each instance write one command and the file's data set
as P-DATA PDUs and read one response. That is all this module does, on a
blocking socket with a timeout, in the thread that asks for the send.

PDU framing and the negotiation are router/upper_layer.py's (pynetdicom's PDU
classes encode and decode the negotiation); command sets are built and read by
router/command_set.py. The data set is
read from the spool file in the transfer syntax it was stored in and sent as it
is, never decoded.

The association is used by one thread at a time (the pool holds a lock per
destination). Any protocol surprise (an abort, a release request from the peer,
an unexpected PDU, a timeout) closes it; the pool opens a new one next time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections.abc import Sequence
from io import BufferedIOBase, BytesIO
from pathlib import Path

from pynetdicom.pdu_primitives import MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from router import command_set
from router.file_meta import read_file_meta
from router.steps import Start, Steps, ready, run
from router.upper_layer import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    HEADER,
    P_DATA,
    RELEASE_RP,
    RELEASE_RQ,
    AssociationError,
    acceptance,
    control_pdu,
    only_tls_housekeeping,
    read_pdu,
    read_pdu_steps,
    rejection,
    request_pdu,
    send_exactly,
    tls_handshake,
)

__all__ = ["SEND_PDU_LIMIT", "AssociationError", "StoreAssociation"]

SEND_PDU_LIMIT = 128 * 1024
"""Largest P-DATA PDU sent, whatever larger size (or "unlimited") the peer accepts:
the size dcmtk's storescu sends. Measured against a pynetdicom receiver, 0.5 MB
slices sent as single PDUs cost it about twice the CPU and took 1.7 times as long
as 128 KiB PDUs; up to 128 KiB the cost is flat. It also keeps a large multi-frame
instance from becoming one PDU the peer must hold whole."""

RELEASE_WAIT_S = 5.0
"""How long a release waits for the peer's answer before just closing."""

_PDATA_HEADER = struct.Struct(">BBLLBB")  # PDU type, reserved, PDU length, PDV length, ctx, flags

DEFLATED = "1.2.840.10008.1.2.1.99"


class StoreAssociation:
    """An established association to one destination; see the module docstring."""

    def __init__(
        self, sock: socket.socket, accepted: dict[tuple[str, str], int], peer_max_pdu: int
    ) -> None:
        self._sock: socket.socket | None = sock
        self.accepted = accepted
        """(SOP class, transfer syntax) -> presentation context ID, for each one accepted."""
        limit = peer_max_pdu if 0 < peer_max_pdu < SEND_PDU_LIMIT else SEND_PDU_LIMIT
        self.send_pdu_size = limit
        """Largest P-DATA PDU this side sends (the peer's maximum, at most 128 KiB)."""
        self._message_id = 0
        self._buffer = bytearray(_PDATA_HEADER.size + limit - 6)
        self._timeout = sock.gettimeout()
        """Longest wait for the peer during a request: the socket's timeout as opened."""

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        calling_ae: str,
        called_ae: str,
        proposals: Sequence[tuple[str, str]],
        timeout: float,
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> StoreAssociation:
        """Connect (over TLS if ``tls``) and negotiate one presentation context per
        (SOP class, syntax)."""
        if not 0 < len(proposals) <= 128:
            raise ValueError("between 1 and 128 presentation contexts can be proposed")
        proposed: dict[int, tuple[str, str]] = {}
        contexts = []
        for index, (sop_class, syntax) in enumerate(proposals):
            context = PresentationContext()
            context.context_id = 2 * index + 1
            context.abstract_syntax = sop_class
            context.transfer_syntax = [syntax]
            contexts.append(context)
            proposed[context.context_id] = (sop_class, syntax)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise AssociationError(
                f"cannot connect to the destination ({exc.strerror or exc})"
            ) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls_handshake(sock, tls, host)
            sock.settimeout(timeout)
            sock.sendall(request_pdu(calling_ae, called_ae, contexts))
            pdu_type, raw = read_pdu(sock)
            if pdu_type == ASSOCIATE_RJ:
                raise rejection(raw)
            if pdu_type == ABORT:
                raise AssociationError("the destination aborted the association request")
            if pdu_type != ASSOCIATE_AC:
                raise AssociationError(f"unexpected PDU type 0x{pdu_type:02X} in answer")
            primitive = acceptance(raw)
        except (AssociationError, OSError) as exc:
            sock.close()
            if isinstance(exc, AssociationError):
                raise
            raise AssociationError(f"association request failed ({exc})") from exc
        peer_max = 0
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification):
                peer_max = item.maximum_length_received or 0
        accepted = {}
        for result in primitive.presentation_context_definition_results_list:
            context_id = result.context_id
            if context_id not in proposed:
                continue
            sop_class, syntax = proposed[context_id]
            chosen = str(result.transfer_syntax[0]) if result.transfer_syntax else syntax
            if result.result == 0x00 and chosen == syntax:
                accepted[(sop_class, syntax)] = context_id
        return cls(sock, accepted, peer_max)

    def usable(self) -> bool:
        """True if another request can be sent: open, and the peer has said nothing.

        Between requests a destination has nothing to send; if it did (a release
        request, an abort, a closed connection), the association is over.
        """
        sock = self._sock
        if sock is None:
            return False
        if ready(sock, False, 0) and not only_tls_housekeeping(sock):
            self.abort()
            return False
        return True

    def send_c_store(self, path: Path, context_id: int) -> int:
        """Send the instance in ``path`` on ``context_id``; the response's status.

        Raises AssociationError (the association is closed then) if there is no
        response to read: the connection broke, timed out, or the peer aborted.
        """
        return run(self.c_store_steps(path, context_id))

    def c_store_steps(self, path: Path, context_id: int) -> Steps[int]:
        """``send_c_store`` as steps (router/steps.py): several associations can send
        and wait for their answers at the same time from one thread."""
        sock = self._sock
        if sock is None:
            raise AssociationError("the association is closed")
        file_meta = read_file_meta(path)
        offset = file_meta.dataset_offset
        self._message_id = self._message_id % 0xFFFF + 1
        message_id = self._message_id
        command = command_set.c_store_rq(
            message_id, file_meta.sop_class_uid, file_meta.sop_instance_uid
        )
        yield Start(sock)
        try:
            yield from self._send_fragments(sock, context_id, BytesIO(command), len(command), 0x01)
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size - offset
                source.seek(offset)
                # PS3.5 A.5: a deflated stream is padded to even length with a NUL;
                # some writers leave it odd, and dcmtk refuses odd fragments.
                pad = size % 2 == 1 and file_meta.transfer_syntax == DEFLATED
                yield from self._send_fragments(sock, context_id, source, size, 0x00, pad)
            return (yield from self._read_response(sock, message_id))
        except (OSError, AssociationError) as exc:
            self.abort()
            if isinstance(exc, AssociationError):
                raise
            raise AssociationError(f"connection failed during C-STORE ({exc})") from exc
        except BaseException:
            # Stopped mid-request (the steps closed, a task's time limit): whatever
            # was half sent makes the association unusable.
            self.abort()
            raise

    def _send_fragments(
        self,
        sock: socket.socket,
        context_id: int,
        source: BufferedIOBase,
        size: int,
        kind: int,
        pad: bool = False,
    ) -> Steps[None]:
        """Send ``size`` bytes of ``source`` as P-DATA PDUs of one PDV each.

        ``kind`` is 0x01 for a command, 0x00 for a data set; the last fragment
        also carries 0x02. Each PDU is read into one buffer behind its header and
        sent whole before the next is read. ``pad`` appends one NUL byte after the data.
        """
        buffer = self._buffer
        start = _PDATA_HEADER.size
        most = len(buffer) - start
        readinto = source.readinto
        with memoryview(buffer) as view:
            remaining = size + pad
            while True:
                chunk = min(most, remaining)
                wanted = chunk - 1 if pad and chunk == remaining else chunk
                got = readinto(view[start : start + wanted]) if wanted else 0
                if got != wanted:
                    raise AssociationError("the spool file changed while it was being sent")
                if wanted < chunk:
                    buffer[start + wanted] = 0
                remaining -= chunk
                flags = kind | (0x02 if remaining == 0 else 0)
                pdv = chunk + 2  # context ID and flags, then the fragment
                _PDATA_HEADER.pack_into(buffer, 0, P_DATA, 0, pdv + 4, pdv, context_id, flags)
                yield from send_exactly(sock, view[: start + chunk], self._timeout)
                if remaining == 0:
                    return

    def _read_response(self, sock: socket.socket, message_id: int) -> Steps[int]:
        """Read P-DATA PDUs until a whole command set has arrived; its status."""
        fragments: list[bytes] = []
        while True:
            pdu_type, raw = yield from read_pdu_steps(sock, self._timeout)
            if pdu_type == ABORT:
                self._close()
                raise AssociationError("the destination aborted the association")
            if pdu_type == RELEASE_RQ:
                self._answer_release(sock)
                raise AssociationError("the destination released the association mid-request")
            if pdu_type != P_DATA:
                raise AssociationError(f"unexpected PDU type 0x{pdu_type:02X} during C-STORE")
            position = HEADER.size
            while position < len(raw):
                (length,) = struct.unpack_from(">L", raw, position)
                flags = raw[position + 5]
                if flags & 0x01 == 0:
                    raise AssociationError("the destination answered a C-STORE with a data set")
                fragments.append(raw[position + 6 : position + 4 + length])
                position += 4 + length
                if flags & 0x02:
                    return self._status(b"".join(fragments), message_id)

    @staticmethod
    def _status(command: bytes, message_id: int) -> int:
        try:
            elements = command_set.read_elements(command)
            field = command_set.unsigned_short(elements, command_set.COMMAND_FIELD)
            responded_to = command_set.unsigned_short(
                elements, command_set.MESSAGE_ID_BEING_RESPONDED_TO
            )
            status = command_set.unsigned_short(elements, command_set.STATUS)
        except command_set.CommandSetError as exc:
            raise AssociationError(f"unreadable C-STORE response ({exc})") from exc
        if field != command_set.C_STORE_RSP or responded_to != message_id:
            raise AssociationError(
                f"unexpected response (command 0x{field:04X} to message {responded_to})"
            )
        return status

    def _answer_release(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(control_pdu(RELEASE_RP))
        self._close()

    def release(self) -> None:
        """Release the association politely (A-RELEASE), then close the connection."""
        sock = self._sock
        if sock is None:
            return
        try:
            sock.settimeout(min(sock.gettimeout() or RELEASE_WAIT_S, RELEASE_WAIT_S))
            sock.sendall(control_pdu(RELEASE_RQ))
            while True:
                pdu_type, _raw = read_pdu(sock)
                if pdu_type in (RELEASE_RP, ABORT):
                    break
                if pdu_type == RELEASE_RQ:  # release collision (PS3.8 7.2.2)
                    sock.sendall(control_pdu(RELEASE_RP))
                    break
        except (OSError, AssociationError):
            pass
        self._close()

    def abort(self) -> None:
        """Abort the association (A-ABORT, source: service user) and close it."""
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.sendall(control_pdu(ABORT))
        self._close()

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
