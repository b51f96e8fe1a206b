"""Keep a process's ruleset current: reload edited rule files without a restart.

A changed ruleset is compiled (which lints it) before it replaces the running
one; the swap is a single reference assignment, so an instance is always routed
by exactly one complete ruleset. An invalid edit is refused, logged, counted and
audited, and the previous ruleset keeps routing.

Every router process that holds a ruleset also runs a :class:`RulesWatcher`, so an
edit is loaded or refused within about one interval even when no instance arrives
and nothing probes ``/readyz``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from router import metrics
from router.logs import get_logger
from router.rules.loader import Destinations, Ruleset, RulesetError, load_ruleset, rule_files
from router.rules.yamlsource import SourceError

log = get_logger(__name__)

CHECK_INTERVAL_S = 2.0
MIN_WATCH_INTERVAL_S = 0.1
"""A watcher never checks more often than this, whatever its ruleset's interval."""
WATCH_STOP_TIMEOUT_S = 5.0
MAX_LOGGED_PROBLEMS = 20
LINT_HINT = "run `dicom-router rules lint` for the messages"

Signature = tuple[tuple[str, int, int, int], ...]
OnReload = Callable[[str, str, str], None]
"""Called with (outcome, version, detail) after each load attempt."""


class AuditTrail(Protocol):
    """The part of :class:`router.audit.AuditLog` that records reloads."""

    def emit(self, event: str, **fields: Any) -> None: ...


def audit_reloads(audit: AuditTrail) -> OnReload:
    """An ``on_reload`` that writes each load or refusal as a ``rules_reloaded`` event.

    The audit trail is where the refusal's full messages belong: they may quote a
    rule's operands, which the application log must not carry.
    """

    def on_reload(outcome: str, version: str, detail: str) -> None:
        audit.emit("rules_reloaded", status=outcome, ruleset_version=version or None, detail=detail)

    return on_reload


def problem_locations(problems: Sequence[SourceError]) -> dict[str, Any]:
    """Log fields naming where the problems are (``file:line``), never what they say.

    A problem's message quotes the rule it is about, and a rule may name a patient
    (``PatientID: {regex: ...}``); application logs must not carry that. The
    messages are in the ``rules_reloaded`` audit event and in ``rules lint``.
    """
    return {
        "problems": [f"{p.file}:{p.line}" for p in problems[:MAX_LOGGED_PROBLEMS]],
        "problem_count": len(problems),
        "hint": LINT_HINT,
    }


def _signature(path: Path) -> Signature:
    """What the rule files look like on disk; any edit, swap or chmod changes it."""
    entries = []
    try:
        files = rule_files(path)
    except OSError:
        return ()
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        entries.append((str(file), stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size))
    return tuple(entries)


class LiveRuleset:
    """The current ruleset of this process, re-read when its files change."""

    def __init__(
        self,
        path: Path,
        destinations: Destinations,
        on_reload: OnReload | None = None,
        interval_s: float = CHECK_INTERVAL_S,
        salt_available: bool | None = None,
    ) -> None:
        self.path = path
        self.destinations = destinations
        self.salt_available = salt_available
        self.interval_s = interval_s
        self.on_reload = on_reload
        self._ruleset: Ruleset | None = None
        self._signature: Signature = ()
        self._attempted = False
        self._checked = 0.0
        self._lock = threading.Lock()
        self._last_problems: list[SourceError] = []

    def current(self) -> Ruleset:
        """The ruleset to route with; raises RulesetError if none has ever loaded."""
        if self._ruleset is None or time.monotonic() - self._checked >= self.interval_s:
            self.refresh()
        if self._ruleset is None:
            raise RulesetError(self._last_problems)
        return self._ruleset

    def refresh(self) -> None:
        """Look at the files now, whatever the interval: load a changed ruleset or refuse it."""
        with self._lock:
            self._checked = time.monotonic()
            self._maybe_reload()

    def _maybe_reload(self) -> None:
        # Files unchanged since the last attempt, loaded or refused: nothing new to
        # say. A broken ruleset is refused (logged, counted, audited) once per edit,
        # not on every check.
        signature = _signature(self.path)
        if self._attempted and signature == self._signature:
            return
        self._attempted = True
        self._signature = signature
        try:
            ruleset = load_ruleset(self.path, self.destinations, self.salt_available)
        except RulesetError as exc:
            self._refuse(exc.problems)
            return
        if self._ruleset is not None and ruleset.version == self._ruleset.version:
            return
        self._swap(ruleset)

    def _refuse(self, problems: list[SourceError]) -> None:
        self._last_problems = problems
        metrics.rules_reload.labels("refused").inc()
        log.error(
            "ruleset refused; previous ruleset stays in use",
            previous_version=self._ruleset.version if self._ruleset else None,
            **problem_locations(problems),
        )
        if self.on_reload:
            self.on_reload("refused", "", "; ".join(str(p) for p in problems[:5]))

    def _swap(self, ruleset: Ruleset) -> None:
        previous = self._ruleset
        self._ruleset = ruleset
        metrics.rules_reload.labels("loaded").inc()
        if previous is not None:
            metrics.ruleset_info.labels(previous.version).set(0)
        metrics.ruleset_info.labels(ruleset.version).set(1)
        log.info("ruleset loaded", version=ruleset.version, rules=len(ruleset.rules))
        if self.on_reload:
            self.on_reload("loaded", ruleset.version, f"{len(ruleset.rules)} rules")


class RulesWatcher:
    """Checks a :class:`LiveRuleset`'s files from a daemon thread, every interval.

    Without it an edit is only noticed when something asks for the ruleset (an
    instance to route, a ``/readyz`` probe): a broken edit made at night would be
    reported only with the next instance, and processes without traffic would
    keep showing the old version in ``ruleset_info``. The thread never raises: a
    failed check is logged and tried again at the next interval.
    """

    def __init__(self, rules: LiveRuleset, interval_s: float | None = None) -> None:
        self.rules = rules
        wanted = rules.interval_s if interval_s is None else interval_s
        self.interval_s = max(MIN_WATCH_INTERVAL_S, wanted)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RulesWatcher:
        """Check at once, then every interval, until :meth:`stop`; returns self."""
        self._thread = threading.Thread(target=self._run, name="rules-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = WATCH_STOP_TIMEOUT_S) -> None:
        """End the thread, waiting up to ``timeout_s`` for a check in progress."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """One check; any failure is logged (its kind only) and never raised."""
        try:
            self.rules.refresh()
        except Exception as exc:
            # The kind only: an exception's text may quote a rule's operands.
            log.error("rule files could not be checked; trying again", error=type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.interval_s)
