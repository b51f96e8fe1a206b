"""router.logs: JSON logs on stdout that never carry patient identity."""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator
from io import BytesIO

import pytest
import structlog
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association

from router.error_text import describe_error
from router.logs import PHI_FIELDS, REDACTED, configure_logging, drop_phi, get_logger


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pynetdicom_level = logging.getLogger("pynetdicom").level
    pynetdicom_handlers = pynetdicom_config.LOG_HANDLER_LEVEL
    validation = (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    )
    yield
    pynetdicom_config.LOG_HANDLER_LEVEL = pynetdicom_handlers
    (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    ) = validation
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)


def snake(keyword: str) -> str:
    """DICOM keyword -> snake_case as in PHI_FIELDS (OtherPatientIDs -> other_patient_ids)."""
    keyword = keyword.replace("IDs", "Ids")
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword).lower()


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "field",
    [
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "OtherPatientIDs",
        "AccessionNumber",
        "ReferringPhysicianName",
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "accession_number",
    ],
)
def test_drop_phi_redacts(field: str) -> None:
    event = {"event": "stored", field: "DOE^JOHN", "sop_instance_uid": "1.2.3"}
    out = drop_phi(None, "info", event)
    assert out[field] == REDACTED
    assert out["event"] == "stored"
    assert out["sop_instance_uid"] == "1.2.3"


def test_drop_phi_keeps_everything_else() -> None:
    event = {"event": "x", "calling_ae": "CT1", "spool_key": "ab" * 16, "patient": "not-a-field"}
    assert drop_phi(None, "info", dict(event)) == event


def test_phi_fields_include_snake_case_of_core_keywords() -> None:
    core = ("PatientName", "PatientID", "OtherPatientIDs", "PatientSex", "AccessionNumber")
    for keyword in core:
        assert keyword in PHI_FIELDS
        assert snake(keyword) in PHI_FIELDS


def test_every_phi_keyword_has_its_snake_case_form() -> None:
    keywords = {f for f in PHI_FIELDS if f[0].isupper()}
    missing = sorted(snake(k) for k in keywords if snake(k) not in PHI_FIELDS)
    # today: issuer_of_patient_id, medical_record_locator, patient_birth_name,
    # patient_mother_birth_name, patient_telephone_numbers
    assert missing == []


def test_json_log_line_on_stdout_without_patient_name(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_output=True)
    get_logger("router.test").info(
        "instance stored", PatientName="DOE^JOHN", patient_id="PID-4711", sop_instance_uid="1.2.3"
    )
    out = capsys.readouterr().out
    assert "DOE^JOHN" not in out
    assert "PID-4711" not in out
    (record,) = json_lines(out)
    assert record["event"] == "instance stored"
    assert record["PatientName"] == REDACTED
    assert record["patient_id"] == REDACTED
    assert record["sop_instance_uid"] == "1.2.3"
    assert record["level"] == "info"
    assert "timestamp" in record


def test_contextvars_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_output=True)
    structlog.contextvars.bind_contextvars(PatientName="DOE^JANE", calling_ae="CT1")
    try:
        get_logger("router.test").info("bound")
    finally:
        structlog.contextvars.clear_contextvars()
    out = capsys.readouterr().out
    assert "DOE^JANE" not in out
    (record,) = json_lines(out)
    assert record["calling_ae"] == "CT1"


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", json_output=True)
    log = get_logger("router.test")
    log.info("hidden")
    log.warning("shown")
    records = json_lines(capsys.readouterr().out)
    assert [r["event"] for r in records] == ["shown"]
    assert records[0]["level"] == "warning"


def test_stdlib_logging_goes_through_same_json_pipeline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", json_output=True)
    logging.getLogger("some.library").warning("library says %s", "hello")
    logging.getLogger("pynetdicom").info("dataset summary PatientName=DOE^JOHN")
    out = capsys.readouterr().out
    (record,) = json_lines(out)
    assert record["event"] == "library says hello"
    assert record["level"] == "warning"
    assert "DOE^JOHN" not in out  # pynetdicom kept at WARNING


def test_console_output_also_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_output=False)
    get_logger("router.test").info("stored", PatientName="DOE^JOHN", calling_ae="CT1")
    out = capsys.readouterr().out
    assert "stored" in out and "CT1" in out
    assert "DOE^JOHN" not in out
    assert REDACTED in out


_LOG_ONE_LINE = (
    "from router.logs import configure_logging, get_logger\n"
    "configure_logging('INFO')\n"
    "get_logger('router.test').info('forwarded', destination='pacs', patient_id='SECRET-42')\n"
)


def test_terminal_gets_console_lines_and_pipes_get_json() -> None:
    """The format follows stdout: a terminal reads ``key=value`` text, anything else JSON."""
    import json
    import os
    import pty
    import subprocess
    import sys

    piped = subprocess.run([sys.executable, "-c", _LOG_ONE_LINE], capture_output=True, text=True,
                           timeout=60, check=True)  # fmt: skip
    record = json.loads(piped.stdout.strip().splitlines()[-1])
    assert record["event"] == "forwarded" and record["destination"] == "pacs"
    assert "SECRET-42" not in piped.stdout

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _LOG_ONE_LINE], stdout=follower,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the child is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    text = b"".join(chunks).decode()
    assert "forwarded" in text and "destination=pacs" in text
    assert not text.lstrip().startswith("{"), text
    assert "SECRET-42" not in text


def test_pynetdicom_formats_no_messages_it_would_only_drop() -> None:
    """pynetdicom's standard handlers log below the level kept for it; not bound at all."""
    configure_logging("DEBUG")
    assoc = Association(AE(), "requestor")
    for event in (evt.EVT_PDU_SENT, evt.EVT_PDU_RECV, evt.EVT_DIMSE_SENT, evt.EVT_DIMSE_RECV):
        assert assoc.get_handlers(event) == [], event.name
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.WARNING


def test_pydicom_never_reports_a_patient_value(capsys: pytest.CaptureFixture[str]) -> None:
    """pydicom reports an invalid value with the value itself; the router turns the
    checks off, so a malformed birth date or name never reaches a log or stderr."""
    configure_logging("DEBUG", json_output=True)
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    dataset.PatientBirthDate = "19991399"  # no 13th month
    dataset.PatientName = "SECRET^" + "X" * 70  # longer than PN allows
    dataset.PatientSex = "secret-sex"
    written = BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset.save_as(written, enforce_file_format=True)
        written.seek(0)
        read = dcmread(written)
        assert (read.PatientBirthDate, str(read.PatientName)[:6], read.PatientSex) == (
            "19991399",
            "SECRET",
            "secret-sex",
        )
    out = capsys.readouterr()
    assert [str(w.message) for w in caught] == []
    for secret in ("19991399", "SECRET", "secret-sex"):
        assert secret not in out.out + out.err


def _wrong_length_patient_id() -> Dataset:
    """A data set whose PatientID is stored as UL: reading it raises an error quoting it."""
    ds = Dataset()
    value = b"LEAKID123 "
    ds._dict[BaseTag(0x00100020)] = RawDataElement(
        BaseTag(0x00100020), "UL", len(value), value, 0, False, True
    )
    return ds


def test_malformed_element_error_names_the_element_not_the_value() -> None:
    with pytest.raises(Exception) as caught:
        _ = _wrong_length_patient_id().PatientID
    assert "LEAKID123" in str(caught.value)  # what the guard is for
    described = describe_error(caught.value)
    assert "LEAKID123" not in described
    assert described == "BytesLengthException (element (0010,0020); VR UL)"


def test_system_errors_keep_their_message() -> None:
    error = FileNotFoundError(2, "No such file or directory", "/spool/incoming/ab/x.dcm")
    assert describe_error(error) == f"FileNotFoundError: {error}"


def test_logged_exception_shows_where_not_what(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_output=True)
    try:
        try:
            float("DOE^JOHN")
        except ValueError as inner:
            raise RuntimeError("while routing DOE^JOHN") from inner
    except RuntimeError:
        get_logger("test").exception("route failed")
        logging.getLogger("pynetdicom.test").exception("handler failed")
    out = capsys.readouterr().out
    assert "DOE^JOHN" not in out
    structlog_line, stdlib_line = json_lines(out)
    for line in (structlog_line, stdlib_line):
        text = str(line["exception"])
        assert "test_logs.py" in text and "test_logged_exception_shows_where_not_what" in text
        assert text.index("ValueError") < text.index("RuntimeError")  # cause first


def test_exception_as_the_message_is_described(capsys: pytest.CaptureFixture[str]) -> None:
    """pynetdicom logs a failed handler's exception as the message itself."""
    configure_logging("INFO", json_output=True)
    try:
        _ = _wrong_length_patient_id().PatientID
    except Exception as exc:
        logging.getLogger("pynetdicom.service_class").exception(exc)
    (line,) = json_lines(capsys.readouterr().out)
    assert "LEAKID123" not in json.dumps(line)
    assert line["event"] == "BytesLengthException (element (0010,0020); VR UL)"


def test_failed_celery_task_line_has_no_values(capsys: pytest.CaptureFixture[str]) -> None:
    from celery.app.trace import LOG_FAILURE

    configure_logging("INFO", json_output=True)
    try:
        float("LEAK^NAME")
    except ValueError as exc:
        context = {"hostname": "w1", "id": "abc", "name": "router.route", "exc": repr(exc),
                   "traceback": "ValueError: could not convert string to float: 'LEAK^NAME'",
                   "args": "[]", "kwargs": "{}", "description": "raised unexpected",
                   "internal": False}  # fmt: skip
        logging.getLogger("celery.app.trace").log(
            logging.ERROR, LOG_FAILURE.strip(), context, exc_info=True
        )
    (line,) = json_lines(capsys.readouterr().out)
    assert "LEAK^NAME" not in json.dumps(line)
    assert line["event"] == "Task router.route[abc] raised unexpected: ValueError"
