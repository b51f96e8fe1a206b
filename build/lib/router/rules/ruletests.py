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
        input:
          tags: {Modality: CT, StudyDescription: HEAD}   # or  file: sample.dcm
        expect:
          destinations: [pacs_main]                      # exactly these
          tags: {pacs_main: {InstitutionName: General Hospital}}
          absent: {research: [PatientName]}
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

from router.rules.actions import ActionContext
from router.rules.conditions import InstanceView, resolve_element
from router.rules.engine import Decision, decide, destinations_by_rule
from router.rules.loader import TEST_SUFFIX, Ruleset
from router.rules.yamlsource import LineDict, SourceError, load_yaml
from router.transcode import syntax_name, syntax_uid

TEST_SALT = b"rule-test-salt"
"""Used by rule tests when no salt is configured, so keyed actions still run."""


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


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


def _check_case(case: Any, base: Path, ruleset: Ruleset, salt: bytes, res: CaseResult) -> None:
    spec = case.get("input") or {}
    expect = case.get("expect") or {}
    if not isinstance(spec, dict) or not isinstance(expect, dict):
        raise ValueError("input and expect must be mappings")
    dataset: Dataset
    if "file" in spec:
        dataset = dcmread(base / str(spec["file"]))
    else:
        dataset = dataset_from_tags(dict(spec.get("tags") or {}))
    calling = str(case.get("calling_ae", ""))
    view = InstanceView(dataset, calling, str(case.get("called_ae", "ROUTER")),
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


def run_test_file(file: Path, ruleset: Ruleset, salt: bytes) -> list[CaseResult]:
    """Run every case of one test file; a broken file is one failed result."""
    try:
        tree = load_yaml(file.read_text(encoding="utf-8"), file)
    except SourceError as exc:
        return [CaseResult(str(file), exc.line, "(file)", [exc.message])]
    cases = tree.get("cases") if isinstance(tree, LineDict) else None
    if not isinstance(cases, list):
        return [CaseResult(str(file), 1, "(file)", ["expected a 'cases' list"])]
    results = []
    for case, line in zip(cases, getattr(cases, "item_lines", [1] * len(cases)), strict=True):
        name = str(case.get("name", f"case at line {line}")) if isinstance(case, dict) else "?"
        result = CaseResult(str(file), line, name)
        try:
            if not isinstance(case, dict):
                raise ValueError("a case is a mapping with input and expect")
            _check_case(case, file.parent, ruleset, salt, result)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            result.failures.append(f"cannot run: {exc}")
        results.append(result)
    return results


def run_tests(files: Iterable[Path], ruleset: Ruleset, salt: bytes) -> list[CaseResult]:
    results: list[CaseResult] = []
    for file in files:
        results.extend(run_test_file(file, ruleset, salt or TEST_SALT))
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
