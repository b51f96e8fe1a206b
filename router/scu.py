"""Outbound DICOM: pooled associations to destinations, C-STORE from file, C-ECHO.

Setting up an association costs a few round trips; a CT series is hundreds of
instances. So each worker process keeps one association per destination open and
reuses it while it covers the instance's SOP class and transfer syntax. When an
instance needs a context the open association lacks, the association is replaced
by one proposing every context this process has needed for that destination.

Instances are sent from their spool file without decoding, so the bytes that
arrive are the bytes that were received; the sending itself is done by
router/store_association.py in the calling thread (why: see there). C-ECHO uses
pynetdicom's own association.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router import metrics
from router.config import DestinationConfig
from router.slots import AssociationSlots
from router.steps import Steps
from router.store_association import AssociationError, StoreAssociation
from router.tls import shared_client_context

MAX_CONTEXTS = 120
# A pynetdicom destination polls every open association (two threads waking about
# every millisecond, roughly a tenth of a core), so idle associations are closed soon.
IDLE_CLOSE_S = 10.0


class DeliveryError(Exception):
    """The instance could not be handed to the destination (no DIMSE status to read)."""

    def __init__(self, reason: str, transient: bool = True, busy: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.busy = busy
        """All of the destination's association slots are in use elsewhere: not a failure."""


@dataclass(frozen=True)
class Peer:
    """Where to connect: enough to open an association."""

    ae_title: str
    host: str
    port: int
    timeout: float = 30.0
    max_associations: int = 0
    """Across all workers; 0 = no shared limit."""
    tls: ssl.SSLContext | None = None
    """DICOM TLS (PS3.15 B.1): the context the connection is wrapped in; None = plain."""


def destination_peer(dest: DestinationConfig, timeout: float | None = None) -> Peer:
    """The Peer of a configured destination (``timeout``: instead of the configured one)."""
    tls = dest.tls
    context = shared_client_context(tls.ca, tls.cert, tls.key) if tls is not None else None
    return Peer(dest.ae_title, dest.host, dest.port,
                dest.timeout if timeout is None else timeout, dest.max_associations,
                context)  # fmt: skip


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle so small PDUs are not held back ~40 ms."""
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def _make_ae(calling_ae: str, peer: Peer) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = peer.timeout
    ae.dimse_timeout = peer.timeout
    ae.network_timeout = peer.timeout
    ae.connection_timeout = min(peer.timeout, 10.0)
    ae.maximum_pdu_size = 0
    return ae


def echo(calling_ae: str, peer: Peer) -> tuple[bool, str]:
    """C-ECHO ``peer``; returns (ok, a sentence saying what happened)."""
    ae = _make_ae(calling_ae, peer)
    ae.add_requested_context(Verification)
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    try:
        socket.create_connection((peer.host, peer.port), timeout=min(peer.timeout, 10.0)).close()
    except OSError as exc:
        return False, f"{where}: cannot connect ({exc.strerror or exc})"
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])  # fmt: skip
    if not assoc.is_established:
        if assoc.is_rejected:
            return False, f"{where}: association rejected by the peer"
        if assoc.is_aborted:
            return False, f"{where}: association aborted by the peer"
        return False, f"{where}: cannot connect (connection refused or timed out)"
    try:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            return False, f"{where}: no response to C-ECHO"
        code = int(status.Status)
        if code != 0:
            return False, f"{where}: C-ECHO answered 0x{code:04X}"
        return True, f"{where}: C-ECHO succeeded"
    finally:
        assoc.release()


@dataclass
class _Pooled:
    assoc: StoreAssociation
    proposed: frozenset[tuple[str, str]]
    accepted: frozenset[tuple[str, str]]
    last_used: float


Prepare = Callable[[str], Path]
"""Given the transfer syntax chosen for sending, the file to send in that syntax."""


class AssociationPool:
    """One reusable association per destination, for the calling process."""

    def __init__(
        self,
        calling_ae: str,
        idle_close_s: float = IDLE_CLOSE_S,
        slots: AssociationSlots | None = None,
    ) -> None:
        self.calling_ae = calling_ae
        self.idle_close_s = idle_close_s
        self.slots = slots
        self._pooled: dict[str, _Pooled] = {}
        self._wanted: dict[str, OrderedDict[tuple[str, str], None]] = {}
        self._lock = threading.Lock()
        """Guards the table of per-destination locks."""
        self._locks: dict[str, threading.Lock] = {}
        """One per destination: its association is used by one thread at a time, while
        different destinations can be sent to at the same time."""
        self._reaper: threading.Thread | None = None

    def _lock_for(self, name: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(name, threading.Lock())

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="assoc-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            time.sleep(min(5.0, self.idle_close_s))
            now = time.monotonic()
            for name, pooled in list(self._pooled.items()):
                lock = self._lock_for(name)
                if now - pooled.last_used > self.idle_close_s and lock.acquire(blocking=False):
                    try:  # not in use right now (else it is not idle either)
                        if self._pooled.get(name) is pooled:
                            self._close(name)
                    finally:
                        lock.release()

    def _close(self, name: str) -> None:
        pooled = self._pooled.pop(name, None)
        if pooled is None:
            return
        if pooled.assoc.usable():  # else it is closed already (aborted by the check)
            pooled.assoc.release()
        metrics.associations_active.labels("outbound").dec()
        if self.slots is not None:
            self.slots.release(name)

    def answering(self, name: str) -> bool:
        """True if this process holds an open association to ``name`` that still works
        (so the destination answered within the last ``idle_close_s``)."""
        pooled = self._pooled.get(name)
        return pooled is not None and pooled.assoc.usable()

    def close_all(self) -> None:
        for name in list(self._pooled):
            with self._lock_for(name):
                self._close(name)

    def _association(self, name: str, peer: Peer, needed: list[tuple[str, str]]) -> _Pooled:
        """An association that has proposed every context in ``needed`` (accepted or not)."""
        pooled = self._pooled.get(name)
        reusable = pooled is not None and pooled.assoc.usable()
        if reusable and pooled is not None and pooled.proposed.issuperset(needed):
            if self.slots is not None and peer.max_associations:
                self.slots.renew(name)
            return pooled
        self._close(name)
        shared = self.slots is not None and peer.max_associations > 0
        if shared and not self.slots.acquire(name, peer.max_associations):  # type: ignore[union-attr]
            raise DeliveryError("all association slots of the destination are in use", busy=True)
        try:
            return self._open(name, peer, needed)
        except DeliveryError:
            if shared and name not in self._pooled:  # no association holds the slot
                self.slots.release(name)  # type: ignore[union-attr]
            raise

    def _open(self, name: str, peer: Peer, needed: list[tuple[str, str]]) -> _Pooled:
        wanted = self._wanted.setdefault(name, OrderedDict())
        for context in needed:
            wanted[context] = None
            wanted.move_to_end(context)
        while len(wanted) > MAX_CONTEXTS:
            wanted.popitem(last=False)
        try:
            assoc = StoreAssociation.open(
                peer.host, peer.port, self.calling_ae, peer.ae_title, list(wanted),
                timeout=peer.timeout, connect_timeout=min(peer.timeout, 10.0), tls=peer.tls,
            )  # fmt: skip
        except AssociationError as exc:
            if exc.rejected or exc.permanent:
                raise DeliveryError(exc.reason, transient=not exc.permanent) from exc
            raise DeliveryError(exc.reason) from exc  # says what failed, and how
        if not assoc.accepted:
            assoc.release()
            raise NoContextAcceptedError("the destination accepted no presentation context")
        metrics.associations_active.labels("outbound").inc()
        accepted = frozenset(assoc.accepted)
        pooled = _Pooled(assoc, frozenset(wanted), accepted, time.monotonic())
        self._pooled[name] = pooled
        self._start_reaper()
        return pooled

    def send_steps(
        self,
        name: str,
        peer: Peer,
        sop_class: str,
        proposals: Sequence[str],
        prepare: Prepare,
        refusal: str | None = None,
    ) -> Steps[tuple[int, str]]:
        """Negotiate ``proposals`` for ``sop_class``, then C-STORE what ``prepare`` gives.

        ``prepare`` is called with the first accepted syntax (the next one if it
        raises :class:`PrepareError`). Returns (DIMSE status, syntax sent). Raises
        :class:`DeliveryError` when there is no status to return (refused connection,
        rejected association, nothing acceptable, abort, timeout).

        Steps (router/steps.py): ``run`` it, or ``run_all`` several. Opening an
        association, when one is needed, blocks; the C-STORE itself waits in steps.
        """
        shown = ", ".join(proposals)
        refusal = refusal or (
            f"destination does not accept SOP class {sop_class} in transfer syntax {shown}"
        )
        with self._lock_for(name):
            try:
                pooled = self._association(name, peer, [(sop_class, ts) for ts in proposals])
            except NoContextAcceptedError:
                raise DeliveryError(refusal, transient=False) from None
            accepted = [ts for ts in proposals if (sop_class, ts) in pooled.accepted]
            if not accepted:
                pooled.last_used = time.monotonic()
                raise DeliveryError(refusal, transient=False)
            path, syntax = _prepare_first(accepted, prepare)
            context_id = pooled.assoc.accepted[(sop_class, syntax)]
            try:
                status = yield from pooled.assoc.c_store_steps(path, context_id)
            except AssociationError as exc:
                self._close(name)
                raise DeliveryError(f"no C-STORE response: {exc.reason}") from exc
            pooled.last_used = time.monotonic()
            return status, syntax


class NoContextAcceptedError(DeliveryError):
    """The destination answered the association request but accepted no context."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, transient=False)


class PrepareError(Exception):
    """The instance cannot be made available in the syntax asked for; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _prepare_first(accepted: list[str], prepare: Prepare) -> tuple[Path, str]:
    """The first accepted syntax the instance can be prepared in, with its file."""
    reasons: list[str] = []
    for syntax in accepted:
        try:
            return prepare(syntax), syntax
        except PrepareError as exc:
            reasons.append(exc.reason)
    raise DeliveryError("; ".join(reasons), transient=False)
