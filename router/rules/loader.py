"""Load rule files into a compiled :class:`Ruleset`, or say exactly what is wrong.

A ruleset is either wholly valid or refused: every problem found in every file is
reported as ``file:line: message`` and nothing is half-loaded. Files of a folder
are read in file-name order (``10-ct.yaml`` before ``20-mr.yaml``), rules in the
order written; ``*_test.yaml`` files are rule tests, not rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.rules.actions import CompiledActions, compile_actions
from router.rules.conditions import Clause, CompileErrors, Predicate, compile_match
from router.rules.yamlsource import LineDict, SourceError, line_of, load_yaml
from router.transcode import can_encode, syntax_name

TEST_SUFFIX = "_test.yaml"


class RuleModel(BaseModel):
    """One rule as written; ``match`` is compiled separately to keep its line numbers."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    description: str = ""
    enabled: bool = True
    match: Any = None
    actions: list[Any] = Field(default_factory=list)
    forward: list[str]
    continue_: bool = Field(False, alias="continue")


class RuleFileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Any] = Field(default_factory=list)
    unmatched: Literal["keep", "discard"] = "keep"


@dataclass(frozen=True)
class CompiledRule:
    name: str
    predicate: Predicate
    forward: tuple[str, ...]
    continue_: bool
    actions: CompiledActions
    file: str
    line: int
    catch_all: bool
    enabled: bool = True
    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True)
class Ruleset:
    """An immutable, compiled set of rules; swapped whole, never edited in place."""

    rules: tuple[CompiledRule, ...]
    unmatched: Literal["keep", "discard"]
    version: str
    files: tuple[str, ...]


class RulesetError(Exception):
    """The ruleset is invalid; ``problems`` lists each as a located message."""

    def __init__(self, problems: list[SourceError]) -> None:
        ordered = sorted(problems, key=lambda p: (p.file, p.line))
        super().__init__("\n".join(str(p) for p in ordered))
        self.problems = ordered


def rule_files(path: Path) -> list[Path]:
    """The rule files at ``path``: the file itself, or a folder's ``*.yaml``/``*.yml``."""
    if path.is_dir():
        found = [
            p
            for p in sorted(path.iterdir())
            if p.suffix in (".yaml", ".yml") and not p.name.endswith(TEST_SUFFIX) and p.is_file()
        ]
        return found
    return [path]


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return f"{loc}: {msg}" if loc else msg


def _compile_rule(
    raw: Any, line: int, file: str, problems: list[SourceError]
) -> CompiledRule | None:
    if not isinstance(raw, LineDict):
        problems.append(SourceError(file, line, "a rule must be a mapping with name and forward"))
        return None
    try:
        model = RuleModel.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(SourceError(file, line_of(raw, err["loc"], line), _describe(err)))
        return None
    errors = CompileErrors()
    match_line = raw.key_lines.get("match", line)
    predicate = compile_match(model.match, match_line, errors)
    for problem in errors.problems:
        problems.append(SourceError(file, problem.line, f"rule {model.name!r}: {problem.message}"))
    action_errors = CompileErrors()
    actions = compile_actions(raw.get("actions"), raw.key_lines.get("actions", line), action_errors)
    for problem in action_errors.problems:
        problems.append(SourceError(file, problem.line, f"rule {model.name!r}: {problem.message}"))
    if actions.transfer_syntax is not None and not can_encode(actions.transfer_syntax):
        problems.append(
            SourceError(
                file,
                raw.key_lines.get("actions", line),
                f"rule {model.name!r}: transcode: no encoder is installed for "
                f"{syntax_name(actions.transfer_syntax)}",
            )
        )
    return CompiledRule(
        name=model.name,
        predicate=predicate,
        forward=tuple(model.forward),
        continue_=model.continue_,
        actions=actions,
        file=file,
        line=line,
        catch_all=not model.match and model.enabled,
        enabled=model.enabled,
        clauses=tuple(errors.clauses),
    )


Destinations = Collection[str] | Mapping[str, Collection[str]]
"""Destination names, or names mapped to the transfer syntax UIDs each accepts."""


def _check_semantics(
    rules: list[tuple[CompiledRule, bool]],
    destinations: Destinations | None,
    problems: list[SourceError],
    salt_available: bool | None,
) -> None:
    seen: dict[str, CompiledRule] = {}
    stopper: CompiledRule | None = None
    for rule, enabled in rules:
        if rule.name in seen:
            first = seen[rule.name]
            problems.append(
                SourceError(
                    rule.file,
                    rule.line,
                    f"duplicate rule name {rule.name!r} (first at {first.file}:{first.line})",
                )
            )
        seen.setdefault(rule.name, rule)
        if destinations is not None:
            for dest in rule.forward:
                if dest not in destinations:
                    problems.append(
                        SourceError(
                            rule.file,
                            rule.line,
                            f"rule {rule.name!r}: unknown destination {dest!r}",
                        )
                    )
                    continue
                accepted = destinations[dest] if isinstance(destinations, Mapping) else ()
                syntax = rule.actions.transfer_syntax
                if syntax is not None and accepted and syntax not in accepted:
                    problems.append(
                        SourceError(
                            rule.file,
                            rule.line,
                            f"rule {rule.name!r}: transcodes to {syntax}, which destination "
                            f"{dest!r} does not accept",
                        )
                    )
        if salt_available is False and rule.actions.needs_salt:
            problems.append(
                SourceError(
                    rule.file,
                    rule.line,
                    f"rule {rule.name!r}: hash, uid_remap and deidentify need a secret salt; "
                    "set salt_file or ROUTER_SALT",
                )
            )
        if not enabled:
            continue
        if stopper is not None:
            problems.append(
                SourceError(
                    rule.file,
                    rule.line,
                    f"rule {rule.name!r} can never be reached: rule {stopper.name!r} "
                    f"({stopper.file}:{stopper.line}) matches everything and does not continue",
                )
            )
        elif rule.catch_all and not rule.continue_:
            stopper = rule


def load_ruleset(
    path: Path, destinations: Destinations | None = None, salt_available: bool | None = None
) -> Ruleset:
    """Read and compile every rule file at ``path``; raise :class:`RulesetError` if any is bad.

    ``destinations`` (the names in the router config, optionally with the transfer
    syntaxes each accepts) lets unknown destinations and impossible conversions be
    caught here rather than at delivery time; ``salt_available=False`` refuses keyed
    actions that would have no secret.
    """
    problems: list[SourceError] = []
    files = rule_files(path)
    if not files or not all(f.exists() for f in files):
        raise RulesetError([SourceError(path, 1, "no rule files found")])
    digest = hashlib.sha256()
    compiled: list[tuple[CompiledRule, bool]] = []
    keep = False
    any_file = False
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(SourceError(file, 1, f"cannot read rule file: {exc}"))
            continue
        digest.update(file.name.encode() + b"\0" + text.encode() + b"\0")
        try:
            tree = load_yaml(text, file)
        except SourceError as exc:
            problems.append(exc)
            continue
        if tree is None:
            if not path.is_dir():  # one file named: say what is wrong with it
                problems.append(SourceError(file, 1, "the file is empty (no rules)"))
            continue
        if not isinstance(tree, LineDict):
            problems.append(SourceError(file, 1, "a rule file is a mapping with a 'rules' list"))
            continue
        try:
            model = RuleFileModel.model_validate(tree)
        except ValidationError as exc:
            for err in exc.errors():
                problems.append(SourceError(file, line_of(tree, err["loc"]), _describe(err)))
            continue
        any_file = True
        keep = keep or model.unmatched == "keep" or "unmatched" not in tree
        raw_rules = tree.get("rules") or []
        lines = getattr(raw_rules, "item_lines", [1] * len(raw_rules))
        for raw, line in zip(raw_rules, lines, strict=True):
            rule = _compile_rule(raw, line, str(file), problems)
            if rule is not None:
                compiled.append((rule, rule.enabled))
    _check_semantics(compiled, destinations, problems, salt_available)
    if problems:
        raise RulesetError(problems)
    if not any_file:
        raise RulesetError([SourceError(path, 1, "no rule files found")])
    return Ruleset(
        rules=tuple(rule for rule, enabled in compiled if enabled),
        unmatched="keep" if keep else "discard",
        version=digest.hexdigest()[:12],
        files=tuple(str(f) for f in files),
    )
