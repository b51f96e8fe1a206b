"""A pynetdicom storage SCP that captures every received instance to disk.

The SCP is meant to run in its *own process* so that neither the router
under test nor a benchmark driver shares its GIL.  Start it from the command
line::

    python -m tests.support.capture_scp --port 11113 --ae-title CAPTURE \\
        --out /tmp/received [--transfer-syntax UID ...] [--max-pdu 0]

or from Python with :class:`CaptureSCP`, a context manager that launches the
module in a subprocess and waits until it listens.

Behaviour of the SCP:

* accepts C-ECHO, and C-STORE for every storage SOP class in
  :data:`pynetdicom.AllStoragePresentationContexts`, each offered with all the
  configured transfer syntaxes (:data:`DEFAULT_TRANSFER_SYNTAXES` unless
  ``--transfer-syntax`` is given);
* accepts any called AE title and any calling AE title;
* sets ``TCP_NODELAY`` on every accepted socket;
* advertises a maximum PDU length of ``--max-pdu`` (default 0, unlimited);
* writes each received data set *without decoding it*
  (:meth:`pynetdicom.events.Event.encoded_dataset`, which prepends the file
  meta information built from the presentation context) to
  ``OUT/<n>.dcm.part`` and then atomically renames it to
  ``OUT/<SOPInstanceUID>__<counter>.dcm``; the counter makes duplicates
  visible as separate files and orders the files by arrival;
* always answers status ``0x0000`` (Success);
* prints ``ready`` on stdout once the listening socket is bound;
* shuts down cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, cast

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from .child import ChildProcess
from .ports import LOCALHOST, free_port, wait_for_port

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "CaptureSCP",
    "build_ae",
    "main",
    "sop_instance_uid_of",
]

#: Transfer syntaxes offered for every storage SOP class by default, in the
#: SCP's order of preference (pynetdicom accepts, per presentation context,
#: the first of these that the requestor proposed).  Explicit VR Little
#: Endian comes first so that VRs survive whenever the sender offers it.
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)

#: Root of the project (the directory holding ``tests/``), used as the working
#: directory of the subprocess so that ``tests.support`` is importable.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Verification SOP Class (C-ECHO).
VERIFICATION = uid.UID("1.2.840.10008.1.1")

_SEPARATOR = "__"
_LOG = logging.getLogger("capture_scp")


def sop_instance_uid_of(path: Path) -> str:
    """Return the SOP Instance UID encoded in a captured file's name."""
    return path.name.rsplit(_SEPARATOR, 1)[0]


def _counter_of(path: Path) -> int:
    return int(path.stem.rsplit(_SEPARATOR, 1)[1])


class _StoreWriter:
    """C-STORE handler that writes each data set undecoded to ``out_dir``."""

    def __init__(
        self,
        out_dir: Path,
        fail_first: int = 0,
        fail_sop_class: str | None = None,
        fail_status: int = 0xA700,
        store_delay: float = 0.0,
    ) -> None:
        self._out_dir = out_dir
        # A slow destination: every store is answered only after ``store_delay`` s.
        self._store_delay = store_delay
        # Failure injection for delivery tests: answer ``fail_status`` to the first
        # ``fail_first`` stores, and to every store of ``fail_sop_class``.
        self._fail_left = fail_first
        self._fail_sop_class = fail_sop_class
        self._fail_status = fail_status
        # Continue after files left by an earlier run in the same directory,
        # so nothing is overwritten and arrival order stays meaningful.
        previous = [_counter_of(p) for p in out_dir.glob("*.dcm") if _SEPARATOR in p.name]
        self._counter = itertools.count(max(previous, default=0) + 1)
        self._lock = threading.Lock()

    def handle_store(self, event: Event) -> int:
        request = cast(C_STORE, event.request)
        if self._store_delay:
            time.sleep(self._store_delay)
        with self._lock:
            if self._fail_left > 0:
                self._fail_left -= 1
                return self._fail_status
            if self._fail_sop_class and str(request.AffectedSOPClassUID) == self._fail_sop_class:
                return self._fail_status
            number = next(self._counter)
        sop_instance_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID).strip()
        # A UID only holds digits and dots; refuse anything that could
        # escape the output directory.
        safe_uid = "".join(c for c in sop_instance_uid if c.isdigit() or c == ".")
        final = self._out_dir / f"{safe_uid or 'NO-UID'}{_SEPARATOR}{number:06d}.dcm"
        if _config.STORE_RECV_CHUNKED_DATASET:  # --lean: already in a file of out_dir
            os.replace(event.dataset_path, final)
            return 0x0000
        part = self._out_dir / f"{number}.dcm.part"
        part.write_bytes(event.encoded_dataset())
        os.replace(part, final)
        return 0x0000

    def track_associations(self, stats: Path | None) -> list[tuple[Any, Any]]:
        """Handlers recording the most associations open at once into ``stats``."""
        state = {"open": 0, "max": 0}

        def opened(event: Event) -> None:
            with self._lock:
                state["open"] += 1
                state["max"] = max(state["max"], state["open"])
                if stats is not None:
                    stats.write_text(str(state["max"]))

        def closed(event: Event) -> None:
            with self._lock:
                state["open"] -= 1

        return [(evt.EVT_ESTABLISHED, opened), (evt.EVT_RELEASED, closed),
                (evt.EVT_ABORTED, closed)]  # fmt: skip

    @staticmethod
    def handle_conn_open(event: Event) -> None:
        sock = event.assoc.dul.socket
        raw = sock.socket if sock is not None else None
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quiet_association(event: Event) -> None:
    # Imported here: the SCP stays usable without the router's package installed.
    from router.quiet import bulk_reads, quick_store_responses, quiet_acceptor

    bulk_reads(event.assoc.dul.socket)
    quiet_acceptor(event.assoc)
    quick_store_responses(event.assoc)


def _receive_into_files(out_dir: Path) -> None:
    """pynetdicom writes each data set, file meta first, into a temporary file next
    to ``out_dir`` as it arrives; the handler then only renames it (``--lean``).

    The temporary files (``*.dcm`` too) live in a subdirectory, so that
    :meth:`CaptureSCP.received` never counts one.
    """
    incoming = out_dir / ".incoming"
    incoming.mkdir(exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(incoming)


def build_ae(
    ae_title: str = "CAPTURE",
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    max_pdu: int = 0,
    max_associations: int = 64,
) -> AE:
    """Return a configured (not yet started) pynetdicom :class:`AE`.

    Every storage SOP class is supported with all of ``transfer_syntaxes``;
    Verification is supported with the uncompressed syntaxes.
    """
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.maximum_associations = max_associations
    ae.require_called_aet = False
    ae.require_calling_aet = []
    ae.acse_timeout = 60
    ae.dimse_timeout = 120
    ae.network_timeout = 120
    ae.add_supported_context(
        VERIFICATION,
        [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian],
    )
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, list(transfer_syntaxes))
    return ae


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.capture_scp",
        description="Storage SCP that writes every received instance to disk.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOCALHOST)
    parser.add_argument("--ae-title", default="CAPTURE")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--transfer-syntax",
        action="append",
        dest="transfer_syntaxes",
        metavar="UID",
        help="transfer syntax to accept (repeatable; default: a broad set)",
    )
    parser.add_argument("--max-pdu", type=int, default=0)
    parser.add_argument("--max-associations", type=int, default=64)
    parser.add_argument("--log-level", default="WARNING", help="pynetdicom log level (stderr)")
    parser.add_argument("--fail-first", type=int, default=0, help="refuse the first N stores")
    parser.add_argument("--fail-sop-class", help="refuse every store of this SOP class UID")
    parser.add_argument("--fail-status", type=lambda v: int(v, 0), default=0xA700)
    parser.add_argument("--store-delay", type=float, default=0.0,
                        help="answer each store only after this many seconds")  # fmt: skip
    parser.add_argument("--stats", type=Path, help="file for the most associations open at once")
    parser.add_argument(
        "--lean",
        action="store_true",
        help="for benchmarks: associations wait for data instead of polling, read whole "
        "PDUs and answer success directly (router.quiet), and receive straight into the "
        "output files",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the capture SCP until SIGTERM/SIGINT; return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    if args.lean:
        _receive_into_files(out_dir)
        # pynetdicom's standard event handlers format every PDU and DIMSE message
        # for debug logging, which --log-level WARNING never shows.
        _config.LOG_HANDLER_LEVEL = "none"
    writer = _StoreWriter(
        out_dir, args.fail_first, args.fail_sop_class, args.fail_status, args.store_delay
    )
    ae = build_ae(
        ae_title=args.ae_title,
        transfer_syntaxes=args.transfer_syntaxes or DEFAULT_TRANSFER_SYNTAXES,
        max_pdu=args.max_pdu,
        max_associations=args.max_associations,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    server = ae.start_server(
        (args.host, args.port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, writer.handle_store),
            (evt.EVT_CONN_OPEN, writer.handle_conn_open),
            *writer.track_associations(args.stats),
            *([(evt.EVT_ESTABLISHED, _quiet_association)] if args.lean else []),
        ],
    )
    assert server is not None
    print("ready", flush=True)
    _LOG.info("listening on %s:%d as %s", args.host, args.port, args.ae_title)
    try:
        while not stop.wait(0.1):
            pass
    finally:
        server.shutdown()
    return 0


class CaptureSCP(ChildProcess):
    """Run the capture SCP in a child process for the duration of a ``with``.

    Parameters
    ----------
    out_dir:
        Directory receiving the captured files; a fresh temporary directory
        (deleted on exit) when omitted.
    port:
        TCP port to listen on (``127.0.0.1``); a free one when omitted.
    ae_title:
        The SCP's AE title (it accepts any called AE title anyway).
    transfer_syntaxes:
        Transfer syntaxes to accept; :data:`DEFAULT_TRANSFER_SYNTAXES` when
        omitted.
    max_pdu:
        Maximum PDU length advertised by the SCP (0: unlimited).
    startup_timeout:
        Seconds to wait for the child to report ``ready``.

    Example
    -------
    ::

        with CaptureSCP() as scp:
            storescu(files, scp.port, called_ae=scp.ae_title)
            scp.wait_for_count(len(files), timeout=10)
            uids = scp.sop_instance_uids()
    """

    def __init__(
        self,
        out_dir: Path | None = None,
        port: int | None = None,
        ae_title: str = "CAPTURE",
        transfer_syntaxes: Sequence[str] | None = None,
        max_pdu: int = 0,
        startup_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port: int = port if port is not None else free_port()
        self._extra_args = tuple(extra_args)
        self.host: str = LOCALHOST
        self.ae_title: str = ae_title
        self._requested_out_dir = out_dir
        self._transfer_syntaxes = tuple(transfer_syntaxes or ())
        self._max_pdu = max_pdu
        self._startup_timeout = startup_timeout
        super().__init__()
        self._out_dir: Path | None = None

    # -- lifecycle ---------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        """Directory the SCP writes captured files to."""
        if self._out_dir is None:
            raise RuntimeError("CaptureSCP is not started")
        return self._out_dir

    @property
    def log_path(self) -> Path:
        """File collecting the child's stdout and stderr."""
        if self._workdir is None:
            raise RuntimeError("CaptureSCP is not started")
        return self._workdir / "capture_scp.log"

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> CaptureSCP:
        """Launch the child process and wait until it listens."""
        if self._proc is not None:
            raise RuntimeError("CaptureSCP already started")
        self._workdir = Path(tempfile.mkdtemp(prefix="capture-scp-"))
        self._out_dir = self._requested_out_dir or self._workdir / "received"
        self._out_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "tests.support.capture_scp",
            "--port",
            str(self.port),
            "--host",
            self.host,
            "--ae-title",
            self.ae_title,
            "--out",
            str(self._out_dir),
            "--max-pdu",
            str(self._max_pdu),
        ]
        for ts in self._transfer_syntaxes:
            argv += ["--transfer-syntax", ts]
        argv += ["--stats", str(self._workdir / "stats.txt"), *self._extra_args]
        self._log_file = self.log_path.open("w")
        self._proc = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"capture SCP exited with status {self._proc.returncode} "
                    f"during start-up; log tail:\n{self.log_tail()}"
                )
            if "ready" in self.log_path.read_text(errors="replace").split():
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"capture SCP did not become ready on port {self.port} "
                    f"within {self._startup_timeout:.0f} s; log tail:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)
        # "ready" is printed after the socket listens; this is a cheap check.
        wait_for_port(self.host, self.port, timeout=5.0)

    # -- results -----------------------------------------------------------
    def received(self) -> list[Path]:
        """Return the captured files in order of arrival (``*.part`` excluded)."""
        files = [p for p in self.out_dir.glob("*.dcm") if _SEPARATOR in p.name]
        return sorted(files, key=_counter_of)

    def sop_instance_uids(self) -> list[str]:
        """Return the SOP Instance UIDs received, in order, duplicates kept."""
        return [sop_instance_uid_of(p) for p in self.received()]

    def max_concurrent_associations(self) -> int:
        """The most associations that were open at once so far."""
        stats = self._workdir / "stats.txt" if self._workdir is not None else None
        return int(stats.read_text()) if stats is not None and stats.exists() else 0

    def clear(self) -> None:
        """Delete every captured file (the counter keeps increasing)."""
        for path in self.out_dir.iterdir():
            if path.is_file():
                path.unlink()

    def wait_for_count(self, n: int, timeout: float = 30.0) -> None:
        """Block until at least ``n`` files were captured.

        Raises
        ------
        TimeoutError
            If fewer than ``n`` arrived within ``timeout`` seconds.
        RuntimeError
            If the child process died.
        """
        deadline = time.monotonic() + timeout
        while True:
            count = len(self.received())
            if count >= n:
                return
            if not self.running:
                raise RuntimeError(
                    f"capture SCP is not running ({count}/{n} received); "
                    f"log tail:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"capture SCP received {count} of {n} expected instances within {timeout:.1f} s"
                )
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
