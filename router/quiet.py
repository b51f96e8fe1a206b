"""Associations that wait for work instead of polling for it (pynetdicom 3.0 internals).

Every pynetdicom association runs two threads that wake about every millisecond
whether or not anything happens: the DUL reactor (``time.sleep(_run_loop_delay)``
between ``select(timeout=0)`` calls on the socket) and the association reactor
(``time.sleep(0.001)`` between looks at the DIMSE message queue). Measured on the
benchmark machine that is about 0.09 CPU core per open association side, idle or
not, which on two cores is as much as the routing itself. This module, the only
place in the router that touches pynetdicom internals, makes the router's own
association sides sleep until there is something to do:

- DUL reactor: ``quiet_dul`` replaces the association's ``_dul_ready`` event, which
  the reactor consults at the top of each loop, with an object whose ``is_set``
  blocks in ``poll`` on the socket and on a wake-up socket until data arrives, a
  primitive is queued for sending (the outgoing queue's ``put`` signals it), or
  ``WAIT_S`` passes (for the ARTIM timer and thread shutdown); the reactor's own
  sleep is then set to 0. It waits only when it has nothing to do: no pending
  event, no queued primitive, nothing to read.
- Association reactor of an *acceptor* (the SCP): ``quiet_acceptor`` makes its
  non-blocking look at the DIMSE message queue wait up to ``WAIT_S`` for a message
  (a queued message wakes it at once), so it loops ~40 times a second instead
  of ~1000. A release or abort from the peer is noticed within ``WAIT_S``.

- Answers of an acceptor: ``quick_store_responses`` sends a C-STORE success
  response as one P-DATA PDU whose command set router/command_set.py built;
  pynetdicom builds each response through a primitive, a message, a pydicom
  Dataset and its encoder, measured at about a quarter of the SCP process's CPU.
  Any other response (a failure with an error comment, say) goes pynetdicom's way.

PDUs are read in one piece (``bulk_reads``): pynetdicom's transport reads a
PDU 4 KiB at a time, each read a system call and a bytearray extension, which for
a 0.5 MB CT slice is about 130 calls; reading into a buffer of the announced
length takes one or a few.

If pynetdicom's internals differ from what this expects, the functions do nothing
and the association polls as before.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from router import command_set
from router.logs import get_logger

log = get_logger(__name__)

WAIT_S = 0.025
"""Longest idle wait: bounds the delay of timers and shutdown, not of data."""


class _DulWaiter:
    """Stands in for ``Association._dul_ready`` once the DUL reactor runs."""

    def __init__(self, dul: Any) -> None:
        self._dul = dul
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._waiting = False

    def _close(self) -> None:
        # The reactor is stopping: give the wake-up sockets back now rather than
        # whenever the garbage collector gets to the association's reference cycle.
        self._wake_r.close()
        self._wake_w.close()

    def wake(self) -> None:
        # Only a reactor that is (about to be) waiting needs the signal: it sets
        # ``_waiting`` before its last look at the queues, so a put it misses
        # here it sees there.
        if self._waiting:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    # The Event interface the DUL reactor and Association use.
    def set(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def is_set(self) -> bool:
        """Block until the reactor has something to do (or ``WAIT_S``); always True."""
        dul = self._dul
        if dul._kill_thread:
            self._close()
            return True
        self._waiting = True
        try:
            if not dul.event_queue.empty() or dul.to_provider_queue.queue:
                return True
            sock = getattr(dul.socket, "socket", None)
            if sock is None or self._wake_r.fileno() < 0:
                return True
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return True
            poller = select.poll()  # not select(): no limit on descriptor numbers
            try:
                poller.register(sock, select.POLLIN)
                poller.register(self._wake_r, select.POLLIN)
                ready = {fd for fd, _events in poller.poll(int(WAIT_S * 1000))}
            except (OSError, ValueError):
                return True  # the reactor's own check reports the closed connection
        finally:
            self._waiting = False
        if self._wake_r.fileno() in ready:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(256):
                    pass
        return True


def quiet_dul(assoc: Any) -> bool:
    """Make the association's DUL reactor block instead of polling; False if not possible."""
    dul = getattr(assoc, "dul", None)
    needed = ("_run_loop_delay", "_kill_thread", "event_queue", "to_provider_queue", "socket")
    if dul is None or not all(hasattr(dul, name) for name in needed):
        return False
    ready = getattr(assoc, "_dul_ready", None)
    if isinstance(ready, _DulWaiter):
        return True
    if not isinstance(ready, threading.Event):
        return False
    outgoing = dul.to_provider_queue
    if not isinstance(outgoing, queue.Queue):
        return False
    waiter = _DulWaiter(dul)
    original_put = outgoing.put

    def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        original_put(item, block, timeout)
        waiter.wake()

    outgoing.put = put  # type: ignore[method-assign]
    assoc._dul_ready = waiter
    dul._run_loop_delay = 0
    waiter.wake()  # a reactor already sleeping re-checks at once
    return True


def quick_store_responses(assoc: Any) -> bool:
    """Send C-STORE success responses directly (see module doc); False if not possible."""
    dimse: Any = getattr(assoc, "dimse", None)
    original = getattr(dimse, "send_msg", None)
    dul = getattr(dimse, "dul", None)
    if original is None or dul is None:
        return False
    if getattr(original, "_router_quick", False):
        return True

    def send_msg(primitive: Any, context_id: int) -> None:
        command = _quick_response(primitive)
        limit = dimse.maximum_pdu_size
        if (command is None or (limit and len(command) + 6 > limit)
                or assoc.get_handlers(evt.EVT_DIMSE_SENT)):  # fmt: skip
            original(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        dul.send_pdu(pdata)

    send_msg._router_quick = True  # type: ignore[attr-defined]
    dimse.send_msg = send_msg
    return True


def _quick_response(primitive: Any) -> bytes | None:
    """The command set of a plain C-STORE success response, or None for anything else."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.Status != 0x0000 or primitive.ErrorComment or primitive.OffendingElement:
        return None
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    if not sop_class or not sop_instance:
        return None
    return command_set.c_store_rsp(
        primitive.MessageIDBeingRespondedTo, str(sop_class), str(sop_instance), 0x0000
    )


def quiet_acceptor(assoc: Any) -> bool:
    """Make an acceptor's association reactor wait on its DIMSE queue instead of polling."""
    dimse: Any = getattr(assoc, "dimse", None)
    messages = getattr(dimse, "msg_queue", None)
    if not isinstance(messages, queue.Queue) or not quiet_dul(assoc):
        return False
    original = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if block:
            return original(True)
        try:
            return messages.get(timeout=WAIT_S)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg
    return True


READ_CHUNK = 1024 * 1024
"""The most a read allocates ahead of data actually received: a PDU's announced
length is the peer's word, and must not reserve memory by itself."""


def bulk_reads(transport: Any) -> bool:
    """Make an ``AssociationSocket`` read each request in as few system calls as it can.

    Same contract as pynetdicom's ``recv``: block until ``nr_bytes`` are read and
    return them; on a closed connection return what was read so far; socket errors
    and timeouts propagate.
    """
    if not callable(getattr(transport, "recv", None)) or not hasattr(transport, "socket"):
        return False

    def recv(nr_bytes: int) -> bytearray:
        sock = transport.socket
        buffer = bytearray(min(nr_bytes, READ_CHUNK))
        done = 0
        while done < nr_bytes:
            if done == len(buffer):  # grow as data arrives, a chunk at a time
                buffer.extend(bytes(min(nr_bytes - done, READ_CHUNK)))
            with memoryview(buffer) as view:
                count = sock.recv_into(view[done:], len(buffer) - done)
            if not count:
                del buffer[done:]
                return buffer
            done += count
        return buffer

    transport.recv = recv
    return True
