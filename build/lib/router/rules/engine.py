"""Decide where one instance goes: pure evaluation of a compiled :class:`Ruleset`.

Rules are tried in order; the first match stops evaluation unless it says
``continue: true``. Destinations chosen by several matching rules are sent to
once, attributed to the first rule that chose them.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.rules.actions import CompiledActions
from router.rules.conditions import InstanceView
from router.rules.loader import Ruleset


@dataclass(frozen=True)
class Decision:
    """The outcome of routing one instance."""

    matched_rules: tuple[str, ...]
    destinations: dict[str, str]
    """destination name -> name of the rule that chose it"""
    actions: dict[str, CompiledActions]
    """rule name -> its actions, for every matched rule"""

    @property
    def unmatched(self) -> bool:
        return not self.matched_rules


def destinations_by_rule(decision: Decision) -> dict[str, list[str]]:
    """Group the chosen destinations by the rule whose output each receives."""
    groups: dict[str, list[str]] = {}
    for dest, rule_name in decision.destinations.items():
        groups.setdefault(rule_name, []).append(dest)
    return groups


def decide(ruleset: Ruleset, view: InstanceView) -> Decision:
    """Evaluate the ruleset against one instance; does no I/O."""
    matched: list[str] = []
    destinations: dict[str, str] = {}
    actions: dict[str, CompiledActions] = {}
    for rule in ruleset.rules:
        if not rule.predicate(view):
            continue
        matched.append(rule.name)
        actions[rule.name] = rule.actions
        for dest in rule.forward:
            destinations.setdefault(dest, rule.name)
        if not rule.continue_:
            break
    return Decision(tuple(matched), destinations, actions)
