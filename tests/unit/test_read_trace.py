"""The ``--trace`` lines of ``meterd read`` and ``meterd probe`` (issue 17), with the time passed in.

Each event is the site's wall time to the millisecond with its offset, the direction and the bytes,
then the frame decoded in its own edition: identifiers 8 hex digits (2007) or 4 (1997), values with
units, refusals with their error bits named.  Before, the time was the host's zone without an
offset, and the decode a dataclass repr with the identifier in decimal (``di=36880``); a 1997
frame in ``read``'s trace said ``unknown function code 01``.

The 1997 frames are recorded ones: wuhuangrui/C82_DL689 ``ClouSoft/app/Meter/SearchMeter.cpp``
(read 9010 to the wildcard, and a 1997 meter's answer from the wildcard, 000272.61 kWh).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from meterd.cli.frametext import stamp, trace_line, value_text
from meterd.collector.channel import TraceEvent
from meterd.protocols.dlt645.frame import Frame, decode_frame, encode_frame

NOW = datetime(2025, 6, 15, 2, 3, 4, 567891, tzinfo=UTC)  # 10:03:04.567 in the site's zone
READ_9010 = bytes.fromhex("68 AA AA AA AA AA AA 68 01 02 43 C3 D5 16")  # wuhuangrui/C82_DL689
REPLY_9010 = bytes.fromhex("68 AA AA AA AA AA AA 68 81 06 43 C3 94 A5 35 33 FA 16")  # wuhuangrui/C82_DL689


def event(direction: str, wire: bytes, note: str = "") -> TraceEvent:
    return TraceEvent("cli", direction, wire, decode_frame(wire.lstrip(b"\xfe")), note)


def test_the_time_is_site_wall_time_with_its_offset_whatever_zone_it_is_given_in() -> None:
    assert stamp(NOW) == "10:03:04.567+08:00"
    assert stamp(NOW.astimezone(timezone(timedelta(hours=-5)))) == "10:03:04.567+08:00"


def test_a_1997_request_and_reply_are_decoded_as_1997_with_4_digit_identifiers() -> None:
    tx = trace_line(event("tx", b"\xfe\xfe\xfe\xfe" + READ_9010), NOW)
    assert tx == ("10:03:04.567+08:00 TX -> FE FE FE FE 68 AA AA AA AA AA AA 68 01 02 43 C3 D5 16\n"
                  "                         DL/T 645-1997 request READ_DATA to AAAAAAAAAAAA: "
                  "9010 (active.import energy total)")
    rx = trace_line(event("rx", REPLY_9010), NOW)
    assert rx.splitlines()[1].strip() == ("DL/T 645-1997 reply READ_DATA from AAAAAAAAAAAA: 9010 (active.import "
                                          "energy total), energy.active.import.total = 272.61 kWh")
    assert "unknown function code" not in tx + rx and "36880" not in tx + rx


def test_a_refusal_names_its_error_bits_in_its_edition() -> None:
    c1 = Frame("000000000001", 0xC1, b"\x02")
    d1 = Frame("000000000001", 0xD1, b"\x02")
    line97 = trace_line(TraceEvent("cli", "rx", encode_frame(c1), c1), NOW).splitlines()[1].strip()
    line07 = trace_line(TraceEvent("cli", "rx", encode_frame(d1), d1), NOW).splitlines()[1].strip()
    assert line97 == ("DL/T 645-1997 reply READ_DATA ABNORMAL from 000000000001: refused, ERR 02: "
                      "data identifier error (数据标识错)")
    assert line07 == ("DL/T 645-2007 reply READ_DATA ABNORMAL from 000000000001: refused, ERR 02: "
                      "no requested data (无请求数据)")


def test_2007_identifiers_are_8_digits_and_a_meters_date_a_date() -> None:
    wire = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 34 34 33 37 33 48 39 58 48 16")  # 04000101 2025-06-15
    line = trace_line(event("rx", wire), NOW).splitlines()[1].strip()
    assert line == "DL/T 645-2007 reply READ_DATA from 000000000001: 04000101 (date and weekday), meter.date = 2025-06-15"


def test_notes_drops_and_other_pdus() -> None:
    assert trace_line(TraceEvent("probe", "note", b"", note="dlt645-1997 at tcp: read 9010"), NOW) == (
        "-- dlt645-1997 at tcp: read 9010")
    drop = trace_line(TraceEvent("cli", "drop", b"\x00\x11", None, "2 bytes before no frame"), NOW)
    assert drop == "10:03:04.567+08:00 DROP  00 11\n                         2 bytes before no frame"
    pdu = trace_line(TraceEvent("cli", "rx", b"\x01\x03", "ReadHoldingRegistersResponse(...)"), NOW)
    assert pdu.splitlines()[1].strip() == "ReadHoldingRegistersResponse(...)"


def test_reading_values_a_date_as_a_date_times_in_the_site_zone() -> None:
    """``meterd read`` prints readings through the same function: a reading's meter.date is the UTC
    instant of the meter's midnight (2025-06-14T16:00Z), and shows as the date it is."""
    midnight_cst = datetime(2025, 6, 14, 16, 0, tzinfo=UTC)
    assert value_text("meter.date", midnight_cst) == "2025-06-15"
    assert value_text("clock", datetime(2025, 6, 15, 2, 11, 12, tzinfo=UTC)) == "2025-06-15 10:11:12+08:00"
    assert value_text("meter.time", "10:11:12") == "10:11:12 (meter clock, site time +08:00)"
