"""Benchmark: fan-out to 1 and to 3 destinations through the router, side by side.

Run: ``.venv/bin/python -m tests.bench.bench_fanout [--count 300] [--reps 3]``

Two routers on one private Redis: one forwarding to one pynetdicom sink, one to
three sinks (each its own process). Each repetition sends the same 300 CT slices
with dcmtk storescu to each router in turn and times until every sink holds every
instance. Prints the medians and the ratio (3 destinations / 1 destination);
the target is at most 1.5.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.bench.sinks import running_sinks
from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.router_proc import RedisServer, start_router, write_config
from tests.support.synthetic import write_ct_series


def timed(files: list[Path], port: int, sinks: list[CaptureSCP]) -> float:
    for sink in sinks:
        sink.clear()
    start = time.perf_counter()
    if storescu(files, port).returncode != 0:
        raise RuntimeError("storescu failed")
    for sink in sinks:
        sink.wait_for_count(len(files), timeout=900)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes per router")
    parser.add_argument(
        "--polling-sinks",
        action="store_true",
        help="stock pynetdicom sinks (polling, writing to disk); see sinks.py",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicom-router-fanout-") as tmp:
        root = Path(tmp)
        redis_server = RedisServer(root / "redis")
        redis_server.start()
        routers = []
        try:
            with running_sinks(3, polling=args.polling_sinks) as sinks:
                for db, (name, chosen) in enumerate((("one", sinks[:1]), ("three", sinks))):
                    dests = {s.ae_title.lower(): {"ae_title": s.ae_title, "host": "127.0.0.1",
                                                  "port": s.port} for s in chosen}  # fmt: skip
                    rules = f"rules:\n  - name: all\n    forward: [{', '.join(dests)}]\n"
                    # One Redis database per router: routers sharing one would take
                    # each other's tasks.
                    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
                    path, config = write_config(root / name, url, dests, rules)
                    routers.append((start_router(path, config, workers=args.workers), chosen))
                results: dict[int, list[float]] = {1: [], 3: []}
                for rep in range(args.reps):
                    # Fresh UIDs each repetition: delivery records never short-cut a send.
                    files = write_ct_series(root / f"series{rep}", args.count, seed=rep)
                    for router, chosen in routers:
                        results[len(chosen)].append(timed(files, router.port, chosen))
                    print(f"rep {rep + 1}: 1 destination {results[1][-1]:.2f} s, "
                          f"3 destinations {results[3][-1]:.2f} s")  # fmt: skip
                for router, _ in routers:
                    router.stop()
                routers.clear()
        finally:
            for router, _ in routers:
                router.stop()
            redis_server.stop()
    sinks_used = "polling pynetdicom sinks" if args.polling_sinks else "quiet sinks on tmpfs"
    print(f"sinks: {sinks_used}; router workers: {args.workers}")
    one, three = statistics.median(results[1]), statistics.median(results[3])
    print(f"{args.count} instances: 1 destination median {one:.2f} s, "
          f"3 destinations median {three:.2f} s")  # fmt: skip
    print(f"fan-out ratio (3 / 1): {three / one:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
