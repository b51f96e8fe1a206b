"""router.audit_messages: each audit event becomes the right PS3.15 A.5.3 message.

Every message built here is also validated against the schema of PS3.15 A.5.1
(tests/support/dicom_audit.rng); the last tests check the wiring into AuditLog.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from router import audit, metrics
from router.audit import AuditLog, DicomAuditSink, audit_log_from_config, audit_record
from router.audit_messages import (
    AuditContext,
    Node,
    application_activity,
    audit_message,
    syslog_severity,
)
from router.config import RouterConfig
from router.status import ALREADY_DELIVERED
from router.syslog_out import SyslogQueue
from tests.support.syslog_receiver import audit_schema, parse_syslog, validate_audit_xml

CT = "1.2.840.10008.5.1.4.1.1.2"
CTX = AuditContext(
    ae_title="ROUTER",
    host="router1.example.org",
    source_id="RADIOLOGY-ROUTER",
    pid=4242,
    destinations={"pacs_main": Node("MAIN_PACS", "10.1.2.3")},
)
FULL = {
    "sop_instance_uid": "1.2.3.4.5",
    "study_instance_uid": "1.2.3.4",
    "sop_class_uid": CT,
    "patient_id": "PID-0042",
    "calling_ae": "CT01",
    "peer": "10.0.0.5:40112",
}


def build(event: str, **fields: Any) -> Any:
    """The message for one record, validated; returns the parsed root."""
    message = audit_message(audit_record(event, **fields), CTX)
    assert message is not None
    return validate_audit_xml(message)


def code(element: Any, path: str) -> tuple[str, str, str]:
    found = element.find(path)
    assert found is not None, path
    return found.get("csd-code"), found.get("codeSystemName"), found.get("originalText")


def participants(root: Any) -> dict[str, Any]:
    """ActiveParticipants by RoleIDCode (role-less ones under their UserID)."""
    result = {}
    for p in root.findall("ActiveParticipant"):
        role = p.find("RoleIDCode")
        result[role.get("csd-code") if role is not None else p.get("UserID")] = p
    return result


def objects(root: Any) -> dict[str, Any]:
    """ParticipantObjectIdentifications by their ID type code."""
    return {
        o.find("ParticipantObjectIDTypeCode").get("csd-code"): o
        for o in root.findall("ParticipantObjectIdentification")
    }


def event(root: Any) -> Any:
    return root.find("EventIdentification")


def test_received_is_instances_transferred_create_from_the_modality() -> None:
    root = build("received", status="0x0000", **FULL)
    assert code(root, "EventIdentification/EventID") == (
        "110104", "DCM", "DICOM Instances Transferred"
    )  # fmt: skip
    assert event(root).get("EventActionCode") == "C"
    assert event(root).get("EventOutcomeIndicator") == "0"
    people = participants(root)
    source, destination = people["110153"], people["110152"]
    assert source.get("UserID") == "CT01"
    assert source.get("AlternativeUserID") == "AETITLES=CT01"
    assert source.get("UserIsRequestor") == "true"
    assert source.get("NetworkAccessPointID") == "10.0.0.5"
    assert source.get("NetworkAccessPointTypeCode") == "2"
    assert destination.get("UserID") == "ROUTER"
    assert destination.get("AlternativeUserID") == "AETITLES=ROUTER"
    assert destination.get("UserName") == "dicom-router[4242]"
    assert destination.get("UserIsRequestor") == "false"
    assert destination.get("NetworkAccessPointID") == "router1.example.org"
    assert destination.get("NetworkAccessPointTypeCode") == "1"
    source_id = root.find("AuditSourceIdentification")
    assert source_id.get("AuditSourceID") == "RADIOLOGY-ROUTER"


def test_study_and_patient_participant_objects() -> None:
    found = objects(build("received", status="0x0000", **FULL))
    study, patient = found["110180"], found["2"]
    assert study.get("ParticipantObjectID") == "1.2.3.4"
    assert study.get("ParticipantObjectTypeCode") == "2"
    assert study.get("ParticipantObjectTypeCodeRole") == "3"
    assert code(study, "ParticipantObjectIDTypeCode") == ("110180", "DCM", "Study Instance UID")
    sop_class = study.find("ParticipantObjectDescription/SOPClass")
    assert sop_class.get("UID") == CT
    assert sop_class.get("NumberOfInstances") == "1"
    assert sop_class.find("Instance").get("UID") == "1.2.3.4.5"
    assert patient.get("ParticipantObjectID") == "PID-0042"
    assert patient.get("ParticipantObjectTypeCode") == "1"
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert code(patient, "ParticipantObjectIDTypeCode") == ("2", "RFC-3881", "Patient Number")


def test_absent_fields_leave_out_their_objects_and_stay_valid() -> None:
    root = build("received", status="0x0000", calling_ae="CT01")
    assert objects(root) == {}
    assert participants(root)["110153"].get("NetworkAccessPointID") is None
    only_study = objects(build("forwarded", destination="pacs_main", study_instance_uid="1.2"))
    assert set(only_study) == {"110180"}
    assert only_study["110180"].find("ParticipantObjectDescription") is None


def test_routed_to_a_destination_is_begin_transferring() -> None:
    root = build("routed", destination="pacs_main", rule="r", **FULL)
    assert code(root, "EventIdentification/EventID") == (
        "110102", "DCM", "Begin Transferring DICOM Instances"
    )  # fmt: skip
    assert event(root).get("EventActionCode") == "E"
    people = participants(root)
    assert people["110153"].get("UserID") == "ROUTER"
    assert people["110153"].get("UserIsRequestor") == "true"
    assert people["110152"].get("UserID") == "MAIN_PACS"
    assert people["110152"].get("AlternativeUserID") == "AETITLES=MAIN_PACS"
    assert people["110152"].get("NetworkAccessPointID") == "10.1.2.3"
    assert people["110152"].get("UserIsRequestor") == "false"
    assert set(objects(root)) == {"110180", "2"}


def test_forwarded_is_instances_transferred_read_from_the_router() -> None:
    root = build("forwarded", destination="pacs_main", status="0x0000 SUCCESS", **FULL)
    assert code(root, "EventIdentification/EventID")[0] == "110104"
    assert event(root).get("EventActionCode") == "R"
    assert event(root).get("EventOutcomeIndicator") == "0"
    assert event(root).find("EventOutcomeDescription") is None
    people = participants(root)
    assert people["110153"].get("UserID") == "ROUTER"
    assert people["110153"].get("UserIsRequestor") == "true"
    assert people["110152"].get("UserID") == "MAIN_PACS"


def test_unknown_destination_name_is_used_as_its_identity() -> None:
    root = build("forwarded", destination="gone", status="0x0000 SUCCESS")
    assert participants(root)["110152"].get("UserID") == "gone"


@pytest.mark.parametrize(
    ("event_name", "status", "outcome"),
    [
        ("forwarded", "0xB000 COERCION_OF_DATA_ELEMENTS", "4"),
        ("forward_failed", "0xA700 OUT_OF_RESOURCES", "4"),
        ("dead_lettered", "retries exhausted: 0xA700 OUT_OF_RESOURCES", "8"),
    ],
)
def test_failures_are_transferred_with_their_outcome(
    event_name: str, status: str, outcome: str
) -> None:
    root = build(event_name, destination="pacs_main", status=status, **FULL)
    assert code(root, "EventIdentification/EventID")[0] == "110104"
    assert event(root).get("EventOutcomeIndicator") == outcome
    assert event(root).find("EventOutcomeDescription").text == status
    message = etree.tostring(root)
    assert syslog_severity(message) == 4


def test_association_rejection_is_a_node_authentication_security_alert() -> None:
    root = build("rejected", calling_ae="INTRUDER", peer="192.0.2.7:5000",
                 status="calling AE title not allowed", scope="association")  # fmt: skip
    assert code(root, "EventIdentification/EventID") == ("110113", "DCM", "Security Alert")
    assert code(root, "EventIdentification/EventTypeCode") == (
        "110126", "DCM", "Node Authentication"
    )  # fmt: skip
    assert event(root).get("EventActionCode") == "E"
    assert event(root).get("EventOutcomeIndicator") == "4"
    people = participants(root)
    reporter, performer = people["ROUTER"], people["INTRUDER"]
    assert reporter.get("UserIsRequestor") == "false"
    assert performer.get("UserIsRequestor") == "false"  # "shall be FALSE" (A.5.3.11)
    assert performer.get("NetworkAccessPointID") == "192.0.2.7"
    subject = objects(root)["110182"]
    assert subject.get("ParticipantObjectID") == "192.0.2.7"
    assert subject.get("ParticipantObjectTypeCode") == "2"
    assert subject.find("ParticipantObjectName").text == "INTRUDER"
    detail = subject.find("ParticipantObjectDetail")
    assert detail.get("type") == "Alert Description"
    assert base64.b64decode(detail.get("value")).decode() == "calling AE title not allowed"
    assert syslog_severity(etree.tostring(root)) == 4


@pytest.mark.parametrize(
    ("event_name", "fields"),
    [
        ("rejected", {"status": "0xA700 disk_low", "calling_ae": "CT01", **FULL}),
        ("rejected", {"status": "0xC000 malformed_dataset", "calling_ae": "CT01"}),
        ("routed", {"status": "unmatched-kept", **FULL}),
        ("routed", {"status": "unreadable", "sop_instance_uid": "1.2"}),
        ("rules_reloaded", {"status": "loaded", "ruleset_version": "abc"}),
        # Nothing was transferred: the destination had this content from before.
        ("forwarded", {"status": ALREADY_DELIVERED, "destination": "pacs", **FULL}),
    ],
)
def test_events_without_a_dicom_message(event_name: str, fields: dict[str, Any]) -> None:
    assert audit_message(audit_record(event_name, **fields), CTX) is None


@pytest.mark.parametrize("started", [True, False])
def test_application_activity(started: bool) -> None:
    ctx = AuditContext("ROUTER", "10.9.8.7", "src", pid=77, launcher="svc-router")
    root = validate_audit_xml(application_activity(started, ctx))
    assert code(root, "EventIdentification/EventID") == ("110100", "DCM", "Application Activity")
    assert event(root).get("EventActionCode") == "E"
    expected = ("110120", "DCM", "Application Start") if started else (
        "110121", "DCM", "Application Stop")  # fmt: skip
    assert code(root, "EventIdentification/EventTypeCode") == expected
    people = participants(root)
    application, launcher = people["110150"], people["110151"]
    assert application.get("UserID") == "ROUTER"
    assert application.get("AlternativeUserID") == "AETITLES=ROUTER"
    assert application.get("NetworkAccessPointTypeCode") == "2"
    assert application.get("UserIsRequestor") == "false"
    assert launcher.get("UserID") == "svc-router"
    assert launcher.get("UserIsRequestor") == "true"
    assert objects(root) == {}
    assert syslog_severity(etree.tostring(root)) == 5


def test_hostile_text_from_a_peer_still_gives_valid_xml() -> None:
    root = build("rejected", calling_ae='<A&"\x01\x1b>', peer="[2001:db8::1]:104",
                 status="calling AE title not allowed", scope="association")  # fmt: skip
    performer = [p for p in root.findall("ActiveParticipant") if p.find("RoleIDCode") is None][1]
    assert performer.get("UserID") == '<A&">'
    assert performer.get("NetworkAccessPointID") == "2001:db8::1"


def test_the_schema_is_not_vacuous() -> None:
    """The schema used above refuses what the standard refuses."""
    good = audit_message(audit_record("received", status="0x0000", **FULL), CTX)
    assert good is not None
    schema = audit_schema()
    for broken in (
        good.replace(b'EventOutcomeIndicator="0"', b'EventOutcomeIndicator="3"'),
        good.replace(b"<ParticipantObjectName>1.2.3.4</ParticipantObjectName>", b""),
        good.replace(b' UserIsRequestor="true"', b""),
        good.replace(b'originalText="Source Role ID"', b""),
        good.replace(b"<AuditSourceTypeCode", b"<Unexpected"),
    ):
        assert broken != good
        assert not schema.validate(etree.fromstring(broken))


# --- wiring into AuditLog -------------------------------------------------------


def sink(directory: Path) -> DicomAuditSink:
    return DicomAuditSink(SyslogQueue(directory), CTX)


def test_emit_writes_the_json_line_and_queues_the_dicom_message(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", dicom=sink(tmp_path / "q"))
    log.emit("received", status="0x0000", **FULL)
    log.emit("rules_reloaded", status="loaded")  # no DICOM message
    log.close()
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 2
    queued = sorted((tmp_path / "q").iterdir())
    assert len(queued) == 1
    message = parse_syslog(queued[0].read_bytes())
    assert message.event_id() == "110104"
    assert (message.facility, message.severity) == (10, 5)
    assert message.msgid == "DICOM+RFC3881"


def test_a_queue_that_cannot_be_written_loses_neither_the_line_nor_the_call(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    before = metrics.audit_syslog_queue_errors._value.get()
    log = AuditLog(tmp_path / "audit.jsonl", dicom=sink(blocker))
    log.emit("received", status="0x0000", **FULL)  # does not raise
    log.application(started=True)
    log.close()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["sop_instance_uid"] == "1.2.3.4.5"
    assert metrics.audit_syslog_queue_errors._value.get() == before + 2


def test_factory_and_process_default(tmp_path: Path) -> None:
    syslog = {"host": "127.0.0.1", "queue_dir": str(tmp_path / "q"), "source_id": "SITE-A"}
    pacs = {"ae_title": "MAIN_PACS", "host": "10.1.2.3", "port": 104}
    cfg = RouterConfig.model_validate(
        {
            "audit": {"file": str(tmp_path / "a.jsonl"), "syslog": syslog},
            "destinations": {"pacs_main": pacs},
        }
    )
    log = audit_log_from_config(cfg)
    assert log.dicom is not None
    assert log.dicom.context.source_id == "SITE-A"
    assert log.dicom.context.destinations["pacs_main"] == Node("MAIN_PACS", "10.1.2.3")
    assert AuditLog(tmp_path / "b.jsonl").dicom is None
    audit.install_dicom_sink(log.dicom)
    try:
        assert AuditLog(tmp_path / "b.jsonl").dicom is log.dicom
    finally:
        audit.install_dicom_sink(None)
    without = RouterConfig.model_validate({"audit": {"file": str(tmp_path / "a.jsonl")}})
    assert audit_log_from_config(without).dicom is None
