"""Routing rules: loading, compiling and evaluating the YAML rule files."""

from router.rules.conditions import InstanceView
from router.rules.engine import Decision, decide
from router.rules.loader import Ruleset, RulesetError, load_ruleset

__all__ = ["Decision", "InstanceView", "Ruleset", "RulesetError", "decide", "load_ruleset"]
