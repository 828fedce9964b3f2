"""Property tests for the DTU registration parser (:class:`meterd.protocols.terminal.dtu.DtuFormat`), like
the DL/T 645 ones (issue #14): arbitrary bytes never raise and give a sane answer; every valid
registration and heartbeat round-trips, whole, in pieces and with data behind it; a config table
gives a format or a ConfigError, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from meterd.protocols.terminal.dtu import (
    HEX_FRAME,
    PRESETS,
    USR_ASCII,
    USR_MAC,
    DtuFormat,
    DtuStream,
    PacketKind,
    Parse,
    ParseStatus,
)
from meterd.errors import ConfigError

HEX_ID = DtuFormat("hex-id", id_encoding="hex", prefix=b"\x7e\x01", suffix=b"\x0d", max_id_length=8,
                   id_pattern=r"[0-9A-F]+", heartbeats=(b"\x7e\x02\x0d",))
FIXED = DtuFormat("fixed", id_length=11, prefix=b"REG:", heartbeats=(b"PING",))
XOR_TAIL = DtuFormat("xor-tail", framing="frame", header=b"\x7b\x7b", checksum="xor8", tail=b"\x7d",
                     registration_type=0x10, heartbeat_type=0x20, max_id_length=20)
NO_CS = DtuFormat("no-cs", framing="frame", header=b"\xee", checksum="none", id_encoding="hex", id_length=4,
                  id_pattern=r"[0-9A-F]{8}")
MAC_FRAME = DtuFormat("mac-frame", framing="frame", header=b"\x7e", id_encoding="mac")
FORMATS = [USR_ASCII, USR_MAC, HEX_FRAME, HEX_ID, FIXED, XOR_TAIL, NO_CS, MAC_FRAME]
formats = st.sampled_from(FORMATS)


def _check(fmt: DtuFormat, buf: bytes, result: Parse) -> None:
    assert isinstance(result, Parse)
    if result.status is ParseStatus.OK:
        assert result.terminal_id and 0 < result.consumed <= len(buf)
        assert buf[:result.consumed] == fmt.encode_registration(result.terminal_id)  # canonical
    elif result.status is ParseStatus.BAD:
        assert result.reason and result.detail
    else:
        assert result.consumed == 0 and result.terminal_id is None


@settings(max_examples=400, deadline=None)
@given(formats, st.binary(max_size=120))
def test_arbitrary_bytes_never_raise(fmt: DtuFormat, raw: bytes) -> None:
    _check(fmt, raw, fmt.parse_registration(raw))
    assert fmt.classify(raw).kind in PacketKind
    rest, beats = fmt.strip_heartbeats(raw)
    assert len(rest) + beats <= len(raw) and rest in raw
    tid = {"mac": "aa:bb:cc:dd:ee:ff", "hex": "01" * (fmt.fixed_length or 1)}.get(fmt.id_encoding, "DTU1")
    if fmt.id_length and fmt.id_encoding == "ascii":
        tid = "D" * fmt.id_length
    fmt.strip_registration(raw, tid)
    assert 1 <= fmt.resync(raw) <= max(len(raw), 1)
    stream = DtuStream(fmt, tid)
    payload, beats = stream.feed(raw)
    assert len(payload) + len(stream.held) <= len(raw) and beats >= 0


@st.composite
def formats_with_ids(draw: st.DrawFn) -> tuple[DtuFormat, str]:
    fmt = draw(formats)
    n = fmt.fixed_length or draw(st.integers(1, fmt.max_id_length))
    if fmt.id_encoding == "mac":
        raw = draw(st.binary(min_size=n, max_size=n))
        # six bytes that begin like a heartbeat are taken for one (the known-id lookup registers them)
        assume(fmt.framing == "frame" or not any(raw.startswith(h) for h in fmt.heartbeats))
        return fmt, raw.hex(":")
    if fmt.id_encoding == "hex":
        raw = draw(st.binary(min_size=n, max_size=n))
        # a suffix-delimited binary id cannot hold its own suffix: the first one ends it
        assume(fmt.framing == "frame" or not fmt.suffix or fmt.suffix not in raw)
        return fmt, raw.hex().upper()
    alphabet = st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.:-")
    tid = "".join(draw(st.lists(alphabet, min_size=n, max_size=n)))
    # a prefix-less variable-length id made only of heartbeats ("HBHB") is taken for heartbeats
    assume(bool(fmt.prefix) or fmt.strip_heartbeats(tid.encode())[0] != b"")
    return fmt, tid


def _self_delimiting(fmt: DtuFormat) -> bool:
    return fmt.framing == "frame" or bool(fmt.suffix) or fmt.id_length is not None


@settings(max_examples=400, deadline=None)
@given(formats_with_ids())
def test_a_registration_round_trips(pair: tuple[DtuFormat, str]) -> None:
    fmt, tid = pair
    packet = fmt.encode_registration(tid)
    assert fmt.parse_registration(packet) == Parse(ParseStatus.OK, tid, len(packet))
    assert fmt.classify(packet).kind is PacketKind.REGISTRATION
    assert fmt.classify(packet).terminal_id == tid


@settings(max_examples=300, deadline=None)
@given(formats_with_ids(), st.binary(min_size=1, max_size=60))
def test_data_behind_a_self_delimiting_registration_is_left_alone(pair, behind: bytes) -> None:
    fmt, tid = pair
    assume(_self_delimiting(fmt))
    packet = fmt.encode_registration(tid)
    assert fmt.parse_registration(packet + behind) == Parse(ParseStatus.OK, tid, len(packet))


@settings(max_examples=300, deadline=None)
@given(formats_with_ids())
def test_every_proper_prefix_of_a_self_delimiting_registration_asks_for_more(pair) -> None:
    fmt, tid = pair
    assume(_self_delimiting(fmt))
    packet = fmt.encode_registration(tid)
    for cut in range(len(packet)):
        assert fmt.parse_registration(packet[:cut]).status is ParseStatus.MORE, (packet[:cut], cut)


@settings(max_examples=300, deadline=None)
@given(formats_with_ids(), st.integers(1, 4), st.binary(max_size=60), st.integers(0, 3))
def test_heartbeats_round_trip_and_are_stripped(pair, count: int, payload: bytes, tail: int) -> None:
    fmt, tid = pair
    assume(fmt.framing == "frame" or fmt.heartbeats)
    beat = fmt.encode_heartbeat(tid)
    assert fmt.classify(beat).kind is PacketKind.HEARTBEAT
    assert fmt.classify(beat * count).kind is PacketKind.HEARTBEAT
    stripped, beats = fmt.strip_heartbeats(beat * count + payload)
    if payload and fmt.strip_heartbeats(payload)[1] == 0:
        assert beats == count and stripped.endswith(payload) or fmt.framing == "frame"
    if fmt.framing == "frame":  # self-delimiting: heartbeats at the end of a read go too
        tail_beats = beat * tail
        data = b"\x68\x01\x16" + tail_beats
        assert fmt.strip_heartbeats(data) == (b"\x68\x01\x16", tail)


byte_text = st.one_of(st.text(max_size=6), st.binary(max_size=4).map(bytes.hex))
config_values = st.one_of(st.none(), st.booleans(), st.integers(-300, 300), byte_text,
                          st.lists(byte_text, max_size=3), st.sampled_from(list(PRESETS) + ["text", "frame", "hex",
                                                                                             "ascii", "sum8", "xor8",
                                                                                             "none", "[0-9]+", "(("]))
KEYS = ["preset", "framing", "description", "id_encoding", "id_pattern", "id_length", "max_id_length",
        "registration_type", "heartbeat_type", "checksum", "data_carries_registration", "prefix", "prefix_hex",
        "suffix", "suffix_hex", "header", "header_hex", "tail", "tail_hex", "heartbeat", "heartbeat_hex",
        "heartbeats", "heartbeats_hex", "bogus"]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), config_values, max_size=8))
def test_a_config_table_gives_a_format_or_a_config_error(doc: dict) -> None:
    try:
        fmt = DtuFormat.from_dict("site", doc)
    except ConfigError as exc:
        assert exc.problems and all("dtu format 'site'" in p for p in exc.problems)
        return
    for raw in (b"", b"\xaa\x55\x01\x01A\x43", b"DTU0001", bytes(range(40))):
        _check(fmt, raw, fmt.parse_registration(raw))
        fmt.classify(raw)
        fmt.strip_heartbeats(raw)


@pytest.mark.parametrize("fmt", [HEX_FRAME, XOR_TAIL, NO_CS], ids=lambda f: f.name)
def test_stripping_trailing_heartbeats_looks_only_where_one_could_end_the_read(
        fmt: DtuFormat, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered DTU's read of 64 KiB of header bytes: the trailing-heartbeat search tried every
    header in the read, each with a copy of the rest of it (quadratic: 0.6 s of frozen event loop for
    a 256 KiB read); now only the headers within one heartbeat's length of the end."""
    calls = []
    frame_at = DtuFormat._frame_at

    def counting(self: DtuFormat, buf: bytes, pos: int):
        calls.append(pos)
        return frame_at(self, buf, pos)

    monkeypatch.setattr(DtuFormat, "_frame_at", counting)
    data = fmt.header * (65536 // len(fmt.header))
    assert fmt.strip_heartbeats(data) == (data, 0)
    assert len(calls) <= 1 + fmt.max_registration
    assert all(pos == 0 or pos >= len(data) - fmt.max_registration for pos in calls)


def test_a_preset_that_is_not_a_string_is_a_config_error() -> None:
    """``preset = []`` raised TypeError (unhashable list) out of the config loader."""
    for bad in ([], {}, 1, None):
        with pytest.raises(ConfigError, match="preset"):
            DtuFormat.from_dict("site", {"preset": bad})
