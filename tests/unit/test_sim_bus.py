"""The sans-I/O simulated bus: requests encoded and replies decoded with the real codec."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from meterd.errors import ChecksumError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.frame import BROADCAST, PREAMBLE, Frame, Function, decode_frame, encode_frame
from meterd.protocols.dlt645.messages import (
    AbnormalResponse,
    AckResponse,
    ChangeBaudRequest,
    ChangeBaudResponse,
    FreezeRequest,
    MeterErrorBits,
    ReadAddressRequest,
    ReadAddressResponse,
    ReadFollowUpRequest,
    ReadFollowUpResponse,
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
from meterd.simulators.dlt645 import MAX_REPLY_DATA, Dlt645Bus, FaultPlan, Reply
from meterd.simulators.model import LoadProfile, MeterModel

T0 = datetime(2025, 6, 1, 0, 0)
NOW = T0 + timedelta(days=2, hours=9, minutes=3)
A1, A2, A3 = "000000000001", "000000000002", "000000000003"
FLAT = LoadProfile(hourly_kw=(1.0,) * 24, jitter=0.0)


def make_bus(faults: dict[str, FaultPlan] | None = None, seed: int = 0, **kw: object) -> Dlt645Bus:
    meters = [MeterModel(a, start=T0, seed=i, profile=FLAT, **kw) for i, a in enumerate((A1, A2, A3))]  # type: ignore[arg-type]
    return Dlt645Bus(meters, faults or {}, seed=seed)


def wire(req: Request) -> bytes:
    return encode_frame(encode_request(req), preamble=PREAMBLE)


def ask(bus: Dlt645Bus, req: Request, now: datetime = NOW) -> list[Response]:
    replies = bus.handle(wire(req), now)
    for r in replies:
        assert r.data.startswith(PREAMBLE)
    return [decode_response(decode_frame(r.data)) for r in replies]


def one(bus: Dlt645Bus, req: Request, now: datetime = NOW) -> Response:
    (resp,) = ask(bus, req, now)
    return resp


def values(resp: Response) -> dict[str, object]:
    assert isinstance(resp, ReadResponse), resp
    return {v.quantity: v.value for v in catalogue.decode(resp.di, resp.data)}


def test_only_the_addressed_meter_answers() -> None:
    bus = make_bus()
    resp = one(bus, ReadRequest(A2, 0x00010000))
    assert resp.address == A2
    assert values(resp)["energy.active.import.total"] == bus.meter(A2).values(NOW)["energy.active.import.total"]
    assert ask(bus, ReadRequest("000000000009", 0x00010000)) == []
    assert bus.stats.ignored == 1


def test_frame_object_and_bytes_with_garbage() -> None:
    bus = make_bus()
    assert bus.handle(Frame(A1, Function.READ_DATA, (0x00010000).to_bytes(4, "little")), NOW)
    raw = bytearray(wire(ReadRequest(A1, 0x00010000)))
    raw[-2] ^= 0xFF  # bad checksum: a meter stays silent
    assert bus.handle(bytes(raw), NOW) == []
    reply = encode_frame(Frame(A1, 0x91, b"\x00\x00\x01\x00"))
    assert bus.handle(reply, NOW) == []  # another meter's reply on the shared bus


def test_broadcast_time_sync_sets_every_clock_and_gets_no_reply() -> None:
    bus = make_bus()
    new = datetime(2025, 6, 3, 9, 30, 0)
    assert bus.handle(wire(TimeSyncRequest(new)), NOW) == []
    for m in bus.meters:
        assert m.meter_clock(NOW) == new
    clock = values(one(bus, ReadRequest(A3, 0x0400010C), NOW + timedelta(seconds=5)))["clock"]
    assert clock == new + timedelta(seconds=5)


def test_broadcast_freeze_and_other_broadcasts() -> None:
    bus = make_bus()
    assert bus.handle(wire(FreezeRequest(BROADCAST)), NOW) == []
    assert all(len(m.frozen_snapshots("instant")) == 1 for m in bus.meters)
    assert bus.handle(wire(ReadRequest(BROADCAST, 0x00010000)), NOW) == []  # nobody may answer a broadcast read


def test_read_address_answered_by_the_first_meter() -> None:
    assert one(make_bus(), ReadAddressRequest()) == ReadAddressResponse(A1)
    resp = one(make_bus(), ReadRequest("AAAAAAAAAAAA", 0x04000401))
    assert values(resp)["meter.address"] == A1


def test_unknown_or_unsupported_identifier_is_no_data() -> None:
    bus = make_bus()
    assert one(bus, ReadRequest(A1, 0x12345678)) == AbnormalResponse(A1, Function.READ_DATA, MeterErrorBits.NO_DATA)
    single = Dlt645Bus([MeterModel(A1, start=T0, phases=1)])
    assert one(single, ReadRequest(A1, 0x02010200)).error is MeterErrorBits.NO_DATA  # type: ignore[union-attr]
    assert one(single, ReadRequest(A1, 0x02010100)).address == A1
    assert one(bus, ReadRequest(A1, 0x0506013E)).error is MeterErrorBits.NO_DATA  # type: ignore[union-attr]


def test_blocks_variables_and_status() -> None:
    bus = make_bus()
    v = values(one(bus, ReadRequest(A1, 0x0001FF00)))
    assert v["energy.active.import.total"] == sum(v[f"energy.active.import.rate{r}"] for r in range(1, 5))  # type: ignore[misc]
    v = values(one(bus, ReadRequest(A1, 0x0201FF00)))
    assert set(v) == {"voltage.a", "voltage.b", "voltage.c"}
    v = values(one(bus, ReadRequest(A1, 0x04000503)))
    assert v["relay.open"] is False


def test_frozen_data_by_number() -> None:
    bus = make_bus()
    v = values(one(bus, ReadRequest(A1, 0x05060001)))
    assert v["frozen.daily.time"] == datetime(2025, 6, 3)
    v = values(one(bus, ReadRequest(A1, 0x05060002)))
    assert v["frozen.daily.time"] == datetime(2025, 6, 2)
    v1 = values(one(bus, ReadRequest(A1, 0x05060101)))
    v2 = values(one(bus, ReadRequest(A1, 0x05060102)))
    assert v1["frozen.daily.energy.active.import.total"] - v2["frozen.daily.energy.active.import.total"] == Decimal(24)  # type: ignore[operator]
    v = values(one(bus, ReadRequest(A1, 0x05040001)))
    assert v["frozen.hourly.time"] == datetime(2025, 6, 3, 9)


def test_load_curve_from_a_time_and_last_n() -> None:
    bus = make_bus()
    resp = one(bus, ReadRequest(A1, 0x06100601, count=4, start=datetime(2025, 6, 3, 7, 50)))
    assert isinstance(resp, ReadResponse) and not resp.follow_up
    f, points = catalogue.decode_records(resp.di, resp.data)
    assert [p.timestamp for p in points] == [datetime(2025, 6, 3, 8, m) for m in (0, 15, 30, 45)]
    assert [b.value - a.value for a, b in zip(points, points[1:])] == [Decimal("0.25")] * 3  # type: ignore[operator]
    resp = one(bus, ReadRequest(A1, 0x06100101, count=2))
    _, points = catalogue.decode_records(resp.di, resp.data)  # type: ignore[union-attr]
    assert [p.timestamp for p in points] == [datetime(2025, 6, 3, 8, 45), datetime(2025, 6, 3, 9, 0)]
    resp = one(bus, ReadRequest(A1, 0x06100101, count=2, start=datetime(2025, 6, 5)))
    assert resp.error is MeterErrorBits.NO_DATA  # type: ignore[union-attr]


def test_long_reply_goes_out_in_follow_up_frames() -> None:
    bus = make_bus()
    start = datetime(2025, 6, 1, 0, 15)
    first = one(bus, ReadRequest(A2, 0x06100601, count=96, start=start))  # 5 + 96 x 4 bytes
    assert isinstance(first, ReadResponse) and first.follow_up
    data, frames = first.data, [first]
    seq = 1
    while frames[-1].follow_up:
        nxt = one(bus, ReadFollowUpRequest(A2, 0x06100601, seq))
        assert isinstance(nxt, ReadFollowUpResponse) and nxt.seq == seq
        data += nxt.data
        frames.append(nxt)
        seq += 1
    assert len(frames) == 2 and len(data) == 5 + 96 * 4
    for r in frames:  # every frame's data field within the limit
        extra = 1 if isinstance(r, ReadFollowUpResponse) else 0
        assert 4 + len(r.data) + extra <= MAX_REPLY_DATA
    _, points = catalogue.decode_records(0x06100601, data)
    assert points[0].timestamp == start and points[-1].timestamp == datetime(2025, 6, 2)
    assert all(p.value is not None for p in points)
    # raw control words: B1 first, then 92 for the last piece
    raw = bus.handle(wire(ReadRequest(A2, 0x06100601, count=96, start=start)), NOW)[0].data
    assert decode_frame(raw).control == 0xB1
    raw = bus.handle(wire(ReadFollowUpRequest(A2, 0x06100601, 1)), NOW)[0].data
    assert decode_frame(raw).control == 0x92
    stale = one(bus, ReadFollowUpRequest(A2, 0x06100601, 5))
    assert stale.error is MeterErrorBits.NO_DATA  # type: ignore[union-attr]


def test_write_clock_with_and_without_the_password() -> None:
    bus = make_bus()
    new = datetime(2025, 6, 3, 12, 0, 0)
    data = catalogue.encode(0x0400010C, {"clock": new})
    bad = one(bus, WriteRequest(A1, 0x0400010C, "02000000", "00000000", data))
    assert bad == AbnormalResponse(A1, Function.WRITE_DATA, MeterErrorBits.UNAUTHORIZED)
    ok = one(bus, WriteRequest(A1, 0x0400010C, "02123456", "00000000", data))
    assert ok == AckResponse(A1, Function.WRITE_DATA)
    assert bus.meter(A1).meter_clock(NOW) == new
    assert bus.meter(A2).meter_clock(NOW) == NOW


def test_freeze_and_change_baud() -> None:
    bus = make_bus()
    assert one(bus, FreezeRequest(A2)) == AckResponse(A2, Function.FREEZE)
    assert len(bus.meter(A2).frozen_snapshots("instant")) == 1
    assert one(bus, ChangeBaudRequest(A2, 9600)) == ChangeBaudResponse(A2, 9600)
    assert bus.meter(A2).baud == 9600


def test_relay_control_through_the_bus() -> None:
    bus = make_bus()
    until = NOW + timedelta(minutes=10)
    bad = one(bus, RelayControlRequest(A3, RelayCommand.TRIP, "02111111", "00000001", until))
    assert bad == AbnormalResponse(A3, Function.RELAY_CONTROL, MeterErrorBits.UNAUTHORIZED)
    ok = one(bus, RelayControlRequest(A3, RelayCommand.TRIP, "02123456", "00000001", until))
    assert ok == AckResponse(A3, Function.RELAY_CONTROL)
    assert values(one(bus, ReadRequest(A3, 0x04000503)))["relay.open"] is True
    assert bus.stats.refusals == 1


def test_unsupported_function_is_refused_with_other() -> None:
    bus = make_bus()
    frame = Frame(A1, Function.CLEAR_DEMAND, b"\x00" * 8)
    (reply,) = bus.handle(encode_frame(frame), NOW)
    assert decode_response(decode_frame(reply.data)) == AbnormalResponse(A1, Function.CLEAR_DEMAND, MeterErrorBits.OTHER)


# --- faults ------------------------------------------------------------------------------------

READ = ReadRequest(A2, 0x00010000)


def test_fault_no_answer_drops_the_request() -> None:
    bus = make_bus({A2: FaultPlan(no_answer=1.0)})
    assert bus.handle(wire(READ), NOW) == []
    trip = RelayControlRequest(A2, RelayCommand.TRIP, "02123456", "00000001", NOW + timedelta(hours=1))
    assert bus.handle(wire(trip), NOW) == []
    assert not bus.meter(A2).relay_open  # the meter never heard it
    assert one(bus, ReadRequest(A1, 0x00010000)).address == A1  # other meters unaffected
    assert bus.stats.faults["no_answer"] >= 1


def test_fault_late_adds_the_delay() -> None:
    bus = make_bus({A2: FaultPlan(late=1.0, late_by=1.5)})
    (reply,) = bus.handle(wire(READ), NOW)
    assert reply == Reply(reply.data, 1.5, ("late",), A2)
    assert isinstance(decode_response(decode_frame(reply.data)), ReadResponse)


def test_fault_garble_breaks_the_checksum() -> None:
    bus = make_bus({A2: FaultPlan(garble=1.0)})
    for _ in range(20):
        (reply,) = bus.handle(wire(READ), NOW)
        assert reply.faults == ("garble",)
        with pytest.raises(ChecksumError):
            decode_frame(reply.data)


def test_fault_wrong_address() -> None:
    bus = make_bus({A2: FaultPlan(wrong_address=1.0)})
    resp = one(bus, READ)
    assert resp.address != A2 and resp.address in (A1, A3)
    lone = Dlt645Bus([MeterModel(A2, start=T0)], {A2: FaultPlan(wrong_address=1.0)})
    assert one(lone, READ).address == A3


def test_fault_abnormal_refuses_without_acting() -> None:
    bus = make_bus({A2: FaultPlan(abnormal=1.0)})
    assert one(bus, READ) == AbnormalResponse(A2, Function.READ_DATA, MeterErrorBits.OTHER)
    resp = one(bus, RelayControlRequest(A2, RelayCommand.TRIP, "02123456", "00000001", NOW + timedelta(hours=1)))
    assert resp == AbnormalResponse(A2, Function.RELAY_CONTROL, MeterErrorBits.OTHER)
    assert not bus.meter(A2).relay_open
    assert bus.stats.faults["abnormal"] == 2 and bus.stats.refusals == 0


def test_faults_are_seeded_and_reproducible() -> None:
    def run(seed: int) -> list[tuple[str, ...] | None]:
        bus = make_bus({A2: FaultPlan(no_answer=0.3, garble=0.3, late=0.3)}, seed=seed)
        out: list[tuple[str, ...] | None] = []
        for _ in range(60):
            replies = bus.handle(wire(READ), NOW)
            out.append(replies[0].faults if replies else None)
        return out

    a, b, c = run(5), run(5), run(6)
    assert a == b and a != c
    assert None in a and ("garble",) in a and () in a


def test_fault_plan_validation() -> None:
    with pytest.raises(ValueError, match="garble=1.5"):
        FaultPlan(garble=1.5)
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultPlan.of("smoke")
    with pytest.raises(ValueError, match="000000000009"):
        make_bus({"000000000009": FaultPlan(garble=1.0)})
