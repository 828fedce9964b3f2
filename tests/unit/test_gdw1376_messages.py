"""Q/GDW 1376.1 application messages: typed values of every supported AFN/Fn, both ways.

Where no public capture was found, the frame is laid out here by hand from the data-unit layout of
Q/GDW 1376.1-2013 (the AFN and Fn named above each; appendix A formats in the comments) and wrapped
by ``_frame`` below -- an envelope written independently of the code under test (L with the
protocol identifier, CS = sum of the user data).  Recorded frames of public projects are in
``test_gdw1376_frame.py`` (``RECORDED``); here they are checked as messages and against the
request/confirm builders, which must reproduce them byte for byte.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gdw1376_frame import raw

from meterd.errors import FrameLengthError, ProtocolError, UnknownIdentifierError
from meterd.protocols.dlt645.frame import decode_frame as decode_dlt645
from meterd.protocols.gdw1376 import formats as fmt
from meterd.protocols.gdw1376.catalogue import (
    ArchiveQuery,
    EnergyReading,
    EventLog,
    EventPointers,
    ForwardEnergy,
    ForwardReply,
    ForwardRequest,
    FrozenEnergy,
    Heartbeat,
    ItemResult,
    ItemResults,
    MasterAddress,
    MeterArchive,
    MeterEntry,
    PresentPower,
    ProtectOn,
    RemoteTrip,
    SerialSettings,
    parse_f25,
    parse_f129,
    parse_f161,
)
from meterd.protocols.gdw1376.events import DECODED, EventRecord, PowerOnOff
from meterd.protocols.gdw1376.frame import Afn, EventCounter, TerminalAddress, TimeLabel, decode_frame
from meterd.protocols.gdw1376.messages import (
    DataUnit,
    Message,
    Reassembler,
    confirm,
    decode,
    decode_units,
    encode,
    encode_request,
    link_confirm,
    reply,
    request,
    unit,
)
from meterd.protocols.gdw1376.units import ALL_POINTS, decode_da, decode_dt, encode_da, encode_dt

D = Decimal
ADDR = "01 32 01 00 02"  # A1 3201, A2 0001, A3: MSA 1
TERMINAL = TerminalAddress("3201", 1, master=1)


def _frame(c: int, afn: int, seq: int, body: str, aux: str = "", address: str = ADDR) -> bytes:
    """68 L L 68 C A AFN SEQ body aux CS 16, laid out without the code under test."""
    user = bytes((c,)) + bytes.fromhex(address) + bytes((afn, seq)) + bytes.fromhex(body) + bytes.fromhex(aux)
    length = (len(user) << 2) | 0b10
    head = bytes((0x68, length & 0xFF, length >> 8, length & 0xFF, length >> 8, 0x68))
    return head + user + bytes((sum(user) & 0xFF, 0x16))


def _both_ways(wire: bytes) -> Message:
    msg = decode(wire)
    assert encode(msg) == wire
    return msg


# --- AFN 0C: present values -----------------------------------------------------------------------

F129_REPLY = _frame(0x88, 0x0C, 0x61,
                    "01 01 01 10"          # p1 F129
                    "30 14 25 12 25"       # read at 2025-12-25 14:30 (A.15)
                    "04"                   # M = 4 rates
                    "00 00 45 23 01"       # total 012345.0000 kWh (A.14)
                    "00 50 12 34 00"       # rate 1 003412.5000
                    "EE EE EE EE EE"       # rate 2: no data
                    "99 99 99 99 99"       # rate 3 999999.9999
                    "00 00 00 00 00")      # rate 4 0


def test_f129_present_forward_active_energy() -> None:
    msg = _both_ways(F129_REPLY)
    assert msg.is_uplink and msg.afn == Afn.CLASS1_DATA and msg.address == TERMINAL
    value = msg.value(129, pn=1)
    assert value == EnergyReading(datetime(2025, 12, 25, 14, 30),
                                  (D("12345.0000"), D("3412.5000"), None, D("999999.9999"), D("0")))
    assert value.total == D("12345") and value.rates == 4
    assert str(value.values[0]) == "12345.0000"  # the format's resolution is kept
    assert parse_f129(decode_frame(F129_REPLY).data[4:]) == value
    # the request: p1 F129, no data
    req = encode_request(TERMINAL, Afn.CLASS1_DATA, [unit(1, 129)], seq=1)
    assert req == _frame(0x4B, 0x0C, 0x61, "01 01 01 10")


F25_REPLY = _frame(0x88, 0x0C, 0x62,
                   "01 01 01 03"                            # p1 F25
                   "00 12 01 01 26"                         # read at 2026-01-01 12:00
                   "00 50 81  34 12 00  EE EE EE  00 00 00"  # P: -1.5, 0.1234, none, 0 kW (A.9, sign D7)
                   "00 00 05  00 00 00  00 00 00  00 00 00"  # Q: 5, 0, 0, 0 kvar
                   "50 89  00 10  99 79  EE EE"             # PF: -95.0, 100.0, 799.9, none % (A.5)
                   "00 22  15 23  EE EE"                    # U: 220.0, 231.5, none V (A.7)
                   "00 50 01  34 12 80  EE EE EE"           # I: 15.000, -1.234, none A (A.25)
                   "00 00 00"                               # I0: 0
                   "00 00 10  00 00 00  00 00 00  00 00 00")  # S: 10, 0, 0, 0 kVA


def test_f25_present_power_with_signs() -> None:
    msg = _both_ways(F25_REPLY)
    v = msg.value(25, pn=1)
    assert v == PresentPower(
        datetime(2026, 1, 1, 12, 0),
        (D("-1.5"), D("0.1234"), None, D("0")), (D("5"), D("0"), D("0"), D("0")),
        (D("-95.0"), D("100.0"), D("799.9"), None), (D("220.0"), D("231.5"), None),
        (D("15.000"), D("-1.234"), None), D("0"), (D("10"), D("0"), D("0"), D("0")))
    assert parse_f25(decode_frame(F25_REPLY).data[4:]) == v
    assert len(decode_frame(F25_REPLY).data) == 4 + 67  # F25 is 67 bytes


def test_f33_forward_energy_block() -> None:
    wire = _frame(0x88, 0x0C, 0x63,
                  "01 01 01 04"                    # p1 F33
                  "05 08 15 06 26"                 # 2026-06-15 08:05
                  "01"                             # M = 1
                  "00 00 00 01 00  00 00 00 01 00"  # active total, rate 1: 100.0000 kWh (A.14)
                  "00 50 00 00  00 50 00 00"       # reactive: 50.00 kvarh (A.11)
                  "00 00 00 00  00 00 00 00"       # quadrant I
                  "01 00 00 00  EE EE EE EE")      # quadrant IV: 0.01, none
    v = _both_ways(wire).value(33, pn=1)
    assert v == ForwardEnergy(datetime(2026, 6, 15, 8, 5), (D(100), D(100)), (D(50), D(50)), (D(0), D(0)),
                              (D("0.01"), None))


def test_f2_terminal_clock() -> None:
    wire = _frame(0x88, 0x0C, 0x60, "00 00 02 00  33 30 14 12 D2 20")  # A.1 with weekday 6 (Saturday)
    assert _both_ways(wire).value(2) == datetime(2020, 12, 12, 14, 30, 33)


def test_several_points_and_items_in_one_unit() -> None:
    # p1 and p2 (DA1 = 03), F129 and F131 (DT1 = 05, group 16): data p1F129, p1F131, p2F129, p2F131
    reading = "00 00 01 01 26  00  00 00 00 01 00"  # 2026-01-01 00:00, M = 0, total 100 kWh
    wire = _frame(0x88, 0x0C, 0x60, "03 01 05 10" + reading * 4)
    msg = _both_ways(wire)
    assert msg.units == (DataUnit((1, 2), (129, 131), (EnergyReading(datetime(2026, 1, 1), (D(100),)),) * 4),)
    assert [(pn, fn) for pn, fn, _ in msg.items()] == [(1, 129), (1, 131), (2, 129), (2, 131)]


# --- AFN 0D: frozen values ------------------------------------------------------------------------


def test_f161_daily_frozen_and_its_request() -> None:
    wire = _frame(0x88, 0x0D, 0x6F,
                  "02 01 01 14"                                     # p2 F161
                  "25 12 11"                                        # Td_d 2011-12-25 (A.20)
                  "10 00 26 12 11"                                  # read 2011-12-26 00:10
                  "02"                                              # M = 2
                  "00 00 00 10 00  00 00 00 06 00  00 00 00 04 00")  # 1000, 600, 400 kWh
    v = _both_ways(wire).value(161, pn=2)
    assert v == FrozenEnergy(date(2011, 12, 25), datetime(2011, 12, 26, 0, 10), (D(1000), D(600), D(400)))
    assert parse_f161(decode_frame(wire).data[4:]) == v
    recorded = decode(raw("f161_request_130"))
    assert recorded.units[0] == unit(2, 161, date(2011, 12, 25)) and recorded.units[1] == unit(2, 163, date(2011, 12, 25))


def test_f177_monthly_frozen_and_its_request() -> None:
    req = encode_request(TERMINAL, Afn.CLASS2_DATA, [unit(1, 177, date(2025, 11, 1))], seq=2)
    assert req == _frame(0x4B, 0x0D, 0x62, "01 01 01 16  11 25")  # F177 = group 22 bit 0; Td_m 2025-11 (A.21)
    wire = _frame(0x88, 0x0D, 0x62, "01 01 01 16  11 25  00 00 01 12 25  01  00 00 00 10 00  00 00 00 10 00")
    assert _both_ways(wire).value(177, pn=1) == FrozenEnergy(date(2025, 11, 1), datetime(2025, 12, 1),
                                                              (D(1000), D(1000)))
    with pytest.raises(ProtocolError, match="first day"):
        encode_request(TERMINAL, Afn.CLASS2_DATA, [unit(1, 177, date(2025, 11, 2))], seq=2)


# --- AFN 0E: events -------------------------------------------------------------------------------


def test_events_read_by_pointer_with_erc14() -> None:
    req = encode_request(TERMINAL, Afn.CLASS3_DATA, [unit(0, 1, EventPointers(3, 6))], seq=5)
    assert req == _frame(0x4B, 0x0E, 0x65, "00 00 01 00  03 06")
    wire = _frame(0xA8, 0x0E, 0x65,
                  "00 00 01 00  05 00 03 06"                             # EC1 5, EC2 0, Pm 3, Pn 6: 3 records
                  "0E 0A  30 22 24 12 25  05 06 25 12 25"                # ERC14 off 12-24 22:30, on 12-25 06:05
                  "0E 0B  00 10 25 12 25  EE EE EE EE EE  03"            # ERC14 (2013, flags), not back on yet
                  "09 02  AB CD",                                        # ERC9, not decoded
                  aux="05 00")                                           # ACD: EC
    msg = _both_ways(wire)
    assert msg.ec == EventCounter(5, 0)
    assert msg.value(1) == EventLog(5, 0, 3, 6, (
        PowerOnOff(datetime(2025, 12, 24, 22, 30), datetime(2025, 12, 25, 6, 5)),
        PowerOnOff(datetime(2025, 12, 25, 10, 0), None, 3),
        EventRecord(9, b"\xab\xcd")))


# --- AFN 04 / 0A: parameters ----------------------------------------------------------------------

ARCHIVE = ("00 00 02 01  02 00"                                      # F10, 2 meters
           "01 00 01 00 62 1E  34 12 00 00 00 00  00 00 00 00 00 00  04 09  00 00 00 00 00 00  51"
           "02 00 02 00 1F 01  78 56 34 12 00 00  01 02 03 04 05 06  01 0F  11 11 11 11 11 11  00")
ARCHIVE_VALUE = MeterArchive((
    MeterEntry(1, 1, 2, 2400, 30, "000000001234", bytes(6), 4, 6, 2, "000000000000", 5, 1),
    MeterEntry(2, 2, 31, 0, 1, "000012345678", bytes.fromhex("010203040506"), 1, 7, 4, "111111111111", 0, 0)))
PW = "11" * 16


def test_f10_meter_archive_download_query_and_reply() -> None:
    down = _frame(0x4A, 0x04, 0x70, ARCHIVE, aux=PW)
    assert _both_ways(down).value(10) == ARCHIVE_VALUE
    assert encode_request(TERMINAL, Afn.SET_PARAMETERS, [unit(0, 10, ARCHIVE_VALUE)], seq=0,
                          pw=bytes.fromhex(PW)) == down
    query = _frame(0x4B, 0x0A, 0x61, "00 00 02 01  02 00 01 00 02 00")
    assert _both_ways(query).value(10) == ArchiveQuery((1, 2))
    up = _frame(0x88, 0x0A, 0x61, ARCHIVE)
    assert _both_ways(up).value(10) == ARCHIVE_VALUE


def test_f3_master_address() -> None:
    body = "00 00 04 00  C0 A8 01 0A 88 13  0A 00 00 01 29 23  43 4D 4E 45 54" + " 00" * 11
    value = MasterAddress("192.168.1.10", 5000, "10.0.0.1", 9001, "CMNET")
    assert _both_ways(_frame(0x4A, 0x04, 0x70, body, aux=PW)).value(3) == value
    assert _both_ways(_frame(0x88, 0x0A, 0x60, body)).value(3) == value
    with pytest.raises(ProtocolError, match="APN"):
        encode_request(TERMINAL, Afn.SET_PARAMETERS, [unit(0, 3, MasterAddress("1.2.3.4", 1, apn="x" * 17))],
                       seq=0, pw=bytes(16))


# --- AFN 05: control ------------------------------------------------------------------------------


def test_remote_trip_permit_reclose_and_protection() -> None:
    pw = bytes.fromhex(PW)
    trip = encode_request(TERMINAL, Afn.CONTROL, [unit(1, 1, RemoteTrip(limit_half_hours=3, alarm_minutes=1))],
                          seq=3, pw=pw)
    assert trip == _frame(0x4A, 0x05, 0x73, "01 01 01 00  31", aux=PW)  # turn 1; D7..D4 limit, D3..D0 alarm
    assert decode(trip).value(1, pn=1) == RemoteTrip(3, 1)
    reclose = encode_request(TERMINAL, Afn.CONTROL, [unit(1, 2)], seq=4, pw=pw)
    assert reclose == _frame(0x4A, 0x05, 0x74, "01 01 02 00", aux=PW)
    protect = encode_request(TERMINAL, Afn.CONTROL, [unit(0, 25, ProtectOn(4))], seq=5, pw=pw)
    assert protect == _frame(0x4A, 0x05, 0x75, "00 00 01 03  04", aux=PW)
    release = _both_ways(_frame(0x4A, 0x05, 0x76, "00 00 01 04", aux=PW))
    assert release.units == (unit(0, 33),)
    sync = _both_ways(_frame(0x4A, 0x05, 0x77, "00 00 40 03  33 30 14 12 D2 20", aux=PW))
    assert sync.value(31) == datetime(2020, 12, 12, 14, 30, 33)
    with pytest.raises(ProtocolError, match="password"):
        encode_request(TERMINAL, Afn.CONTROL, [unit(1, 1, RemoteTrip())], seq=3)
    with pytest.raises(ProtocolError, match="0..15"):
        encode_request(TERMINAL, Afn.CONTROL, [unit(1, 1, RemoteTrip(16, 0))], seq=3, pw=pw)


def test_terminal_confirms_item_by_item() -> None:
    wire = _frame(0x80, 0x00, 0x73, "00 00 04 00  05  01 01 01 00 00  02 01 01 00 01")
    v = _both_ways(wire).value(3)
    assert v == ItemResults(0x05, (ItemResult((1,), (1,), 0), ItemResult((2,), (1,), 1)))
    assert not v.all_ok


# --- AFN 10 and 02: recorded frames as messages, and the builders that must reproduce them ---------


def test_recorded_relay_carries_a_dlt645_frame() -> None:
    req = decode(raw("forward"))
    value = req.value(1)
    assert isinstance(value, ForwardRequest)
    assert value.port == 31 and value.serial == SerialSettings(2400, "E", 8, 1)
    assert value.frame_timeout_ms == 60_000 and value.byte_timeout_ms == 100
    assert decode_dlt645(value.payload).address == "151230011061"
    back = encode_request(TerminalAddress("0200", 0x1234, 2), Afn.FORWARD, [unit(0, 1, value)], seq=0,
                          pw=bytes(16), tp=TimeLabel(0, 21, 23, 51, 13, 5), function=11)
    assert back == raw("forward")
    answer = decode(raw("forward_reply")).value(1)
    assert isinstance(answer, ForwardReply) and decode_dlt645(answer.payload).data[4:] == b"\x78\x06\x00\x00"


def test_builders_reproduce_recorded_frames() -> None:
    assert link_confirm(decode(raw("login"))) == raw("login_confirm")
    assert link_confirm(decode(raw("login_gfep")), per_item=True, master=1) == raw("login_ack_f3")
    assert link_confirm(decode(raw("heartbeat_2013")), per_item=True, master=1) == raw("heartbeat_ack_f3")
    reset = encode_request(TerminalAddress("0200", 0x1234, 2), Afn.RESET, [unit(0, 1)], seq=0, pw=bytes(16),
                           tp=TimeLabel(0, 7, 13, 53, 28, 5))
    assert reset == raw("reset")
    ok = confirm(decode(reset), ec=EventCounter(0x11, 0), tp=TimeLabel(0, 7, 13, 52, 27, 5))
    assert encode(ok) == raw("reset_confirm")
    assert decode(raw("heartbeat_2013")).value(3) == Heartbeat(datetime(2020, 12, 12, 14, 30, 33))
    assert decode(raw("heartbeat_2009")).value(3) is None
    with pytest.raises(ProtocolError, match="AFN 02"):
        link_confirm(decode(raw("login_confirm")))


def test_relay_timeouts_and_line_settings() -> None:
    for ms, byte in ((0, 0x00), (1270, 0x7F), (2000, 0x82), (127_000, 0xFF)):
        req = ForwardRequest(1, b"", frame_timeout_ms=ms, byte_timeout_ms=0)
        assert decode_units(0x10, False, encode_units_of(req))[0].values[0].frame_timeout_ms == ms
        assert encode_units_of(req)[6] == byte
    with pytest.raises(ProtocolError, match="frame timeout"):
        encode_units_of(ForwardRequest(1, b"", frame_timeout_ms=1500))
    assert SerialSettings.from_byte(SerialSettings(9600, "O", 7, 2).to_byte()) == SerialSettings(9600, "O", 7, 2)
    assert SerialSettings(1200, "N", 8, 1).to_byte() == 0b010_0_00_11


def encode_units_of(value: ForwardRequest) -> bytes:
    from meterd.protocols.gdw1376.messages import encode_units

    return encode_units(0x10, False, [unit(0, 1, value)])


# --- units, unknown items, reassembly -------------------------------------------------------------


def test_da_and_dt() -> None:
    assert encode_da([0]) == b"\x00\x00" and decode_da(0, 0) == (0,)
    assert encode_da([1]) == b"\x01\x01" and encode_da([8]) == b"\x80\x01" and encode_da([9]) == b"\x01\x02"
    assert encode_da([2040]) == b"\x80\xff" and decode_da(0xFF, 0) == (ALL_POINTS,)
    assert decode_da(0x05, 0x02) == (9, 11)
    assert encode_dt([1]) == b"\x01\x00" and encode_dt([248]) == b"\x80\x1e" and decode_dt(0x03, 0x10) == (129, 130)
    for bad_da in ([8, 9], [0, 1], [2041], []):
        with pytest.raises(ProtocolError):
            encode_da(bad_da)
    with pytest.raises(ProtocolError, match="group 31"):
        decode_dt(1, 31)
    with pytest.raises(ProtocolError, match="names no point"):
        decode_da(0, 3)


def test_unknown_items_and_short_data_are_protocol_errors() -> None:
    with pytest.raises(UnknownIdentifierError, match="AFN 0CH F100"):
        decode(_frame(0x88, 0x0C, 0x60, "01 01 08 0C  00 00"))  # F100 up: not in the catalogue
    assert decode(_frame(0x4B, 0x0C, 0x60, "01 01 08 0C")).units == (unit(1, 100),)  # requests carry no data
    short = _frame(0x88, 0x0C, 0x61, "01 01 01 10  30 14 25 12 25  04  00 00")
    with pytest.raises(FrameLengthError, match="needs 5 bytes"):
        decode(short)


def test_reassembly_of_a_multi_frame_reply() -> None:
    req = request(TERMINAL, Afn.CLASS1_DATA, [unit(pn, 129) for pn in (1, 2, 3)], seq=3)
    value = EnergyReading(datetime(2026, 1, 1), (D(1),))
    parts = [reply(req, [unit(1, 129, value)], fin=False),
             reply(req, [unit(2, 129, value)], fir=False, fin=False, seq=4),
             reply(req, [unit(3, 129, value)], fir=False, seq=5, ec=EventCounter(1, 2))]
    r = Reassembler()
    other = reply(request(TerminalAddress("3201", 2), Afn.CLASS1_DATA, [], seq=0), [unit(1, 129, value)])
    assert r.add(decode(encode(parts[0]))) is None
    assert r.add(other) == other  # another terminal's single frame passes through
    assert r.add(decode(encode(parts[1]))) is None and r.pending() == 1
    whole = r.add(decode(encode(parts[2])))
    assert whole is not None and r.pending() == 0
    assert [pn for pn, _, _ in whole.items()] == [1, 2, 3] and whole.fir and whole.fin
    assert whole.ec == EventCounter(1, 2) and whole.seq_number == 3
    assert decode(encode(whole)) == whole
    # out of order: dropped and said
    r.add(parts[0])
    with pytest.raises(ProtocolError, match="RSEQ 5 after 3"):
        r.add(parts[2])
    assert r.pending() == 0
    with pytest.raises(ProtocolError, match="without its first frame"):
        r.add(parts[1])


# --- formats --------------------------------------------------------------------------------------


def test_formats_signs_ranges_and_no_data() -> None:
    assert fmt.encode_format("A.9", D("-79.9999")) == bytes.fromhex("99 99 F9")
    assert fmt.decode_format("A.9", bytes.fromhex("99 99 F9")) == D("-79.9999")
    assert fmt.encode_format("A.5", None) == b"\xee\xee" and fmt.decode_format("A.5", b"\xee\xee") is None
    assert str(fmt.decode_format("A.14", bytes(5))) == "0.0000"  # zero keeps the resolution
    negative_zero = fmt.decode_format("A.25", bytes.fromhex("00 00 80"))
    assert negative_zero == 0 and fmt.encode_format("A.25", negative_zero) == bytes.fromhex("00 00 80")
    for name, value, match in (("A.9", D("80"), "does not fit"), ("A.7", D("-1"), "negative"),
                               ("A.14", D("0.00001"), "decimal"), ("A.5", D("800.0"), "does not fit")):
        with pytest.raises(ProtocolError, match=match):
            fmt.encode_format(name, value)
    with pytest.raises(ProtocolError, match="not BCD"):
        fmt.decode_format("A.14", bytes.fromhex("0A 00 00 00 00"))
    assert fmt.encode_a1(datetime(2020, 12, 12, 14, 30, 33)) == bytes.fromhex("33 30 14 12 D2 20")
    assert fmt.decode_a1(bytes.fromhex("33 30 14 12 12 20")) == datetime(2020, 12, 12, 14, 30, 33)  # weekday 0
    with pytest.raises(ProtocolError, match="valid"):
        fmt.decode_a15(bytes.fromhex("00 00 30 02 26"))  # 30 February
    with pytest.raises(ProtocolError, match="2000-2099"):
        fmt.encode_a20(date(1999, 12, 31))
    with pytest.raises(ProtocolError, match="seconds"):
        fmt.encode_a15(datetime(2026, 1, 1, 0, 0, 1))


# --- properties -----------------------------------------------------------------------------------


def _numbers(size: int, decimals: int, signed: bool = False) -> st.SearchStrategy[Decimal | None]:
    top = 80 * 100 ** (size - 1) - 1 if signed else 100**size - 1
    return st.none() | st.integers(-top if signed else 0, top).map(lambda n: D(n).scaleb(-decimals))


minutes = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31, 23, 59)).map(
    lambda d: d.replace(second=0, microsecond=0))
energy = _numbers(5, 4)
days = st.dates(date(2000, 1, 1), date(2099, 12, 31))


@st.composite
def uplink_units(draw: st.DrawFn) -> tuple[int, DataUnit]:
    kind = draw(st.sampled_from(["f129", "f25", "f161", "f177", "events", "relay", "archive"]))
    pn = draw(st.integers(1, 2040))
    if kind == "f129":
        return 0x0C, unit(pn, 129, EnergyReading(draw(st.none() | minutes), tuple(draw(st.lists(energy, min_size=1,
                                                                                                   max_size=9)))))
    if kind == "f25":
        p4 = st.tuples(*[_numbers(3, 4, True)] * 4)
        return 0x0C, unit(pn, 25, PresentPower(draw(minutes), draw(p4), draw(p4), draw(st.tuples(*[_numbers(2, 1, True)] * 4)),
                                               draw(st.tuples(*[_numbers(2, 1)] * 3)),
                                               draw(st.tuples(*[_numbers(3, 3, True)] * 3)), draw(_numbers(3, 3, True)),
                                               draw(p4)))
    if kind == "f161":
        return 0x0D, unit(pn, 161, FrozenEnergy(draw(days), draw(minutes), tuple(draw(st.lists(energy, min_size=1,
                                                                                                max_size=5)))))
    if kind == "f177":
        month = draw(days).replace(day=1)
        return 0x0D, unit(pn, 177, FrozenEnergy(month, draw(minutes), (draw(energy),)))
    if kind == "events":
        records = draw(st.lists(st.builds(PowerOnOff, st.none() | minutes, st.none() | minutes,
                                          st.none() | st.integers(0, 255))
                                | st.builds(EventRecord, st.integers(0, 255).filter(lambda e: e not in DECODED),
                                            st.binary(max_size=20)), max_size=5))
        start = draw(st.integers(0, 255))
        return 0x0E, unit(0, 1, EventLog(draw(st.integers(0, 255)), 0, start, (start + len(records)) % 256,
                                         tuple(records)))
    if kind == "relay":
        return 0x10, unit(0, 1, ForwardReply(draw(st.integers(0, 31)), draw(st.binary(max_size=300))))
    entries = draw(st.lists(st.builds(
        MeterEntry, st.integers(1, 2040), st.integers(0, 2040), st.integers(0, 31),
        st.sampled_from([0, 600, 1200, 2400, 4800, 7200, 9600, 19200]), st.sampled_from([1, 2, 30, 31]),
        st.text("0123456789", min_size=12, max_size=12), st.binary(min_size=6, max_size=6), st.integers(0, 63),
        st.integers(4, 7), st.integers(1, 4), st.text("0123456789", min_size=12, max_size=12), st.integers(0, 15),
        st.integers(0, 15)), max_size=4))
    return 0x0A, unit(0, 10, MeterArchive(tuple(entries)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(uplink_units(), st.integers(0, 15))
def test_uplink_messages_round_trip(afn_unit: tuple[int, DataUnit], seq: int) -> None:
    afn, u = afn_unit
    req = request(TERMINAL, afn, [], seq=seq, pw=bytes(16) if afn == 0x10 else None)
    msg = reply(req, [u])
    assert decode(encode(msg)) == msg


@settings(max_examples=300)
@given(st.binary(max_size=120), st.sampled_from([0x00, 0x02, 0x04, 0x05, 0x0A, 0x0C, 0x0D, 0x0E, 0x10]),
       st.booleans())
def test_arbitrary_data_areas_raise_only_protocol_errors(data: bytes, afn: int, uplink: bool) -> None:
    try:
        decode_units(afn, uplink, data)
    except ProtocolError:
        pass
