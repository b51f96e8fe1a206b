"""The benchmarks' destinations: pynetdicom capture SCPs that cost the router's machine little.

In a hospital the PACS runs on its own machines; here the sinks share two cores with
the router, so whatever a sink spends is taken from the router being measured. By
default the sinks therefore (a) let their associations wait for data instead of
polling and read whole PDUs (the ``router.quiet`` treatment the router's own
associations get; a stock pynetdicom association polls about every millisecond,
idle or not, and reads 4 KiB at a time), (b) receive each data set straight into
its output file as pynetdicom's chunked receive writes it (no copy in memory, no
re-encoding) and (c) keep those files on tmpfs (``/dev/shm``) when the machine has
one, so page-cache allocation on the spool's disk is not counted twice. All of it
is ``capture_scp --lean``.
``--polling-sinks`` on a benchmark runs stock pynetdicom sinks writing to the
temporary directory instead, for comparison.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.support.capture_scp import CaptureSCP

TMPFS = Path("/dev/shm")


@contextmanager
def running_sinks(count: int, polling: bool = False) -> Iterator[list[CaptureSCP]]:
    """Start ``count`` capture SCPs (AE titles SINK0, SINK1, ...); stop and clean up after."""
    cheap = not polling and TMPFS.is_dir()
    with ExitStack() as stack:
        sinks = []
        for number in range(count):
            out_dir = Path(tempfile.mkdtemp(prefix="bench-sink-", dir=TMPFS if cheap else None))
            stack.callback(shutil.rmtree, out_dir, True)
            sink = CaptureSCP(
                out_dir=out_dir,
                ae_title=f"SINK{number}",
                extra_args=() if polling else ("--lean",),
            )
            sinks.append(stack.enter_context(sink))
        yield sinks
