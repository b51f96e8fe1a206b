"""DICOM audit messages (PS3.15 A.5) built from the router's audit records.

Pure: a record as produced by :func:`router.audit.audit_record` plus the static
facts about this router (:class:`AuditContext`) give the XML bytes of one DICOM
audit message, or ``None`` when the event has no DICOM counterpart. Nothing here
does I/O, so every message can be checked against the schema of PS3.15 A.5.1.

Mapping (and why):

* ``received`` -> DICOM Instances Transferred (110104), action C: the modality
  (calling AE, requestor) is the source, the router the destination.
* ``routed`` with a destination -> Begin Transferring DICOM Instances (110102),
  action E: the router announces the transfer to that destination. A ``routed``
  event without a destination (unmatched, unreadable, unroutable) starts no
  transfer: none.
* ``forwarded`` -> DICOM Instances Transferred (110104), action R (the router is
  not the receiver and cannot know what the receiver held, A.5.3.7); outcome 0,
  or 4 when the destination answered with a warning status. A ``forwarded`` event
  with status ``ALREADY_DELIVERED`` transferred nothing (the destination had the
  content from an earlier reception): none.
* ``forward_failed`` -> DICOM Instances Transferred, outcome 4 ("minor failure;
  action restarted": the router retries, or sends to the destination's alternate,
  whose own transfer then has messages of its own), ``dead_lettered`` -> outcome 8
  ("serious failure; action terminated"). A.5.2 asks for one message per failed
  action, and an auditor comparing Begin Transferring with Instances Transferred
  then sees how every announced transfer ended.
* ``rejected`` with ``scope == "association"`` (access control refused a calling
  AE title or network) -> Security Alert (110113) with EventTypeCode 110126
  "Node Authentication" from CID 403: the router refused to accept an unknown or
  unauthorised node, which is the node-authentication failure the Security Alert
  message is defined for (A.5.3.11). Outcome 4: the mitigation (the refusal)
  worked. Refused C-STOREs (0xA700, 0xC000, ...) are resource or data problems,
  not security events: none.
* ``rules_reloaded`` is an operational event of the JSON trail: none.

Application Start/Stop (110100) has no audit record; :func:`application_activity`
builds it directly.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.status import ALREADY_DELIVERED

MessageParts = tuple[str, str, str]  # (code, codeSystemName, originalText)

APPLICATION_ACTIVITY: MessageParts = ("110100", "DCM", "Application Activity")
BEGIN_TRANSFERRING: MessageParts = ("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED: MessageParts = ("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT: MessageParts = ("110113", "DCM", "Security Alert")
APPLICATION_START: MessageParts = ("110120", "DCM", "Application Start")
APPLICATION_STOP: MessageParts = ("110121", "DCM", "Application Stop")
NODE_AUTHENTICATION: MessageParts = ("110126", "DCM", "Node Authentication")
ROLE_APPLICATION: MessageParts = ("110150", "DCM", "Application")
ROLE_LAUNCHER: MessageParts = ("110151", "DCM", "Application Launcher")
ROLE_DESTINATION: MessageParts = ("110152", "DCM", "Destination Role ID")
ROLE_SOURCE: MessageParts = ("110153", "DCM", "Source Role ID")
STUDY_INSTANCE_UID: MessageParts = ("110180", "DCM", "Study Instance UID")
NODE_ID: MessageParts = ("110182", "DCM", "Node ID")
PATIENT_NUMBER: MessageParts = ("2", "RFC-3881", "Patient Number")

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"

# Characters XML 1.0 cannot carry; a peer chooses its AE title, so strip them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Node:
    """A remote DICOM application: its AE title and network address."""

    ae_title: str
    host: str | None = None


@dataclass(frozen=True)
class AuditContext:
    """What every message says about this router; fixed for the life of a process."""

    ae_title: str
    host: str
    source_id: str
    pid: int | None = None  # None: the pid of the process building the message
    destinations: Mapping[str, Node] = field(default_factory=dict)
    launcher: str | None = None  # login name that started the process, if known


def _clean(value: object) -> str:
    return _NOT_XML.sub("", str(value)).strip()


def _code(parent: ET.Element, tag: str, parts: MessageParts) -> ET.Element:
    code, system, meaning = parts
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning}
    )


def _access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


def _peer_address(peer: object) -> str | None:
    """``10.0.0.5:1234`` or ``[::1]:1234`` -> the address without the port."""
    if not peer:
        return None
    text = str(peer)  # the SCP always appends the port
    host = text.rsplit(":", 1)[0] if ":" in text else text
    return host.strip("[]") or None


def _participant(
    root: ET.Element,
    user_id: str,
    requestor: bool,
    role: MessageParts | None,
    ae_title: str | None = None,
    address: str | None = None,
    user_name: str | None = None,
) -> None:
    """One ActiveParticipant. A.5.2.2: a DICOM application's AlternativeUserID holds
    its AE titles as ``AETITLES=...``."""
    attrs = {"UserID": _clean(user_id) or "-"}
    if ae_title:
        attrs["AlternativeUserID"] = f"AETITLES={_clean(ae_title)}"
    if user_name:
        attrs["UserName"] = user_name
    attrs["UserIsRequestor"] = "true" if requestor else "false"
    if address:
        attrs["NetworkAccessPointID"] = _clean(address)
        attrs["NetworkAccessPointTypeCode"] = _access_point_type(address)
    element = ET.SubElement(root, "ActiveParticipant", attrs)
    if role is not None:
        _code(element, "RoleIDCode", role)


def _router(
    root: ET.Element, ctx: AuditContext, requestor: bool, role: MessageParts | None
) -> None:
    """The router itself: identified by its AE title, named with its pid (A.5.2.3)."""
    pid = ctx.pid if ctx.pid is not None else os.getpid()
    _participant(root, ctx.ae_title, requestor, role, ctx.ae_title, ctx.host,
                 user_name=f"dicom-router[{pid}]")  # fmt: skip


def _remote(root: ET.Element, node: Node, requestor: bool, role: MessageParts | None) -> None:
    _participant(root, node.ae_title, requestor, role, node.ae_title, node.host)


def _start(parts: MessageParts, action: str, when: str, outcome: str) -> ET.Element:
    root = ET.Element("AuditMessage")
    event = ET.SubElement(
        root,
        "EventIdentification",
        {"EventActionCode": action, "EventDateTime": when, "EventOutcomeIndicator": outcome},
    )
    _code(event, "EventID", parts)
    return root


def _type_and_outcome(root: ET.Element, type_code: MessageParts | None, detail: str) -> None:
    event = root.find("EventIdentification")
    assert event is not None
    if type_code is not None:
        _code(event, "EventTypeCode", type_code)
    if detail:
        ET.SubElement(event, "EventOutcomeDescription").text = _clean(detail)


def _audit_source(root: ET.Element, ctx: AuditContext) -> None:
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": ctx.source_id})
    # 4 = application server process tier (A.5.1.2.1).
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})


def _object(
    root: ET.Element, object_id: str, type_code: str, role: str | None, id_type: MessageParts,
    name: str,
) -> ET.Element:  # fmt: skip
    """One ParticipantObjectIdentification. The schema wants a ParticipantObjectName
    (or a query); where the router knows no separate descriptor, the name repeats
    the identifier."""
    attrs = {"ParticipantObjectID": _clean(object_id), "ParticipantObjectTypeCode": type_code}
    if role is not None:
        attrs["ParticipantObjectTypeCodeRole"] = role
    element = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    ET.SubElement(element, "ParticipantObjectName").text = _clean(name) or _clean(object_id)
    return element


def _study_and_patient(root: ET.Element, record: Mapping[str, Any]) -> None:
    """Study (2 system / 3 report, A.5.3) and Patient (1 person / 1 patient), as known."""
    study = record.get("study_instance_uid")
    if study:
        element = _object(root, study, "2", "3", STUDY_INSTANCE_UID, study)
        sop_class, sop_instance = record.get("sop_class_uid"), record.get("sop_instance_uid")
        if sop_class or sop_instance:
            description = ET.SubElement(element, "ParticipantObjectDescription")
            attrs = {"UID": _clean(sop_class)} if sop_class else {}
            sop = ET.SubElement(description, "SOPClass", {**attrs, "NumberOfInstances": "1"})
            if sop_instance:
                ET.SubElement(sop, "Instance", {"UID": _clean(sop_instance)})
    patient = record.get("patient_id")
    if patient:
        _object(root, patient, "1", "1", PATIENT_NUMBER, patient)


def _source_node(record: Mapping[str, Any]) -> Node:
    return Node(str(record.get("calling_ae") or "UNKNOWN"), _peer_address(record.get("peer")))


def _destination_node(record: Mapping[str, Any], ctx: AuditContext) -> Node:
    name = str(record.get("destination") or "")
    return ctx.destinations.get(name) or Node(name or "UNKNOWN")


def _serialise(root: ET.Element) -> bytes:
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _transferred(record: Mapping[str, Any], ctx: AuditContext, outcome: str) -> ET.Element:
    """Instances Transferred from the router to a destination (A.5.3.7)."""
    root = _start(INSTANCES_TRANSFERRED, "R", str(record.get("ts")), outcome)
    if outcome != SUCCESS:
        _type_and_outcome(root, None, str(record.get("status") or ""))
    _router(root, ctx, True, ROLE_SOURCE)
    _remote(root, _destination_node(record, ctx), False, ROLE_DESTINATION)
    return root


def audit_message(record: Mapping[str, Any], ctx: AuditContext) -> bytes | None:
    """The DICOM audit message for one audit record, or None (see the module doc)."""
    event = record.get("event")
    when = str(record.get("ts"))
    status = str(record.get("status") or "")
    if event == "received":
        root = _start(INSTANCES_TRANSFERRED, "C", when, SUCCESS)
        _remote(root, _source_node(record), True, ROLE_SOURCE)
        _router(root, ctx, False, ROLE_DESTINATION)
    elif event == "routed" and record.get("destination"):
        root = _start(BEGIN_TRANSFERRING, "E", when, SUCCESS)
        _router(root, ctx, True, ROLE_SOURCE)
        _remote(root, _destination_node(record, ctx), False, ROLE_DESTINATION)
    elif event == "forwarded" and status == ALREADY_DELIVERED:
        return None
    elif event == "forwarded":
        warning = bool(status) and not status.startswith("0x0000")
        root = _transferred(record, ctx, MINOR_FAILURE if warning else SUCCESS)
    elif event == "forward_failed":
        root = _transferred(record, ctx, MINOR_FAILURE)
    elif event == "dead_lettered":
        root = _transferred(record, ctx, SERIOUS_FAILURE)
    elif event == "rejected" and record.get("scope") == "association":
        return _security_alert(record, ctx)
    else:
        return None
    _audit_source(root, ctx)
    _study_and_patient(root, record)
    return _serialise(root)


def _security_alert(record: Mapping[str, Any], ctx: AuditContext) -> bytes:
    """A refused association (A.5.3.11): the router reports, the refused node performed."""
    root = _start(SECURITY_ALERT, "E", str(record.get("ts")), MINOR_FAILURE)
    _type_and_outcome(root, NODE_AUTHENTICATION, "")
    _router(root, ctx, False, None)
    node = _source_node(record)
    # UserIsRequestor of the performing participant "shall be FALSE" (A.5.3.11).
    _remote(root, node, False, None)
    _audit_source(root, ctx)
    subject = _object(root, node.host or node.ae_title, "2", None, NODE_ID, node.ae_title)
    description = str(record.get("status") or "association rejected")
    ET.SubElement(
        subject,
        "ParticipantObjectDetail",
        {"type": "Alert Description", "value": base64.b64encode(description.encode()).decode()},
    )
    return _serialise(root)


def application_activity(
    started: bool, ctx: AuditContext, when: dt.datetime | None = None
) -> bytes:
    """Application Activity (A.5.3.1): the router process starting or stopping."""
    moment = (when or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds")
    root = _start(APPLICATION_ACTIVITY, "E", moment, SUCCESS)
    _type_and_outcome(root, APPLICATION_START if started else APPLICATION_STOP, "")
    _router(root, ctx, False, ROLE_APPLICATION)
    if ctx.launcher:
        _participant(root, ctx.launcher, True, ROLE_LAUNCHER)
    _audit_source(root, ctx)
    return _serialise(root)


def syslog_severity(message: bytes) -> int:
    """Syslog severity for a message (PS3.15 A.6): 5 (notice) normally, 4 (warning)
    for a failure outcome or a Security Alert."""
    event = ET.fromstring(message).find("EventIdentification")
    assert event is not None
    event_id = event.find("EventID")
    alert = event_id is not None and event_id.get("csd-code") == SECURITY_ALERT[0]
    return 4 if alert or event.get("EventOutcomeIndicator") != SUCCESS else 5
