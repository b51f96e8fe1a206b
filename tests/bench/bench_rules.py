"""Benchmark: evaluating 100 compiled rules against one instance's header.

Run: ``.venv/bin/python -m tests.bench.bench_rules [--rules 100] [--reps 2000]``

The ruleset mixes the operators ops teams use (equals, in, regex, startswith,
numeric and date comparisons, a sequence path, not/any) so that no rule matches and
every rule is tried: the worst case for one instance. Prints the median and the
95th percentile of one full evaluation; the target is a median of at most 1 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pydicom import dcmread

from router.rules import InstanceView, decide, load_ruleset
from tests.support.synthetic import write_ct_series

RULE = """
  - name: rule-{n}
    match:
      all:
        - Modality: {{in: [MR, PT]}}
        - StudyDescription: {{regex: "(?i)protocol-{n}"}}
        - calling_ae: {{startswith: SCANNER{n}}}
        - SeriesNumber: {{gt: {n}}}
        - StudyDate: {{ge: 2001-01-01}}
        - "RequestAttributesSequence[*].ScheduledProcedureStepID": {{equals: SPS{n}}}
      not:
        - PatientName: {{startswith: "TEST^"}}
    forward: [pacs]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--reps", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rules = root / "rules.yaml"
        rules.write_text("rules:" + "".join(RULE.format(n=n) for n in range(args.rules)))
        ruleset = load_ruleset(rules, ["pacs"])
        (ct,) = write_ct_series(root / "ct", 1, rows=16, cols=16)
        header = dcmread(ct, stop_before_pixels=True)
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            # A new view each time: nothing read for one instance is reused for the next.
            decision = decide(ruleset, InstanceView(header, calling_ae="CT01"))
            times.append(time.perf_counter() - start)
        assert decision.unmatched
    times.sort()
    median_ms = statistics.median(times) * 1000
    p95_ms = times[int(len(times) * 0.95)] * 1000
    print(f"{args.rules} rules, one CT header, {args.reps} evaluations")
    print(f"median {median_ms:.3f} ms, p95 {p95_ms:.3f} ms (target: median <= 1 ms)")


if __name__ == "__main__":
    main()
