"""Benchmark: transfer-syntax conversion throughput and memory of one worker.

Run: ``.venv/bin/python -m tests.bench.bench_transcode [--slices 60] [--frames 2048]``

1. Throughput: synthetic CT slices (512x512, signed 16-bit, explicit VR little
   endian) converted one after the other in this process (= one worker) to
   jpeg-ls-lossless and to jpeg2000-lossless (and rle, for information); slices
   per second, median of 3 runs.  Target: JPEG-LS at least 40 slices/s.
2. Memory: a native multi-frame instance of about 1 GB (``--frames`` frames of
   512x512x16 bit) is written to a temporary directory frame by frame, then a child
   process converts it to jpeg-ls-lossless; its peak RSS is reported.  Target:
   below 400 MB.  The files are deleted afterwards.

The machine is shared (2 cores), so numbers vary from run to run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from router.transcode import convert_file
from tests.support.synthetic import write_ct_series, write_native_multiframe

SLICES_TARGET = 40.0
RSS_TARGET_MB = 400.0

CHILD = """
import resource, sys, time
from pathlib import Path
from router.transcode import convert_file
started = time.perf_counter()
result = convert_file(Path(sys.argv[1]), Path(sys.argv[2]), "jpeg-ls-lossless")
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{result.frames} {result.bytes_in} {result.bytes_out} {seconds:.2f} {peak:.1f}")
"""


def throughput(paths: list[Path], out: Path, target: str) -> float:
    """Slices per second converting ``paths`` to ``target``; median of 3 runs."""
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for path in paths:
            convert_file(path, out, target)
        rates.append(len(paths) / (time.perf_counter() - started))
    return statistics.median(rates)


def write_large_instance(path: Path, template: Path, frames: int) -> int:
    """A native multi-frame CT-like instance built from ``template``, frame by frame."""
    slice_ = pydicom.dcmread(template)
    base = slice_.pixel_array.astype(np.int16)
    rng = np.random.default_rng(0)

    def frame(index: int) -> np.ndarray:
        noise = rng.integers(-20, 21, size=base.shape, dtype=np.int16)
        return np.roll(base + noise, index % 64, axis=0)

    return write_native_multiframe(path, frames, frame, signed=True, modality="CT",
                                   patient_id=str(slice_.PatientID),
                                   study_instance_uid=str(slice_.StudyInstanceUID))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--frames", type=int, default=2048, help="frames of the large instance")
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-transcode-") as tmp:
        root = Path(tmp)
        slices = write_ct_series(root / "ct", args.slices, seed=7)
        out = root / "out.dcm"
        convert_file(slices[0], out, "jpeg-ls-lossless")  # load codecs before timing
        for target in ("jpeg-ls-lossless", "jpeg2000-lossless", "rle"):
            rate = throughput(slices, out, target)
            goal = f">= {SLICES_TARGET:.0f}" if target == "jpeg-ls-lossless" else "-"
            ok = ""
            if target == "jpeg-ls-lossless":
                ok = "ok" if rate >= SLICES_TARGET else "MISSED"
            rows.append((f"{target}, 512x512x16 slices", f"{rate:.1f} slices/s", goal, ok))

        large = root / "large.dcm"
        size = write_large_instance(large, slices[0], args.frames)
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(large), str(root / "large-jls.dcm")],
            capture_output=True,
            text=True,
            check=True,
        )
        frames, _, bytes_out, seconds, own_peak = child.stdout.split()
        children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        peak = max(float(own_peak), children_peak)
        ok = "ok" if peak < RSS_TARGET_MB else "MISSED"
        label = f"peak RSS, {size / 1e9:.2f} GB ({frames} frames) -> jpeg-ls"
        rows.append((label, f"{peak:.0f} MB", f"< {RSS_TARGET_MB:.0f} MB", ok))
        rate = int(frames) / float(seconds)
        ratio = size / int(bytes_out)
        rows.append(("  same conversion", f"{seconds} s, {rate:.0f} frames/s", "-", ""))
        rows.append(("  output size", f"{int(bytes_out) / 1e6:.0f} MB ({ratio:.2f}:1)", "-", ""))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>24}  {'target':>9}")
    for label, value, goal, ok in rows:
        print(f"{label:<{width}}  {value:>24}  {goal:>9}  {ok}")


if __name__ == "__main__":
    main()
