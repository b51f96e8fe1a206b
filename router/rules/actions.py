"""Rule actions: compiled once per ruleset, applied to one rule's own copy of an instance.

Each action is checked when the ruleset loads (unknown keywords, malformed tags,
invalid regular expressions, actions that cannot apply such as setting a sequence)
and becomes a plain function ``(dataset, context) -> None``. Applying them does no
I/O; the caller hands each rule a fresh copy, so one rule's changes never leak into
another rule's output.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from router.rules.conditions import ASSOCIATION_SUBJECTS, CompileErrors, resolve_element
from router.rules.keyed import hash_text, remap_uid
from router.rules.yamlsource import LineDict, LineList
from router.transcode import TRANSFER_SYNTAX_NAMES, syntax_uid

ACTIONS = ("set", "delete", "rewrite", "copy", "hash", "uid_remap", "deidentify", "transcode")
KEYED_ACTIONS = ("hash", "uid_remap", "deidentify")
_TAG_PATTERN = re.compile(r"^\(\s*([0-9A-Fa-fxX]{4})\s*,\s*([0-9A-Fa-fxX]{4})\s*\)$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
             "UC", "UI", "UR", "UT"}  # fmt: skip
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "UI": 64, "DS": 16, "IS": 12}
_NUMBER_SYNTAX = {
    "DS": re.compile(r"^ *[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)? *$"),
    "IS": re.compile(r"^ *[+-]?\d+ *$"),
}
_IS_RANGE = range(-(2**31), 2**31)
_PRIVATE_BLOCK_FIRST = 0x10


class ActionError(ValueError):
    """An action cannot store its result; the message never carries the value.

    pydicom's own error for a bad number quotes the value, which may be a patient's
    data; this one names only the action, the element and its VR, so it can be logged.
    """


@dataclass(frozen=True)
class ActionContext:
    """What templates and keyed actions may use besides the dataset itself."""

    calling_ae: str = ""
    called_ae: str = ""
    peer_ip: str = ""
    salt: bytes = b""


Apply = Callable[[Dataset, ActionContext], None]


@dataclass(frozen=True)
class CompiledActions:
    """A rule's actions, ready to apply; ``transfer_syntax`` is what ``transcode`` asked for."""

    steps: tuple[tuple[str, Apply], ...] = ()
    transfer_syntax: str | None = None
    needs_salt: bool = False
    described: tuple[str, ...] = field(default=())

    @property
    def changes_dataset(self) -> bool:
        return bool(self.steps)

    def apply(self, ds: Dataset, ctx: ActionContext) -> None:
        for _name, step in self.steps:
            step(ds, ctx)


NO_ACTIONS = CompiledActions()


# --- targets ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    tag: BaseTag
    vr: str
    name: str


def _target(text: Any, line: int, errors: CompileErrors, verb: str) -> _Target | None:
    if not isinstance(text, str):
        errors.add(line, f"{verb}: expected a keyword or a tag, got {text!r}")
        return None
    tag = resolve_element(text)
    if tag is None:
        errors.add(line, f"{verb}: unknown keyword or malformed tag {text!r}")
        return None
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        vr = "LO" if tag.is_private else "UN"
    if vr == "SQ":
        errors.add(line, f"{verb}: {text} is a sequence; {verb} applies to values only")
        return None
    return _Target(tag, vr, keyword_for_tag(tag) or str(text))


def _text_target(text: Any, line: int, errors: CompileErrors, verb: str) -> _Target | None:
    """A target whose values are text (UIDs excepted: ``uid_remap`` is for those)."""
    target = _target(text, line, errors, verb)
    if target is None:
        return None
    if target.vr == "UI":
        errors.add(line, f"{verb}: {target.name} is a UID; use uid_remap for UIDs")
        return None
    if target.vr not in _TEXT_VRS and not target.tag.is_private:
        errors.add(line, f"{verb}: {target.name} has VR {target.vr}; only text values apply")
        return None
    return target


def _values(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list):
        return list(value)
    return [value]


def is_number_text(text: str, vr: str) -> bool:
    """Whether ``text`` (one value, or several joined by backslashes) is a valid DS or IS.

    The check follows PS3.5 (syntax and maximum length), so pydicom never has to
    refuse, or warn about, a value: both would quote it.
    """
    syntax = _NUMBER_SYNTAX[vr]
    for value in text.split("\\"):
        if value.strip() == "":
            continue
        if len(value) > _MAX_LENGTH[vr] or not syntax.match(value):
            return False
        if vr == "IS" and int(value) not in _IS_RANGE:
            return False
    return True


def _number_error(verb: str, target: _Target, vr: str) -> str:
    article = "an" if vr == "IS" else "a"
    return f"{verb}: the value for {target.name} is not {article} {vr} number"


def _store(ds: Dataset, target: _Target, values: list[str], verb: str) -> None:
    """Write ``values`` into the target, refusing numbers that DS/IS cannot hold."""
    present = ds.get(target.tag)
    vr = str(present.VR) if present is not None else target.vr
    if vr in _NUMBER_SYNTAX and not all(is_number_text(v, vr) for v in values):
        raise ActionError(_number_error(verb, target, vr))
    value: Any = values[0] if len(values) == 1 else values
    if target.tag in ds:
        ds[target.tag].value = value
    else:
        ds.add_new(target.tag, target.vr, value)


# --- set ----------------------------------------------------------------------------
Piece = tuple[str, str | None, BaseTag | None]
"""(literal text, field name or None, tag of the field or None for association fields)"""


def _compile_template(text: str, line: int, errors: CompileErrors) -> Callable[..., str] | None:
    """Compile ``"{PatientID}-{calling_ae}"``; values are inserted once, never re-read as
    placeholders, so a value that looks like ``{calling_ae}`` stays as it is."""
    pieces: list[Piece] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        errors.add(line, f"set: invalid template {text!r}: {exc}")
        return None
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None, None))
            continue
        if spec or conversion:
            errors.add(line, f"set: {{{name}}} takes no format in template {text!r}")
            return None
        if name in ASSOCIATION_SUBJECTS:
            pieces.append((literal, name, None))
            continue
        tag = resolve_element(name)
        if tag is None:
            errors.add(line, f"set: unknown keyword {name!r} in template {text!r}")
            return None
        pieces.append((literal, name, tag))

    def render(ds: Dataset, ctx: ActionContext) -> str:
        out: list[str] = []
        for literal, name, tag in pieces:
            out.append(literal)
            if name is None:
                continue
            if tag is None:
                out.append(str(getattr(ctx, name)))
            else:
                elem = ds.get(tag)
                out.append("\\".join(str(v) for v in _values(elem)) if elem is not None else "")
        return "".join(out)

    return render


def _yaml_scalar_text(value: Any, vr: str) -> str:
    """A YAML scalar as DICOM text: unquoted YAML dates become DA/DT values."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d%H%M%S") if vr == "DT" else value.strftime("%Y%m%d")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    return "" if value is None else str(value)


def _compile_set(spec: Any, line: int, errors: CompileErrors) -> list[Apply]:
    if not isinstance(spec, LineDict) or not spec:
        errors.add(line, "set: expected a mapping of element to value, e.g. {InstitutionName: X}")
        return []
    steps: list[Apply] = []
    for key, raw in spec.items():
        key_line = spec.key_lines.get(key, line)
        target = _target(key, key_line, errors, "set")
        if target is None:
            continue
        if target.vr not in _TEXT_VRS and not target.tag.is_private:
            errors.add(key_line, f"set: {key} has VR {target.vr}; only text values can be set")
            continue
        text = _yaml_scalar_text(raw, target.vr)
        render = _compile_template(text, key_line, errors)
        if render is None or not _literal_fits(text, target, key_line, errors):
            continue

        def apply(ds: Dataset, ctx: ActionContext, t: _Target = target, r: Any = render) -> None:
            _store(ds, t, [r(ds, ctx)], "set")

        steps.append(apply)
    return steps


def _literal_fits(text: str, target: _Target, line: int, errors: CompileErrors) -> bool:
    """A literal set into a DS or IS must be a number: said by lint, not at the first instance.

    A template with placeholders is only known per instance; ``_store`` checks that.
    """
    if target.vr not in _NUMBER_SYNTAX:
        return True
    parsed = list(string.Formatter().parse(text))
    if any(name is not None for _literal, name, _spec, _conv in parsed):
        return True
    if is_number_text("".join(literal for literal, *_rest in parsed), target.vr):
        return True
    errors.add(line, _number_error("set", target, target.vr))
    return False


# --- delete ---------------------------------------------------------------------------
def _pattern_matcher(group: str, element: str) -> Callable[[int], bool]:
    """A tag pattern in which each ``x`` is any hex digit, read the way DICOM writes tags.

    In an odd (private) group, ``xx`` as the high byte of the element number stands
    for a private block, 10-FF: ``(0009,xx10)`` is element 10 of every block,
    (0009,1010) to (0009,FF10), and never a private creator (0009,0010)-(0009,00FF)
    nor (0009,0000)-(0009,000F), so deleting a private element keeps its creator.
    ``(gggg,xxxx)`` is the whole group, creators included.
    """
    group, element = group.lower(), element.lower()
    pattern = group + element
    mask = int("".join("0" if c == "x" else "f" for c in pattern), 16)
    value = int(pattern.replace("x", "0"), 16)
    in_blocks = element.startswith("xx") and element != "xxxx"

    def matches(tag: int) -> bool:
        if tag & mask != value:
            return False
        private = bool(tag >> 16 & 1)
        return not (in_blocks and private and (tag >> 8 & 0xFF) < _PRIVATE_BLOCK_FIRST)

    return matches


def _tag_matcher(text: Any, line: int, errors: CompileErrors) -> Callable[[int], bool] | None:
    if isinstance(text, str):
        match = _TAG_PATTERN.match(text)
        if match and "x" in text.lower():
            return _pattern_matcher(match.group(1), match.group(2))
        tag = resolve_element(text)
        if tag is not None:
            wanted = int(tag)
            return lambda t: t == wanted
    errors.add(line, f"delete: unknown keyword or malformed tag {text!r}")
    return None


def _compile_delete(spec: Any, line: int, errors: CompileErrors) -> list[Apply]:
    items = spec if isinstance(spec, list) else [spec]
    lines = getattr(spec, "item_lines", [line] * len(items))
    matchers = [m for m in (_tag_matcher(i, ln, errors) for i, ln in zip(items, lines, strict=True))
                if m is not None]  # fmt: skip

    def apply(ds: Dataset, ctx: ActionContext) -> None:
        present = list(ds.keys())
        doomed = [tag for tag in present if any(m(int(tag)) for m in matchers)]
        for tag in doomed:
            del ds[tag]

    return [apply] if matchers else []


# --- rewrite, copy ------------------------------------------------------------------
def _compile_rewrite(spec: Any, line: int, errors: CompileErrors) -> list[Apply]:
    if not isinstance(spec, LineDict) or set(spec) != {"tag", "pattern", "replace"}:
        errors.add(line, "rewrite: expected {tag: ..., pattern: ..., replace: ...}")
        return []
    target = _text_target(spec["tag"], line, errors, "rewrite")
    try:
        pattern = re.compile(str(spec["pattern"]))
    except re.error as exc:
        errors.add(line, f"rewrite: invalid regex {spec['pattern']!r}: {exc}")
        return []
    replacement = str(spec["replace"])
    try:
        pattern.sub(replacement, "")
    except (re.error, IndexError) as exc:
        errors.add(line, f"rewrite: invalid replacement {replacement!r}: {exc}")
        return []
    if target is None:
        return []

    def apply(ds: Dataset, ctx: ActionContext, t: _Target = target) -> None:
        elem = ds.get(t.tag)
        if elem is not None and _values(elem):
            _store(ds, t, [pattern.sub(replacement, str(v)) for v in _values(elem)], "rewrite")

    return [apply]


def _compile_copy(spec: Any, line: int, errors: CompileErrors) -> list[Apply]:
    if not isinstance(spec, LineDict) or set(spec) != {"from", "to"}:
        errors.add(line, "copy: expected {from: ..., to: ...}")
        return []
    source = _target(spec["from"], line, errors, "copy")
    target = _text_target(spec["to"], line, errors, "copy")
    if source is None or target is None:
        return []

    def apply(ds: Dataset, ctx: ActionContext, s: _Target = source, t: _Target = target) -> None:
        elem = ds.get(s.tag)
        if elem is not None:
            _store(ds, t, [str(v) for v in _values(elem)] or [""], "copy")

    return [apply]


# --- keyed: hash, uid_remap ---------------------------------------------------------
def _compile_hash(spec: Any, line: int, errors: CompileErrors) -> list[Apply]:
    length = 16
    items: Any = spec
    if isinstance(spec, LineDict):
        items = spec.get("tags", [])
        length = spec.get("length", 16)
        if not isinstance(length, int) or not 8 <= length <= 64:
            errors.add(line, "hash: length must be a whole number from 8 to 64")
            return []
    items = items if isinstance(items, list) else [items]
    targets = [t for t in (_text_target(i, line, errors, "hash") for i in items) if t is not None]
    for t in targets:
        if t.vr in _NUMBER_SYNTAX:  # a hash is hex text: it would fail on every instance
            errors.add(line, f"hash: {t.name} has VR {t.vr}; a hash is text, not a number")
            return []

    def apply(ds: Dataset, ctx: ActionContext) -> None:
        for t in targets:
            elem = ds.get(t.tag)
            if elem is not None and _values(elem):
                size = min(length, _MAX_LENGTH.get(t.vr, 64))
                _store(ds, t, [hash_text(str(v), ctx.salt, size) for v in _values(elem)], "hash")

    return [apply] if targets else []


def _is_standard_uid(value: str) -> bool:
    return value in UID_dictionary


def remap_all_uids(ds: Dataset, salt: bytes) -> None:
    """Replace every instance-specific UID (VR UI, recursively) by its keyed remapping.

    UIDs defined by the standard (SOP classes, transfer syntaxes, coding schemes)
    are kept: they name what the data is, not whose it is.
    """
    for elem in ds.iterall():
        if elem.VR != "UI" or not elem.value:
            continue
        values = _values(elem)
        mapped = [str(v) if _is_standard_uid(str(v)) else remap_uid(str(v), salt) for v in values]
        elem.value = mapped[0] if len(mapped) == 1 else mapped
    _sync_file_meta(ds)


def _sync_file_meta(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _compile_uid_remap(spec: Any, line: int, errors: CompileErrors) -> list[Apply]:
    if spec == "all":
        return [lambda ds, ctx: remap_all_uids(ds, ctx.salt)]
    items = spec if isinstance(spec, list) else [spec]
    targets = [t for t in (_target(i, line, errors, "uid_remap") for i in items) if t is not None]
    for t in targets:
        if t.vr != "UI":
            errors.add(line, f"uid_remap: {t.name} is not a UID (VR {t.vr})")
            return []

    def apply(ds: Dataset, ctx: ActionContext) -> None:
        for t in targets:
            elem = ds.get(t.tag)
            if elem is not None and _values(elem):
                _store(ds, t, [remap_uid(str(v), ctx.salt) for v in _values(elem)], "uid_remap")
        _sync_file_meta(ds)

    return [apply] if targets else []


# --- deidentify, transcode ------------------------------------------------------------
def _compile_deidentify(spec: Any, line: int, errors: CompileErrors) -> list[Apply]:
    from router.rules import deid

    profile, options = spec, []
    if isinstance(spec, LineDict):
        profile, options = spec.get("profile", "basic"), spec.get("options", [])
    if profile != "basic":
        errors.add(line, f"deidentify: unknown profile {profile!r}; known: basic")
        return []
    if not isinstance(options, list):
        errors.add(line, "deidentify: options must be a list")
        return []
    chosen = frozenset(str(o) for o in options)
    try:
        deid.validate_options(chosen)
    except ValueError as exc:
        errors.add(line, f"deidentify: {exc}; known options: {', '.join(sorted(deid.OPTIONS))}")
        return []
    return [lambda ds, ctx: deid.deidentify(ds, chosen, ctx.salt)]


_COMPILERS: dict[str, Callable[[Any, int, CompileErrors], list[Apply]]] = {
    "set": _compile_set,
    "delete": _compile_delete,
    "rewrite": _compile_rewrite,
    "copy": _compile_copy,
    "hash": _compile_hash,
    "uid_remap": _compile_uid_remap,
    "deidentify": _compile_deidentify,
}


def compile_actions(raw: Any, line: int, errors: CompileErrors) -> CompiledActions:
    """Compile a rule's ``actions:`` list; problems go to ``errors`` with their lines."""
    if raw is None:
        return NO_ACTIONS
    if not isinstance(raw, list):
        errors.add(line, "actions: expected a list such as [{set: {...}}, {delete: [...]}]")
        return NO_ACTIONS
    lines = raw.item_lines if isinstance(raw, LineList) else [line] * len(raw)
    steps: list[tuple[str, Apply]] = []
    described: list[str] = []
    syntax: str | None = None
    needs_salt = False
    for item, item_line in zip(raw, lines, strict=True):
        if not isinstance(item, dict) or len(item) != 1:
            errors.add(item_line, f"each action is a mapping with one of: {', '.join(ACTIONS)}")
            continue
        ((verb, spec),) = item.items()
        if verb == "transcode":
            syntax = syntax_uid(str(spec))
            if syntax is None:
                known = ", ".join(TRANSFER_SYNTAX_NAMES)
                errors.add(
                    item_line, f"transcode: unknown transfer syntax {spec!r}; known: {known}"
                )
            described.append(f"transcode: {spec}")
            continue
        compiler = _COMPILERS.get(str(verb))
        if compiler is None:
            errors.add(item_line, f"unknown action {verb!r}; known: {', '.join(ACTIONS)}")
            continue
        needs_salt = needs_salt or verb in KEYED_ACTIONS
        for step in compiler(spec, item_line, errors):
            steps.append((str(verb), step))
        described.append(str(verb))
    return CompiledActions(tuple(steps), syntax, needs_salt, tuple(described))
