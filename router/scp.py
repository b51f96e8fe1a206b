"""The receiving SCP: access control, C-ECHO, and C-STORE into the spool.

The one promise made to a modality: 0x0000 means the instance is durably on disk
and a route task for it is on the queue. Anything short of that is answered with
a named failure status (0xA700 Out of Resources for spool, disk or broker trouble,
0xC000 for a dataset that cannot be parsed) and leaves nothing half-written, so
the modality keeps its copy and sends again.

Datasets are received straight to a file in the spool's ``tmp/`` folder
(pynetdicom's chunked receive) and never decoded beyond their header.
"""

from __future__ import annotations

import ipaddress
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.uid import (
    HEVCM10P51,
    HEVCMP51,
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    MPEG2MPHL,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP41BD,
    MPEG4HP42STEREO,
    MPEG4HP422D,
    MPEG4HP423D,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router import metrics, quiet
from router.audit import AuditLog
from router.config import RouterConfig
from router.error_text import describe_error
from router.logs import get_logger
from router.scu import set_nodelay
from router.spool import Spool, SpoolError
from router.status import Status

log = get_logger(__name__)

# Receive C-STORE datasets to a file instead of memory.
_config.STORE_RECV_CHUNKED_DATASET = True

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    # Stored and forwarded as received; the router cannot decode these, so an
    # instance in one of them reaches only destinations that accept it as is.
    JPEG2000MCLossless,
    JPEG2000MC,
    MPEG2MPML,
    MPEG2MPHL,
    MPEG4HP41,
    MPEG4HP41BD,
    MPEG4HP422D,
    MPEG4HP423D,
    MPEG4HP42STEREO,
    HEVCMP51,
    HEVCM10P51,
]

# A peer may announce a PDU of up to 4 GiB and pynetdicom would buffer it all;
# with no negotiated maximum, refuse PDUs above this size instead.
PDU_HARD_LIMIT = 64 * 1024 * 1024

Enqueue = Callable[[str, dict[str, Any]], None]
"""Queues an accepted instance's route task (``router.admission.RouteAdmission``);
raises when the broker did not take it."""


LAST_TAG_READ = 0x0020000D
"""Study Instance UID: the SCP reads SOP Instance UID, Patient ID and this one, in
tag order, and stops there (a CT header often has hundreds of elements after it)."""


def _past_last_tag_read(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > LAST_TAG_READ


def read_identifiers(path: Path) -> Dataset:
    """The received file's meta and its data set up to Study Instance UID."""
    with open(path, "rb") as handle:
        return read_partial(handle, stop_when=_past_last_tag_read)


REJECTION_SEND_WAIT_S = 2.0


def _wait_until_rejection_sent(assoc: Any) -> None:
    """Hold the handler until the A-ASSOCIATE-RJ is on the wire.

    pynetdicom's DUL thread sends the rejection, while the association thread shuts
    the socket down as soon as the EVT_REQUESTED handler returns: the rejection was
    lost, and a dcmtk peer reported "Peer aborted Association" instead of "rejected:
    calling AE title not recognized". Having sent it, the DUL waits for the peer to
    close (state Sta13).
    """
    deadline = time.monotonic() + REJECTION_SEND_WAIT_S
    while assoc.dul.state_machine.current_state != "Sta13" and time.monotonic() < deadline:
        time.sleep(0.002)


def _cap_pdu_reads(event: Any, limit: int) -> None:
    """Make the association's socket refuse reads larger than ``limit`` bytes."""
    transport = event.assoc.dul.socket
    original = transport.recv

    def capped(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            raise OSError(f"peer announced a PDU of {nr_bytes} bytes, above the limit {limit}")
        result: bytearray = original(nr_bytes)
        return result

    transport.recv = capped


class StorageSCP:
    """Builds the AE and its handlers from the config; one instance per ``serve``."""

    def __init__(
        self,
        cfg: RouterConfig,
        spool: Spool,
        audit: AuditLog,
        enqueue: Enqueue,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.audit = audit
        self.enqueue = enqueue
        self.servers: list[Any] = []
        accept = cfg.accept
        self.allowed_aes = (
            {a.strip() for a in accept.calling_ae} if accept and accept.calling_ae else None
        )
        self.allowed_networks = (
            [ipaddress.ip_network(n, strict=False) for n in accept.networks]
            if accept and accept.networks
            else None
        )
        self.pdu_limit = cfg.max_pdu + 6 if cfg.max_pdu else PDU_HARD_LIMIT

    # --- AE -------------------------------------------------------------------
    def build_ae(self) -> AE:
        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_associations = self.cfg.max_associations
        ae.maximum_pdu_size = self.cfg.max_pdu
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        ae.acse_timeout = 30
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self._on_connect),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, lambda e: metrics.associations_active.labels("inbound").dec()),
            (evt.EVT_ABORTED, lambda e: metrics.associations_active.labels("inbound").dec()),
            (evt.EVT_C_ECHO, lambda e: Status.SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
        ]

    def start(self) -> None:
        """Start the plain listener (and the TLS one if configured) in background threads."""
        self.spool.ensure()
        # Chunked receive writes into the default temporary directory: make it
        # the spool's own, so adopting a received file is a rename, not a copy.
        tempfile.tempdir = str(self.spool.tmp)
        ae = self.build_ae()
        self.ae = ae
        listen = self.cfg.listen
        self.servers.append(
            ae.start_server((listen.host, listen.port), block=False, evt_handlers=self.handlers())
        )
        if self.cfg.tls is not None:
            self.servers.append(
                ae.start_server(
                    (listen.host, self.cfg.tls.port),
                    block=False,
                    evt_handlers=self.handlers(),
                    ssl_context=self._server_ssl_context(),
                )
            )

    def _server_ssl_context(self) -> ssl.SSLContext:
        tls = self.cfg.tls
        assert tls is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            context.load_verify_locations(str(tls.ca))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
        return context

    def ports(self) -> list[int]:
        return [int(server.server_address[1]) for server in self.servers]

    def stop(self, drain_timeout_s: float = 60.0) -> None:
        """Stop accepting associations, then let the open ones finish (up to a limit).

        A modality in the middle of a study gets to send the rest of it; what it
        could not send before the limit it still holds and sends again later.
        """
        for server in self.servers:
            server.shutdown()
        self.servers.clear()
        ae = getattr(self, "ae", None)
        if ae is None:
            return

        def established() -> list[Any]:
            # Connections that never asked for an association (port probes) do not
            # count: waiting for their ACSE timeout would only delay the stop.
            return [a for a in ae.active_associations if a.is_established]

        if established():
            log.info("listener closed; letting open associations finish",
                     open=len(established()))  # fmt: skip
        deadline = time.monotonic() + drain_timeout_s
        while established() and time.monotonic() < deadline:
            time.sleep(0.1)
        if established():
            log.warning("associations still open after the drain limit; aborting them",
                        open=len(established()))  # fmt: skip
        for assoc in list(ae.active_associations):
            assoc.abort()

    # --- handlers ---------------------------------------------------------------
    def _on_connect(self, event: Any) -> None:
        set_nodelay(event)
        quiet.bulk_reads(event.assoc.dul.socket)
        _cap_pdu_reads(event, self.pdu_limit)

    @staticmethod
    def _on_established(event: Any) -> None:
        metrics.associations_active.labels("inbound").inc()
        quiet.quiet_acceptor(event.assoc)
        quiet.quick_store_responses(event.assoc)

    def _on_requested(self, event: Any) -> None:
        requestor = event.assoc.requestor
        # The requestor's AE title is filled in only after negotiation; read the request.
        calling = str(requestor.primitive.calling_ae_title).strip()
        reason = None
        if self.allowed_networks is not None:
            try:
                address = ipaddress.ip_address(requestor.address)
                if not any(address in net for net in self.allowed_networks):
                    reason = "peer address not allowed"
            except ValueError:
                reason = "peer address not allowed"
        if reason is None and self.allowed_aes is not None and calling not in self.allowed_aes:
            reason = "calling AE title not allowed"
        if reason is None:
            return
        metrics.instances_rejected.labels("association_not_allowed").inc()
        peer = f"{requestor.address}:{requestor.port}"
        self.audit.emit(
            "rejected", calling_ae=calling, peer=peer, status=reason, scope="association"
        )
        log.warning("association rejected", calling_ae=calling, peer=peer, reason=reason)
        # Rejected permanent, by the service user; diagnostic 3 names the AE title.
        diagnostic = 0x03 if reason.startswith("calling") else 0x01
        event.assoc.acse.send_reject(0x01, 0x01, diagnostic)
        _wait_until_rejection_sent(event.assoc)

    def _refuse(self, status: Status, reason: str, fields: dict[str, Any]) -> int:
        metrics.instances_rejected.labels(reason).inc()
        self.audit.emit("rejected", status=f"0x{status:04X} {reason}", **fields)
        log.warning("C-STORE refused", reason=reason, status=f"0x{status:04X}", **fields)
        return int(status)

    def _on_store(self, event: Any) -> int:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        fields: dict[str, Any] = {
            "calling_ae": calling,
            "peer": f"{requestor.address}:{requestor.port}",
            "sop_instance_uid": str(event.request.AffectedSOPInstanceUID),
        }
        received: Path = event.dataset_path
        if not self.spool.has_room(self.cfg.spool.min_free_mb):
            return self._refuse(Status.OUT_OF_RESOURCES, "disk_low", fields)
        try:
            header = read_identifiers(received)
            study_uid = str(header.get("StudyInstanceUID", ""))
            sop_uid = str(header.SOPInstanceUID)
            patient_id = str(header.get("PatientID", "")) or None
        except Exception as exc:  # whatever the data set's flaw, it is refused
            # Every value is read here, before the instance is kept: a flaw found
            # after spooling and queueing would answer failure for an instance
            # that is already on its way, and the sender would send it again.
            log.warning("malformed dataset", error=describe_error(exc))
            return self._refuse(Status.CANNOT_UNDERSTAND, "malformed_dataset", fields)
        if sop_uid != fields["sop_instance_uid"]:
            return self._refuse(
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "sop_instance_uid_mismatch", fields
            )
        size = received.stat().st_size
        try:
            key = self.spool.adopt(received)
        except SpoolError as exc:
            log.error("spool write failed", error=str(exc))
            return self._refuse(Status.OUT_OF_RESOURCES, "spool_error", fields)
        meta = {
            **fields,
            "study_instance_uid": study_uid,
            "sop_class_uid": str(event.request.AffectedSOPClassUID),
            "called_ae": self.cfg.ae_title,
            "received_at": time.time(),
        }
        try:
            self.enqueue(key, meta)
        except Exception as exc:
            self.spool.discard(key)
            log.error("enqueue failed; instance refused", error=describe_error(exc))
            return self._refuse(Status.OUT_OF_RESOURCES, "broker_unavailable", fields)
        metrics.instances_received.labels(calling).inc()
        metrics.bytes_received.inc(size)
        # Admitted: from here the answer is success whatever happens to the event.
        self.audit.emit_done([("received", {
            "study_instance_uid": study_uid, "sop_class_uid": meta["sop_class_uid"],
            "patient_id": patient_id, "status": "0x0000", **fields,
        })])  # fmt: skip
        log.debug("received", spool_key=key, **fields)
        return int(Status.SUCCESS)
