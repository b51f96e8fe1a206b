"""Benchmark: one process sending CT slices with pynetdicom's association vs the router's.

Run: ``.venv/bin/python -m tests.bench.bench_send [--count 300] [--reps 5]``

Both send the same spool-like files (0.5 MB each, explicit VR little endian) one
after the other over one association to the same lean pynetdicom sink in its own
process, alternating, and the medians compared: the CPU this process spent per
instance (all its threads) and the wall time per instance. pynetdicom's side
sends from file without decoding (``STORE_SEND_CHUNKED_DATASET``) with 128 KiB
PDUs, as the router did before router/store_association.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE, _config
from pynetdicom.pdu_primitives import MaximumLengthNotification

from router.store_association import SEND_PDU_LIMIT, StoreAssociation
from tests.support.capture_scp import CaptureSCP
from tests.support.synthetic import write_ct_series

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


Sender = tuple[Callable[[Path], int], Callable[[], None]]
"""Send one file (returns the status), and close the association."""


def pynetdicom_sender(port: int, ae_title: str) -> Sender:
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(CT, [EXPLICIT_LE])
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    for item in assoc.acceptor.user_information:
        if isinstance(item, MaximumLengthNotification):
            item.maximum_length_received = SEND_PDU_LIMIT

    def send(path: Path) -> int:
        return int(assoc.send_c_store(path).Status)

    return send, assoc.release


def router_sender(port: int, ae_title: str) -> Sender:
    assoc = StoreAssociation.open("127.0.0.1", port, "BENCH", ae_title, [(CT, EXPLICIT_LE)], 30, 10)
    context_id = assoc.accepted[(CT, EXPLICIT_LE)]
    return (lambda path: assoc.send_c_store(path, context_id)), assoc.release


def timed(
    files: list[Path], sender: tuple[Callable[[Path], int], Callable[[], None]]
) -> tuple[float, float]:
    """CPU and wall milliseconds per instance."""
    send, close = sender
    cpu, wall = time.process_time(), time.perf_counter()
    for path in files:
        if send(path) != 0x0000:
            raise RuntimeError("the sink refused an instance")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    close()
    return cpu / len(files) * 1000, wall / len(files) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"pynetdicom": [], "router": []}
    makers = {"pynetdicom": pynetdicom_sender, "router": router_sender}
    with tempfile.TemporaryDirectory(prefix="dicom-router-send-") as tmp:
        files = write_ct_series(Path(tmp) / "series", args.count)
        with CaptureSCP(extra_args=["--lean"]) as sink:
            for rep in range(args.reps):
                for name, make in makers.items():
                    results[name].append(timed(files, make(sink.port, sink.ae_title)))
                    sink.clear()
                print(f"rep {rep + 1}: " + ", ".join(
                    f"{name} {r[-1][0]:.2f} ms CPU / {r[-1][1]:.2f} ms wall"
                    for name, r in results.items()))  # fmt: skip
    medians = {name: (statistics.median(c for c, _ in r), statistics.median(w for _, w in r))
               for name, r in results.items()}  # fmt: skip
    print(f"{args.count} slices of 0.5 MB, per instance, medians of {args.reps}:")
    for name, (cpu, wall) in medians.items():
        print(f"  {name}: {cpu:.2f} ms CPU, {wall:.2f} ms wall")
    (p_cpu, p_wall), (r_cpu, r_wall) = medians["pynetdicom"], medians["router"]
    print(f"router / pynetdicom: CPU {r_cpu / p_cpu:.2f}, wall {r_wall / p_wall:.2f}")


if __name__ == "__main__":
    main()
