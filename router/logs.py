"""Application logging: structlog, JSON lines on stdout, console format on a terminal.

Application logs are read by many people and shipped to many systems, so they
must never carry patient identity. Two guards: callers log only UIDs, AE titles
and spool keys, and a processor at the end of the chain drops any field whose name
is a patient-identifying attribute, whatever a caller passed by mistake.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config

# Field names that must never reach a log line (PS3.15 Annex E patient attributes,
# in keyword and snake_case form). The full Annex E table lives with de-identification.
PHI_FIELDS = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
        "PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDs", "OtherPatientNames",
        "PatientMotherBirthName", "MedicalRecordLocator", "IssuerOfPatientID",
        "PatientBirthName", "ReferringPhysicianName", "AccessionNumber",
        "patient_name", "patient_id", "patient_birth_date", "patient_birth_time",
        "patient_sex", "patient_address", "other_patient_ids", "other_patient_names",
        "referring_physician_name", "accession_number", "patient_telephone_numbers",
        "patient_mother_birth_name", "medical_record_locator", "issuer_of_patient_id",
        "patient_birth_name",
    }
)  # fmt: skip

REDACTED = "[redacted]"


def drop_phi(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace patient-identifying fields by a marker."""
    for key in list(event_dict):
        if key in PHI_FIELDS:
            event_dict[key] = REDACTED
    return event_dict


def configure_logging(level: str = "INFO", json_output: bool | None = None) -> None:
    """Set up structlog and route the standard library's logging through it."""
    if json_output is None:
        json_output = not sys.stdout.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        drop_phi,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs dataset summaries at DEBUG; keep it at WARNING. Its standard
    # event handlers only ever log below that level, yet format every PDU and DIMSE
    # message they see (up to a tenth of a sending worker's CPU): do not bind them.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    # pydicom checks each value it converts or writes and reports an invalid one with
    # the value itself, as a log record and a warning on stderr ("Invalid value for
    # VR DA: '19991399'"): a patient's birth date in the application log. The router
    # passes data sets on as received and does not judge their values; it also saves
    # the checks' regular expressions on every element it reads or writes.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    # Celery logs two lines per task; the audit trail already records each instance.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> Any:
    """A bound structlog logger named after its module."""
    return structlog.get_logger(name)
