"""Conditions of a simulated meter's supply and wiring, and a transformer area: power-down with its
event record, reversed wiring, sag/swell, current imbalance, clock drift; an area's supply meter that
measures its customers plus the loss, checked with meterd's own line-loss code.  Time passed in."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.analytics.lineloss import line_loss
from meterd.analytics.topology import Point, Role, Topology, Unit
from meterd.protocols.dlt645.catalogue import decode, encode
from meterd.protocols.dlt645.frame import PREAMBLE, decode_frame, encode_frame
from meterd.protocols.dlt645.messages import (
    AbnormalResponse,
    ReadRequest,
    ReadResponse,
    decode_response,
    encode_request,
)
from meterd.simulators.area import Area
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import WORD1_ACTIVE_REVERSE, WORD1_REACTIVE_REVERSE, LoadProfile, MeterModel

T0 = datetime(2025, 3, 10, 0, 0)
FLAT = LoadProfile(hourly_kw=(2.0,) * 24, jitter=0.0, power_factor=0.8, capacitive_hours=frozenset())


def meter(address: str = "000000000001", **kw: object) -> MeterModel:
    kw.setdefault("profile", FLAT)
    kw.setdefault("initial_energy_kwh", 1000.0)
    return MeterModel(address, start=T0, seed=1, **kw)  # type: ignore[arg-type]


def v(m: MeterModel, now: datetime, quantity: str) -> object:
    return m.values(now)[quantity]


# --- power-down --------------------------------------------------------------------------------


def test_power_down_stops_registers_and_curve_and_power_up_leaves_the_event_record() -> None:
    m = meter(clock_offset=timedelta(seconds=30))
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=3, minutes=20, seconds=5)
    before = v(m, t1, "energy.active.import.total")
    m.power_down(t1)
    assert not m.powered and m.power_downs == 1
    values = m.values(t2)
    assert values["energy.active.import.total"] == before
    assert values["voltage.a"] == 0 and values["current.a"] == 0 and values["power.active.total"] == 0
    m.power_up(t2)
    assert m.power_down_record(1) == {"event.power_down.start": datetime(2025, 3, 10, 1, 0, 30),
                                      "event.power_down.end": datetime(2025, 3, 10, 3, 20, 35)}  # meter clock
    assert m.power_down_record(2) is None
    assert v(m, t2 + timedelta(hours=1), "energy.active.import.total") == before + Decimal("2.00")
    # no load-curve records while the meter had no supply: the points of 01:15..03:15 are missing
    got = m.curve("curve.voltage.a", T0 + timedelta(hours=1), 11)
    assert got is not None and got[1][1:10] == [None] * 9 and got[1][0] is not None and got[1][10] is not None
    m.power_up(t2)  # already up: nothing
    assert m.power_downs == 1


def test_the_bus_hears_nothing_from_a_meter_without_supply_and_serves_its_event_records() -> None:
    a, b = meter("000000000001"), meter("000000000002")
    bus = Dlt645Bus([a, b])

    def ask(address: str, di: int, now: datetime) -> object:
        replies = bus.handle(encode_frame(encode_request(ReadRequest(address, di)), preamble=PREAMBLE), now)
        return [decode_response(decode_frame(r.data)) for r in replies]

    t1 = T0 + timedelta(hours=1)
    for n in range(3):  # three outages of ten minutes
        bus.meter(a.address).power_down(t1 + timedelta(hours=n))
        assert ask(a.address, 0x00010000, t1 + timedelta(hours=n, minutes=5)) == []
        assert ask("AAAAAAAAAAAA", 0x04000401, t1 + timedelta(hours=n, minutes=5))[0].address == b.address  # type: ignore[index]
        a.power_up(t1 + timedelta(hours=n, minutes=10))
    [count] = ask(a.address, 0x03110000, t1 + timedelta(hours=5))  # type: ignore[misc]
    assert isinstance(count, ReadResponse) and decode(0x03110000, count.data)[0].value == 3
    [latest] = ask(a.address, 0x03110001, t1 + timedelta(hours=5))  # type: ignore[misc]
    assert [(x.quantity, x.value) for x in decode(0x03110001, latest.data)] == [
        ("event.power_down.start", datetime(2025, 3, 10, 3, 0)), ("event.power_down.end", datetime(2025, 3, 10, 3, 10))]
    [third] = ask(a.address, 0x03110003, t1 + timedelta(hours=5))  # type: ignore[misc]
    assert decode(0x03110003, third.data)[0].value == datetime(2025, 3, 10, 1, 0)
    [none] = ask(a.address, 0x03110004, t1 + timedelta(hours=5))  # type: ignore[misc]
    assert isinstance(none, AbnormalResponse)  # no fourth event: no data
    [zero] = ask(b.address, 0x03110000, t1 + timedelta(hours=5))  # type: ignore[misc]
    assert decode(0x03110000, zero.data)[0].value == 0


def test_power_down_records_golden_bytes_and_an_event_still_going_on() -> None:
    # 03110001: start 2025-03-10 01:00:30, end 03:20:35, each YYMMDDhhmmss sent low byte first
    raw = encode(0x03110001, {"event.power_down.start": datetime(2025, 3, 10, 1, 0, 30),
                              "event.power_down.end": datetime(2025, 3, 10, 3, 20, 35)})
    assert raw.hex() == "300001100325" + "352003100325"
    assert encode(0x03110000, {"event.power_down.count": 12}).hex() == "120000"
    going_on = decode(0x03110001, bytes.fromhex("300001100325") + bytes(6))  # the end is zeros
    assert [x.quantity for x in going_on] == ["event.power_down.start"]


# --- reversed wiring, voltage, imbalance ---------------------------------------------------------


def test_reversed_wiring_runs_the_export_register_and_sets_the_status_words() -> None:
    m = meter()
    t1 = T0 + timedelta(hours=1)
    imp1, exp1 = v(m, t1, "energy.active.import.total"), v(m, t1, "energy.active.export.total")
    assert v(m, t1, "status.word1") == 0 and v(m, t1, "status.word2") == 0
    m.set_reversed(True, t1)
    t2 = t1 + timedelta(hours=2)
    values = m.values(t2)
    assert values["energy.active.import.total"] == imp1
    assert values["energy.active.export.total"] == exp1 + Decimal("4.00")
    assert values["power.active.total"] < 0 and values["current.a"] < 0  # type: ignore[operator]
    assert values["status.word1"] == WORD1_ACTIVE_REVERSE | WORD1_REACTIVE_REVERSE
    assert values["status.word2"] == 0x77  # phases a, b, c: active D0..D2, reactive D4..D6
    assert values["power.active.reverse"] is True  # the DL/T 645-1997 status word says it too
    assert values["energy.reactive.q3.total"] > 0  # type: ignore[operator]
    m.set_reversed(False, t2)
    assert v(m, t2 + timedelta(hours=1), "energy.active.export.total") == exp1 + Decimal("4.00")
    single = meter(phases=1)
    single.set_reversed(True, T0)
    assert v(single, T0 + timedelta(minutes=1), "status.word2") == 0x11


def test_sag_and_swell_scale_the_voltage_and_the_current_follows() -> None:
    m, ref = meter(), meter()
    t = T0 + timedelta(minutes=5)
    m.set_voltage(0.85, T0)
    a, b = m.values(t), ref.values(t)
    for phase in "abc":
        assert abs(a[f"voltage.{phase}"] - b[f"voltage.{phase}"] * Decimal("0.85")) <= Decimal("0.1")  # type: ignore[operator]
        assert a[f"current.{phase}"] > b[f"current.{phase}"]  # type: ignore[operator]
    assert a["power.active.total"] == b["power.active.total"]
    m.set_voltage((1.0, 1.12, 1.0), t)
    swelled = m.values(t + timedelta(minutes=1))
    assert Decimal(240) < swelled["voltage.b"] < Decimal(255) and swelled["voltage.a"] < Decimal(230)  # type: ignore[operator]
    with pytest.raises(ValueError, match="within 0.5..1.5"):
        m.set_voltage(0.1, t)
    with pytest.raises(ValueError, match="3 factor"):
        m.set_voltage((1.0, 1.0), t)


def test_phase_shares_make_a_current_imbalance_and_none_gives_the_meter_its_own_back() -> None:
    m = meter()
    t = T0 + timedelta(minutes=5)
    m.set_phase_shares((0.7, 0.15, 0.15), T0)
    values = m.values(t)
    ia, ib = values["current.a"], values["current.b"]
    assert ia > 4 * ib  # type: ignore[operator]
    assert values["power.active.total"] == meter().values(t)["power.active.total"]  # the same load
    m.set_phase_shares(None, t)
    even = m.values(t + timedelta(minutes=1))
    assert even["current.a"] < 2 * even["current.b"]  # type: ignore[operator]
    with pytest.raises(ValueError, match="three shares"):
        meter(phases=1).set_phase_shares((1, 0, 0), T0)
    with pytest.raises(ValueError, match="three shares"):
        m.set_phase_shares((1, -1, 0), t)


# --- clock drift -------------------------------------------------------------------------------


def test_a_drifting_clock_gains_as_it_runs_energy_follows_true_time_and_a_sync_starts_it_over() -> None:
    m, ref = meter(), meter()
    m.set_clock_drift(8640.0, T0)  # 10 % fast: 2.4 h a day
    t = T0 + timedelta(hours=10)
    for step in range(1, 601):  # read every minute: the walk with a drifting offset
        m.advance(T0 + timedelta(minutes=step))
    assert m.meter_clock(t) - t == timedelta(hours=1)
    assert abs(v(m, t, "energy.active.import.total") - v(ref, t, "energy.active.import.total")) <= Decimal("0.04")  # type: ignore[operator]
    assert v(m, t, "clock") == datetime(2025, 3, 10, 11, 0)
    m.set_clock(t, now=t)  # a time sync sets it right ...
    later = t + timedelta(hours=1)
    assert m.meter_clock(later) - later == timedelta(minutes=6)  # ... and it drifts on from there
    m.advance(later)
    assert m.meter_clock(later) - later == timedelta(minutes=6)
    m.set_clock_drift(-86.4, later)  # slow: 0.1 % behind
    assert m.clock_drift == pytest.approx(-86.4)
    with pytest.raises(ValueError, match="clock drift"):
        m.set_clock_drift(1e9, later)


def test_a_slow_clock_takes_its_midnight_freeze_late() -> None:
    m = meter(clock_offset=timedelta(minutes=-1))
    m.set_clock_drift(-3600.0, T0)  # loses an hour a day
    m.advance(T0 + timedelta(days=1))
    assert m.meter_clock(T0 + timedelta(days=1)) == datetime(2025, 3, 10, 22, 59)
    assert [s.time for s in m.frozen_snapshots("daily")] == [datetime(2025, 3, 10)]  # 1 minute in
    m.advance(T0 + timedelta(days=1, hours=1, minutes=5))
    assert [s.time for s in m.frozen_snapshots("daily")] == [datetime(2025, 3, 11), datetime(2025, 3, 10)]


# --- the area ----------------------------------------------------------------------------------

RESIDENTIAL = LoadProfile()  # the daily shape, jitter on, no PV


def _area(loss: float, ct: dict[str, int] | None = None, customers: int = 5) -> Area:
    supply = MeterModel("000000000100", start=T0, seed=9, initial_energy_kwh=5000.0)
    homes = [MeterModel(f"{i:012d}", start=T0, seed=i, profile=RESIDENTIAL) for i in range(1, customers + 1)]
    return Area("TA1", supply, homes, loss=loss, ct=ct)


def _registers(models: list[MeterModel]) -> dict[tuple[str, date], tuple[Decimal, bool]]:
    out = {}
    for m in models:
        for snap in m.frozen_snapshots("daily"):
            value = snap.energy_values("", kinds=("active.import",))["active.import.total"]
            out[(m.address, snap.time.date())] = (value, False)
    return out


def _topology(area: Area) -> Topology:
    ct = area.ct
    points = [Point(area.supply.address, "TA1", Role.SUPPLY, Decimal(ct.get(area.supply.address, 1)))]
    points += [Point(c.address, "TA1", Role.SALES, Decimal(ct.get(c.address, 1))) for c in area.customers]
    return Topology.of([Unit("TA1", "area")], points)


@pytest.mark.parametrize(("loss", "ct"), [(0.05, None), (0.02, None), (0.08, {"000000000100": 20, "000000000003": 5})])
def test_meterds_line_loss_of_a_simulated_area_is_the_configured_loss(loss: float, ct: dict[str, int] | None) -> None:
    area = _area(loss, ct)
    end = T0 + timedelta(days=2, minutes=1)  # the first freeze is 03-11 00:00: the model starts at 03-10 00:00
    t = T0
    while t < end:  # the bus ticker's way: every meter advanced now and then
        t = min(end, t + timedelta(minutes=7, seconds=13))
        for m in area.meters:
            m.advance(t)
    report = line_loss(_topology(area), "TA1", _registers(list(area.meters)), date(2025, 3, 11), date(2025, 3, 11))
    assert report.flags == () and report.supply > Decimal(50)
    # a register reads in whole 0.01 kWh per rate (4 rates): a day's energy is exact to 0.04 kWh
    # secondary, times the CT; beyond that the rate is the loss
    ratios = area.ct
    slack = sum(Decimal("0.04") * ratios.get(m.address, 1) for m in area.meters)
    tolerance = slack / report.supply * 100 + Decimal("0.01")
    assert report.rate is not None and abs(report.rate - Decimal(str(loss * 100))) <= tolerance, (report, tolerance)


def test_the_supply_meter_sees_what_really_flows_to_its_customers() -> None:
    area = _area(0.05, customers=3)
    a, b, c = area.customers
    t = T0 + timedelta(hours=12)
    for m in area.meters:
        m.advance(t)

    def supply_kw(now: datetime) -> Decimal:
        return area.supply.values(now)["power.active.total"]  # type: ignore[return-value]

    def sum_kw(now: datetime) -> Decimal:
        return sum((x.values(now)["power.active.total"] for x in area.customers), Decimal(0))  # type: ignore[misc]

    now = t + timedelta(seconds=30)
    assert abs(supply_kw(now) * Decimal("0.95") - sum_kw(now)) <= Decimal("0.002")
    b.set_reversed(True, now)  # reversed wiring at a customer: it measures negative, the flow is the same
    later = now + timedelta(minutes=1)
    assert b.values(later)["power.active.total"] < 0  # type: ignore[operator]
    assert abs(supply_kw(later) * Decimal("0.95") - sum_kw(later) + 2 * b.values(later)["power.active.total"]) \
        <= Decimal("0.002")  # type: ignore[operator]
    c.relay_open = True  # a tripped customer draws nothing
    a.power_down(later)  # nor does one without supply
    after = later + timedelta(minutes=1)
    assert abs(supply_kw(after) * Decimal("0.95") + b.values(after)["power.active.total"]) <= Decimal("0.002")  # type: ignore[operator]


def test_an_area_powers_down_and_up_as_one() -> None:
    area = _area(0.05, customers=3)
    t = T0 + timedelta(hours=1)
    area.power_down(t)
    assert not any(m.powered for m in area.meters)
    area.power_up(t + timedelta(minutes=20))
    assert all(m.power_down_record(1) == {"event.power_down.start": datetime(2025, 3, 10, 1, 0),
                                          "event.power_down.end": datetime(2025, 3, 10, 1, 20)} for m in area.meters)


def test_an_area_refuses_what_makes_no_sense() -> None:
    supply = MeterModel("000000000100", start=T0)
    homes = [MeterModel(f"{i:012d}", start=T0, seed=i, profile=RESIDENTIAL) for i in range(1, 4)]
    with pytest.raises(ValueError, match="loss 0.5"):
        Area("X", supply, homes, loss=0.5)
    with pytest.raises(ValueError, match="its own customer"):
        Area("X", supply, [*homes, supply])
    with pytest.raises(ValueError, match="CT ratios"):
        Area("X", supply, homes, ct={"000000000001": 0})
    big = [MeterModel(f"{i:012d}", start=T0, seed=i, profile=LoadProfile(scale=2.0)) for i in range(1, 40)]
    with pytest.raises(ValueError, match="give it a CT ratio"):
        Area("X", supply, big)
    Area("X", supply, homes)
    with pytest.raises(ValueError, match="already measures"):
        Area("Y", supply, homes)


def test_a_backfilled_history_balances_like_the_live_days_and_joins_them() -> None:
    start = T0 + timedelta(hours=20, minutes=30)  # 2025-03-10 20:30
    supply = MeterModel("000000000100", start=start, seed=9, initial_energy_kwh=5000.0)
    homes = [MeterModel(f"{i:012d}", start=start, seed=i, profile=RESIDENTIAL) for i in range(1, 6)]
    area = Area("TA1", supply, homes, loss=0.04)
    for m in area.meters:
        m.backfill_daily(3)
    assert [s.time.date() for s in supply.frozen_snapshots("daily")] == [
        date(2025, 3, 10), date(2025, 3, 9), date(2025, 3, 8)]
    for m in area.meters:
        m.advance(datetime(2025, 3, 11, 0, 1))  # the first live freeze: 03-11 00:00
    regs = _registers(list(area.meters))
    topology = _topology(area)
    for day in (date(2025, 3, 8), date(2025, 3, 9), date(2025, 3, 10)):  # backfilled, backfilled, half live
        report = line_loss(topology, "TA1", regs, day, day)
        assert report.flags == () and abs(report.rate - Decimal("4.00")) <= Decimal("0.05"), report  # type: ignore[operator]
    # the history's day is about what the live minute walk gives for the same hours of the next day
    yesterday = regs[(homes[0].address, date(2025, 3, 10))][0] - regs[(homes[0].address, date(2025, 3, 9))][0]
    assert Decimal(5) < yesterday < Decimal(40)
    with pytest.raises(ValueError, match="before the meter runs"):
        homes[0].backfill_daily(1)
    small = MeterModel("000000000200", start=start, initial_energy_kwh=1.0, profile=LoadProfile(pv_peak_kw=3.0))
    small.backfill_daily(3)  # registers too small for the history are raised: none goes below zero
    assert all(v >= 0 for snap in small.frozen_snapshots("daily") for row in snap.energy for v in row)
    assert small.values(start)["energy.active.export.total"] > 0  # type: ignore[operator]  # PV fed back


def test_a_drifting_meter_read_many_times_a_minute_integrates_as_one_read_each_hour() -> None:
    often, seldom = meter(), meter()
    for m in (often, seldom):
        m.set_clock_drift(600.0, T0)  # 10 minutes a day: a few microseconds per read, often none at all
    now = T0
    for i in range(6_000):  # reads 7..300 ms apart: the same-minute shortcut and the walk by turns
        now += timedelta(microseconds=7_000 + (i * 7919) % 293_000)
        often.advance(now)
        if i % 600 == 0:
            seldom.advance(now)
    seldom.advance(now)
    assert abs(often.meter_clock(now) - seldom.meter_clock(now)) <= timedelta(milliseconds=50)
    a, b = often.values(now), seldom.values(now)
    for q in ("energy.active.import.total", "energy.reactive.q1.total"):
        assert abs(a[q] - b[q]) <= Decimal("0.04"), q  # type: ignore[operator]
