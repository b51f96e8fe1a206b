"""Decide where one instance goes: pure evaluation of a compiled :class:`Ruleset`.

Rules are tried in order; the first match stops evaluation unless it says
``continue: true``. Destinations chosen by several matching rules are sent to
once, attributed to the first rule that chose them.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.rules.conditions import InstanceView
from router.rules.loader import Ruleset


@dataclass(frozen=True)
class Decision:
    """The outcome of routing one instance."""

    matched_rules: tuple[str, ...]
    destinations: dict[str, str]
    """destination name -> name of the rule that chose it"""

    @property
    def unmatched(self) -> bool:
        return not self.matched_rules


def decide(ruleset: Ruleset, view: InstanceView) -> Decision:
    """Evaluate the ruleset against one instance; does no I/O."""
    matched: list[str] = []
    destinations: dict[str, str] = {}
    for rule in ruleset.rules:
        if not rule.predicate(view):
            continue
        matched.append(rule.name)
        for dest in rule.forward:
            destinations.setdefault(dest, rule.name)
        if not rule.continue_:
            break
    return Decision(tuple(matched), destinations)
