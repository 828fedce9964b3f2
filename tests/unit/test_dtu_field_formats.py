"""DTU registrations as they come from the field (issue #17): MAC registrations, the registration in
front of every data packet ("with data"), a registration that is the same text as the heartbeat,
registration and heartbeat or data in one read, registrations split over reads, garbage before
the registration -- the sans-I/O side (:mod:`meterd.protocols.terminal.dtu`); the listener and
the emulator over TCP are in ``tests/integration/test_dtu_field.py``.

Packet sources: USR-N580 user manual 5.6 "Registry Packet" (MAC registration, "MAC defaults to
HEX", "Connect with" / "Data with"), USR-M100 user manual 7.3 (registration up to 40 bytes, ASCII
or hex, "Once connected" / "Prefix of DATA"), USR-DR404 user manual 3.8 (heartbeat content
``www.usr.cn``, AT+HEARTDT=7777772E7573722E636E); see docs/dtu.md for the addresses.
"""

from __future__ import annotations

import pytest

from meterd.errors import ConfigError
from meterd.protocols.terminal.dtu import (
    HEX_FRAME,
    MIN_INLINE_REGISTRATION,
    USR_ASCII,
    USR_MAC,
    DtuFormat,
    DtuStream,
    KnownRegistrations,
    ParseStatus,
    parse_mac,
    show_mac,
)

OK, MORE, BAD, FOREIGN = ParseStatus.OK, ParseStatus.MORE, ParseStatus.BAD, ParseStatus.FOREIGN
MAC = "d8:b0:4c:00:04:c9"  # the MAC of the USR-N540 search reply example (its manual, 57/73)
MAC_RAW = bytes.fromhex("D8 B0 4C 00 04 C9")
# DL/T 645-2007 reply to a read of 00010000 by meter 000000000001 (golden frame of test_dtu_format)
REPLY = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 9F 16")
WITH_DATA = DtuFormat.from_dict("usr-data", {"preset": "usr-ascii", "data_carries_registration": True})
MAC_WITH_DATA = DtuFormat.from_dict("usr-mac-data", {"preset": "usr-mac", "data_carries_registration": True})
HEARTBEAT = b"www.usr.cn"  # 77 77 77 2E 75 73 72 2E 63 6E, the USR-DR404 manual's AT+HEARTDT example


# --- MAC registrations --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [MAC, MAC.upper(), MAC.replace(":", "-"), MAC.replace(":", "")])
def test_a_mac_is_written_in_any_usual_way_and_shown_one_way(text):
    assert parse_mac(text) == MAC_RAW
    assert USR_MAC.encode_registration(text) == MAC_RAW
    assert show_mac(MAC_RAW) == MAC


@pytest.mark.parametrize("text", ["d8:b0:4c:00:04", "d8:b0:4c:00:04:c9:01", "d8:b0-4c:00:04:c9", "DTU00000001",
                                  "zz:b0:4c:00:04:c9", ""])
def test_what_is_no_mac(text):
    assert parse_mac(text) is None
    assert "is not a MAC address" in (USR_MAC.id_problem(text) or "")


def test_a_mac_registration_is_six_raw_bytes_and_what_follows_is_left():
    r = USR_MAC.parse_registration(MAC_RAW)
    assert (r.status, r.terminal_id, r.consumed) == (OK, MAC, 6)
    r = USR_MAC.parse_registration(MAC_RAW + HEARTBEAT + REPLY)
    assert (r.status, r.terminal_id, r.consumed) == (OK, MAC, 6)
    for cut in range(6):
        assert USR_MAC.parse_registration(MAC_RAW[:cut]).status is MORE


def test_a_heartbeat_before_a_mac_registration_is_no_mac():
    # "www.us" would otherwise be the MAC 77:77:77:2e:75:73
    assert USR_MAC.parse_registration(HEARTBEAT).status is FOREIGN
    assert USR_MAC.parse_registration(HEARTBEAT + MAC_RAW).status is FOREIGN
    assert USR_MAC.parse_registration(b"www.u").status is MORE  # may still be a heartbeat
    assert USR_MAC.resync(HEARTBEAT + MAC_RAW) == len(HEARTBEAT)


def test_mac_in_a_frame_and_config_keys():
    fmt = DtuFormat.from_dict("mac-frame", {"framing": "frame", "header_hex": "7E", "id_encoding": "mac"})
    packet = fmt.encode_registration(MAC)
    assert packet == bytes.fromhex("7E 01 06") + MAC_RAW + bytes([(1 + 6 + sum(MAC_RAW)) & 0xFF])
    assert fmt.parse_registration(packet).terminal_id == MAC
    assert fmt.parse_registration(bytes.fromhex("7E 01 05") + MAC_RAW[:5] + b"\x00").reason == "malformed"
    with pytest.raises(ConfigError, match="id_length: 8: a MAC id is 6 bytes"):
        DtuFormat.from_dict("m", {"id_encoding": "mac", "id_length": 8})


# --- config keys name the key --------------------------------------------------------------------------


def test_config_problems_come_with_their_key():
    fmt, problems = DtuFormat.from_config("x", {"prefix_hex": "zz", "id_length": "6", "colour": 1, "preset": "usr"})
    assert fmt is None
    assert dict(problems) == {"prefix_hex": "'zz' is not hex digits", "id_length": "must be an integer, not '6'",
                              "colour": "unknown key", "preset": "'usr' is not one of usr-ascii, usr-mac, hex-frame"}
    fmt, problems = DtuFormat.from_config("y", {"id_encoding": "hex", "checksum": "crc16", "framing": "text"})
    hex_needs = "a hex id needs a prefix, a suffix or a fixed id_length to be told from meter data"
    assert fmt is None and problems == [("", hex_needs)]
    fmt, problems = DtuFormat.from_config("z", {"preset": "hex-frame", "checksum": "crc16"})
    assert fmt is None and problems == [("checksum", "'crc16' must be one of sum8, xor8, none")]
    fmt, problems = DtuFormat.from_config("g781", {"preset": "usr-ascii", "prefix": "REG", "heartbeat_hex": "FE"})
    assert problems == [] and fmt is not None and fmt.prefix == b"REG" and fmt.heartbeats == (b"\xfe",)


# --- the configured terminals' registrations ---------------------------------------------------------


def test_a_known_registration_is_found_whatever_follows():
    known = KnownRegistrations([USR_ASCII, USR_MAC, HEX_FRAME], ["DTU00000001", "DTU0000000", MAC])
    assert known.problems == []
    for behind in (b"", HEARTBEAT, b"DTU00000001", b"\xfe\xfe\xfe\xfe" + REPLY, REPLY, b"HB" * 20):
        fmt, tid, n = known.match(b"DTU00000001" + behind)
        assert (fmt.name, tid, n) == ("usr-ascii", "DTU00000001", 11), behind  # the longest known id
    fmt, tid, n = known.match(MAC_RAW + REPLY)
    assert (fmt.name, tid, n) == ("usr-mac", MAC, 6)
    fmt, tid, n = known.match(HEX_FRAME.encode_registration("DTU00000001") + REPLY)
    assert (fmt.name, tid, n) == ("hex-frame", "DTU00000001", 16)
    assert known.match(b"DTU99999999") is None and known.match(b"") is None


def test_a_piece_of_a_known_registration_waits_for_the_rest():
    known = KnownRegistrations([USR_ASCII, USR_MAC], ["DTU00000001", MAC])
    for cut in range(1, 11):
        assert known.incomplete(b"DTU00000001"[:cut]) and known.match(b"DTU00000001"[:cut]) is None
    for cut in range(1, 6):
        assert known.incomplete(MAC_RAW[:cut])
    assert not known.incomplete(b"DTU00000001") and not known.incomplete(b"DTU9") and not known.incomplete(b"")


def test_a_registration_that_is_the_heartbeat_registers_when_configured():
    # left at the same text in both: the format alone calls it a heartbeat; as a known id it registers
    assert USR_ASCII.parse_registration(HEARTBEAT).status is FOREIGN
    assert USR_ASCII.id_problem("www.usr.cn") is None
    known = KnownRegistrations([USR_ASCII], ["www.usr.cn"])
    _, tid, n = known.match(HEARTBEAT + HEARTBEAT)
    assert (tid, n) == ("www.usr.cn", 10)


def test_terminals_that_cannot_register_or_collide_are_named():
    known = KnownRegistrations([USR_MAC], ["DTU00000001", MAC, MAC.upper()])
    assert len(known.problems) == 2
    assert "'DTU00000001' cannot register in any format: usr-mac: terminal id 'DTU00000001' is not a MAC" \
        in known.problems[1]
    assert f"terminals {MAC!r} and {MAC.upper()!r} register with the same bytes (D8 B0 4C 00 04 C9)" \
        in known.problems[0]
    assert KnownRegistrations([USR_ASCII, USR_MAC], ["DTU00000001", MAC]).problems == []
    too_long = KnownRegistrations([USR_ASCII], ["D" * 41])
    assert "terminal id of 41 bytes, at most 40 allowed" in too_long.problems[0]


# --- garbage before the registration -------------------------------------------------------------------


@pytest.mark.parametrize("fmt, garbage, where", [
    (USR_ASCII, b"\x00\xff\x13", 3),  # binary, then text: the text may be the id
    (USR_ASCII, b"\xfe\xfe" + REPLY[:-1], None),  # the reply ends in text bytes -> the run after 0x91 08
    (HEX_FRAME, b"\x00\xaa\x00\x55", 4),
    (HEX_FRAME, b"\x01\x02\xaa", 3),
])
def test_resync_finds_where_a_registration_could_start(fmt, garbage, where):
    reg = fmt.encode_registration("DTU00000001")
    at = fmt.resync(garbage + reg)
    if where is not None:
        assert at == where
    assert 1 <= at <= len(garbage)
    assert HEX_FRAME.resync(b"\x01\x02\xaa") == 2  # a piece of a header at the end stays for the next read    # hunting from there, the registration is found
    buf = garbage + reg
    while True:
        r = fmt.parse_registration(buf)
        if r.status is OK:
            break
        buf = buf[fmt.resync(buf):]
    assert r.terminal_id == "DTU00000001"


# --- a registered connection's stream ------------------------------------------------------------------


def test_the_registration_and_heartbeats_in_front_of_a_read_are_stripped_in_any_mode():
    stream = DtuStream(USR_ASCII, "DTU00000001")
    assert stream.feed(b"DTU00000001" + HEARTBEAT + b"DTU00000001" + REPLY) == (REPLY, 1)
    assert stream.feed(b"DTU00000001") == (b"", 1)  # re-announced alone: a keep-alive
    assert stream.feed(REPLY + b"DTU00000001") == (REPLY + b"DTU00000001", 0)  # without "with data": data
    assert stream.prefixes == 2


def test_with_data_every_packet_loses_its_prefix_also_when_tcp_merges_them():
    stream = DtuStream(WITH_DATA, "DTU00000001")
    half = len(REPLY) // 2
    merged = b"DTU00000001" + REPLY[:half] + b"DTU00000001" + REPLY[half:] + HEARTBEAT
    payload, beats = stream.feed(merged)
    # a heartbeat behind data is data for a prefix-less text format (only a read's start is checked)
    assert payload == REPLY + HEARTBEAT and beats == 0 and stream.prefixes == 2


@pytest.mark.parametrize("fmt, tid", [(WITH_DATA, "DTU00000001"), (MAC_WITH_DATA, MAC)])
def test_with_data_a_packet_cut_anywhere_by_tcp_comes_out_whole(fmt, tid):
    reg = fmt.encode_registration(tid)
    packet = reg + REPLY
    for cut in range(1, len(packet)):
        stream = DtuStream(fmt, tid)
        first, beats1 = stream.feed(packet[:cut])
        second, beats2 = stream.feed(packet[cut:])
        assert first + second + stream.flush() == REPLY, cut
        # cut right behind the registration, the first read is the registration alone: a keep-alive
        assert (stream.prefixes, beats1 + beats2) == ((0, 1) if cut == len(reg) else (1, 0)), cut


def test_a_held_tail_that_was_meter_data_is_released_by_flush():
    stream = DtuStream(WITH_DATA, "DTU00000001")
    payload, _ = stream.feed(REPLY + b"DT")  # the reply ends in what could start the next prefix
    assert payload == REPLY and stream.held == b"DT"
    assert stream.flush() == b"DT" and stream.held == b""
    stream.feed(b"DTU0")
    assert stream.feed(b"X") == (b"DTU0X", 0)  # not the registration after all: in order, nothing lost


def test_a_short_registration_is_stripped_from_a_reads_start_only_with_data():
    # a one-character id "1" (0x31): a Modbus reply of unit 49 starts with it
    reply = bytes.fromhex("31 03 02 00 2A 00 00")
    assert DtuStream(USR_ASCII, "1").feed(reply) == (reply, 0)
    one_with_data = DtuFormat("one", id_length=1, data_carries_registration=True)
    assert DtuStream(one_with_data, "1").feed(b"1" + reply) == (reply, 0)


def test_a_short_registration_is_not_looked_for_inside_data():
    short = DtuFormat("short", id_length=2, data_carries_registration=True)
    stream = DtuStream(short, "AB")
    assert len(b"AB") < MIN_INLINE_REGISTRATION
    assert stream.feed(b"AB" + b"\x68AB\x16") == (b"\x68AB\x16", 0)
