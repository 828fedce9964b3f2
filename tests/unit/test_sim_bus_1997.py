"""The simulated bus with DL/T 645-1997 meters, alone and mixed with 2007 ones.

Strategy (as in ``test_sim_bus.py``): requests are encoded and replies decoded with the real
codecs (:mod:`meterd.protocols.dlt645.v1997` / ``catalogue1997`` for 1997, ``messages`` /
``catalogue`` for 2007); no mocks.  Values read from a 1997 meter are compared with the model and
with a 2007 read of the same quantity from an identical model on an all-2007 "twin" bus -- equal
once the 2007 value is put into the 1997 format (unsigned, the 1997 number of decimals).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from meterd.errors import ChecksumError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import Kind
from meterd.protocols.dlt645.catalogue1997 import decode97, encode97, lookup97
from meterd.protocols.dlt645.frame import BROADCAST, PREAMBLE, Frame, Function, decode_frame, encode_frame
from meterd.protocols.dlt645.messages import (
    AbnormalResponse,
    ChangeBaudRequest,
    FreezeRequest,
    MeterErrorBits,
    ReadAddressRequest,
    ReadAddressResponse,
    ReadFollowUpRequest,
    ReadRequest,
    ReadResponse,
    RelayCommand,
    RelayControlRequest,
    Request,
    Response,
    TimeSyncRequest,
    WriteRequest,
    decode_response,
    encode_request,
)
from meterd.protocols.dlt645.v1997 import (
    AbnormalResponse97,
    AckResponse97,
    ChangeAddressRequest97,
    ChangeBaudRequest97,
    ChangeBaudResponse97,
    ChangePasswordRequest97,
    ChangePasswordResponse97,
    ClearDemandRequest97,
    Function97,
    MeterErrorBits1997,
    ReadFollowUpRequest97,
    ReadFollowUpResponse97,
    ReadRequest97,
    ReadResponse97,
    Request97,
    RereadRequest97,
    Response97,
    TimeSyncRequest97,
    WriteRequest97,
    decode_response97,
    encode_request97,
)
from meterd.simulators.dlt645 import (
    MAX_REPLY_DATA_97,
    PROTOCOL_1997,
    PROTOCOL_2007,
    Dlt645Bus,
    FaultPlan,
    Reply,
)
from meterd.simulators.model import LoadProfile, MeterModel

T0 = datetime(2025, 6, 1, 0, 0)
NOW = T0 + timedelta(days=2, hours=9, minutes=3)
A1, A2, A3 = "000000000001", "000000000002", "000000000003"  # A1 speaks 2007, A2 and A3 1997
FLAT = LoadProfile(hourly_kw=(1.0,) * 24, jitter=0.0)
MIXED = {A2: PROTOCOL_1997, A3: PROTOCOL_1997}
PASSWORD = "02123456"
WRONG = "02000000"


def models(**kw: object) -> list[MeterModel]:
    kw.setdefault("profile", FLAT)
    kw.setdefault("settlement_day", 2)  # a settlement on 2 June: last month (prev1) exists at NOW
    return [MeterModel(a, start=T0, seed=i, **kw) for i, a in enumerate((A1, A2, A3))]  # type: ignore[arg-type]


def make_bus(
    faults: dict[str, FaultPlan] | None = None, seed: int = 0, protocols: dict[str, str] | None = None, **kw: object
) -> Dlt645Bus:
    return Dlt645Bus(models(**kw), faults or {}, seed=seed, protocols=MIXED if protocols is None else protocols)


def twin(**kw: object) -> Dlt645Bus:
    """The same meters (addresses, seeds, profile), every one speaking 2007."""
    return Dlt645Bus(models(**kw))


def wire97(req: Request97) -> bytes:
    return encode_frame(encode_request97(req), preamble=PREAMBLE)


def wire07(req: Request) -> bytes:
    return encode_frame(encode_request(req), preamble=PREAMBLE)


def ask97(bus: Dlt645Bus, req: Request97, now: datetime = NOW) -> list[Response97]:
    replies = bus.handle(wire97(req), now)
    for r in replies:
        assert r.data.startswith(PREAMBLE)
    return [decode_response97(decode_frame(r.data)) for r in replies]


def one97(bus: Dlt645Bus, req: Request97, now: datetime = NOW) -> Response97:
    (resp,) = ask97(bus, req, now)
    return resp


def one07(bus: Dlt645Bus, req: Request, now: datetime = NOW) -> Response:
    (reply,) = bus.handle(wire07(req), now)
    assert reply.data.startswith(PREAMBLE)
    return decode_response(decode_frame(reply.data))


def values97(resp: Response97, now: datetime = NOW) -> dict[str, object]:
    assert isinstance(resp, ReadResponse97), resp
    return {v.quantity: v.value for v in decode97(resp.di, resp.data, now=now)}


def values07(resp: Response) -> dict[str, object]:
    assert isinstance(resp, ReadResponse), resp
    return {v.quantity: v.value for v in catalogue.decode(resp.di, resp.data)}


def in_1997_format(di97: int, quantity: str, value: object) -> object:
    """``value`` as a 1997 meter reports it: a number unsigned and rounded to the 1997 decimals."""
    item = lookup97(di97)
    (field,) = [f for f in item.fields + item.repeat if f.quantity == quantity]
    if field.kind is Kind.NUMBER:
        assert isinstance(value, Decimal)
        return abs(value).quantize(Decimal(1).scaleb(-field.decimals), ROUND_HALF_EVEN)
    return value


# --- who answers -------------------------------------------------------------------------------


def test_protocol_of_each_meter() -> None:
    bus = make_bus()
    assert [bus.protocol_of(a) for a in (A1, A2, A3)] == [PROTOCOL_2007, PROTOCOL_1997, PROTOCOL_1997]
    assert Dlt645Bus(models()).protocol_of(A2) == "dlt645-2007"  # unlisted: 2007
    assert make_bus(protocols={A1: "dlt645-2007", "2": "dlt645-1997"}).protocol_of(A2) == PROTOCOL_1997
    with pytest.raises(KeyError, match="000000000009"):
        bus.protocol_of("000000000009")


def test_bad_constructor_arguments_name_the_address() -> None:
    with pytest.raises(ValueError, match="000000000009"):
        make_bus(protocols={"000000000009": PROTOCOL_1997})
    with pytest.raises(ValueError, match=r"000000000002.*dlt645-2013"):
        make_bus(protocols={A2: "dlt645-2013"})
    with pytest.raises(ValueError, match="000000000003"):
        make_bus(protocols={A3: None})  # type: ignore[dict-item]


def test_each_meter_answers_only_its_own_edition() -> None:
    bus = make_bus()
    assert one97(bus, ReadRequest97(A2, 0x9010)).address == A2
    assert one07(bus, ReadRequest(A1, 0x00010000)).address == A1
    assert ask97(bus, ReadRequest97(A1, 0x9010)) == []  # 1997 read to a 2007 meter
    assert bus.handle(wire07(ReadRequest(A2, 0x00010000)), NOW) == []  # 2007 read to a 1997 meter
    assert bus.stats.ignored == 2


@pytest.mark.parametrize(
    "req",
    [
        ReadFollowUpRequest97(A1, 0x9010),
        RereadRequest97(A1),
        WriteRequest97(A1, 0xC011, PASSWORD, bytes.fromhex("003012")),
        ChangeAddressRequest97(A1, "000000000009"),
        ChangeBaudRequest97(A1, 9600),
        ChangePasswordRequest97(A1, PASSWORD, "02654321"),
        ClearDemandRequest97(A1, PASSWORD),
    ],
)
def test_a_2007_meter_ignores_1997_only_frames(req: Request97) -> None:
    bus = make_bus()
    assert bus.handle(wire97(req), NOW) == []
    m = bus.meter(A1)
    assert (m.baud, m.password, m.meter_clock(NOW)) == (2400, PASSWORD, NOW)


@pytest.mark.parametrize(
    "req",
    [
        ReadFollowUpRequest(A2, 0x00010000, 1),
        ReadAddressRequest(),
        WriteRequest(A2, 0x04000102, PASSWORD, "00000000", bytes.fromhex("003012")),
        FreezeRequest(A2),
        ChangeBaudRequest(A2, 9600),
        RelayControlRequest(A2, RelayCommand.TRIP, PASSWORD, "00000000", NOW + timedelta(hours=1)),
    ],
)
def test_a_1997_meter_ignores_2007_only_frames(req: Request) -> None:
    bus = make_bus(protocols={A1: PROTOCOL_1997, A2: PROTOCOL_1997, A3: PROTOCOL_1997})
    assert bus.handle(wire07(req), NOW) == []
    m = bus.meter(A2)
    assert (m.baud, m.relay_open, m.meter_clock(NOW)) == (2400, False, NOW)
    assert not m.frozen_snapshots("instant")


def test_03_with_data_is_2007_security_and_nobody_answers() -> None:
    bus = make_bus()
    for a in (A1, A2):
        assert bus.handle(encode_frame(Frame(a, 0x03, bytes(8))), NOW) == []


def test_wildcards_reach_the_first_meter_of_the_frames_edition() -> None:
    bus = make_bus()
    number = ReadResponse97(A2, 0xC032, bytes.fromhex("020000000000"))
    assert one97(bus, ReadRequest97("AAAAAAAAAAAA", 0xC032)) == number  # A1 (2007) stays silent
    assert one07(bus, ReadAddressRequest()) == ReadAddressResponse(A1)
    first_1997 = Dlt645Bus(reversed(models()), protocols={A3: PROTOCOL_1997})
    assert one07(first_1997, ReadAddressRequest()) == ReadAddressResponse(A2)  # A3 (1997) stays silent


# --- reads -------------------------------------------------------------------------------------

# (1997 DI, 2007 DI of the same quantities)
SAME_QUANTITY = [
    (0x9010, 0x00010000),  # active import energy total
    (0x901F, 0x0001FF00),  # ... total + rates
    (0x9011, 0x00010100),  # ... rate 1
    (0x9024, 0x00020400),  # active export, rate 4
    (0x9110, 0x00030000),  # "forward reactive" = combined reactive 1
    (0x9120, 0x00040000),  # "reverse reactive" = combined reactive 2
    (0x9130, 0x00050000),  # Q1
    (0x9140, 0x00080000),  # Q4 (the 1997 order is Q1 Q4 Q2 Q3)
    (0x9410, 0x00010001),  # last month = the previous settlement
    (0x941F, 0x0001FF01),
    (0xA010, 0x01010000),  # maximum demand
    (0xB010, 0x01010000),  # ... its time (no year in 1997)
    (0xA41F, 0x0101FF01),  # last month's demand block
    (0xB611, 0x02010100),  # voltage a: 1 V in 1997
    (0xB61F, 0x0201FF00),
    (0xB621, 0x02020100),  # current a: 0.01 A in 1997
    (0xB62F, 0x0202FF00),
    (0xB630, 0x02030000),  # active power
    (0xB63F, 0x0203FF00),
    (0xB640, 0x02040000),  # reactive power: 0.01 kvar in 1997
    (0xB650, 0x02060000),  # power factor
    (0xB65F, 0x0206FF00),
    (0xC010, 0x04000101),  # date
    (0xC011, 0x04000102),  # time
    (0xC032, 0x04000402),  # meter number
]


@pytest.mark.parametrize("di97,di07", SAME_QUANTITY, ids=[f"{a:04X}" for a, _ in SAME_QUANTITY])
def test_a_1997_read_gives_the_models_values_and_a_2007_reads(di97: int, di07: int) -> None:
    bus, other = make_bus(), twin()
    got = values97(one97(bus, ReadRequest97(A2, di97)))
    assert got and not any(q.endswith("_noyear") for q in got)
    held = bus.meter(A2).values(NOW)
    read07 = values07(one07(other, ReadRequest(A2, di07)))
    for quantity, value in got.items():
        assert value == in_1997_format(di97, quantity, held[quantity]), quantity
        if quantity in read07:
            assert value == in_1997_format(di97, quantity, read07[quantity]), quantity
    assert set(got) <= set(read07) | {q for q in got if q.endswith(".time")}


def test_blocks_carry_total_and_the_meters_rates() -> None:
    bus = make_bus()
    v = values97(one97(bus, ReadRequest97(A2, 0x901F)))
    assert list(v) == ["energy.active.import.total"] + [f"energy.active.import.rate{r}" for r in range(1, 5)]
    assert v["energy.active.import.total"] == sum(v[f"energy.active.import.rate{r}"] for r in range(1, 5))  # type: ignore[misc]
    assert values97(one97(bus, ReadRequest97(A2, 0xB61F))).keys() == {"voltage.a", "voltage.b", "voltage.c"}
    v = values97(one97(bus, ReadRequest97(A2, 0xB010)))
    assert v["demand.active.import.total.time"] <= NOW  # type: ignore[operator]


def test_status_word_and_power_direction() -> None:
    bus = make_bus()
    assert values97(one97(bus, ReadRequest97(A2, 0xC020))) == {
        "status.word1997": 0,
        "alarm.battery_low": False,
        "power.active.reverse": False,
        "power.reactive.reverse": False,
    }
    # rooftop PV at noon: the meter exports; 1997 reports magnitudes and the direction in C020
    sunny = LoadProfile(hourly_kw=(0.5,) * 24, jitter=0.0, pv_peak_kw=4.0)
    noon = T0 + timedelta(days=1, hours=12)
    pv, pv07 = make_bus(profile=sunny), twin(profile=sunny)
    held = pv.meter(A2).values(noon)
    assert held["power.active.total"] < 0  # type: ignore[operator]
    status = values97(one97(pv, ReadRequest97(A2, 0xC020), noon), noon)
    assert status["power.active.reverse"] is True and status["status.word1997"] & 0x10  # type: ignore[operator]
    assert status["power.reactive.reverse"] is (held["power.reactive.total"] < 0)  # type: ignore[operator]
    power = values97(one97(pv, ReadRequest97(A2, 0xB630), noon), noon)["power.active.total"]
    read07 = values07(one07(pv07, ReadRequest(A2, 0x02030000), noon))["power.active.total"]
    assert power == -held["power.active.total"] == -read07  # type: ignore[operator]
    current = values97(one97(pv, ReadRequest97(A2, 0xB621), noon), noon)["current.a"]
    assert current == in_1997_format(0xB621, "current.a", held["current.a"]) > 0  # type: ignore[operator]


def test_unknown_identifier_or_missing_value_is_a_di_error() -> None:
    bus = make_bus()
    refused = AbnormalResponse97(A2, Function97.READ_DATA, MeterErrorBits1997.DI_ERROR)
    assert one97(bus, ReadRequest97(A2, 0x1234)) == refused  # not in the catalogue
    assert one97(bus, ReadRequest97(A2, 0xC033)) == refused  # user number: this meter has none
    assert one97(bus, ReadRequest97(A2, 0x9810)) == refused  # two months ago: not settled yet
    assert one97(bus, ReadRequest97(A2, 0x9010, args=b"\x01")) == refused  # vendor load-curve read
    single = Dlt645Bus([MeterModel(A2, start=T0, phases=1)], protocols={A2: PROTOCOL_1997})
    assert one97(single, ReadRequest97(A2, 0xB612)) == refused  # phase B of a 1-phase meter
    assert one97(single, ReadRequest97(A2, 0xB611)).address == A2
    assert bus.stats.refusals == 4
    # raw: C1, one byte 02 (+33 = 35)
    (reply,) = bus.handle(wire97(ReadRequest97(A2, 0x1234)), NOW)
    frame = decode_frame(reply.data)
    assert (frame.control, frame.data) == (0xC1, b"\x02")


def test_long_reply_goes_out_in_1997_follow_up_frames() -> None:
    bus = make_bus()
    whole = one97(bus, ReadRequest97(A2, 0x901F))
    assert isinstance(whole, ReadResponse97) and not whole.follow_up and len(whole.data) == 20
    assert 2 + len(whole.data) <= MAX_REPLY_DATA_97
    bus.max_reply_data97 = 10  # DI + 8 bytes a frame: 20 bytes need 3 frames
    (raw,) = bus.handle(wire97(ReadRequest97(A2, 0x901F)), NOW)
    assert decode_frame(raw.data).control == 0xA1  # 81 + follow-up
    first = decode_response97(decode_frame(raw.data))
    assert isinstance(first, ReadResponse97) and first.follow_up and len(first.data) == 8
    data, controls = first.data, []
    for _ in range(2):
        (raw,) = bus.handle(wire97(ReadFollowUpRequest97(A2, 0x901F)), NOW)
        frame = decode_frame(raw.data)
        controls.append(frame.control)
        nxt = decode_response97(frame)
        assert isinstance(nxt, ReadFollowUpResponse97) and nxt.di == 0x901F
        assert 2 + len(nxt.data) <= 10
        data += nxt.data
    assert controls == [0xA2, 0x82]  # more to come, then the last
    assert data == whole.data
    refused = AbnormalResponse97(A2, Function97.READ_FOLLOW_UP, MeterErrorBits1997.DI_ERROR)
    assert one97(bus, ReadFollowUpRequest97(A2, 0x901F)) == refused  # nothing left
    one97(bus, ReadRequest97(A2, 0x901F))
    assert one97(bus, ReadFollowUpRequest97(A2, 0x9010)) == refused  # another identifier
    other_meter = AbnormalResponse97(A3, Function97.READ_FOLLOW_UP, MeterErrorBits1997.DI_ERROR)
    assert one97(bus, ReadFollowUpRequest97(A3, 0x901F)) == other_meter  # the cursor is A2's


def test_reread_repeats_the_last_reply() -> None:
    bus = make_bus()
    assert ask97(bus, RereadRequest97(A2)) == []  # nothing said yet
    first = one97(bus, ReadRequest97(A2, 0xB611))
    later = NOW + timedelta(minutes=5)
    assert one97(bus, RereadRequest97(A2), later) == first
    refusal = one97(bus, ReadRequest97(A2, 0x1234))
    assert one97(bus, RereadRequest97(A2)) == refusal


# --- time --------------------------------------------------------------------------------------


def test_broadcast_time_sync_is_one_frame_for_both_editions_and_sets_every_clock() -> None:
    new = datetime(2025, 6, 3, 9, 30, 0)
    assert encode_request(TimeSyncRequest(new)) == encode_request97(TimeSyncRequest97(new))
    for send in (wire97(TimeSyncRequest97(new)), wire07(TimeSyncRequest(new))):
        bus = make_bus()
        assert bus.handle(send, NOW) == []
        assert [m.meter_clock(NOW) for m in bus.meters] == [new] * 3
        later = NOW + timedelta(seconds=5)
        assert values97(one97(bus, ReadRequest97(A3, 0xC011), later), later)["meter.time"] == "09:30:05"
        assert values07(one07(bus, ReadRequest(A1, 0x0400010C), later))["clock"] == new + timedelta(seconds=5)


def test_addressed_time_sync_sets_one_meter_without_reply() -> None:
    bus = make_bus()
    new = datetime(2025, 6, 3, 9, 0, 0)
    assert bus.handle(wire97(TimeSyncRequest97(new, A2)), NOW) == []
    assert [m.meter_clock(NOW) for m in bus.meters] == [NOW, new, NOW]


def test_broadcast_freeze_is_2007_only() -> None:
    bus = make_bus()
    assert bus.handle(wire07(FreezeRequest(BROADCAST)), NOW) == []
    assert [len(m.frozen_snapshots("instant")) for m in bus.meters] == [1, 0, 0]
    only_1997 = make_bus(protocols={A1: PROTOCOL_1997, A2: PROTOCOL_1997, A3: PROTOCOL_1997})
    assert only_1997.handle(wire07(FreezeRequest(BROADCAST)), NOW) == []
    assert only_1997.stats.ignored == 1
    assert bus.handle(wire97(ReadRequest97(BROADCAST, 0x9010)), NOW) == []  # nobody answers a broadcast read


# --- writes and commands -----------------------------------------------------------------------


def test_write_time_and_date_with_wrong_and_right_password() -> None:
    bus = make_bus()
    data = encode97(0xC011, {"meter.time": "12:30:00"})
    bad = one97(bus, WriteRequest97(A2, 0xC011, WRONG, data))
    assert bad == AbnormalResponse97(A2, Function97.WRITE_DATA, MeterErrorBits1997.PASSWORD_ERROR)
    assert bus.meter(A2).meter_clock(NOW) == NOW
    (raw,) = bus.handle(wire97(WriteRequest97(A2, 0xC011, WRONG, data)), NOW)
    assert decode_frame(raw.data).control == 0xC4 and decode_frame(raw.data).data == b"\x04"
    assert one97(bus, WriteRequest97(A2, 0xC011, PASSWORD, data)) == AckResponse97(A2, Function97.WRITE_DATA)
    assert bus.meter(A2).meter_clock(NOW) == datetime(2025, 6, 3, 12, 30)
    date = encode97(0xC010, {"meter.date": datetime(2025, 6, 10)})
    assert one97(bus, WriteRequest97(A2, 0xC010, PASSWORD, date)) == AckResponse97(A2, Function97.WRITE_DATA)
    assert bus.meter(A2).meter_clock(NOW) == datetime(2025, 6, 10, 12, 30)
    assert bus.meter(A1).meter_clock(NOW) == NOW and bus.meter(A3).meter_clock(NOW) == NOW


def test_write_refusals() -> None:
    bus = make_bus()
    di_error = AbnormalResponse97(A2, Function97.WRITE_DATA, MeterErrorBits1997.DI_ERROR)
    assert one97(bus, WriteRequest97(A2, 0x9010, PASSWORD, bytes(4))) == di_error  # read-only here
    assert one97(bus, WriteRequest97(A2, 0x9010, WRONG, bytes(4))) == di_error  # looked up before the password
    illegal = AbnormalResponse97(A2, Function97.WRITE_DATA, MeterErrorBits1997.ILLEGAL_DATA)
    assert one97(bus, WriteRequest97(A2, 0xC011, PASSWORD, bytes.fromhex("000025"))) == illegal  # 25:00:00
    assert bus.meter(A2).meter_clock(NOW) == NOW


def test_write_needs_no_operator_code_in_1997() -> None:
    bus = make_bus(operators=frozenset({"00000001"}))
    data = encode97(0xC011, {"meter.time": "10:00:00"})
    assert one97(bus, WriteRequest97(A2, 0xC011, PASSWORD, data)) == AckResponse97(A2, Function97.WRITE_DATA)
    refused = one07(bus, WriteRequest(A1, 0x04000102, PASSWORD, "00000009", data))  # 2007 still checks it
    assert refused == AbnormalResponse(A1, Function.WRITE_DATA, MeterErrorBits.UNAUTHORIZED)


def test_change_address() -> None:
    new = "000000000009"
    bus = make_bus({A2: FaultPlan(late=1.0, late_by=0.5)})
    (raw,) = bus.handle(wire97(ChangeAddressRequest97(A2, new)), NOW)
    assert decode_response97(decode_frame(raw.data)) == AckResponse97(A2, Function97.WRITE_ADDRESS)  # old address
    assert bus.meter(new).address == new and bus.protocol_of(new) == PROTOCOL_1997
    assert new in bus.addresses and A2 not in bus.addresses
    assert ask97(bus, ReadRequest97(A2, 0x9010)) == []
    (reply,) = bus.handle(wire97(ReadRequest97(new, 0xC032)), NOW)
    assert reply.delay == 0.5  # the fault plan moved with the meter
    assert values97(decode_response97(decode_frame(reply.data)))["meter.number"] == new
    taken = one97(bus, ChangeAddressRequest97(new, A1))
    assert taken == AbnormalResponse97(new, Function97.WRITE_ADDRESS, MeterErrorBits1997.ILLEGAL_DATA)
    with pytest.raises(KeyError):
        bus.protocol_of(A2)


def test_change_baud() -> None:
    bus = make_bus()
    assert one97(bus, ChangeBaudRequest97(A2, 9600)) == ChangeBaudResponse97(A2, 9600)
    assert bus.meter(A2).baud == 9600
    (raw,) = bus.handle(wire97(ChangeBaudRequest97(A3, 1200)), NOW)
    assert decode_frame(raw.data).data == b"\x08"  # the 1997 feature word (2007's 1200 is 04)
    bad_bits = encode_frame(Frame(A2, Function97.CHANGE_BAUD, b"\x03"))
    (raw,) = bus.handle(bad_bits, NOW)
    refused = decode_response97(decode_frame(raw.data))
    assert refused == AbnormalResponse97(A2, Function97.CHANGE_BAUD, MeterErrorBits1997.ILLEGAL_DATA)
    assert bus.meter(A2).baud == 9600


def test_change_password() -> None:
    bus = make_bus()
    refused = one97(bus, ChangePasswordRequest97(A2, WRONG, "02654321"))
    assert refused == AbnormalResponse97(A2, Function97.CHANGE_PASSWORD, MeterErrorBits1997.PASSWORD_ERROR)
    assert one97(bus, ChangePasswordRequest97(A2, PASSWORD, "02654321")) == ChangePasswordResponse97(A2, "02654321")
    data = encode97(0xC011, {"meter.time": "08:00:00"})
    old = one97(bus, WriteRequest97(A2, 0xC011, PASSWORD, data))
    assert old == AbnormalResponse97(A2, Function97.WRITE_DATA, MeterErrorBits1997.PASSWORD_ERROR)
    assert one97(bus, WriteRequest97(A2, 0xC011, "02654321", data)) == AckResponse97(A2, Function97.WRITE_DATA)
    assert bus.meter(A3).password == PASSWORD


def test_clear_demand() -> None:
    bus = make_bus()
    before = values97(one97(bus, ReadRequest97(A2, 0xA010)))["demand.active.import.total"]
    assert before == Decimal("1.0000")  # 1 kW flat
    refused = one97(bus, ClearDemandRequest97(A2, WRONG))
    assert refused == AbnormalResponse97(A2, Function97.CLEAR_DEMAND, MeterErrorBits1997.PASSWORD_ERROR)
    assert one97(bus, ClearDemandRequest97(A2, PASSWORD)) == AckResponse97(A2, Function97.CLEAR_DEMAND)
    assert values97(one97(bus, ReadRequest97(A2, 0xA010)))["demand.active.import.total"] == 0
    assert values97(one97(bus, ReadRequest97(A2, 0xB010)))["demand.active.import.total.time"] == NOW.replace(second=0)
    assert values97(one97(bus, ReadRequest97(A2, 0xA410)))["demand.active.import.total.prev1"] > 0  # type: ignore[operator]
    assert values07(one07(bus, ReadRequest(A1, 0x01010000)))["demand.active.import.total"] == before  # A1 untouched
    (raw,) = bus.handle(wire97(ClearDemandRequest97(A3, PASSWORD)), NOW)
    assert decode_frame(raw.data).control == 0x90 and decode_frame(raw.data).data == b""


def test_malformed_1997_frame_is_illegal_data() -> None:
    bus = make_bus()
    (raw,) = bus.handle(encode_frame(Frame(A2, Function97.CLEAR_DEMAND, b"\x02\x12\x34")), NOW)  # 3 bytes, not 4
    assert decode_response97(decode_frame(raw.data)) == AbnormalResponse97(
        A2, Function97.CLEAR_DEMAND, MeterErrorBits1997.ILLEGAL_DATA
    )
    assert bus.stats.refusals == 1


# --- faults ------------------------------------------------------------------------------------

READ97 = ReadRequest97(A2, 0x9010)


def test_fault_no_answer_drops_the_request() -> None:
    bus = make_bus({A2: FaultPlan(no_answer=1.0)})
    assert bus.handle(wire97(READ97), NOW) == []
    assert bus.handle(wire97(ChangeBaudRequest97(A2, 9600)), NOW) == []
    assert bus.meter(A2).baud == 2400  # never heard it
    assert one97(bus, ReadRequest97(A3, 0x9010)).address == A3
    assert bus.stats.faults["no_answer"] == 2


def test_fault_abnormal_is_the_1997_refusal() -> None:
    bus = make_bus({A1: FaultPlan(abnormal=1.0), A2: FaultPlan(abnormal=1.0)})
    assert one97(bus, READ97) == AbnormalResponse97(A2, Function97.READ_DATA, MeterErrorBits1997.ILLEGAL_DATA)
    resp = one97(bus, ChangeBaudRequest97(A2, 9600))
    assert resp == AbnormalResponse97(A2, Function97.CHANGE_BAUD, MeterErrorBits1997.ILLEGAL_DATA)
    assert bus.meter(A2).baud == 2400
    (raw,) = bus.handle(wire97(READ97), NOW)
    assert decode_frame(raw.data).control == 0xC1
    # the 2007 meter on the same bus still refuses the 2007 way
    assert one07(bus, ReadRequest(A1, 0x00010000)) == AbnormalResponse(A1, Function.READ_DATA, MeterErrorBits.OTHER)
    assert bus.stats.faults["abnormal"] == 4 and bus.stats.refusals == 0


def test_fault_late_wrong_address_and_garble() -> None:
    late = make_bus({A2: FaultPlan(late=1.0, late_by=1.5)})
    (reply,) = late.handle(wire97(READ97), NOW)
    assert reply == Reply(reply.data, 1.5, ("late",), A2)
    assert isinstance(decode_response97(decode_frame(reply.data)), ReadResponse97)
    wrong = one97(make_bus({A2: FaultPlan(wrong_address=1.0)}), READ97)
    assert isinstance(wrong, ReadResponse97) and wrong.address in (A1, A3)
    garbled = make_bus({A2: FaultPlan(garble=1.0)})
    for _ in range(20):
        (reply,) = garbled.handle(wire97(READ97), NOW)
        assert reply.faults == ("garble",) and reply.data.startswith(PREAMBLE)
        with pytest.raises(ChecksumError):
            decode_frame(reply.data)
    assert garbled.stats.faults["garble"] == 20


def test_faults_on_1997_meters_are_seeded_and_reproducible() -> None:
    def run(seed: int) -> list[tuple[str, ...] | None]:
        bus = make_bus({A2: FaultPlan(no_answer=0.3, garble=0.3, late=0.3)}, seed=seed)
        out: list[tuple[str, ...] | None] = []
        for _ in range(60):
            replies = bus.handle(wire97(READ97), NOW)
            out.append(replies[0].faults if replies else None)
        return out

    a, b, c = run(5), run(5), run(6)
    assert a == b and a != c
    assert None in a and ("garble",) in a and () in a
