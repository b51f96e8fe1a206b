"""De-identification by the PS3.15 Annex E Basic Application Level Confidentiality Profile.

Pure logic: :func:`deidentify` rewrites a dataset in place from the table in
:mod:`router.rules.deid_table`, a salt and the chosen options, with no I/O, so one
instance comes out the same on every worker and every day.

Every attribute the table lists is handled wherever it occurs, at the top level or in
any sequence item at any depth:

* ``X`` removes; ``Z`` empties (a sequence becomes empty); ``K`` keeps (a kept sequence
  has the profile applied to its items).
* ``D`` puts a constant dummy valid for the VR: PN ``ANONYMOUS``, other text
  ``ANONYMIZED`` (a valid CS too, and short enough for every text VR), DA ``19000101``,
  TM ``000000.00``, DT ``19000101000000``, numbers 0, binary two zero bytes, UI a keyed
  replacement. A D sequence is emptied, not filled with dummy items: its items may hold
  free text the table does not list (SR text content items, graphic annotation text).
* ``U`` maps every UID value through :func:`router.rules.keyed.remap_uid`: one original
  UID always becomes the same new one, so a study stays one study and references
  between instances still resolve. MediaStorageSOPInstanceUID follows SOPInstanceUID.
* Compound codes (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) allow the weaker action only where the
  IOD requires the attribute. The router does not know the IODs' attribute types, so
  it takes the strongest protection allowed: remove where X is allowed, else empty. A
  strict receiver may miss a required attribute; it never gets an identifying one.
* Private attributes (odd groups, creators included) and curves (50xx) are removed, and
  a whole overlay group (60xx) goes with its Overlay Data: an overlay without data is
  invalid. Dates and times the table does not list (any DA, DT, TM, e.g. Instance
  Creation Date) are handled like listed ones, as E.1 note 4 suggests, since one
  original date beside shifted ones would give the shift away.
* Group lengths are dropped (they would be stale), the file meta keeps only what
  describes the file and the preamble is zeroed (E.1.1 item 7: both can name the sender).

Options (:data:`OPTIONS`), each an option column of the table overriding the Basic
Profile where it has a code:

* ``retain-uids``, ``retain-device-identity``, ``retain-institution-identity``: keep
  what the column marks K (UIDs; device names, serial numbers, stations; institution).
* ``retain-patient-characteristics``: keep age, sex, size, weight, ethnic group...; the
  free text the column marks C (allergies, pre-medication...) is kept cleaned, as below.
* ``retain-longitudinal-full-dates``: keep dates and times.
* ``retain-longitudinal-modified-dates``: shift every date (DA, and the date part of
  DT) by whole days and keep times, so intervals stay exact and acquisition times still
  match injection times (PET SUV). The shift is ``date_shift_days`` or else a keyed
  value from the original PatientID in -365..-1, the same for all of a patient's
  instances. A value that is not a full date gets the Basic Profile action.
* ``clean-descriptors``: keep the free text the table marks C (descriptions, comments,
  protocol names, coded sequences) with every value the profile removes from this
  instance (names and their components, IDs, dates, institution...) struck out where it
  appears as a word. Identifying text that matches nothing else in the instance cannot
  be recognised by a router: choosing this option is the operator's statement that the
  sources' descriptors carry none (E.3.5 leaves the manner of cleaning open).

Not offered: Retain Safe Private (the router knows no private attribute to be safe, so
removes them all), Clean Structured Content, Clean Graphics and the pixel options (they
need an understanding of content the router lacks; those attributes get the Basic
Profile action instead).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from router.rules import keyed
from router.rules.deid_table import PROFILE_ROWS, ProfileRow, row_for_tag

__all__ = ["OPTIONS", "deidentify", "profile_attribute_tags", "validate_options"]

FULL_DATES: Final = "retain-longitudinal-full-dates"
MODIFIED_DATES: Final = "retain-longitudinal-modified-dates"

_OPTION_COLUMNS: Final[dict[str, str]] = {
    FULL_DATES: "retain_long_full_dates",
    MODIFIED_DATES: "retain_long_modified_dates",
    "retain-device-identity": "retain_device_identity",
    "retain-institution-identity": "retain_institution_identity",
    "retain-uids": "retain_uids",
    "retain-patient-characteristics": "retain_patient_characteristics",
    "clean-descriptors": "clean_descriptors",
}
OPTIONS: Final[frozenset[str]] = frozenset(_OPTION_COLUMNS)
"""The option names :func:`deidentify` accepts (see the module docstring)."""

_METHOD: Final = "DICOM PS3.15 Basic Application Confidentiality Profile"  # LO: <= 64
PROFILE_CODE: Final = ("113100", "Basic Application Confidentiality Profile")
"""PS3.16 CID 7050 code of the profile itself, coding scheme DCM."""
_OPTION_CODES: Final[dict[str, tuple[str, str]]] = {
    "clean-descriptors": ("113105", "Clean Descriptors Option"),
    FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    MODIFIED_DATES: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain-device-identity": ("113109", "Retain Device Identity Option"),
    "retain-uids": ("113110", "Retain UIDs Option"),
    "retain-institution-identity": ("113112", "Retain Institution Identity Option"),
}

# Internal actions: the table's X, Z, D, U, K plus the two meanings of its C.
_CLEAN: Final = "clean"  # keep free text with known identifiers struck out
_SHIFT: Final = "shift"  # C under Modified Dates: move dates, keep times
_PREFERENCE: Final = ("K", _SHIFT, _CLEAN, "U", "D", "Z", "X")  # most retained first
_SCRUBBED_VRS: Final = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
_IDENTIFIER_VRS: Final = _SCRUBBED_VRS | {"AE", "DA", "DT"}
_BINARY_VRS: Final = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_NUMBER_VRS: Final = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "IS", "DS"})
_TEXT_DUMMY: Final = "ANONYMIZED"  # at most 10 characters: fits SH, CS and AE (16)
_DUMMIES: Final[dict[str, str]] = {
    "PN": "ANONYMOUS",
    "DA": "19000101",
    "TM": "000000.00",
    "DT": "19000101000000",
    "AS": "000Y",
}
_META_KEPT: Final = frozenset(  # group length, version, SOP class/instance, syntax, implementation
    {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
)
_OVERLAY_DATA: Final = "(60xx,3000)"
_UNLISTED_DATE: Final = ProfileRow(
    "(any other DA, DT or TM)",
    "",
    "Date or time not listed in Table E.1-1",
    "X",
    retain_long_full_dates="K",
    retain_long_modified_dates="C",
)


def validate_options(options: Iterable[str]) -> None:
    """Raise ValueError for an unknown option or the two exclusive date options."""
    chosen = set(options)
    unknown = sorted(chosen - OPTIONS)
    if unknown:
        raise ValueError(f"unknown de-identification option(s): {', '.join(unknown)}")
    if {FULL_DATES, MODIFIED_DATES} <= chosen:
        raise ValueError(f"{FULL_DATES} and {MODIFIED_DATES} exclude each other")


def profile_attribute_tags(action_codes: set[str]) -> set[int]:
    """Plain tags (no repeating-group or private patterns) whose Basic action is listed."""
    return {r.tag for r in PROFILE_ROWS if isinstance(r.tag, int) and r.basic in action_codes}


def _basic_action(code: str) -> str:
    """The strongest protection a Basic Profile code allows (see module docstring)."""
    if code.startswith("X") or code == "C":
        return "X"
    return code.split("/")[0]  # Z/D -> Z; X, Z, D, U, K unchanged


@dataclass
class _Context:
    options: frozenset[str]
    salt: bytes
    shift_days: int
    scrub: re.Pattern[str] | None = None
    _actions: dict[ProfileRow, str] = field(default_factory=dict)

    def action(self, row: ProfileRow) -> str:
        """The action for ``row`` under the chosen options, cached per row."""
        found = self._actions.get(row)
        if found is None:
            candidates = {_basic_action(row.basic)}
            for option in self.options:
                code = getattr(row, _OPTION_COLUMNS[option])
                if code == "C":
                    candidates.add(_SHIFT if option == MODIFIED_DATES else _CLEAN)
                elif code is not None:
                    candidates.add(code)
            found = next(a for a in _PREFERENCE if a in candidates)
            self._actions[row] = found
        return found


def deidentify(
    ds: Dataset,
    options: frozenset[str],
    salt: bytes,
    date_shift_days: int | None = None,
) -> None:
    """De-identify ``ds`` in place by the Basic Profile and ``options``.

    ``salt`` keys every replacement UID and the derived date shift: the same salt gives
    the same output for the same input, which keeps studies and patients together
    across instances and workers; without it the mapping can be neither computed nor
    reversed. Raises ValueError for options :func:`validate_options` rejects.
    """
    validate_options(options)
    if date_shift_days is None:
        patient_id = str(ds.get("PatientID", "") or "")
        digest = keyed.keyed_digest(salt, patient_id, "date-shift")
        date_shift_days = -(int.from_bytes(digest[:8], "big") % 365 + 1)
    ctx = _Context(frozenset(options), salt, date_shift_days)
    if "clean-descriptors" in options or "retain-patient-characteristics" in options:
        ctx.scrub = _identifier_pattern(_identifiers(ds, ctx))
    _process(ds, ctx, scrub=False)
    _mark(ds, ctx)
    _clean_file_meta(ds)


def _process(ds: Dataset, ctx: _Context, scrub: bool) -> None:
    """Apply the table to every element of ``ds``, recursing into kept sequences."""
    dropped_groups: set[int] = set()
    for elem in list(ds):
        tag = int(elem.tag)
        if tag & 0xFFFF == 0:  # group length: stale once anything changes
            del ds[tag]
            continue
        row = _row(elem)
        if row is None:
            _keep(elem, ctx, scrub)
            continue
        action = ctx.action(row)
        if row.tag == _OVERLAY_DATA and action == "X":
            dropped_groups.add(tag >> 16)
        _apply(ds, elem, row, action, ctx)
    for elem in list(ds):
        if int(elem.tag) >> 16 in dropped_groups:
            del ds[elem.tag]


def _row(elem: DataElement) -> ProfileRow | None:
    """The table row for ``elem``; dates and times it does not list count as listed."""
    row = row_for_tag(int(elem.tag))
    if row is None and elem.VR in ("DA", "DT", "TM"):
        return _UNLISTED_DATE
    return row


def _keep(elem: DataElement, ctx: _Context, scrub: bool) -> None:
    """An element kept as it is, except that sequences are processed item by item."""
    if elem.VR == "SQ":
        for item in elem.value:
            _process(item, ctx, scrub)
    elif scrub and elem.VR in _SCRUBBED_VRS:
        _scrub(elem, ctx)


def _apply(ds: Dataset, elem: DataElement, row: ProfileRow, action: str, ctx: _Context) -> None:
    """Carry out ``action`` on ``elem``; see the module docstring for each action."""
    vr = _vr(elem)
    if action == _CLEAN and elem.VR != "SQ" and elem.VR not in _SCRUBBED_VRS:
        action = _basic_action(row.basic)  # binary (or undecoded) text cannot be cleaned
    if action == _SHIFT:
        if vr in ("TM", "SH"):  # times and the UTC offset are kept
            return
        shifted = _shift_dates(elem, vr, ctx.shift_days) if vr in ("DA", "DT") else None
        if shifted is not None:
            ds[elem.tag] = DataElement(elem.tag, vr, shifted)
            return
        action = _basic_action(row.basic)
    if action == "X":
        del ds[elem.tag]
    elif action == "K":
        _keep(elem, ctx, scrub=False)
    elif action == _CLEAN:
        _keep(elem, ctx, scrub=True)
    elif action == "U":
        _remap_uids(ds, elem, ctx)
    elif action == "Z" or vr == "SQ":  # a D sequence is emptied, see module docstring
        ds[elem.tag] = DataElement(elem.tag, vr, _empty(vr))
    else:  # D
        ds[elem.tag] = DataElement(elem.tag, vr, _dummy(vr, elem, ctx))


def _vr(elem: DataElement) -> str:
    """The element's VR, from the dictionary where the file left it unknown."""
    if elem.VR in ("UN", "OB or OW", "US or SS", "US or OW", "US or SS or OW"):
        try:
            vr = dictionary_VR(elem.tag)
        except KeyError:
            return "UN"
        return "OB" if " or " in vr and elem.VR == "UN" else vr.split(" or ")[0]
    return str(elem.VR)


def _empty(vr: str) -> Any:
    if vr == "SQ":
        return Sequence()
    return b"" if vr in _BINARY_VRS else None


def _dummy(vr: str, elem: DataElement, ctx: _Context) -> Any:
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in _NUMBER_VRS:
        return "0" if vr in ("IS", "DS") else 0
    if vr in _BINARY_VRS:
        return b"\x00\x00"
    if vr == "UI":
        return keyed.remap_uid(next(iter(_strings(elem)), "dummy"), ctx.salt)
    return _TEXT_DUMMY


def _strings(elem: DataElement) -> list[str]:
    """The element's values as strings (bytes of an unknown VR decoded), empty dropped."""
    value = elem.value
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("latin-1").split("\\")
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [s for s in (str(v).strip("\0 ") for v in values) if s]


def _remap_uids(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    """Replace every UID value consistently (the U action)."""
    uids = [keyed.remap_uid(uid, ctx.salt) for uid in _strings(elem)]
    if uids:
        ds[elem.tag] = DataElement(elem.tag, "UI", uids[0] if len(uids) == 1 else uids)


def _shift_dates(elem: DataElement, vr: str, days: int) -> Any:
    """Every DA value, or the date part of every DT value, moved by ``days``.

    None if some value is not a full date (it then gets the Basic Profile action).
    """
    shifted: list[str] = []
    for value in _strings(elem):
        head, tail = value[:8], value[8:]
        if (vr == "DA" and tail) or len(head) < 8 or not head.isdigit():
            return None
        try:
            date = datetime.date(int(head[:4]), int(head[4:6]), int(head[6:]))
            shifted.append((date + datetime.timedelta(days=days)).strftime("%Y%m%d") + tail)
        except (ValueError, OverflowError):
            return None
    if not shifted:
        return ""
    return shifted[0] if len(shifted) == 1 else shifted


def _identifiers(ds: Dataset, ctx: _Context) -> set[str]:
    """The values the profile takes out of this instance, for cleaning free text.

    Every text or date value of an attribute removed or replaced (private ones too), at any
    depth; person names also by component, since a descriptor says "Dr. Smith"
    rather than "SMITH^JOHN".
    """
    found: set[str] = set()
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found |= _identifiers(item, ctx)
            continue
        row = _row(elem)
        if row is None or ctx.action(row) not in ("X", "Z", "D"):
            continue
        if _vr(elem) not in _IDENTIFIER_VRS:
            continue
        for value in _strings(elem):
            found.add(value)
            if elem.VR == "PN":
                found.update(re.split(r"[\^=]", value))
    return {s.strip() for s in found if len(s.strip()) >= 2}


def _identifier_pattern(identifiers: set[str]) -> re.Pattern[str] | None:
    """One regex matching any identifier as a whole word, longest first."""
    if not identifiers:
        return None
    words = "|".join(re.escape(s) for s in sorted(identifiers, key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z])(?:{words})(?![0-9A-Za-z])", re.IGNORECASE)


def _scrub(elem: DataElement, ctx: _Context) -> None:
    """Strike the known identifiers out of a kept free-text element."""
    if ctx.scrub is None or elem.value is None or isinstance(elem.value, bytes):
        return
    values = [ctx.scrub.sub("*", str(v)) for v in _strings(elem)]
    elem.value = values[0] if len(values) == 1 else values


def _mark(ds: Dataset, ctx: _Context) -> None:
    """Record what was done, as PS3.15 E.1.1 item 6 and E.2/E.3.6 require."""
    chosen = [o for o in _OPTION_CODES if o in ctx.options]
    ds.PatientIdentityRemoved = "YES"
    method = [_METHOD] + [f"Option {option}" for option in chosen]
    ds.DeidentificationMethod = method[0] if len(method) == 1 else method
    items = []
    for value, meaning in [PROFILE_CODE] + [_OPTION_CODES[o] for o in chosen]:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    dates = {MODIFIED_DATES: "MODIFIED", FULL_DATES: "UNMODIFIED"}
    ds.LongitudinalTemporalInformationModified = next(
        (v for k, v in dates.items() if k in ctx.options), "REMOVED"
    )


def _clean_file_meta(ds: Dataset) -> None:
    """Keep only the file meta that describes the file; zero the preamble.

    Source, sending and receiving AE titles and private meta information could
    identify the sender (E.1.1 item 7); MediaStorageSOPInstanceUID must name the
    (possibly new) SOP Instance UID.
    """
    if getattr(ds, "preamble", None):
        ds.preamble = b"\x00" * 128
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for elem in list(meta):
        if int(elem.tag) not in _META_KEPT:
            del meta[elem.tag]
    if "SOPInstanceUID" in ds and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
