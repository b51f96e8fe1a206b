"""C-STORE command sets (router/command_set.py) against pydicom's own encoding."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from router import command_set

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1"])
def test_c_store_rq_is_what_pydicom_encodes(instance: str) -> None:
    ours = command_set.c_store_rq(7, CT, instance)
    expected = Dataset()
    expected.CommandGroupLength = len(ours) - 12
    expected.AffectedSOPClassUID = CT
    expected.CommandField = 0x0001
    expected.MessageID = 7
    expected.Priority = 0
    expected.CommandDataSetType = 0x0000
    expected.AffectedSOPInstanceUID = instance
    assert ours == encode(expected, True, True)
    parsed = decode(BytesIO(ours), True, True)
    assert parsed.AffectedSOPInstanceUID == instance
    assert parsed.CommandGroupLength == len(ours) - 12


def test_c_store_rsp_is_what_pydicom_encodes() -> None:
    ours = command_set.c_store_rsp(513, CT, "1.2.3.45", 0x0000)
    expected = Dataset()
    expected.CommandGroupLength = len(ours) - 12
    expected.AffectedSOPClassUID = CT
    expected.CommandField = 0x8001
    expected.MessageIDBeingRespondedTo = 513
    expected.CommandDataSetType = 0x0101
    expected.Status = 0x0000
    expected.AffectedSOPInstanceUID = "1.2.3.45"
    assert ours == encode(expected, True, True)


def test_a_pydicom_encoded_response_is_read() -> None:
    response = Dataset()
    response.CommandGroupLength = 0
    response.AffectedSOPClassUID = CT
    response.CommandField = 0x8001
    response.MessageIDBeingRespondedTo = 513
    response.CommandDataSetType = 0x0101
    response.Status = 0xA700
    response.ErrorComment = "disk full"
    elements = command_set.read_elements(encode(response, True, True))
    assert command_set.unsigned_short(elements, command_set.COMMAND_FIELD) == 0x8001
    assert command_set.unsigned_short(elements, command_set.MESSAGE_ID_BEING_RESPONDED_TO) == 513
    assert command_set.unsigned_short(elements, command_set.STATUS) == 0xA700
    assert elements[0x0902].rstrip(b" ") == b"disk full"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00\x00\x09\x02\x00", "inside an element header"),
        (b"\x00\x00\x00\x09\x04\x00\x00\x00\x00\x00", "longer than the command set"),
        (b"\x08\x00\x18\x00\x02\x00\x00\x00\x31\x00", "outside group 0000"),
    ],
)
def test_broken_command_sets_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(command_set.CommandSetError, match=message):
        command_set.read_elements(raw)


def test_a_missing_or_malformed_status_is_refused() -> None:
    with pytest.raises(command_set.CommandSetError, match="0900"):
        command_set.unsigned_short({0x0900: b"\x00"}, command_set.STATUS)
    with pytest.raises(command_set.CommandSetError, match="0900"):
        command_set.unsigned_short({}, command_set.STATUS)
