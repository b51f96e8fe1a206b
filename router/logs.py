"""Application logging: structlog, JSON lines on stdout, console format on a terminal.

Application logs are read by many people and shipped to many systems, so they
must never carry patient identity. Three guards: callers log only UIDs, AE titles
and spool keys; a processor drops any field whose name is a patient-identifying
attribute, whatever a caller passed by mistake; and exceptions, the router's and
its libraries' (pynetdicom logs a handler's exception as the message itself,
Celery a failed task's), are shown by type, place and the elements they name,
never by their message, which for pydicom's errors quotes the value
(router/error_text.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config

from router.error_text import describe_error, exception_of, safe_traceback

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


def hide_exception_values(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: render exceptions without their messages (module docstring).

    Takes the place of structlog's ``format_exc_info``; a standard-library record
    whose message is an exception object gets that exception's description.
    """
    record = event_dict.get("_record")
    if record is not None and isinstance(record.msg, BaseException):
        event_dict["event"] = describe_error(record.msg)
    if "exc_info" in event_dict:
        info = exception_of(event_dict.pop("exc_info"))
        if info is not None:
            event_dict["exception"] = safe_traceback(info)
    return event_dict


class _TaskFailureWithoutValues(logging.Filter):
    """Celery's "Task ... raised unexpected: <exception>" line, with the exception described."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.exc_info and isinstance(args, dict) and "exc" in args:
            failure = record.exc_info[1]
            described = describe_error(failure) if failure is not None else ""
            record.args = {**args, "exc": described, "traceback": ""}
        return True


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
        hide_exception_values,
    ]
    structlog.configure(
        processors=[*shared, renderer],
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
    trace = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, _TaskFailureWithoutValues) for f in trace.filters):
        trace.addFilter(_TaskFailureWithoutValues())


def get_logger(name: str) -> Any:
    """A bound structlog logger named after its module."""
    return structlog.get_logger(name)
