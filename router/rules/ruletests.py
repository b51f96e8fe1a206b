"""Rule tests (``*_test.yaml``) and dry-run explanations, without any server.

A rule test states, for an input instance (tags written in the test, or a DICOM
file) and a calling AE, which destinations it must reach and what the copy each
destination receives must contain. ``dicom-router rules test`` runs them, so a rule
edit can be checked before it reaches a hospital's traffic, the way unit tests
check code.

Test file format::

    cases:
      - name: CT head goes to PACS with the hospital name set
        calling_ae: CT01
        called_ae: ROUTER                                # default: the config's ae_title
        input:
          tags: {Modality: CT, StudyDescription: HEAD}   # or  file: sample.dcm
        expect:
          destinations: [pacs_main]                      # exactly these
          tags: {pacs_main: {InstitutionName: General Hospital}}
          absent: {research: [PatientName]}

A misspelt key would silently check nothing and pass, so unknown keys, and a case
that checks nothing, are reported as ``file:line: message`` and fail the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from router.config import RouterConfig
from router.rules.actions import ActionContext
from router.rules.conditions import InstanceView, resolve_element
from router.rules.engine import Decision, decide, destinations_by_rule
from router.rules.loader import TEST_SUFFIX, Ruleset
from router.rules.yamlsource import LineDict, LineList, SourceError, load_yaml
from router.transcode import syntax_name, syntax_uid

TEST_SALT = b"rule-test-salt"
"""Used by rule tests when no salt is configured, so keyed actions still run."""

DEFAULT_CALLED_AE: str = RouterConfig.model_fields["ae_title"].default
"""The called AE of a case without ``called_ae`` when no config says the router's own."""

FILE_KEYS = ("cases",)
CASE_KEYS = ("name", "calling_ae", "called_ae", "peer_ip", "input", "expect")
INPUT_KEYS = ("tags", "file")
EXPECT_KEYS = ("destinations", "tags", "absent", "transfer_syntax")


@dataclass
class CaseResult:
    """One case's outcome: ``failures`` from running it, ``problems`` in how it is written."""

    file: str
    line: int
    name: str
    failures: list[str] = field(default_factory=list)
    problems: list[SourceError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.problems


def is_test_file(path: Path) -> bool:
    """A path naming a rule test file (``NAME_test.yaml``) rather than rules."""
    return path.name.endswith(TEST_SUFFIX) and not path.is_dir()


def test_files(path: Path) -> list[Path]:
    """``*_test.yaml`` files beside the rules at ``path`` (a folder or one rule file)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.name.endswith(TEST_SUFFIX))
    sibling = path.with_name(path.stem + TEST_SUFFIX)
    return [sibling] if sibling.exists() else []


def dataset_from_tags(tags: dict[str, Any]) -> Dataset:
    """A dataset with the given keyword/tag values, VRs from the DICOM dictionary."""
    ds = Dataset()
    for name, value in tags.items():
        tag = resolve_element(str(name))
        if tag is None:
            raise ValueError(f"unknown keyword or malformed tag {name!r}")
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            vr = "LO"
        if isinstance(value, list):
            value = [str(v) for v in value]
        elif value is not None and vr not in ("US", "UL", "SS", "SL", "FL", "FD"):
            value = str(value)
        ds.add_new(tag, vr, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def outputs(
    decision: Decision, dataset: Dataset, ctx: ActionContext
) -> dict[str, tuple[Dataset, str]]:
    """Destination -> (the dataset it would receive, its transfer syntax UID)."""
    source_syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", ""))
    result: dict[str, tuple[Dataset, str]] = {}
    for rule_name, dests in destinations_by_rule(decision).items():
        actions = decision.actions[rule_name]
        copy = deepcopy(dataset)
        actions.apply(copy, ctx)
        syntax = actions.transfer_syntax or source_syntax
        for dest in dests:
            result[dest] = (copy, syntax)
    return result


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


# --- how a case is written ---------------------------------------------------------------
def _unknown_keys(
    node: LineDict, known: tuple[str, ...], where: str, file: str
) -> list[SourceError]:
    prefix = f"{where}: " if where else ""
    return [
        SourceError(file, node.key_lines.get(key, node.line),
                    f"{prefix}unknown key {key!r}; known: {', '.join(known)}")
        for key in node
        if key not in known
    ]  # fmt: skip


def _check_input(case: LineDict, line: int, file: str, problems: list[SourceError]) -> bool:
    """Problems in ``input``; False when the case cannot be built from it."""
    spec = case.get("input")
    where = case.key_lines.get("input", line)
    if spec is None:
        return True
    if not isinstance(spec, LineDict):
        problems.append(SourceError(file, where, "input: expected a mapping with tags or file"))
        return False
    problems.extend(_unknown_keys(spec, INPUT_KEYS, "input", file))
    if "tags" in spec and "file" in spec:
        problems.append(SourceError(file, where, "input: give tags or file, not both"))
        return False
    if not isinstance(spec.get("tags") or {}, dict):
        problems.append(
            SourceError(file, where, "input.tags: expected a mapping of element to value")
        )
        return False
    return True


def _check_names(names: Any, where: str, line: int, file: str, problems: list[SourceError]) -> None:
    """Element names an expectation reads: a misspelt one would make ``absent`` always hold."""
    lines = getattr(names, "key_lines", None) or {}
    items = getattr(names, "item_lines", None) or []
    for i, name in enumerate(names):
        if resolve_element(str(name)) is None:
            at = lines.get(name) or (items[i] if i < len(items) else line)
            problems.append(
                SourceError(file, at, f"{where}: unknown keyword or malformed tag {name!r}")
            )


def _check_per_destination(
    expect: LineDict, key: str, shape: type, file: str, problems: list[SourceError]
) -> bool:
    """``tags``, ``absent``, ``transfer_syntax``: a mapping of destination to a ``shape``."""
    node = expect.get(key)
    line = expect.key_lines.get(key, expect.line)
    if node is None:
        return True
    if not isinstance(node, dict):
        problems.append(
            SourceError(file, line, f"expect.{key}: expected a mapping of destination to values")
        )
        return False
    ok = True
    for dest, value in node.items():
        at = getattr(node, "key_lines", {}).get(dest, line)
        if not isinstance(value, shape):
            problems.append(
                SourceError(file, at, f"expect.{key}.{dest}: expected {_SHAPES[shape]}")
            )
            ok = False
        elif shape is not str:
            _check_names(value, f"expect.{key}.{dest}", at, file, problems)
    return ok


_SHAPES: dict[type, str] = {
    dict: "a mapping of element to value",
    list: "a list of elements",
    str: "a transfer syntax name or UID",
}
_EXPECT_SHAPES: dict[str, type] = {"tags": dict, "absent": list, "transfer_syntax": str}


def _check_expect(case: LineDict, line: int, file: str, problems: list[SourceError]) -> bool:
    """Problems in ``expect``, including a case that checks nothing; False when it cannot run."""
    expect = case.get("expect")
    where = case.key_lines.get("expect", line)
    known = ", ".join(EXPECT_KEYS)
    if expect is None:
        problems.append(SourceError(file, line, f"the case checks nothing: expect one of {known}"))
        return True
    if not isinstance(expect, LineDict):
        problems.append(SourceError(file, where, f"expect: expected a mapping with {known}"))
        return False
    unknown = _unknown_keys(expect, EXPECT_KEYS, "expect", file)
    problems.extend(unknown)
    ok = True
    if not isinstance(expect.get("destinations") or [], list):
        at = expect.key_lines.get("destinations", where)
        problems.append(SourceError(file, at, "expect.destinations: expected a list of names"))
        ok = False
    for key, shape in _EXPECT_SHAPES.items():
        ok = _check_per_destination(expect, key, shape, file, problems) and ok
    checks = "destinations" in expect or any(expect.get(key) for key in _EXPECT_SHAPES)
    if not checks and not unknown:  # a misspelt key is the problem to report, not this
        problems.append(SourceError(file, where, f"the case checks nothing: expect one of {known}"))
    return ok


def case_problems(case: Any, line: int, file: str) -> tuple[list[SourceError], bool]:
    """What is wrong in how a case is written, and whether it can run all the same.

    Unknown keys and a case that checks nothing still let the case run, since its
    own failures help to see what was meant; values of the wrong shape do not.
    """
    if not isinstance(case, LineDict):
        return [SourceError(file, line, "a case is a mapping with input and expect")], False
    problems = _unknown_keys(case, CASE_KEYS, "", file)
    runnable = _check_input(case, line, file, problems)
    runnable = _check_expect(case, line, file, problems) and runnable
    return problems, runnable


# --- running a case -------------------------------------------------------------------------
def _check_case(
    case: Any, base: Path, ruleset: Ruleset, salt: bytes, called_ae: str, res: CaseResult
) -> None:
    spec = case.get("input") or {}
    expect = case.get("expect") or {}
    dataset: Dataset
    if "file" in spec:
        dataset = dcmread(base / str(spec["file"]))
    else:
        dataset = dataset_from_tags(dict(spec.get("tags") or {}))
    calling = str(case.get("calling_ae", ""))
    view = InstanceView(dataset, calling, str(case.get("called_ae", called_ae)),
                        str(case.get("peer_ip", "127.0.0.1")))  # fmt: skip
    decision = decide(ruleset, view)
    got = outputs(decision, dataset, ActionContext(view.calling_ae, view.called_ae,
                                                   view.peer_ip, salt))  # fmt: skip
    if "destinations" in expect:
        wanted = sorted(str(d) for d in expect["destinations"] or [])
        if sorted(got) != wanted:
            res.failures.append(f"destinations: expected {wanted}, got {sorted(got)}")
    for dest, tags in (expect.get("tags") or {}).items():
        if dest not in got:
            res.failures.append(f"tags: {dest} receives nothing")
            continue
        out = got[dest][0]
        for name, wanted_value in tags.items():
            tag = resolve_element(str(name))
            elem = out.get(tag) if tag is not None else None
            actual = _text(elem.value) if elem is not None else None
            if actual != _text(wanted_value):
                res.failures.append(f"{dest}: {name} expected {wanted_value!r}, got {actual!r}")
    for dest, names in (expect.get("absent") or {}).items():
        if dest in got:
            for name in names:
                tag = resolve_element(str(name))
                if tag is not None and tag in got[dest][0]:
                    res.failures.append(f"{dest}: {name} should be absent")
    for dest, syntax in (expect.get("transfer_syntax") or {}).items():
        wanted_uid = syntax_uid(str(syntax)) or str(syntax)
        if dest not in got:
            res.failures.append(f"transfer_syntax: {dest} receives nothing")
        elif got[dest][1] != wanted_uid:
            res.failures.append(f"{dest}: transfer syntax expected {syntax}, got {got[dest][1]}")


def run_test_file(
    file: Path, ruleset: Ruleset, salt: bytes, called_ae: str = DEFAULT_CALLED_AE
) -> list[CaseResult]:
    """Run every case of one test file; a broken file is one failed result.

    ``called_ae`` is the router's own AE title, used by cases that do not name one.
    """
    try:
        tree = load_yaml(file.read_text(encoding="utf-8"), file)
    except SourceError as exc:
        return [CaseResult(str(file), exc.line, "(file)", [exc.message])]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        return [CaseResult(str(file), 1, "(file)", [f"cannot read: {reason}"])]
    cases = tree.get("cases") if isinstance(tree, LineDict) else None
    if not isinstance(cases, LineList):
        return [CaseResult(str(file), 1, "(file)", ["expected a 'cases' list"])]
    results = []
    unknown = _unknown_keys(tree, FILE_KEYS, "", str(file))
    if unknown:
        results.append(CaseResult(str(file), unknown[0].line, "(file)", problems=unknown))
    for case, line in zip(cases, cases.item_lines, strict=True):
        name = str(case.get("name", f"case at line {line}")) if isinstance(case, dict) else "?"
        result = CaseResult(str(file), line, name)
        result.problems, runnable = case_problems(case, line, str(file))
        try:
            if runnable:
                _check_case(case, file.parent, ruleset, salt, called_ae, result)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            result.failures.append(f"cannot run: {exc}")
        results.append(result)
    return results


def run_tests(
    files: Iterable[Path], ruleset: Ruleset, salt: bytes, called_ae: str = DEFAULT_CALLED_AE
) -> list[CaseResult]:
    results: list[CaseResult] = []
    for file in files:
        results.extend(run_test_file(file, ruleset, salt or TEST_SALT, called_ae))
    return results


def explain(ruleset: Ruleset, view: InstanceView, salt: bytes) -> list[str]:
    """Human-readable lines: each rule, each condition with the values it read, the outcome."""
    lines = [f"ruleset version {ruleset.version}"]
    decision = decide(ruleset, view)
    for rule in ruleset.rules:
        status = "MATCHED" if rule.name in decision.matched_rules else "no match"
        lines.append(f"rule {rule.name} ({rule.file}:{rule.line}): {status}")
        for clause in rule.clauses:
            found = clause.read(view)
            shown = "absent" if found is None else [str(v) for v in found[1]]
            verdict = "holds" if clause.holds(view) else "fails"
            within = f"[{clause.context}] " if clause.context else ""
            lines.append(f"    {within}{clause.subject} {clause.test}: read {shown} -> {verdict}")
    if decision.unmatched:
        lines.append(f"no rule matched; unmatched policy: {ruleset.unmatched}")
    ctx = ActionContext(view.calling_ae, view.called_ae, view.peer_ip, salt or TEST_SALT)
    for dest, (out, syntax) in outputs(decision, view.dataset, ctx).items():
        shown = syntax if syntax_name(syntax) == syntax else f"{syntax_name(syntax)} ({syntax})"
        lines.append(f"-> {dest} (rule {decision.destinations[dest]}), transfer syntax {shown}")
        lines.extend(f"    {change}" for change in dataset_changes(view.dataset, out))
    return lines


def dataset_changes(before: Dataset, after: Dataset) -> list[str]:
    """Top-level differences as ``- removed``, ``+ added``, ``~ changed: old -> new`` lines."""
    changes = []
    for tag in sorted(set(before.keys()) | set(after.keys())):
        old, new = before.get(tag), after.get(tag)
        either = old if old is not None else new
        name = (either.keyword if either is not None else "") or str(tag)
        if old is not None and new is None:
            changes.append(f"- {name}")
        elif old is None and new is not None:
            changes.append(f"+ {name}: {_short(new.value)}")
        elif old is not None and new is not None and old.value != new.value:
            changes.append(f"~ {name}: {_short(old.value)} -> {_short(new.value)}")
    return changes or ["(unchanged)"]


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = _text(value) if not isinstance(value, Dataset) else "<item>"
    return text if len(text) <= 60 else text[:57] + "..."
