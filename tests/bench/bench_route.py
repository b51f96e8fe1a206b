"""Benchmark: what one more destination costs, the route task in-process.

Run: ``.venv/bin/python -m tests.bench.bench_route [--count 300] [--reps 5]``

Two runtimes in this process (a Redis database each), one routing to one lean
sink and one to three, each sink in its own process. Each repetition spools the
same fresh CT slices into both and runs the route task (``tasks._route``, no
Celery) for every instance, alternating: it sends to each destination it has an
answering association to (opened before the timing). Prints, per instance, the
route task's CPU (this process) and the sinks' CPU, medians, and what an extra
destination costs each side: the router's part of bench_fanout's ratio, without
the SCP, Celery and storescu around it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread

from router import tasks
from router.config import load_config
from router.deliver import deliver
from router.logs import configure_logging
from router.queue import configure
from router.runtime import Runtime, build_runtime
from tests.bench.cpu import cpu_seconds
from tests.bench.sinks import running_sinks
from tests.support.capture_scp import CaptureSCP
from tests.support.router_proc import RedisServer, write_config
from tests.support.synthetic import write_ct_series

COUNTS = (1, 3)


def _meta(path: Path) -> dict[str, Any]:
    """What the SCP would queue with the route task."""
    ds = dcmread(path, stop_before_pixels=True)
    return {"sop_instance_uid": str(ds.SOPInstanceUID), "calling_ae": "STORESCU",
            "study_instance_uid": str(ds.StudyInstanceUID), "called_ae": "ROUTER",
            "sop_class_uid": str(ds.SOPClassUID), "peer": "127.0.0.1:11112"}  # fmt: skip


def _spool(rt: Runtime, files: list[Path]) -> list[str]:
    keys = []
    for path in files:
        received = rt.spool.tmp / f"received-{path.name}"
        shutil.copy(path, received)
        keys.append(rt.spool.adopt(received))
    return keys


def _open_associations(rt: Runtime, warm_up: Path) -> None:
    """One delivery per destination, so the timed route tasks send directly."""
    for destination in rt.cfg.destinations:
        if rt.pool.answering(destination):
            continue
        (key,) = _spool(rt, [warm_up])
        deliver(rt, key, destination, _meta(warm_up), 1)


def _runtime(root: Path, db: int, redis_url: str, sinks: list[CaptureSCP]) -> Runtime:
    dests = {s.ae_title.lower(): {"ae_title": s.ae_title, "host": "127.0.0.1", "port": s.port}
             for s in sinks}  # fmt: skip
    rules = f"rules:\n  - name: all\n    forward: [{', '.join(dests)}]\n"
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    path, _config = write_config(root / f"router{len(sinks)}", url, dests, rules)
    rt = build_runtime(load_config(path))
    rt.spool.ensure()
    return rt


def _ms(seconds: float, count: int) -> str:
    return f"{seconds / count * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    configure_logging("WARNING", json_output=True)
    results: dict[int, list[tuple[float, float, float]]] = {n: [] for n in COUNTS}
    with tempfile.TemporaryDirectory(prefix="dicom-router-route-") as tmp:
        root = Path(tmp)
        redis_server = RedisServer(root / "redis")
        redis_server.start()
        try:
            with running_sinks(max(COUNTS), lean=True) as sinks:
                runtimes = {n: _runtime(root, db, redis_server.url, sinks[:n])
                            for db, n in enumerate(COUNTS)}  # fmt: skip
                configure(runtimes[1].cfg)  # forward tasks of the warm-up go nowhere
                for rep in range(args.reps):
                    files = write_ct_series(root / f"ct{rep}", args.count, seed=rep)
                    metas = [_meta(path) for path in files]
                    (warm_up,) = write_ct_series(root / f"warm{rep}", 1, seed=1000 + rep)
                    for n, rt in runtimes.items():
                        keys = _spool(rt, files)
                        _open_associations(rt, warm_up)
                        chosen = sinks[:n]
                        for sink in chosen:
                            sink.clear()
                        pids = [sink.pid for sink in chosen]
                        sinks_before, cpu_before = cpu_seconds(pids), time.process_time()
                        start = time.perf_counter()
                        for key, meta in zip(keys, metas, strict=True):
                            tasks._route(rt, key, {**meta, "received_at": time.time()})
                        wall = time.perf_counter() - start
                        cpu = time.process_time() - cpu_before
                        for sink in chosen:
                            sink.wait_for_count(args.count, timeout=120)
                        sinks_cpu = cpu_seconds(pids) - sinks_before
                        results[n].append((wall, cpu, sinks_cpu))
                    print(f"rep {rep + 1}: " + ", ".join(
                        f"{n} destination(s): route task {_ms(results[n][-1][1], args.count)}"
                        f" CPU, sinks {_ms(results[n][-1][2], args.count)}"
                        for n in COUNTS), flush=True)  # fmt: skip
                for rt in runtimes.values():
                    rt.pool.close_all()
        finally:
            redis_server.stop()

    def per_instance(n: int, field: int) -> float:
        return statistics.median(run[field] for run in results[n]) / args.count * 1e3

    print(f"{args.count} instances, {args.reps} repetitions, medians per instance (lean sinks):")
    for n in COUNTS:
        print(f"  {n} destination(s): wall {per_instance(n, 0):.2f} ms, route task CPU "
              f"{per_instance(n, 1):.2f} ms, sinks CPU {per_instance(n, 2):.2f} ms")  # fmt: skip
    extra = max(COUNTS) - min(COUNTS)
    router_extra = (per_instance(max(COUNTS), 1) - per_instance(min(COUNTS), 1)) / extra
    sink_extra = (per_instance(max(COUNTS), 2) - per_instance(min(COUNTS), 2)) / extra
    print(
        f"one more destination costs: the router {router_extra:.2f} ms CPU, "
        f"its sink {sink_extra:.2f} ms CPU (ratio sink/router {sink_extra / router_extra:.1f})"
    )


if __name__ == "__main__":
    main()
