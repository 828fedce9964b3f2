"""The shortcuts the polling hot path takes must give exactly what the long way gives.

Each cache or fast path is checked against the code it stands in for: remembered frames and
addresses against encoding and decoding afresh, the simulated meter's narrow ``values`` against
the full set, the per-minute integration step against the step worked out every time, the
simulated bus with its decode caches against a bus that forgets them before every request, the
MQTT request payload built from cached parts against ``RequestMessage.payload``, the store's row
fast path against ``encode_value``.
"""

from __future__ import annotations

import gc
import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.collector.channel import Channel, Dlt645Reply, Timing
from meterd.heap import THRESHOLDS, settle_heap
from meterd.collector.mqtt import MqttHub
from meterd.protocols.drivers import get_driver
from meterd.collector.transports.base import Transport
from meterd.errors import AddressMismatchError, ProtocolError
from meterd.protocols.dlt645.frame import (
    PREAMBLE,
    StreamDecoder,
    _address_from_wire,
    _address_to_wire,
    address_from_wire,
    address_to_wire,
    decode_frame,
    encode_frame,
)
from meterd.protocols.dlt645.messages import ReadRequest, ReadResponse, decode_request, encode_request, encode_response
from meterd.protocols.dlt645.v1997 import ReadRequest97, encode_request97
from meterd.protocols.terminal.mqtt import RequestMessage, describe_frame, request_payload
from meterd.readings import Quality, Reading
from meterd.simulators.dlt645 import Dlt645Bus, FaultPlan
from meterd.simulators.model import (
    _CHEAP_VARIABLES,
    ENERGY_KINDS,
    EXP,
    IMP,
    Q1,
    Q2,
    Q3,
    Q4,
    S_EXP,
    S_IMP,
    LoadProfile,
    MeterModel,
)
from meterd.storage.sqlite import _reading_row, encode_value, to_ms

T0 = datetime(2025, 6, 1, 10, 59, 30)
ADDRESSES = ("000001000001", "000001000002", "000001000003")


# --- addresses ---------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["AA", *(f"{n:02d}" for n in range(100))]), min_size=6, max_size=6))
def test_remembered_addresses_are_the_computed_ones(pairs):
    address = "".join(pairs)
    wire = _address_to_wire(address)
    assert address_to_wire(address) == wire
    assert address_to_wire(address) == wire  # from the cache now
    assert address_from_wire(wire) == _address_from_wire(wire) == address_from_wire(bytearray(wire))


@pytest.mark.parametrize("bad", ["00000000001B", "1234", "0000 0000 01"])
def test_a_bad_address_still_fails_every_time(bad):
    for _ in range(2):
        with pytest.raises(ProtocolError):
            address_to_wire(bad)


def test_a_non_bcd_wire_address_still_fails_every_time():
    for _ in range(2):
        with pytest.raises(ProtocolError):
            address_from_wire(b"\x1b\x00\x00\x00\x00\x00")


# --- request frames ----------------------------------------------------------------------------


class _Recorder(Transport):
    """Takes writes and answers each DL/T 645 read with a canned reply."""

    def __init__(self) -> None:
        super().__init__("rec")
        self.writes: list[bytes] = []

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None:
        pass

    async def write(self, data: bytes) -> None:
        self.writes.append(data)
        request = decode_request(decode_frame(data))
        assert isinstance(request, ReadRequest)
        reply = ReadResponse(request.address, request.di, b"\x00\x00\x00\x00")
        self._received(encode_frame(encode_response(reply), preamble=PREAMBLE))

    async def close(self) -> None:
        pass


def _read_frame(address: str, di: int, protocol: str = "dlt645-2007"):
    return get_driver(protocol).read_request(address, di)


async def test_a_channel_sends_the_same_bytes_from_its_frame_cache():
    channel = Channel("c", _Recorder(), timing=Timing(0.5, 0.5), preamble=2)
    frames = [_read_frame(a, di) for a in ADDRESSES for di in (0x00010000, 0x02010100)]
    for _ in range(3):
        for frame in frames:
            await channel.transact(frame)
    expected = [encode_frame(f, preamble=PREAMBLE[:2]) for f in frames] * 3
    assert channel.transport.writes == expected  # type: ignore[attr-defined]


def test_a_remembered_read_frame_is_the_encoded_request():
    for address in ADDRESSES:
        for di in (0x00010000, 0x02010100, 0x0001FF00):
            assert _read_frame(address, di) == encode_request(ReadRequest(address, di))
            assert _read_frame(address, di) is _read_frame(address, di)


def test_a_remembered_1997_read_frame_is_the_1997_request():
    """The 1997 edition shares the driver class, not the 2007 frame cache: the same number is
    another identifier in another frame."""
    for address in ADDRESSES:
        for di in (0x9010, 0xB611):
            assert _read_frame(address, di, "dlt645-1997") == encode_request97(ReadRequest97(address, di))
            assert _read_frame(address, di, "dlt645-1997") is _read_frame(address, di, "dlt645-1997")


# --- MQTT request payloads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(encode_request(ReadRequest("000001000001", 0x00010000)), preamble=PREAMBLE),
        encode_frame(encode_request97(ReadRequest97("000001000001", 0x9010)), preamble=PREAMBLE),
        bytes.fromhex("0103000000044409"),  # Modbus RTU, unit 1
        bytes.fromhex("000100000006110300000004"),  # Modbus MBAP, unit 0x11
    ],
)
@pytest.mark.parametrize("units", [None, {1: "000002000001", 0x11: "x\"y"}])
def test_the_request_payload_from_cached_fields_is_the_message_payload(frame, units):
    hub = MqttHub("127.0.0.1", 1, client_id="t", root="site/a")
    t = hub.transport("T\u00e9st", units=units)
    info = describe_frame(frame, units=units)
    sent = datetime(2025, 6, 1, 0, 5, 0, 123456, tzinfo=UTC)
    for expires in (sent + timedelta(seconds=30), None):
        want = RequestMessage("ab12cd34-1f", frame, info.protocol, info.meter, info.unit, sent, expires).payload()
        for _ in range(2):  # the first time fills the transport's cache
            got = request_payload('"ab12cd34-1f"', t._request_fields(frame), sent, expires)
            assert got == want
        assert json.loads(got)["frame"] == frame.hex()
    assert t._down_topic == "site/a/terminals/T\u00e9st/down"


# --- the simulated meter -----------------------------------------------------------------------


def _meters() -> list[MeterModel]:
    return [
        MeterModel("000001000001", start=T0, seed=7),
        MeterModel("000001000002", start=T0, seed=8, phases=1),
        MeterModel("000001000003", start=T0, seed=9, profile=LoadProfile(pv_peak_kw=6.0)),  # exports at noon
        MeterModel("000001000004", start=T0, seed=10, initial_energy_kwh=399_999.0),  # near the roll-over
    ]


ASKED = (
    *(f"energy.{name}.{part}" for name, _ in ENERGY_KINDS for part in ("total", "rate1", "rate4")),
    *sorted(_CHEAP_VARIABLES),
    "voltage.a", "current.a", "power.active.total", "pf.b", "demand.active.now", "status.word3", "clock",
)


@pytest.mark.parametrize("minutes", [0, 1, 61, 60 * 14 + 7])
def test_a_narrow_values_call_gives_the_full_call_s_values(minutes):
    for m in _meters():
        now = T0 + timedelta(minutes=minutes, seconds=17, microseconds=250)
        full = m.values(now)
        for asked in [(q,) for q in ASKED] + [ASKED[:5], ("energy.active.import.total", "voltage.a")]:
            got = m.values(now, asked)
            for q in asked:
                assert (q in got) == (q in full), (m.address, q)
                if q in full:
                    assert got[q] == full[q] and str(got[q]) == str(full[q]), (m.address, q)
        if m.address == "000001000003" and minutes >= 60:
            assert full["energy.active.export.total"] > 0  # the export registers were exercised


class _EveryStep(MeterModel):
    """The integration step worked out afresh for every interval (the code before the cache)."""

    def _integrate(self, m: datetime, dt_us: int) -> None:
        if self.relay_open or dt_us <= 0:
            return
        p, q = self._power(m)
        rate = self.tariff.rate_of_minute(m.hour * 60 + m.minute) - 1
        reg, acc = self._reg, self._minute_acc
        ep = round(abs(p) * 1_000_000) * dt_us
        eq = round(abs(q) * 1_000_000) * dt_us
        es = round(math.hypot(p, q) * 1_000_000) * dt_us
        a = IMP if p >= 0 else EXP
        s = S_IMP if p >= 0 else S_EXP
        quad = (Q1 if p >= 0 else Q2) if q >= 0 else (Q4 if p >= 0 else Q3)
        for kind, e in ((a, ep), (quad, eq), (s, es)):
            reg[kind][rate] += e
            acc[kind] += e


def test_the_per_minute_integration_step_integrates_exactly_as_before():
    profile = LoadProfile(pv_peak_kw=5.0)
    fast = MeterModel("000001000001", start=T0, seed=3, profile=profile)
    slow = _EveryStep("000001000001", start=T0, seed=3, profile=profile)
    now = T0
    for i in range(3000):  # uneven steps across minute, hour and tariff boundaries, relay trips
        now += timedelta(seconds=0.7 + (i % 13) * 1.9)
        if i == 1200:
            for m in (fast, slow):
                m.relay_open = True
        if i == 1500:
            for m in (fast, slow):
                m.relay_open = False
        fast.advance(now)
        slow.advance(now)
    assert fast._reg == slow._reg
    assert fast.values(now) == slow.values(now)


# --- the simulated bus -------------------------------------------------------------------------


def _bus() -> Dlt645Bus:
    models = [MeterModel(a, start=T0, seed=n) for n, a in enumerate(ADDRESSES)]
    return Dlt645Bus(models, seed=5, faults={ADDRESSES[2]: FaultPlan(garble=0.3, wrong_address=0.2)})


def test_a_bus_answers_the_same_with_its_decode_caches_as_without():
    cached, fresh = _bus(), _bus()
    requests = [encode_frame(encode_request(ReadRequest(a, di)), preamble=PREAMBLE)
                for a in (*ADDRESSES, "000009000009") for di in (0x00010000, 0x02010100, 0x0001FF00, 0x04000101)]
    requests.append(b"\xfe\xfe\x68garbage")
    now = T0
    for round_ in range(5):
        for raw in requests:
            now += timedelta(milliseconds=700)
            fresh._frames.clear()
            fresh._requests.clear()
            assert cached.handle(raw, now) == fresh.handle(raw, now), (round_, raw.hex())
    assert cached.stats == fresh.stats


# --- the store ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [Decimal("13152.08"), Decimal("-0.000"), 5, True, "x",
                                   datetime(2025, 6, 1, tzinfo=UTC)])
@pytest.mark.parametrize("quality", [Quality.GOOD, Quality.ESTIMATED, "suspect"])
def test_a_reading_row_is_what_encode_value_gives(value, quality):
    stamp = datetime(2025, 6, 1, 0, 5, tzinfo=UTC)
    row = _reading_row(Reading("000001000001", "q", stamp, value, "kWh", quality))  # type: ignore[arg-type]
    assert row == ("000001000001", "q", to_ms(stamp), *encode_value(value), "kWh", Quality(quality).value)


def test_a_reading_with_an_unknown_quality_is_refused():
    with pytest.raises(ValueError):
        _reading_row(Reading("m", "q", datetime(2025, 6, 1, tzinfo=UTC), Decimal(1), "",
                             "great"))  # type: ignore[arg-type]


# --- the collector -----------------------------------------------------------------------------


def test_settle_heap_freezes_start_up_and_collects_young_garbage_less_often():
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # what is made after start-up is still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


# --- the DL/T 645 reply matcher ----------------------------------------------------------------

_REQ = encode_request(ReadRequest("000001000001", 0x00010000))
_ECHO = encode_frame(_REQ, preamble=PREAMBLE)
_REPLY = encode_frame(encode_response(ReadResponse("000001000001", 0x00010000, b"\x01\x02\x03\x04")),
                      preamble=PREAMBLE)
_OTHER = encode_frame(encode_response(ReadResponse("000001000002", 0x00010000, b"\x01\x02\x03\x04")))
_BAD = _REPLY[:-2] + bytes([(_REPLY[-2] + 1) & 0xFF]) + _REPLY[-1:]


def _run(matcher: Dlt645Reply, chunks: list[bytes]) -> tuple[object, int, bool]:
    got: object = None
    try:
        for chunk in chunks:
            got = matcher.feed(chunk)
            if got is not None:
                break
    except AddressMismatchError as exc:
        got = f"AddressMismatchError: {exc}"
    return got, matcher.dropped, matcher.pending


@pytest.mark.parametrize("chunks", [
    [_REPLY],
    [_REPLY[4:]],  # no preamble
    [_ECHO, _REPLY],
    [_ECHO + _REPLY],
    [b"\x00\x68\x01" + _REPLY],
    [_BAD],
    [_BAD, _REPLY],
    [_BAD + _REPLY],
    [_OTHER],
    [_REPLY[:7], _REPLY[7:]],
    [bytes([b]) for b in _REPLY],
    [_REPLY + b"\xfe"],
    [_REPLY[:-1]],
])
def test_the_whole_frame_shortcut_matches_like_the_stream_decoder(chunks):
    reference = Dlt645Reply(_REQ)
    reference._decoder = StreamDecoder()  # always the stream decoder: the code before the shortcut
    assert _run(Dlt645Reply(_REQ), chunks) == _run(reference, chunks)


def test_a_sorted_batch_still_lets_the_later_of_two_rows_with_one_key_win(tmp_path):
    from meterd.storage.sqlite import SqliteStore

    stamp = datetime(2025, 6, 1, 0, 5, tzinfo=UTC)
    batch = [Reading(f"00000100000{n}", "energy.active.import.total", stamp, Decimal(n), "kWh") for n in (3, 1, 2)]
    batch.insert(1, Reading("000001000002", "energy.active.import.total", stamp, Decimal("9.99"), "kWh"))
    with SqliteStore(tmp_path) as store:
        assert store.write_readings(batch) == 4
        assert [(r.meter, r.value) for m in ("000001000001", "000001000002", "000001000003")
                for r in store.readings(m)] == [("000001000001", Decimal(1)), ("000001000002", Decimal(2)),
                                                 ("000001000003", Decimal(3))]
