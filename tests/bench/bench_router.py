"""Benchmark: dcmtk storescu straight to a sink vs. through the router to the same sink.

Run: ``.venv/bin/python -m tests.bench.bench_router [--count 300] [--reps 3]``

Both paths are measured in one run, alternating, and the medians compared:
    ratio = router throughput / direct throughput = direct time / router time.
The router time runs from the start of storescu until the sink holds every
instance (end to end, not just acknowledgement). Peak memory is the largest sum
of resident set sizes of the router's process tree (SCP + worker pool) sampled
every 200 ms. Redis is a private server flushed between repetitions so that the
delivery records of one repetition do not short-cut the next.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tests.bench.cpu import cpu_seconds
from tests.bench.sinks import running_sinks, wait_until_idle
from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.router_proc import RedisServer, start_router, write_config
from tests.support.synthetic import write_ct_series

RULES = "rules:\n  - name: all\n    forward: [sink]\n"


class PeakRSS:
    """Samples the RSS of a process and its children in a background thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [self.process, *self.process.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_send(
    files: list[Path], port: int, called_ae: str, sink: CaptureSCP, cpu: dict[str, list[float]]
) -> tuple[float, float]:
    """Send and wait for the sink; appends the sink's CPU seconds to ``cpu["sink"]``.

    Returns the seconds until the sink held every instance and until storescu had
    every answer (through the router, the rest of the time is delivery catching up).
    """
    sink.clear()
    before = cpu_seconds([sink.pid])
    start = time.perf_counter()
    result = storescu(files, port, called_ae=called_ae, calling_ae="BENCH")
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
    acknowledged = time.perf_counter() - start
    sink.wait_for_count(len(files), timeout=600)
    elapsed = time.perf_counter() - start
    cpu["sink"].append(cpu_seconds([sink.pid]) - before)
    return elapsed, acknowledged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--lean-sinks",
        action="store_true",
        help="sinks that wait instead of polling and write to tmpfs; see sinks.py",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dicom-router-bench-") as tmp:
        root = Path(tmp)
        files = write_ct_series(root / "series", args.count)
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        redis_server = RedisServer(root / "redis")
        redis_server.start()
        with running_sinks(1, lean=args.lean_sinks) as (sink,):
            destinations = {"sink": {"ae_title": sink.ae_title, "host": "127.0.0.1",
                                     "port": sink.port}}  # fmt: skip
            path, config = write_config(root / "router", redis_server.url, destinations, RULES)
            router = start_router(path, config, workers=args.workers)
            direct: list[float] = []
            routed: list[float] = []
            acks: list[float] = []
            direct_cpu: dict[str, list[float]] = {"sink": []}
            routed_cpu: dict[str, list[float]] = {"sink": [], "router": []}
            peak = 0
            try:
                for rep in range(args.reps):
                    wait_until_idle([sink])  # the router's associations from the last rep
                    direct.append(timed_send(files, sink.port, sink.ae_title, sink, direct_cpu)[0])
                    redis_server.client().flushdb()
                    wait_until_idle([sink])
                    router_before = cpu_seconds([router.proc.pid])
                    with PeakRSS(router.proc.pid) as sampler:
                        seconds, acknowledged = timed_send(
                            files, router.port, "ROUTER", sink, routed_cpu
                        )
                        routed.append(seconds)
                        acks.append(acknowledged)
                    routed_cpu["router"].append(cpu_seconds([router.proc.pid]) - router_before)
                    peak = max(peak, sampler.peak)
                    print(f"rep {rep + 1}: direct {direct[-1]:.2f} s, router {routed[-1]:.2f} s")
            finally:
                router.stop()
                redis_server.stop()
    d, r = statistics.median(direct), statistics.median(routed)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    sink_used = "a lean sink on tmpfs" if args.lean_sinks else "a stock pynetdicom sink"
    print(f"sink: {sink_used}")
    print(f"instances: {args.count} ({size_mb:.0f} MiB), router workers: {args.workers}")
    print(f"direct storescu -> sink: median {d:.2f} s ({args.count / d:.0f} instances/s)")
    print(f"storescu -> router -> sink: median {r:.2f} s ({args.count / r:.0f} instances/s)")
    print(f"end-to-end throughput ratio (router / direct): {d / r:.2f}")
    print(f"through the router, every instance acknowledged to storescu: median "
          f"{statistics.median(acks):.2f} s")  # fmt: skip
    # Everything shares the cores: the routed path's time follows the CPU it costs.
    print(
        f"CPU per run, median: direct: sink {statistics.median(direct_cpu['sink']):.2f} s; "
        f"routed: router {statistics.median(routed_cpu['router']):.2f} s, "
        f"sink {statistics.median(routed_cpu['sink']):.2f} s"
    )
    print(f"router peak RSS (SCP + workers): {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
