"""Keep a worker's ruleset current: reload edited rule files without a restart.

A changed ruleset is compiled (which lints it) before it replaces the running
one; the swap is a single reference assignment, so an instance is always routed
by exactly one complete ruleset. An invalid edit is refused, logged, counted and
audited, and the previous ruleset keeps routing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from router import metrics
from router.logs import get_logger
from router.rules.loader import Destinations, Ruleset, RulesetError, load_ruleset, rule_files
from router.rules.yamlsource import SourceError

log = get_logger(__name__)

CHECK_INTERVAL_S = 2.0

Signature = tuple[tuple[str, float, int], ...]
OnReload = Callable[[str, str, str], None]
"""Called with (outcome, version, detail) after each load attempt."""


def _signature(path: Path) -> Signature:
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
        entries.append((str(file), stat.st_mtime, stat.st_size))
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
        self._checked = 0.0
        self._lock = threading.Lock()
        self._last_problems: list[SourceError] = []

    def current(self) -> Ruleset:
        """The ruleset to route with; raises RulesetError if none has ever loaded."""
        now = time.monotonic()
        if self._ruleset is None or now - self._checked >= self.interval_s:
            with self._lock:
                self._checked = now
                self._maybe_reload()
        if self._ruleset is None:
            raise RulesetError(self._last_problems)
        return self._ruleset

    def _maybe_reload(self) -> None:
        signature = _signature(self.path)
        if self._ruleset is not None and signature == self._signature:
            return
        self._signature = signature
        try:
            ruleset = load_ruleset(self.path, self.destinations, self.salt_available)
        except RulesetError as exc:
            self._last_problems = exc.problems
            metrics.rules_reload.labels("refused").inc()
            log.error(
                "ruleset refused; previous ruleset stays in use",
                problems=[str(p) for p in exc.problems][:20],
                previous_version=self._ruleset.version if self._ruleset else None,
            )
            if self.on_reload:
                self.on_reload("refused", "", "; ".join(str(p) for p in exc.problems[:5]))
            return
        if self._ruleset is not None and ruleset.version == self._ruleset.version:
            return
        previous = self._ruleset
        self._ruleset = ruleset
        metrics.rules_reload.labels("loaded").inc()
        if previous is not None:
            metrics.ruleset_info.labels(previous.version).set(0)
        metrics.ruleset_info.labels(ruleset.version).set(1)
        log.info("ruleset loaded", version=ruleset.version, rules=len(ruleset.rules))
        if self.on_reload:
            self.on_reload("loaded", ruleset.version, f"{len(ruleset.rules)} rules")
