"""One delivery attempt: negotiate a transfer syntax, convert if needed, C-STORE.

The instance goes in the syntax its rule asked for, else as stored, unless the
destination accepts neither; then it is converted to the first syntax of the
destination's list that it accepted (the policy is in router/outbound_syntax.py,
the conversion in router/transcode/). Converted files are temporary: they live in
the spool's ``tmp/`` only for the duration of the attempt, so a retry converts
again and nothing derived outlives the spool file it came from.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router import metrics
from router.circuit import Circuits
from router.config import DestinationConfig
from router.file_meta import read_file_meta
from router.outbound_syntax import plan_syntaxes
from router.scu import AssociationPool, DeliveryError, PrepareError, destination_peer
from router.status import Outcome, classify, describe
from router.steps import Steps
from router.transcode import ConversionError, convert_file, syntax_name

CIRCUIT_OPEN = "destination not answering (circuit open)"
_names = itertools.count()


@dataclass(frozen=True)
class SendContext:
    """What one attempt needs to know about the destination and the process."""

    destination: DestinationConfig
    accepts: list[str]
    pool: AssociationPool
    circuits: Circuits
    scratch: Path
    """Where converted copies are written (the spool's tmp/, same file system)."""


@dataclass(frozen=True)
class Attempt:
    """The outcome of one C-STORE attempt."""

    outcome: Outcome
    status_text: str
    sent_as: str | None = None
    """Transfer syntax UID the destination received (None when nothing was sent)."""
    sent_uid: str | None = None
    """SOP Instance UID the destination received: a lossy conversion makes a new one."""
    sent_bytes: int | None = None
    """Size of the converted copy that was sent (None: sent as stored)."""


def send_once(
    ctx: SendContext, name: str, path: Path, meta: dict[str, Any]
) -> Steps[Attempt | None]:
    """One attempt to deliver ``path`` to destination ``name``; None when no slot is free.

    Steps (router/steps.py): ``run`` it, or ``run_all`` several.
    """
    dest = ctx.destination
    try:
        peer = destination_peer(dest)
    except (OSError, ValueError) as exc:  # checked at start-up; changed on disk since
        return Attempt(Outcome.FAILED, f"cannot load the TLS files: {exc}")
    file_meta = read_file_meta(path)
    stored = file_meta.transfer_syntax
    sop_class = file_meta.sop_class_uid
    allow_lossy = bool(meta.get("allow_lossy"))
    plan = plan_syntaxes(stored, meta.get("transcode"), ctx.accepts, allow_lossy)
    converted: list[Path] = []
    conversions: list[tuple[str, int]] = []
    """SOP Instance UID and size of each converted copy (sizes read before deletion)."""

    def prepare(syntax: str) -> Path:
        if syntax == stored:
            return path
        target = ctx.scratch / f"convert-{os.getpid()}-{next(_names)}.dcm"
        converted.append(target)
        uid = convert_for_sending(path, target, syntax, allow_lossy)
        conversions.append((uid, target.stat().st_size))
        return target

    started = time.monotonic()
    try:
        status, sent_as = yield from ctx.pool.send_steps(
            name, peer, sop_class, plan.proposals, prepare, plan.refusal(sop_class)
        )
    except DeliveryError as exc:
        if exc.busy:
            return None
        if exc.transient:
            ctx.circuits.failed(name)
        return Attempt(Outcome.RETRY if exc.transient else Outcome.FAILED, exc.reason)
    finally:
        metrics.forward_seconds.labels(name).observe(time.monotonic() - started)
        for leftover in converted:
            leftover.unlink(missing_ok=True)
    ctx.circuits.succeeded(name)
    uid, size = conversions[-1] if sent_as != stored and conversions else (None, None)
    return Attempt(classify(status), describe(status), sent_as, uid, size)


def convert_for_sending(source: Path, target: Path, syntax: str, allow_lossy: bool) -> str:
    """Convert ``source`` into ``target`` in ``syntax``, timed and counted.

    Returns the SOP Instance UID of the result; raises PrepareError with the reason.
    """
    started = time.monotonic()
    try:
        result = convert_file(source, target, syntax, allow_lossy=allow_lossy)
    except ConversionError as exc:
        metrics.transcode_failures.labels(syntax_name(syntax)).inc()
        raise PrepareError(f"cannot convert to {syntax_name(syntax)}: {exc.reason}") from exc
    metrics.transcode_seconds.labels(syntax_name(syntax)).observe(time.monotonic() - started)
    return result.sop_instance_uid
