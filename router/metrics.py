"""Every Prometheus metric of the router, in one place, with the contract's names.

The SCP and the worker processes all write here. When ``PROMETHEUS_MULTIPROC_DIR``
is set before this module is first imported (``dicom-router serve`` does that),
the values live in memory-mapped files that the exporter sums across processes;
otherwise they live in this process only (unit tests, ``rules`` commands).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "dicom_router_"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

instances_received = Counter(
    PREFIX + "instances_received",
    "Instances accepted (spooled and enqueued) by the SCP.",
    ["calling_ae"],
)
instances_rejected = Counter(
    PREFIX + "instances_rejected",
    "C-STORE requests answered with a failure status, by reason.",
    ["reason"],
)
bytes_received = Counter(PREFIX + "bytes_received", "Dataset bytes accepted by the SCP.")
rule_matches = Counter(PREFIX + "rule_matches", "Instances matched, by rule.", ["rule"])
instances_unmatched = Counter(PREFIX + "instances_unmatched", "Instances no rule matched.")
instances_unroutable = Counter(
    PREFIX + "instances_unroutable",
    "Accepted instances set aside in spool/unroutable/: unreadable, or the rules could not "
    "be applied to their values.",
    ["reason"],
)
forward = Counter(
    PREFIX + "forward",
    "C-STORE attempts to destinations, by outcome: success, warning (stored), retry "
    "(failed; another attempt follows), failed (failed; the destination is given up: "
    "dead letter or alternate).",
    ["destination", "outcome"],
)
already_delivered = Counter(
    PREFIX + "already_delivered",
    "Deliveries not sent because the destination had this very content from before "
    "(an instance received again unchanged, or a redelivered task).",
    ["destination"],
)
forward_seconds = Histogram(
    PREFIX + "forward_seconds",
    "Time of one C-STORE to a destination, association set-up included.",
    ["destination"],
    buckets=_SEND_BUCKETS,
)
end_to_end_seconds = Histogram(
    PREFIX + "end_to_end_seconds",
    "Time from receipt by the SCP to delivery at a destination.",
    ["destination"],
    buckets=_LATENCY_BUCKETS,
)
bytes_forwarded = Counter(
    PREFIX + "bytes_forwarded",
    "Bytes delivered to destinations, as sent (after any conversion).",
    ["destination"],
)
transcode_seconds = Histogram(
    PREFIX + "transcode_seconds",
    "Time to convert one instance to another transfer syntax, by target syntax.",
    ["syntax"],
    buckets=_SEND_BUCKETS,
)
transcode_failures = Counter(
    PREFIX + "transcode_failures",
    "Conversions that could not be done (no codec, lossy not allowed, bad pixel data).",
    ["syntax"],
)
deliveries_resumed = Counter(
    PREFIX + "deliveries_resumed",
    "Deliveries queued again because their task was lost (see router/stalled.py).",
    ["destination"],
)
instances_resumed = Counter(
    PREFIX + "instances_resumed",
    "Acknowledged instances routed again because their route task was lost.",
)
associations_active = Gauge(
    PREFIX + "associations_active",
    "Open associations, inbound and outbound.",
    ["direction"],
    multiprocess_mode="livesum",
)
rules_reload = Counter(
    PREFIX + "rules_reload", "Ruleset loads, by outcome (loaded, refused).", ["outcome"]
)
ruleset_info = Gauge(
    PREFIX + "ruleset_info",
    "The ruleset version in use (1 for the current version).",
    ["version"],
    multiprocess_mode="livemax",
)
audit_syslog_sent = Counter(
    PREFIX + "audit_syslog_sent", "DICOM audit messages delivered to the syslog collector."
)
audit_write_failures = Counter(
    PREFIX + "audit_write_failures",
    "Audit events that could not be written to the audit file after what they record had "
    "happened (a delivery, an admission): the action stands, its event is missing.",
)
audit_syslog_failures = Counter(
    PREFIX + "audit_syslog_failures",
    "Failed attempts to reach or write to the syslog collector (messages stay queued).",
)
audit_syslog_queue_errors = Counter(
    PREFIX + "audit_syslog_queue_errors",
    "DICOM audit messages that could not be queued (the JSON audit line was written).",
)
