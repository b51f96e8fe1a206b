"""CPU seconds spent by process trees: the benchmarks share the machine's cores
between the router, the sinks and storescu, so wall times follow their sum."""

from __future__ import annotations

import psutil


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and their children so far."""
    total = 0.0
    for pid in pids:
        process = psutil.Process(pid)
        for member in [process, *process.children(recursive=True)]:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes) so far.

    Beside the wall time of a run it tells whether the run was bound by the cores
    (busy close to cores x seconds) or by waiting.
    """
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)
