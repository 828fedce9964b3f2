"""Q/GDW 1376.1 link frames: recorded frames both ways, both decoders, the resyncing stream decoder.

Strategy (as ``test_dlt645_frame.py``):

* ``RECORDED`` holds frames published in other projects, each citing repository + path.  Each goes
  through ``decode_frame`` (hand-written) and ``parse_frame`` (construct), which must agree, and
  back through ``encode_frame`` and ``build_frame``, which must reproduce the bytes.
  ``test_recorded_table_is_sound`` re-checks L and CS of the table itself, independently of the code.
* ``StreamDecoder`` gets them whole, byte by byte, split at every position, after noise (stray
  ``68`` and DL/T 645-looking bytes included), two in one read, after a corrupt frame and after a
  false header whose L points past the bytes that will ever come.
* Hypothesis: ``decode(encode(f)) == f`` for any valid frame; arbitrary bytes raise nothing but
  ProtocolError, and the stream decoder always terminates within its buffer bound.
"""

from __future__ import annotations

import random
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.errors import ChecksumError, FrameLengthError, ProtocolError
from meterd.protocols.gdw1376.frame import (
    MIN_FRAME,
    PROTOCOL_130,
    PROTOCOL_1376,
    Afn,
    EventCounter,
    Frame,
    StreamDecoder,
    TerminalAddress,
    TimeLabel,
    build_frame,
    control_byte,
    decode_frame,
    encode_frame,
    has_pw,
    make_time_label,
    parse_frame,
    parse_terminal_address,
    scan_frames,
    seq_byte,
)

# Sources of the recorded frames
HELLOWORLD = "simpleman1984/helloworld node_base/376.1/packet.js"
GFEP = "liuning587/gfep zptl/ptl1376_1.go"
PRTL3761 = "a Python 376.1 helper (prtl3761, deal3761Frame's __main__ sample), found by its text in public code"

RECORDED = {
    # terminal login (AFN 02 F1) and the master's confirmation (AFN 00 F1, C=0B) [HELLOWORLD]
    "login": ("68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 85 16", HELLOWORLD),
    "login_confirm": ("68 32 00 32 00 68 0B 00 02 34 12 00 00 61 00 00 01 00 B5 16", HELLOWORLD),
    # heartbeat without data (AFN 02 F3, 376.1-2009 style) [HELLOWORLD]
    "heartbeat_2009": ("68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 04 00 88 16", HELLOWORLD),
    # reset (AFN 01 F1) with PW (16 x 00) and Tp; the terminal's confirmation with EC and Tp [HELLOWORLD]
    "reset": ("68 8A 00 8A 00 68 41 00 02 34 12 04 01 F0 00 00 01 00 " + "00 " * 16 + "00 28 53 13 07 05 19 16",
              HELLOWORLD),
    "reset_confirm": ("68 52 00 52 00 68 A0 00 02 34 12 04 00 E0 00 00 01 00 11 00 00 27 52 13 07 05 76 16",
                      HELLOWORLD),
    # transparent forwarding (AFN 10 F1) of a DL/T 645 read of 00010000, and the reply with the meter's
    # answer (6.78 kWh), EC and Tp [HELLOWORLD]
    "forward": ("68 E2 00 E2 00 68 4B 00 02 34 12 04 10 E0 00 00 01 00 1F 6B BC 0A 10 00 "
                "68 61 10 01 30 12 15 68 11 04 33 33 34 33 7B 16 " + "00 " * 16 + "00 13 51 23 21 05 A1 16", HELLOWORLD),
    "forward_reply": (("68 AE 00 AE 00 68 A8 00 02 34 12 04 10 E0 00 00 01 00 1F 14 00 68 61 10 01 30 12 15 68 91 08 "
                      "33 33 34 33 AB 39 33 33 49 16 4F 00 00 06 50 23 21 05 AE 16"), HELLOWORLD),
    # login, its per-item confirmation (AFN 00 F3), a 2013 heartbeat with the terminal clock and its
    # confirmation [GFEP]
    "login_gfep": ("68 32 00 32 00 68 C9 21 45 03 00 00 02 74 00 00 01 00 A9 16", GFEP),
    "login_ack_f3": ("68 4A 00 4A 00 68 0B 21 45 03 00 02 00 64 00 00 04 00 02 00 00 01 00 00 E1 16", GFEP),
    "heartbeat_2013": ("68 4A 00 4A 00 68 C9 34 08 94 04 00 02 75 00 00 04 00 33 30 14 12 D2 20 93 16", GFEP),
    "heartbeat_ack_f3": ("68 4A 00 4A 00 68 0B 34 08 94 04 02 00 65 00 00 04 00 02 00 00 04 00 00 50 16", GFEP),
    # daily frozen energy request (AFN 0D F161/F163, p2..p6, Td_d 2011-12-25), L with protocol id 01
    "f161_request_130": (("68 39 01 39 01 68 4B 02 43 8B 07 14 0D 6F 02 01 01 14 25 12 11 02 01 04 14 25 12 11 "
                         "04 01 01 14 25 12 11 04 01 04 14 25 12 11 08 01 01 14 25 12 11 08 01 04 14 25 12 11 "
                         "10 01 01 14 25 12 11 10 01 04 14 25 12 11 20 01 01 14 25 12 11 20 01 04 14 25 12 11 E9 16"),
                         PRTL3761),
}


def raw(name: str) -> bytes:
    return bytes.fromhex(RECORDED[name][0])


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_table_is_sound(name: str) -> None:
    """L (twice, with a protocol identifier), CS and the end byte, computed here by hand."""
    data = raw(name)
    assert data[0] == data[5] == 0x68 and data[-1] == 0x16 and data[1:3] == data[3:5]
    length = int.from_bytes(data[1:3], "little")
    assert length & 3 in (1, 2)
    user = data[6:-2]
    assert len(user) == length >> 2
    assert sum(user) % 256 == data[-2]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_frames_both_decoders_and_both_encoders(name: str) -> None:
    data = raw(name)
    frame = decode_frame(data)
    assert parse_frame(data) == frame
    assert encode_frame(frame) == data
    assert build_frame(frame) == data


def test_recorded_fields() -> None:
    f = decode_frame(raw("login"))
    assert f.is_uplink and f.prm and f.function == 9 and f.afn == Afn.LINK
    assert f.address == TerminalAddress("0200", 0x1234) and str(f.address) == "0200-1234"
    assert f.seq_number == 1 and f.fir and f.fin and f.con and not f.tpv
    assert f.data == bytes.fromhex("00 00 01 00") and f.pw is f.ec is f.tp is None
    reset = decode_frame(raw("reset"))
    assert reset.pw == bytes(16) and reset.address.master == 2 and reset.function == 1 and reset.con
    assert reset.tp == TimeLabel(0, 7, 13, 53, 28, 5)
    ok = decode_frame(raw("reset_confirm"))
    assert ok.acd and ok.ec == EventCounter(0x11, 0) and ok.function == 0 and ok.tp == TimeLabel(0, 7, 13, 52, 27, 5)
    fwd = decode_frame(raw("forward_reply"))
    assert fwd.ec == EventCounter(0x4F, 0) and fwd.pw is None
    assert decode_frame(raw("f161_request_130")).protocol == PROTOCOL_130
    assert decode_frame(raw("login")).protocol == PROTOCOL_1376


def test_pw_is_where_the_standard_puts_it() -> None:
    assert all(has_pw(afn, uplink=False) for afn in (0x01, 0x04, 0x05, 0x0F, 0x10))
    assert not any(has_pw(afn, uplink=True) for afn in (0x01, 0x04, 0x05, 0x0F, 0x10))
    assert has_pw(0x06, True) and has_pw(0x06, False)
    assert not has_pw(0x0C, False) and not has_pw(0x0A, False) and not has_pw(0x0D, False)


def test_terminal_addresses() -> None:
    a = TerminalAddress("3201", 1, master=5, group=False)
    assert a.to_wire() == bytes.fromhex("01 32 01 00 0A")
    assert TerminalAddress.from_wire(a.to_wire()) == a
    assert parse_terminal_address("3201-0001") == TerminalAddress("3201", 1)
    assert parse_terminal_address(" 32010001 ", master=2) == TerminalAddress("3201", 1, 2)
    assert TerminalAddress.from_wire(bytes.fromhex("01 32 FF FF 01")).group
    for bad in ("3201-001", "3201-00G1", "", "3201 0001 7"):
        with pytest.raises(ProtocolError, match="not a terminal address"):
            parse_terminal_address(bad)
    with pytest.raises(ProtocolError, match="master address"):
        TerminalAddress("3201", 1, master=128)


def test_time_labels_and_their_delay() -> None:
    now = datetime(2026, 3, 1, 0, 2, 0)
    label = make_time_label(datetime(2026, 2, 28, 23, 59, 0), pfc=300, delay=5)
    assert label == TimeLabel(300 & 0xFF, 28, 23, 59, 0, 5)
    assert label.sent_at(now) == datetime(2026, 2, 28, 23, 59)
    assert not label.expired(now)
    assert label.expired(datetime(2026, 3, 1, 0, 5, 1))
    assert not TimeLabel(0, 31, 0, 0, 0, 0).expired(now)  # delay 0: never too late
    assert TimeLabel(0, 31, 0, 0, 0, 5).sent_at(now) == datetime(2026, 1, 31)  # February has no 31st


def test_encode_refuses_inconsistent_frames() -> None:
    a = TerminalAddress("0200", 0x1234)
    with pytest.raises(ProtocolError, match="PW"):
        encode_frame(Frame(0x4A, a, 0x04, 0x60, b"\x00\x00\x01\x00"))  # AFN 04 down without PW
    with pytest.raises(ProtocolError, match="carries no PW"):
        encode_frame(Frame(0x4B, a, 0x0C, 0x60, b"", pw=bytes(16)))
    with pytest.raises(ProtocolError, match="TpV"):
        encode_frame(Frame(0x4B, a, 0x0C, 0xE0, b""))
    with pytest.raises(ProtocolError, match="ACD"):
        encode_frame(Frame(0xA8, a, 0x0C, 0x60, b""))  # ACD without EC
    with pytest.raises(FrameLengthError, match="does not fit"):
        encode_frame(Frame(0x4B, a, 0x0C, 0x60, bytes(0x4000)))


@pytest.mark.parametrize(("bad", "error", "match"), [
    ("68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 86 16", ChecksumError, "checksum"),
    ("68 32 00 33 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 85 16", ProtocolError, "two L fields"),
    ("68 33 00 33 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 85 16", ProtocolError, "protocol identifier 11"),
    ("68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 85 17", ProtocolError, "end with 16"),
    ("68 36 00 36 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 85 16", FrameLengthError, "L says 13"),
    ("68 32 00 32 00 68 C9 00 02 34", FrameLengthError, "shorter"),
    # TpV set but only 4 bytes of data: no room for Tp
    ("68 32 00 32 00 68 C9 00 02 34 12 00 02 F1 00 00 01 00 05 16", FrameLengthError, "time label"),
])  # fmt: skip
def test_malformed_frames_name_what_is_wrong(bad: str, error: type[Exception], match: str) -> None:
    data = bytes.fromhex(bad)
    with pytest.raises(error, match=match):
        decode_frame(data)
    with pytest.raises(ProtocolError):
        parse_frame(data)


# --- stream decoding ------------------------------------------------------------------------------


def _feed_all(chunks: list[bytes]) -> list[Frame]:
    dec = StreamDecoder()
    out = []
    for chunk in chunks:
        dec.feed(chunk)
        out += dec.frames()
    return out


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_stream_whole_bytewise_and_split(name: str) -> None:
    data = raw(name)
    expected = [decode_frame(data)]
    assert _feed_all([data]) == expected
    assert _feed_all([bytes((b,)) for b in data]) == expected
    for cut in range(1, len(data)):
        assert _feed_all([data[:cut], data[cut:]]) == expected


def test_stream_skips_noise_and_corrupt_frames() -> None:
    login, hb = raw("login"), raw("heartbeat_2013")
    corrupt = bytearray(raw("login_confirm"))
    corrupt[-2] ^= 0xFF
    dlt645 = bytes.fromhex("FE FE 68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16")
    noise = b"\x68\x68\x00\xfe\x16" + dlt645 + bytes(corrupt) + b"\x68\x32"
    dec = StreamDecoder()
    dec.feed(noise + login + hb + b"\x00\x68")
    assert dec.frames() == [decode_frame(login), decode_frame(hb)]
    assert dec.dropped >= 3 and isinstance(dec.last_error, ProtocolError)
    assert dec.pending == b"\x68"


def test_a_false_header_does_not_hide_the_frame_behind_it() -> None:
    # 68 FF 3F FF 3F 68: L says 4095 bytes of user data that will never come
    false = bytes.fromhex("68 FE FF FE FF 68")
    login = raw("login")
    dec = StreamDecoder()
    dec.feed(false + login)
    assert dec.frames() == [decode_frame(login)]


def test_stream_buffer_is_bounded() -> None:
    dec = StreamDecoder(max_user=64)
    assert dec.max_buffer == 2 * (6 + 64 + 2)
    dec.feed(bytes.fromhex("68 FE FF FE FF 68") + b"\x00" * 10_000)
    assert dec.frames() == [] and len(dec.pending) <= dec.max_buffer


def test_scan_frames_reports_where_frames_lie() -> None:
    login, ack = raw("login_gfep"), raw("login_ack_f3")
    data = b"\xff\x00" + login + b"\x68\x16" + ack
    found = scan_frames(data)
    assert [(s, e) for s, e, _ in found] == [(2, 2 + len(login)), (4 + len(login), len(data))]


# --- properties -----------------------------------------------------------------------------------

addresses = st.builds(TerminalAddress, st.text("0123456789", min_size=4, max_size=4), st.integers(0, 0xFFFF),
                      st.integers(0, 127), st.booleans())
time_labels = st.builds(TimeLabel, st.integers(0, 255), st.integers(1, 31), st.integers(0, 23), st.integers(0, 59),
                        st.integers(0, 59), st.integers(0, 255))


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    uplink = draw(st.booleans())
    afn = draw(st.sampled_from([0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x0A, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x33]))
    tp = draw(st.none() | time_labels)
    ec = draw(st.none() | st.builds(EventCounter, st.integers(0, 255), st.integers(0, 255))) if uplink else None
    control = control_byte(uplink=uplink, prm=draw(st.booleans()), function=draw(st.integers(0, 15)),
                           fcb_acd=ec is not None if uplink else draw(st.booleans()), fcv=draw(st.booleans()))
    seq = seq_byte(draw(st.integers(0, 15)), tpv=tp is not None, fir=draw(st.booleans()), fin=draw(st.booleans()),
                   con=draw(st.booleans()))
    pw = draw(st.binary(min_size=16, max_size=16)) if has_pw(afn, uplink) else None
    return Frame(control, draw(addresses), afn, seq, draw(st.binary(max_size=300)), pw, ec, tp,
                 draw(st.sampled_from([PROTOCOL_1376, PROTOCOL_130])))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_round_trip_both_paths(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert build_frame(frame) == wire
    assert decode_frame(wire) == frame
    assert parse_frame(wire) == frame
    assert _feed_all([b"\x68\x00" + wire[:7], wire[7:]]) == [frame]


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for decoder in (decode_frame, parse_frame):
        try:
            decoder(data)
        except ProtocolError:
            pass
    dec = StreamDecoder(max_user=100)
    dec.feed(data)
    dec.frames()
    assert len(dec.pending) <= dec.max_buffer
    scan_frames(data)


@settings(max_examples=200)
@given(st.binary(min_size=MIN_FRAME - 6, max_size=80), st.integers(0, 3))
def test_plausible_headers_with_random_bodies_raise_only_protocol_errors(body: bytes, protocol: int) -> None:
    length = (len(body) - 2) << 2 | protocol
    data = bytes((0x68, length & 0xFF, length >> 8, length & 0xFF, length >> 8, 0x68)) + body
    data = data[:-2] + bytes(((sum(data[6:-2]) & 0xFF), 0x16))
    try:
        decode_frame(data)
    except ProtocolError:
        pass


def test_random_splits_of_a_long_capture() -> None:
    rng = random.Random(1376)
    pieces = [raw(n) for n in sorted(RECORDED)] * 5
    rng.shuffle(pieces)
    stream = b"".join(rng.choice([b"", b"\xfe", b"\x68\x00", b"\x16"]) + p for p in pieces)
    chunks, pos = [], 0
    while pos < len(stream):
        step = rng.randint(1, 40)
        chunks.append(stream[pos:pos + step])
        pos += step
    assert _feed_all(chunks) == [decode_frame(p) for p in pieces]
