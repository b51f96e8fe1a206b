"""Compile ``match:`` trees into plain Python predicates, once per ruleset load.

Evaluation is then a chain of closures over an :class:`InstanceView`: no parsing,
no regex compilation and no I/O per instance. A missing element never raises; it
simply does not match (``exists: false`` is the one way to ask for absence).
Multi-valued elements match when any of their values matches; the negative
operators ``not_equals`` and ``not_in`` hold when none of them does.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag

from router.rules.yamlsource import LineDict, LineList, node_line

ASSOCIATION_SUBJECTS = ("calling_ae", "called_ae", "peer_ip")
COMBINATORS = ("all", "any", "not")
OPERATORS = (
    "equals", "not_equals", "in", "not_in", "regex", "contains", "startswith",
    "endswith", "exists", "lt", "le", "gt", "ge",
)  # fmt: skip

NEGATIVE_OPERATORS = ("not_equals", "not_in")
"""Hold when no value of a (present) element matches; the others when any value does."""

_TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")
_SEGMENT = re.compile(r"^(?P<name>\([^)]*\)|[A-Za-z][A-Za-z0-9]*)(?:\[(?P<index>\*|\d+)\])?$")


@dataclass(frozen=True)
class InstanceView:
    """What a condition can read: the header dataset and the association it came on."""

    dataset: Dataset
    calling_ae: str = ""
    called_ae: str = ""
    peer_ip: str = ""
    reads: dict[str, Values] = field(default_factory=dict, compare=False, repr=False)
    """Values already read for this instance, by subject: many rules read the same
    elements, and evaluating a ruleset must stay well under a millisecond."""


@dataclass
class Problem:
    """One compile problem, with the line it refers to."""

    line: int
    message: str


@dataclass(frozen=True)
class Clause:
    """One subject test, kept so ``rules explain`` can show what it read and decided."""

    subject: str
    test: str
    line: int
    context: str
    read: Callable[[InstanceView], Values]
    holds: Callable[[InstanceView], bool]


@dataclass
class CompileErrors:
    """Collects every problem of a file instead of stopping at the first.

    It also collects the compiled subject clauses in order, for explanations.
    """

    problems: list[Problem] = field(default_factory=list)
    clauses: list[Clause] = field(default_factory=list)

    def add(self, line: int, message: str) -> None:
        self.problems.append(Problem(line, message))


Values = tuple[str, list[Any]] | None
"""(VR, values) of a subject, or None when the element is absent."""
Accessor = Callable[[InstanceView], Values]
Predicate = Callable[[InstanceView], bool]


# --- subjects ---------------------------------------------------------------------
def parse_tag(text: str) -> BaseTag | None:
    """``(0010,0010)`` or ``0010,0010`` as a tag, or None if it is not one."""
    match = _TAG.match(text)
    if not match:
        return None
    return Tag(int(match.group(1), 16), int(match.group(2), 16))


def resolve_element(name: str) -> BaseTag | None:
    """A keyword or tag string as a tag; None if it names no element."""
    if name.startswith("("):
        return parse_tag(name)
    tag = tag_for_keyword(name)
    return Tag(tag) if tag is not None else None


def _element_values(ds: Dataset, tag: BaseTag) -> Values:
    elem = ds.get(tag)
    if elem is None:
        return None
    value = elem.value
    vr = str(elem.VR)
    if value is None or value == "" or value == b"":
        return (vr, [])
    if isinstance(value, DicomSequence):
        return (vr, list(value))
    if isinstance(value, MultiValue | list | tuple):
        return (vr, list(value))
    return (vr, [value])


def compile_subject(subject: str, line: int, errors: CompileErrors) -> Accessor:
    """An accessor for a keyword, a tag, a sequence path or an association attribute.

    Reads are remembered on the view, so each subject is read once per instance.
    """
    read = _compile_reader(subject, line, errors)

    def remembered(view: InstanceView) -> Values:
        reads = view.reads
        if subject in reads:
            return reads[subject]
        found = read(view)
        reads[subject] = found
        return found

    return remembered


def _compile_reader(subject: str, line: int, errors: CompileErrors) -> Accessor:
    if subject in ASSOCIATION_SUBJECTS:

        def read_assoc(view: InstanceView) -> Values:
            value = getattr(view, subject)
            return ("AE", [value]) if value else None

        return read_assoc

    steps: list[tuple[BaseTag, str | None]] = []
    for segment in subject.split("."):
        match = _SEGMENT.match(segment.strip())
        tag = resolve_element(match.group("name")) if match else None
        if match is None or tag is None:
            errors.add(line, f"unknown keyword or malformed tag {segment!r} in subject {subject!r}")
            return lambda view: None
        steps.append((tag, match.group("index")))
    *sequence_steps, (last_tag, last_index) = steps
    if last_index is not None:
        errors.add(line, f"subject {subject!r}: only sequences take an item index")

    def read(view: InstanceView) -> Values:
        datasets = [view.dataset]
        for tag, index in sequence_steps:
            nxt: list[Dataset] = []
            for ds in datasets:
                found = _element_values(ds, tag)
                if found is None:
                    continue
                items = [item for item in found[1] if isinstance(item, Dataset)]
                if index is None or index == "*":
                    nxt.extend(items)
                elif int(index) < len(items):
                    nxt.append(items[int(index)])
            datasets = nxt
        vr = ""
        collected: list[Any] = []
        present = False
        for ds in datasets:
            found = _element_values(ds, last_tag)
            if found is not None:
                present = True
                vr = found[0]
                collected.extend(found[1])
        return (vr, collected) if present else None

    return read


# --- operand comparison -------------------------------------------------------------
def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \x00")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(_text(value)) if not isinstance(value, int | float) else float(value)
    except ValueError:
        return None


def _temporal(vr: str, value: Any) -> dt.date | dt.time | dt.datetime | None:
    """A DA, TM or DT value (or a YAML date/time operand) as a comparable Python object."""
    if isinstance(value, dt.datetime):
        return value.date() if vr == "DA" else value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time.min) if vr == "DT" else value
    if isinstance(value, dt.time):
        return value
    text = _text(value).replace("-", "").replace(":", "")
    try:
        if vr == "DA":
            if len(text) != 8 or not text.isdigit():
                return None
            return dt.datetime.strptime(text, "%Y%m%d").date()
        if vr == "TM":
            main, _, frac = text.partition(".")
            main = (main + "0000")[:6]
            micro = int((frac + "000000")[:6]) if frac else 0
            return dt.datetime.strptime(main, "%H%M%S").time().replace(microsecond=micro)
        if vr == "DT":
            main, _, frac = text.partition(".")
            main = (main + "0101000000")[:14]
            return dt.datetime.strptime(main, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return None


def _equal(operand: Any) -> Callable[[str, Any], bool]:
    if isinstance(operand, int | float) and not isinstance(operand, bool):
        number = float(operand)
        return lambda vr, v: _number(v) == number
    if isinstance(operand, dt.date):
        return lambda vr, v: _temporal(vr, v) == operand
    text = _text(operand)
    return lambda vr, v: _text(v) == text


def _ordering(op: str, operand: Any) -> Callable[[str, Any], bool]:
    compare: Callable[[Any, Any], bool] = {
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
    }[op]
    number = _number(operand)

    def test(vr: str, value: Any) -> bool:
        if vr in ("DA", "TM", "DT"):
            left, right = _temporal(vr, value), _temporal(vr, operand)
            if left is None or right is None or type(left) is not type(right):
                return False
            return compare(left, right)
        left_number = _number(value)
        return left_number is not None and number is not None and compare(left_number, number)

    return test


def _subject_clause(
    subject: str, spec: Any, line: int, errors: CompileErrors, context: str = ""
) -> Predicate:
    accessor = compile_subject(subject, line, errors)
    if isinstance(spec, LineDict):
        ops = dict(spec)
    elif isinstance(spec, list):
        ops = {"in": spec}
    else:
        ops = {"equals": spec}
    if not ops:
        errors.add(line, f"subject {subject!r} has no operator")
    tests: list[Callable[[Values], bool]] = []
    for op, operand in ops.items():
        op_line = spec.key_lines.get(op, line) if isinstance(spec, LineDict) else line
        if op == "exists":
            if not isinstance(operand, bool):
                errors.add(op_line, "'exists' takes true or false")
                continue
            tests.append(_exists_test(operand))
            continue
        value_test = _value_test(op, operand, op_line, errors)
        if value_test is not None:
            negative = op in NEGATIVE_OPERATORS
            tests.append(_no_value(value_test) if negative else _any_value(value_test))

    def predicate(view: InstanceView) -> bool:
        found = accessor(view)
        return all(test(found) for test in tests)

    shown = ", ".join(f"{op} {operand!r}" for op, operand in ops.items())
    errors.clauses.append(Clause(subject, shown, line, context, accessor, predicate))
    return predicate


def _exists_test(wanted: bool) -> Callable[[Values], bool]:
    """Present with a non-empty value (True), or absent or empty (False)."""
    return lambda found: (found is not None and bool(found[1])) == wanted


def _any_value(test: Callable[[str, Any], bool]) -> Callable[[Values], bool]:
    """Lift a per-value test: an absent element fails; any matching value passes."""

    def check(found: Values) -> bool:
        if found is None:
            return False
        vr, values = found
        return any(test(vr, v) for v in values if not isinstance(v, Dataset))

    return check


def _no_value(test: Callable[[str, Any], bool]) -> Callable[[Values], bool]:
    """For not_equals/not_in: the element is present and none of its values matches."""
    positive = _any_value(test)
    return lambda found: found is not None and not positive(found)


def _value_test(
    op: str, operand: Any, line: int, errors: CompileErrors
) -> Callable[[str, Any], bool] | None:
    holder: dict[str, Callable[[str, Any], bool]] = {}
    if operand is None and op in OPERATORS:
        # YAML's empty value: `AccessionNumber:` would compare with the text "None".
        errors.add(line, f"'{op}' has no value; to test that an element is absent or "
                         "empty, use {exists: false}")  # fmt: skip
        return None
    if op in ("equals", "not_equals"):
        holder["t"] = _equal(operand)
    elif op in ("in", "not_in"):
        if not isinstance(operand, list):
            errors.add(line, f"'{op}' needs a list of values")
            return None
        if all(isinstance(item, str) for item in operand):
            texts = frozenset(_text(item) for item in operand)
            holder["t"] = lambda vr, v: _text(v) in texts
        else:
            tests = [_equal(item) for item in operand]
            holder["t"] = lambda vr, v: any(t(vr, v) for t in tests)
    elif op == "regex":
        try:
            pattern = re.compile(str(operand))
        except re.error as exc:
            errors.add(line, f"invalid regex {operand!r}: {exc}")
            return None
        holder["t"] = lambda vr, v: pattern.search(_text(v)) is not None
    elif op in ("contains", "startswith", "endswith"):
        needle = _text(operand)
        if op == "contains":
            holder["t"] = lambda vr, v: needle in _text(v)
        elif op == "startswith":
            holder["t"] = lambda vr, v: _text(v).startswith(needle)
        else:
            holder["t"] = lambda vr, v: _text(v).endswith(needle)
    elif op in ("lt", "le", "gt", "ge"):
        usable = _number(operand) is not None or isinstance(operand, dt.date | dt.time)
        text = _text(operand)
        kinds = ("DA", "DT") if "-" in text else ("TM",) if ":" in text else ()
        if not usable and not any(_temporal(vr, operand) for vr in kinds):
            # A date that is no date ("2024-13-99") would never match anything.
            errors.add(line, f"'{op}' needs a number, date or time, got {operand!r}")
            return None
        holder["t"] = _ordering(op, operand)
    else:
        errors.add(line, f"unknown operator {op!r}; known: {', '.join(OPERATORS)}")
        return None
    return holder["t"]


# --- combinators ---------------------------------------------------------------------
def _clauses(node: Any, line: int, errors: CompileErrors) -> Iterable[tuple[Any, int]]:
    if isinstance(node, LineList):
        return zip(node, node.item_lines, strict=True)
    if isinstance(node, LineDict):
        return [(node, node.line)]
    errors.add(line, "expected a list of conditions")
    return []


def compile_match(node: Any, line: int, errors: CompileErrors, context: str = "") -> Predicate:
    """Compile a ``match:`` mapping; every key must hold (an implicit ``all``).

    ``context`` names the enclosing combinators (``any > not``) for explanations.
    """
    if node is None:
        return lambda view: True
    if not isinstance(node, LineDict):
        errors.add(line, "a condition must be a mapping such as {Modality: CT}")
        return lambda view: False
    parts: list[Predicate] = []
    for key, value in node.items():
        key_line = node.key_lines.get(key, node_line(node, line))
        if key in COMBINATORS:
            inner = f"{context} > {key}" if context else str(key)
            subs = [
                compile_match(c, ln, errors, inner) for c, ln in _clauses(value, key_line, errors)
            ]
            parts.append(_combine(str(key), subs))
        elif isinstance(key, str):
            parts.append(_subject_clause(key, value, key_line, errors, context))
        else:
            errors.add(key_line, f"condition key {key!r} is neither a subject nor all/any/not")
    return _combine("all", parts)


def _combine(kind: str, parts: Sequence[Predicate]) -> Predicate:
    if kind == "all":
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            first, second = parts
            return lambda view: first(view) and second(view)
        return lambda view: all(p(view) for p in parts)
    if kind == "any":
        if len(parts) == 1:
            return parts[0]
        return lambda view: any(p(view) for p in parts)
    return lambda view: not any(p(view) for p in parts)
