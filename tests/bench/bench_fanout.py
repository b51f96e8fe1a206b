"""Benchmark: fan-out to 1 and to 3 destinations through the router, side by side.

Run: ``.venv/bin/python -m tests.bench.bench_fanout [--count 300] [--reps 3]``

Two routers on one private Redis: one forwarding to one pynetdicom sink, one to
three sinks (each its own process). Each repetition sends the same 300 CT slices
with dcmtk storescu to each router in turn and times until every sink holds every
instance. Prints the medians and the ratio (3 destinations / 1 destination);
the target is at most 1.5.

Everything shares the machine's cores, so it also prints the CPU seconds each run
cost the router (its SCP process and worker processes) and the sinks: the wall
times follow the sum, and the sinks' share grows with every destination.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.bench.cpu import cpu_seconds, machine_busy_seconds
from tests.bench.sinks import running_sinks, wait_until_idle
from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import write_ct_series


@dataclass
class Run:
    seconds: float
    router_cpu: float
    sinks_cpu: float
    acknowledged: float
    """When storescu had every answer: the rest of ``seconds`` is delivery catching up."""
    machine_cpu: float
    """CPU seconds the whole machine spent busy meanwhile (router, sinks, storescu, Redis)."""


def timed(files: list[Path], router: RouterProcess, sinks: list[CaptureSCP]) -> Run:
    for sink in sinks:
        sink.clear()
    sink_pids = [sink.pid for sink in sinks]
    router_before, sinks_before = cpu_seconds([router.proc.pid]), cpu_seconds(sink_pids)
    machine_before = machine_busy_seconds()
    start = time.perf_counter()
    if storescu(files, router.port).returncode != 0:
        raise RuntimeError("storescu failed")
    acknowledged = time.perf_counter() - start
    for sink in sinks:
        sink.wait_for_count(len(files), timeout=900)
    elapsed = time.perf_counter() - start
    return Run(
        elapsed,
        cpu_seconds([router.proc.pid]) - router_before,
        cpu_seconds(sink_pids) - sinks_before,
        acknowledged,
        machine_busy_seconds() - machine_before,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes per router")
    parser.add_argument(
        "--lean-sinks",
        action="store_true",
        help="sinks that wait instead of polling and write to tmpfs; see sinks.py",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicom-router-fanout-") as tmp:
        root = Path(tmp)
        redis_server = RedisServer(root / "redis")
        redis_server.start()
        routers = []
        try:
            with running_sinks(3, lean=args.lean_sinks) as sinks:
                for db, (name, chosen) in enumerate((("one", sinks[:1]), ("three", sinks))):
                    # One association slot per worker process (see docs/configuration.md).
                    slots = max(2, args.workers)
                    dests = {s.ae_title.lower(): {"ae_title": s.ae_title, "host": "127.0.0.1",
                                                  "port": s.port, "max_associations": slots}
                             for s in chosen}  # fmt: skip
                    rules = f"rules:\n  - name: all\n    forward: [{', '.join(dests)}]\n"
                    # One Redis database per router: routers sharing one would take
                    # each other's tasks.
                    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
                    path, config = write_config(root / name, url, dests, rules)
                    routers.append((start_router(path, config, workers=args.workers), chosen))
                results: dict[int, list[Run]] = {1: [], 3: []}
                for rep in range(args.reps):
                    # Fresh UIDs each repetition: delivery records never short-cut a send.
                    files = write_ct_series(root / f"series{rep}", args.count, seed=rep)
                    for router, chosen in routers:
                        wait_until_idle(sinks)  # no associations left over from the other run
                        results[len(chosen)].append(timed(files, router, chosen))
                    print(f"rep {rep + 1}: " + ", ".join(
                        f"{n} destination{'s' * (n > 1)} {results[n][-1].seconds:.2f} s "
                        f"(CPU: router {results[n][-1].router_cpu:.2f} s, "
                        f"sinks {results[n][-1].sinks_cpu:.2f} s)" for n in (1, 3)))  # fmt: skip
                for router, _ in routers:
                    router.stop()
                routers.clear()
        finally:
            for router, _ in routers:
                router.stop()
            redis_server.stop()
    sinks_used = "lean sinks on tmpfs" if args.lean_sinks else "stock pynetdicom sinks"
    print(f"sinks: {sinks_used}; router workers: {args.workers}")

    def median(n: int, field: str) -> float:
        return statistics.median(getattr(run, field) for run in results[n])

    one, three = median(1, "seconds"), median(3, "seconds")
    print(f"{args.count} instances: 1 destination median {one:.2f} s, "
          f"3 destinations median {three:.2f} s")  # fmt: skip
    print(f"fan-out ratio (3 / 1): {three / one:.2f} (target <= 1.5)")
    print(f"all acknowledged to storescu, median: 1 destination {median(1, 'acknowledged'):.2f} s, "
          f"3 destinations {median(3, 'acknowledged'):.2f} s")  # fmt: skip
    cores = psutil.cpu_count() or 1
    busy = [median(n, "machine_cpu") / (median(n, "seconds") * cores) for n in (1, 3)]
    print(f"machine busy (all {cores} cores), median: 1 destination {busy[0]:.0%}, "
          f"3 destinations {busy[1]:.0%}")  # fmt: skip
    shares = (("machine_cpu", "machine"), ("router_cpu", "router"), ("sinks_cpu", "sinks"))
    for field, who in shares:
        print(f"{who} CPU, median: 1 destination {median(1, field):.2f} s, "
              f"3 destinations {median(3, field):.2f} s, "
              f"ratio {median(3, field) / median(1, field):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
