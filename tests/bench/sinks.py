"""The benchmarks' destinations: pynetdicom capture SCPs, stock or lean.

By default a sink is a stock pynetdicom SCP writing what it receives to disk: the
sink the issues describe. In a hospital the PACS runs on machines of its own; here
the sinks share two cores with the router, so whatever a sink spends is taken from
the router being measured. ``--lean-sinks`` therefore runs sinks that (a) let their
associations wait for data instead of polling, read whole PDUs and answer a
successful C-STORE with a directly built response (the ``router.quiet`` treatment
the router's own SCP gets; a stock pynetdicom association polls about every
millisecond, idle or not, reads 4 KiB at a time and encodes each response through
pydicom), (b) do not bind pynetdicom's standard event handlers, which format every
PDU and message for debug logging that is never shown, (c) receive each data set
straight into its output file with pynetdicom's chunked receive (no copy in memory,
no re-encoding) and (d) keep those files on tmpfs (``/dev/shm``) when the machine
has one. All of it is ``capture_scp --lean``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil

from tests.support.capture_scp import CaptureSCP

TMPFS = Path("/dev/shm")


@contextmanager
def running_sinks(count: int, lean: bool = False) -> Iterator[list[CaptureSCP]]:
    """Start ``count`` capture SCPs (AE titles SINK0, SINK1, ...); stop and clean up after."""
    cheap = lean and TMPFS.is_dir()
    with ExitStack() as stack:
        sinks = []
        for number in range(count):
            out_dir = Path(tempfile.mkdtemp(prefix="bench-sink-", dir=TMPFS if cheap else None))
            stack.callback(shutil.rmtree, out_dir, True)
            sink = CaptureSCP(
                out_dir=out_dir,
                ae_title=f"SINK{number}",
                extra_args=("--lean",) if lean else (),
            )
            sinks.append(stack.enter_context(sink))
        yield sinks


IDLE_WAIT_S = 30.0


def open_associations(sink: CaptureSCP) -> int:
    """TCP connections established to the sink's port (one per open association)."""
    connections = psutil.Process(sink.pid).net_connections(kind="tcp")
    return sum(1 for c in connections
               if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == sink.port)  # fmt: skip


def wait_until_idle(sinks: list[CaptureSCP], timeout: float = IDLE_WAIT_S) -> float:
    """Wait until no association to any sink is open; returns the seconds waited.

    A router keeps its associations open for a while after a run (they are closed
    after 10 s idle), and a stock sink's side of each polls: about 0.07 of a core,
    idle or not. Timing the next run meanwhile would charge it for the previous
    one's connections, so each timed run starts with none open.
    """
    start = time.monotonic()
    while any(open_associations(sink) for sink in sinks):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"associations to the sinks still open after {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - start
