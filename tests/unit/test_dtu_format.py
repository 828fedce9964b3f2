"""DTU registration / heartbeat formats: the presets' exact bytes, recognition of registrations in
a stream (complete, incomplete, broken, not one at all), heartbeat stripping, custom formats and
their configuration keys."""

from __future__ import annotations

import pytest

from meterd.protocols.terminal.dtu import (
    HEX_FRAME,
    PRESETS,
    USR_ASCII,
    DtuFormat,
    PacketKind,
    ParseStatus,
    get_format,
)
from meterd.errors import ConfigError
from meterd.simulators.dtu import SIM_FORMATS

OK, MORE, BAD, FOREIGN = ParseStatus.OK, ParseStatus.MORE, ParseStatus.BAD, ParseStatus.FOREIGN
# a DL/T 645 read of 00010000 from meter 000000000001, with its preamble
DLT645_REQUEST = bytes.fromhex("FE FE FE FE 68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16")
# hex-frame registration of "DTU1": AA 55 | 01 | 04 | 'D' 'T' 'U' '1' | 01+04+44+54+55+31 = 0x123 -> 23
HEX_REG_DTU1 = bytes.fromhex("AA 55 01 04 44 54 55 31 23")
HEX_HB_DTU1 = bytes.fromhex("AA 55 02 04 44 54 55 31 24")


def test_presets_are_registered_by_name():
    assert set(PRESETS) == {"usr-ascii", "usr-mac", "hex-frame"}
    assert get_format("usr-ascii") is USR_ASCII and get_format(HEX_FRAME) is HEX_FRAME
    with pytest.raises(ConfigError, match="unknown dtu format 'nope'"):
        get_format("nope")


# --- usr-ascii ---------------------------------------------------------------------------------------


def test_usr_ascii_registration_is_the_id_text():
    assert USR_ASCII.encode_registration("DTU00000001") == b"DTU00000001"
    r = USR_ASCII.parse_registration(b"DTU00000001")
    assert (r.status, r.terminal_id, r.consumed) == (OK, "DTU00000001", 11)
    assert USR_ASCII.encode_heartbeat() == b"www.usr.cn"


@pytest.mark.parametrize("data, reason", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed"),  # text, but not an id
    (b"DTU 0001", "malformed"),
    (b"D" * 41, "oversized"),
])
def test_usr_ascii_broken_registrations(data, reason):
    r = USR_ASCII.parse_registration(data)
    assert r.status is BAD and r.reason == reason, r


@pytest.mark.parametrize("data", [DLT645_REQUEST, b"\x00\xff\x13\x37", b"www.usr.cn", b"HB"])
def test_usr_ascii_binary_data_and_heartbeats_are_no_registration(data):
    assert USR_ASCII.parse_registration(data).status is FOREIGN


@pytest.mark.parametrize("data, beats", [(b"DTU00000001" + b"www.usr.cn" * 3, 3), (b"DTU00000001HB" + b"www.usr.cn" * 3, 4),
                                         (b"DTU00000001" + b"www.usr.cn" * 7, 7)])  # 81 bytes: was "oversized"
def test_usr_ascii_registration_and_heartbeats_in_one_read(data, beats):
    # A delayed accept (a busy master) hands over the registration and the heartbeats sent since
    # in one read: the registration is recognised and the heartbeats are left for the stream.
    r = USR_ASCII.parse_registration(data)
    assert (r.status, r.terminal_id, r.consumed) == (OK, "DTU00000001", 11)
    assert USR_ASCII.strip_heartbeats(data[r.consumed:]) == (b"", beats)


def test_an_id_that_ends_like_a_heartbeat_is_kept_whole():
    # ambiguous: a valid id as it is stays whole (an id may end in "HB"); only a read that cannot
    # be an id is split before its trailing heartbeats
    r = USR_ASCII.parse_registration(b"SITEHB")
    assert (r.status, r.terminal_id, r.consumed) == (OK, "SITEHB", 6)


def test_usr_ascii_heartbeats_are_stripped_at_the_start_only():
    assert USR_ASCII.strip_heartbeats(b"www.usr.cn") == (b"", 1)
    assert USR_ASCII.strip_heartbeats(b"HBwww.usr.cn" + DLT645_REQUEST) == (DLT645_REQUEST, 2)
    # in the middle or at the end of meter data the bytes are meter data
    assert USR_ASCII.strip_heartbeats(DLT645_REQUEST + b"HB") == (DLT645_REQUEST + b"HB", 0)
    assert USR_ASCII.strip_heartbeats(b"\x68HB\x16") == (b"\x68HB\x16", 0)


def test_classify_whole_packets():
    assert USR_ASCII.classify(b"DTU00000001").terminal_id == "DTU00000001"
    assert USR_ASCII.classify(b"HB").kind is PacketKind.HEARTBEAT
    assert USR_ASCII.classify(DLT645_REQUEST).kind is PacketKind.PAYLOAD
    bad = USR_ASCII.classify(b"X" * 100)
    assert (bad.kind, bad.reason) == (PacketKind.INVALID, "oversized")
    assert HEX_FRAME.classify(HEX_REG_DTU1).kind is PacketKind.REGISTRATION
    assert HEX_FRAME.classify(HEX_HB_DTU1 + HEX_HB_DTU1).kind is PacketKind.HEARTBEAT
    assert HEX_FRAME.classify(DLT645_REQUEST).kind is PacketKind.PAYLOAD


# --- hex-frame ---------------------------------------------------------------------------------------


def test_hex_frame_bytes_worked_by_hand():
    assert HEX_FRAME.encode_registration("DTU1") == HEX_REG_DTU1
    assert HEX_FRAME.encode_heartbeat("DTU1") == HEX_HB_DTU1
    r = HEX_FRAME.parse_registration(HEX_REG_DTU1 + b"rest")
    assert (r.status, r.terminal_id, r.consumed) == (OK, "DTU1", 9)


def test_hex_frame_waits_for_the_whole_frame():
    for cut in range(1, len(HEX_REG_DTU1)):
        assert HEX_FRAME.parse_registration(HEX_REG_DTU1[:cut]).status is MORE, cut


@pytest.mark.parametrize("data, status, reason", [
    (HEX_REG_DTU1[:-1] + b"\x24", BAD, "bad_checksum"),
    (bytes.fromhex("AA 55 01 C8"), BAD, "oversized"),  # told by the length byte, before the bytes come
    (bytes.fromhex("AA 55 07 04 44 54 55 31 29"), BAD, "malformed"),  # unknown type 07
    (bytes.fromhex("AA 55 01 00 01"), BAD, "malformed"),  # empty id
    (bytes.fromhex("AA 55 01 02 00 FF 02"), BAD, "malformed"),  # id is not ASCII
    (HEX_HB_DTU1, FOREIGN, ""),  # a heartbeat is not a registration
    (DLT645_REQUEST, FOREIGN, ""),
    (b"DTU00000001", FOREIGN, ""),
])
def test_hex_frame_broken_and_foreign(data, status, reason):
    r = HEX_FRAME.parse_registration(data)
    assert (r.status, r.reason) == (status, reason), r


def test_hex_frame_heartbeats_are_stripped_at_both_ends():
    reply = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 9F 16")
    assert HEX_FRAME.strip_heartbeats(HEX_HB_DTU1 + reply + HEX_HB_DTU1) == (reply, 2)
    assert HEX_FRAME.strip_heartbeats(HEX_HB_DTU1 * 3) == (b"", 3)
    corrupt = HEX_HB_DTU1[:-1] + b"\x00"
    assert HEX_FRAME.strip_heartbeats(corrupt + reply) == (corrupt + reply, 0)
    assert HEX_FRAME.strip_heartbeats(reply + HEX_REG_DTU1) == (reply + HEX_REG_DTU1, 0)


def test_the_simulator_builds_the_same_bytes_independently():
    ids = {"usr-mac": ("d8:b0:4c:00:04:c9", "00:0E:C6:12:34:56")}
    for name, fmt in PRESETS.items():
        sim = SIM_FORMATS[name]
        for tid in ids.get(name, ("DTU00000001", "861234567890123")):
            assert sim.encode_registration(tid) == fmt.encode_registration(tid)
            assert fmt.strip_heartbeats(sim.encode_heartbeat(tid)) == (b"", 1)


# --- custom formats ----------------------------------------------------------------------------------


def test_hex_id_with_prefix_and_suffix():
    fmt = DtuFormat("bcd", prefix=b"\x7e\x7e", suffix=b"\x0d\x0a", id_encoding="hex", id_length=6,
                    heartbeats=(b"\xfe",))
    packet = bytes.fromhex("7E 7E 13 80 01 23 45 67 0D 0A")
    assert fmt.encode_registration("138001234567") == packet
    r = fmt.parse_registration(packet + b"\xfe")
    assert (r.status, r.terminal_id, r.consumed) == (OK, "138001234567", 10)
    assert fmt.parse_registration(packet[:7]).status is MORE
    assert fmt.parse_registration(b"\x7e\x7e\x01\x02\x0d\x0a").reason == "malformed"  # too short
    assert fmt.parse_registration(b"\x7e\x7e" + b"\x01" * 20).reason == "oversized"  # no suffix in reach
    assert fmt.parse_registration(b"\x7e\x00").status is FOREIGN
    assert fmt.parse_registration(b"\x7e").status is MORE


def test_fixed_length_ascii_id_leaves_what_follows():
    imei = DtuFormat("imei", id_length=15, id_pattern=r"\d{15}")
    r = imei.parse_registration(b"861234567890123\xfe\xfe")
    assert (r.status, r.terminal_id, r.consumed) == (OK, "861234567890123", 15)
    assert imei.parse_registration(b"86123").status is MORE
    assert imei.parse_registration(b"86123456789012X").reason == "malformed"


def test_text_prefix_and_suffix():
    fmt = DtuFormat("reg", prefix=b"REG:", suffix=b"\r\n", heartbeats=(b"PING\r\n",))
    assert fmt.parse_registration(b"REG:A-17\r\n").terminal_id == "A-17"
    assert fmt.parse_registration(b"REG:A-17").status is MORE
    assert fmt.parse_registration(b"RE").status is MORE
    assert fmt.parse_registration(b"XYZ").status is FOREIGN
    assert fmt.parse_registration(b"REG:\x01\x02\r\n").reason == "malformed"
    assert fmt.strip_heartbeats(b"PING\r\nPING\r\n") == (b"", 2)


def test_xor_checksum_and_tail():
    fmt = DtuFormat("x", framing="frame", header=b"\x7b", registration_type=0x01, heartbeat_type=0x04,
                    checksum="xor8", tail=b"\x7b", id_encoding="hex")
    packet = fmt.encode_registration("0102")
    assert packet == bytes.fromhex("7B 01 02 01 02 00 7B")  # CS = 01 ^ 02 ^ 01 ^ 02
    assert fmt.parse_registration(packet).terminal_id == "0102"


def test_data_carries_registration_is_stripped():
    fmt = DtuFormat("usr-data", data_carries_registration=True, heartbeats=(b"HB",))
    assert fmt.strip_registration(b"DTU7DTU7\x68\x16", "DTU7") == (b"\x68\x16", 2)


def test_invalid_formats_list_every_problem():
    with pytest.raises(ConfigError) as info:
        DtuFormat("bad", framing="morse", id_encoding="base64", max_id_length=0, id_pattern="(")
    text = str(info.value)
    for word in ("framing: 'morse'", "id_encoding: 'base64'", "max_id_length: 0", "id_pattern"):
        assert word in text
    with pytest.raises(ConfigError, match="hex id needs a prefix"):
        DtuFormat("h", id_encoding="hex")
    with pytest.raises(ConfigError, match="must differ"):
        DtuFormat("f", framing="frame", registration_type=1, heartbeat_type=1)


def test_from_dict_config_keys():
    fmt = DtuFormat.from_dict("site", {"prefix": "REG:", "suffix_hex": "0D0A", "heartbeats": ["HB", "PING"],
                                       "max_id_length": 20})
    assert fmt.prefix == b"REG:" and fmt.suffix == b"\r\n" and fmt.heartbeats == (b"HB", b"PING")
    based = DtuFormat.from_dict("hf", {"preset": "hex-frame", "header_hex": "7E7E", "checksum": "xor8"})
    assert based.framing == "frame" and based.header == b"\x7e\x7e" and based.name == "hf"
    with pytest.raises(ConfigError) as info:
        DtuFormat.from_dict("x", {"preset": "nope", "prefix_hex": "zz", "id_length": "5", "colour": 1,
                                  "prefix": "a"})
    assert len(info.value.problems) == 5
