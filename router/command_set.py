"""DIMSE command sets for C-STORE, encoded and read directly (PS3.7 6.3.1, 9.3.1).

Used by the router's sending association (requests out, responses in) and by its
SCP for the common answer, success (router/quiet.py).

A command set is a handful of group-0000 elements in implicit VR little endian: a
fixed format. Building and reading them through pydicom ``Dataset`` objects cost
about a fifth of a send's CPU in the router (measured; docs/performance.md), for
three numbers and two UIDs. Pure functions, checked against pydicom's own encoding
in tests/unit/test_command_set.py.
"""

from __future__ import annotations

import struct

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
DATA_SET_PRESENT = 0x0000
NO_DATA_SET = 0x0101
PRIORITY_MEDIUM = 0x0000

# Element tags (group 0000) by element number.
GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
AFFECTED_SOP_INSTANCE_UID = 0x1000

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")


class CommandSetError(ValueError):
    """Bytes that are not a well-formed command set."""


def _element(number: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, number, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw  # UI is padded with NUL (PS3.5 6.2)


def _command(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return _element(GROUP_LENGTH, _UL.pack(len(body))) + body


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set announcing a data set, priority medium."""
    return _command(
        _element(AFFECTED_SOP_CLASS_UID, _uid(sop_class_uid)),
        _element(COMMAND_FIELD, _US.pack(C_STORE_RQ)),
        _element(MESSAGE_ID, _US.pack(message_id)),
        _element(PRIORITY, _US.pack(PRIORITY_MEDIUM)),
        _element(COMMAND_DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT)),
        _element(AFFECTED_SOP_INSTANCE_UID, _uid(sop_instance_uid)),
    )


def c_store_rsp(
    message_id_being_responded_to: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """A C-STORE-RSP command set without a data set (and without error details)."""
    return _command(
        _element(AFFECTED_SOP_CLASS_UID, _uid(sop_class_uid)),
        _element(COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        _element(MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id_being_responded_to)),
        _element(COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        _element(STATUS, _US.pack(status)),
        _element(AFFECTED_SOP_INSTANCE_UID, _uid(sop_instance_uid)),
    )


def read_elements(command: bytes) -> dict[int, bytes]:
    """Element number -> value bytes of a command set; raises CommandSetError."""
    elements: dict[int, bytes] = {}
    position, end = 0, len(command)
    while position < end:
        if end - position < _ELEMENT.size:
            raise CommandSetError("command set ends inside an element header")
        group, number, length = _ELEMENT.unpack_from(command, position)
        position += _ELEMENT.size
        if group != 0x0000:
            raise CommandSetError(f"element ({group:04X},{number:04X}) outside group 0000")
        if length > end - position:
            raise CommandSetError(f"element (0000,{number:04X}) longer than the command set")
        elements[number] = command[position : position + length]
        position += length
    return elements


def unsigned_short(elements: dict[int, bytes], number: int) -> int:
    """The US value of element (0000,``number``); raises CommandSetError if absent."""
    value = elements.get(number)
    if value is None or len(value) != 2:
        raise CommandSetError(f"no US value for (0000,{number:04X})")
    (result,) = _US.unpack(value)
    return int(result)
