"""``meterd decode`` in both DL/T 645 editions (issue 17): the edition from the control code, 1997
requests, replies and abnormal replies decoded fully, identifiers 8 or 4 hex digits wide, a meter's
date as a date and times in the site's zone, and a frame that does not decode is an error exit.

Before, a valid 1997 reply printed ``cannot decode: unknown function code 01`` and exited 0.

Recorded frames (published by other projects, not made by meterd):

* wuhuangrui/C82_DL689 ``ClouSoft/app/Meter/SearchMeter.cpp`` (comment above ``IsMetOrNot``):
  ``68 AA AA AA AA AA AA 68 01 02 43 C3 D5 16`` -- read 9010 to the wildcard -- and the answer of a
  1997 meter that kept the wildcard, ``68 AA AA AA AA AA AA 68 81 06 43 C3 94 A5 35 33 FA 16``
  (data 61 72 02 00: 000272.61 kWh);
* cqqqq/go645 ``protocol_test.go`` (``TestRead``, decoded there as ``Ver1997``):
  ``6811110000000068810446E953352E16`` -- a reply of B613 (phase C voltage), 20 02: 220 V;
* Heyuan Intelligence ASDU-LS manual, "1997 DL/645 Protocol Configuration"
  (https://manualshive.com/en/manual/heyuan-intelligence/asdu-ls/2128413?page=18):
  ``68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16``, "Data Domain: 0100V".

No published 1997 abnormal reply was found; those below are built with meterd's encoder in the
layout of DL/T 645-1997 (C | 0xC0, one ERR byte), which the 1997 golden table in
``test_dlt645_1997.py`` checks byte by byte.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from decimal import Decimal

import pytest

from meterd.cli import decode
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue1997 import encode97
from meterd.protocols.dlt645.explain import EDITION_1997, EDITION_2007, edition_of, error_bits, explain
from meterd.protocols.dlt645.frame import Frame, decode_frame, encode_frame
from meterd.protocols.dlt645.messages import ReadResponse, encode_response
from meterd.protocols.dlt645.v1997 import (
    AbnormalResponse97,
    Function97,
    MeterErrorBits1997,
    ReadResponse97,
    encode_response97,
)

WILDCARD_READ_9010 = "68 AA AA AA AA AA AA 68 01 02 43 C3 D5 16"  # wuhuangrui/C82_DL689
WILDCARD_REPLY_9010 = "68 AA AA AA AA AA AA 68 81 06 43 C3 94 A5 35 33 FA 16"  # wuhuangrui/C82_DL689
GO645_REPLY_B613 = "6811110000000068810446E953352E16"  # cqqqq/go645 protocol_test.go
HEYUAN_REPLY_B611 = "68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16"  # Heyuan ASDU-LS manual
A = "000000000001"


def hexof(frame: Frame) -> str:
    return encode_frame(frame).hex(" ").upper()


def run(capsys: pytest.CaptureFixture[str], *hex_: str, json_: bool = False) -> tuple[int, str, str]:
    rc = decode.run(argparse.Namespace(hex=list(hex_), json=json_))
    out, err = capsys.readouterr()
    return rc, out, err


# --- which edition ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("control", "data", "edition"), [
    # DL/T 645-1997 function codes; 01 is not a 2007 code at all
    (0x01, b"\x10\x90", EDITION_1997), (0x81, b"\x10\x90\x00\x00\x00\x00", EDITION_1997),
    (0xC1, b"\x02", EDITION_1997), (0xA1, b"\x10\x90\x00\x00\x00\x00", EDITION_1997),
    (0x02, b"\x10\x90", EDITION_1997), (0x04, bytes(6), EDITION_1997), (0x84, b"", EDITION_1997),
    (0x0A, bytes(6), EDITION_1997), (0x0C, b"\x10", EDITION_1997), (0x0F, bytes(8), EDITION_1997),
    (0x10, bytes(4), EDITION_1997), (0xD0, b"\x04", EDITION_1997),
    (0x03, b"", EDITION_1997),  # re-read: 1997's 03 has no data
    # DL/T 645-2007 function codes
    (0x11, bytes(4), EDITION_2007), (0x91, bytes(8), EDITION_2007), (0xD1, b"\x02", EDITION_2007),
    (0x13, b"", EDITION_2007), (0x93, bytes(6), EDITION_2007), (0x1C, bytes(16), EDITION_2007),
    (0x03, bytes(8), EDITION_2007),  # 2007's security authentication carries data
    (0x08, bytes(6), EDITION_2007),  # broadcast time: the same frame in both, decoded as 2007
])  # fmt: skip
def test_the_edition_comes_from_the_control_code(control: int, data: bytes, edition: int) -> None:
    assert edition_of(Frame(A, control, data))[0] == edition


@pytest.mark.parametrize("function", [0x00, 0x05, 0x06, 0x07, 0x09, 0x0B, 0x0D, 0x0E, 0x1E, 0x1F])
def test_a_function_code_of_neither_edition_is_named_as_such(function: int) -> None:
    edition, why = edition_of(Frame(A, function, b""))
    assert edition is None and f"function {function:02X} exists in neither" in why


# --- recorded 1997 frames --------------------------------------------------------------------------


def test_recorded_1997_read_reply_of_9010_decodes_with_its_value(capsys) -> None:
    rc, out, err = run(capsys, WILDCARD_REPLY_9010)
    assert rc == 0, err
    assert "unknown function code" not in out  # what it printed before, with exit status 0
    assert "edition  DL/T 645-1997 (function 01 exists only in DL/T 645-1997)" in out
    assert "control  81  reply READ_DATA" in out
    assert "message  ReadResponse97  di=9010" in out
    assert "meaning  9010: active.import energy total" in out
    assert "value    energy.active.import.total = 272.61 kWh" in out
    assert err == ""


def test_recorded_1997_read_request_decodes_with_its_identifier(capsys) -> None:
    rc, out, _ = run(capsys, "FE FE FE FE " + WILDCARD_READ_9010)
    assert rc == 0
    assert "address  AAAAAAAAAAAA" in out and "control  01  request READ_DATA" in out
    assert "message  ReadRequest97  di=9010" in out and "meaning  9010: active.import energy total" in out


def test_request_and_reply_of_another_project_in_one_paste_json(capsys) -> None:
    rc, out, _ = run(capsys, WILDCARD_READ_9010, GO645_REPLY_B613, HEYUAN_REPLY_B611, json_=True)
    assert rc == 0
    request, b613, b611 = json.loads(out)
    assert request["edition"] == "DL/T 645-1997" and request["message"] == "ReadRequest97"
    assert request["fields"] == {"di": "9010"} and request["identifier"] == "active.import energy total"
    assert b613["address"] == "000000001111" and b613["fields"]["di"] == "B613"
    assert b613["values"] == [{"quantity": "voltage.c", "value": "220", "unit": "V"}]
    assert b613["fields"]["data"] == "20 02"  # data as hex bytes
    assert b611["values"] == [{"quantity": "voltage.a", "value": "100", "unit": "V"}]


# --- 1997 abnormal replies -------------------------------------------------------------------------


def test_1997_abnormal_reply_names_the_error(capsys) -> None:
    frame = encode_response97(AbnormalResponse97(A, Function97.READ_DATA, MeterErrorBits1997.DI_ERROR))
    assert hexof(frame) == "68 01 00 00 00 00 00 68 C1 01 35 C8 16"
    rc, out, _ = run(capsys, hexof(frame))
    assert rc == 0
    assert "control  C1  reply READ_DATA ABNORMAL" in out
    assert "message  AbnormalResponse97  function=READ_DATA (0x01), error=DI_ERROR (0x02)" in out
    assert "refused  ERR 02: data identifier error (数据标识错)" in out
    rc, out, _ = run(capsys, hexof(frame), json_=True)
    assert json.loads(out)["refused"] == {"error": "02", "bits": ["data identifier error (数据标识错)"]}


def test_every_bit_of_an_error_byte_is_named_reserved_ones_too(capsys) -> None:
    frame = Frame(A, 0xC4, bytes((0x8C,)))  # write refused: password error, D3 and D7 (reserved in 1997)
    rc, out, _ = run(capsys, hexof(frame))
    assert rc == 0
    assert "refused  ERR 8C: password error (密码错); reserved bit D3; reserved bit D7" in out
    assert error_bits(EDITION_2007, 0x08) == ("baud rate cannot be changed (通信速率不能更改)",)
    assert error_bits(EDITION_1997, 0) == ("no bit set",)


# --- 2007 as before --------------------------------------------------------------------------------


def test_2007_frames_decode_as_before(capsys) -> None:
    rc, out, _ = run(capsys, "FE FE FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 9F 16")
    assert rc == 0
    assert "edition  DL/T 645-2007" in out and "message  ReadResponse  di=00010000, follow_up=no" in out
    assert "meaning  00010000: active.import energy total" in out
    assert "value    energy.active.import.total = 1234.56 kWh" in out
    rc, out, _ = run(capsys, "68 01 00 00 00 00 00 68 D1 01 35 D8 16")
    assert rc == 0 and "error=NO_DATA (0x02)" in out and "refused  ERR 02: no requested data (无请求数据)" in out


# --- dates and times -------------------------------------------------------------------------------


@pytest.mark.parametrize("edition", [2007, 1997])
def test_a_meters_date_is_a_date_not_the_instant_of_its_midnight(capsys, edition: int) -> None:
    day = datetime(2025, 6, 15)
    if edition == 2007:
        frame = encode_response(ReadResponse(A, 0x04000101, catalogue.encode(0x04000101, {"meter.date": day})))
    else:
        frame = encode_response97(ReadResponse97(A, 0xC010, encode97(0xC010, {"meter.date": day})))
    rc, out, _ = run(capsys, hexof(frame))
    assert rc == 0
    assert "value    meter.date = 2025-06-15\n" in out
    assert "2025-06-14" not in out and "16:00" not in out
    rc, out, _ = run(capsys, hexof(frame), json_=True)
    assert json.loads(out)["values"] == [{"quantity": "meter.date", "value": "2025-06-15", "unit": ""}]


def test_meter_times_print_as_the_sites_wall_time_with_its_offset(capsys) -> None:
    clock = encode_response(ReadResponse(A, 0x0400010C, catalogue.encode(
        0x0400010C, {"clock": datetime(2025, 6, 15, 10, 11, 12)})))
    time_of_day = encode_response97(ReadResponse97(A, 0xC011, encode97(0xC011, {"meter.time": "10:11:12"})))
    demand = encode_response(ReadResponse(A, 0x01010000, catalogue.encode(0x01010000, {
        "demand.active.import.total": Decimal("1.2345"),
        "demand.active.import.total.time": datetime(2025, 6, 3, 14, 30)})))
    rc, out, _ = run(capsys, hexof(clock), hexof(time_of_day), hexof(demand))
    assert rc == 0
    assert "value    clock = 2025-06-15 10:11:12+08:00" in out
    assert "meaning  C011: time of day" in out and "value    meter.time = 10:11:12 (meter clock, site time +08:00)" in out
    assert "value    demand.active.import.total.time = 2025-06-03 14:30:00+08:00" in out
    rc, out, _ = run(capsys, hexof(clock), json_=True)
    assert json.loads(out)["values"][0]["value"] == "2025-06-15T10:11:12+08:00"


# --- what does not decode --------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "reason"), [
    (Frame(A, 0x05, b""), "function 05 exists in neither DL/T 645-2007 nor DL/T 645-1997"),
    (Frame(A, 0x81, b"\x10"), "DL/T 645-1997: read reply"),  # a 1997 read reply too short for its DI
    (Frame(A, 0x81, b"\x10\x90\x00"), "9010 (active.import energy total) needs 4 bytes, got 1"),
    (Frame(A, 0x81, b"\xff\xff\x00\x00"), "FFFF is not in the DL/T 645-1997 catalogue"),
    (Frame(A, 0x91, b"\x00\x00\x01\x00\x12"), "needs 4 bytes, got 1"),  # 2007 too
])  # fmt: skip
def test_a_frame_that_does_not_decode_exits_1_with_the_reason_and_its_bytes(capsys, frame: Frame, reason: str) -> None:
    wire = hexof(frame)
    rc, out, err = run(capsys, "00 " + wire)
    assert rc == 1
    assert "cannot decode" in out
    (line, *rest) = [ln for ln in err.splitlines() if "does not decode" in ln]
    assert line.startswith("meterd: frame 1 (at byte 1) does not decode: ") and reason in line
    assert line.endswith(": " + wire)


def test_garbage_exits_2(capsys) -> None:
    rc, _, err = run(capsys, "00 11 22 33")
    assert rc == 2 and "no valid DL/T 645 frame in 00 11 22 33" in err
    rc, _, err = run(capsys, "zz")
    assert rc == 2 and "not hex" in err


def test_explain_never_raises_on_any_frame_the_envelope_decoder_accepts() -> None:
    for control in range(256):
        for data in (b"", b"\x02", b"\x10\x90", b"\x10\x90\x00\x00\x00\x00", bytes(range(16))):
            frame = decode_frame(encode_frame(Frame(A, control, data)))
            ex = explain(frame)
            assert ex.decoded or (ex.message_error or ex.value_error)


def test_a_1997_write_request_shows_the_value_written(capsys) -> None:
    # C011 := 12:34:56 with password 02/123456 (the write-C011 golden of test_dlt645_1997.py)
    rc, out, _ = run(capsys, "68 01 00 00 00 00 00 68 04 09 44 F3 35 89 67 45 89 67 45 B4 16")
    assert rc == 0
    assert "message  WriteRequest97  di=C011, password=02123456" in out
    assert "meaning  C011: time of day" in out and "value    meter.time = 12:34:56 (meter clock" in out
    rc, out, _ = run(capsys, "68 01 00 00 00 00 00 68 0C 01 43 21 16", "68 01 00 00 00 00 00 68 8C 00 5D 16")
    assert rc == 0 and "ChangeBaudRequest97  baud=2400\n" in out and "ChangeBaudResponse97  baud=(none)\n" in out
