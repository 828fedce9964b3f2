"""The simulated meter's state, with time passed in (no sleeps, no clocks)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.protocols.dlt645.catalogue import encode, lookup, status3_flags
from meterd.protocols.dlt645.messages import MeterErrorBits, RelayCommand
from meterd.simulators.model import (
    CHINA_TOU,
    ENERGY_KINDS,
    LoadProfile,
    MeterModel,
    Snapshot,
    TouSchedule,
)

T0 = datetime(2025, 3, 10, 0, 0)  # a Monday
FLAT = LoadProfile(hourly_kw=(2.0,) * 24, jitter=0.0, power_factor=0.8, capacitive_hours=frozenset())
STEPS = LoadProfile(hourly_kw=tuple(float(h % 5) for h in range(24)), jitter=0.0, capacitive_hours=frozenset())
FAR = datetime(2030, 1, 1)
PW = "02123456"
OP = "00000001"


def meter(start: datetime = T0, **kw: object) -> MeterModel:
    kw.setdefault("profile", FLAT)
    kw.setdefault("tariff", TouSchedule())
    kw.setdefault("initial_energy_kwh", 1000.0)
    return MeterModel("000000000001", start=start, seed=1, **kw)  # type: ignore[arg-type]


def imp(m: MeterModel, now: datetime, rate: str = "total") -> Decimal:
    return m.values(now)[f"energy.active.import.{rate}"]  # type: ignore[return-value]


# --- energy ------------------------------------------------------------------------------------


def test_energy_increment_matches_profile_integral() -> None:
    m = meter(profile=STEPS)
    before = imp(m, T0)
    end = T0 + timedelta(days=1)
    expected = Decimal(sum(h % 5 for h in range(24)))  # kWh: one hour at each hour's kW
    assert abs(imp(m, end) - before - expected) <= Decimal("0.04")  # 4 rate registers floor to 0.01


def test_partial_hour_integral_and_chunking_do_not_matter() -> None:
    a, b = meter(), meter()
    end = T0 + timedelta(hours=1, minutes=30, seconds=30)
    a.advance(end)
    t = T0
    while t < end:  # many odd-sized steps, straddling minute boundaries
        t = min(end, t + timedelta(seconds=37, microseconds=123))
        b.advance(t)
    assert a.values(end) == b.values(end)
    assert imp(a, end) - Decimal("1000.00") == pytest.approx(Decimal("3.01"), abs=Decimal("0.04"))


def test_jittered_energy_stays_within_the_jitter_band() -> None:
    profile = LoadProfile(hourly_kw=(1.0,) * 24, jitter=0.2)
    m = meter(profile=profile)
    used = imp(m, T0 + timedelta(days=1)) - imp(meter(profile=profile), T0)
    assert Decimal("19.2") <= used <= Decimal("28.8")
    assert used != Decimal("24.00")


@settings(max_examples=25, deadline=None)
@given(hours=st.integers(1, 60), seed=st.integers(0, 2**32), pv=st.sampled_from([0.0, 4.0]))
def test_every_total_is_the_sum_of_its_rates(hours: int, seed: int, pv: float) -> None:
    m = MeterModel(7, start=T0, seed=seed, profile=LoadProfile(pv_peak_kw=pv))
    v = m.values(T0 + timedelta(hours=hours, minutes=seed % 60))
    for kind, _ in ENERGY_KINDS:
        rates = sum(v[f"energy.{kind}.rate{r}"] for r in range(1, 5))  # type: ignore[misc]
        assert v[f"energy.{kind}.total"] == rates, kind
    assert v["energy.active.combined.total"] == v["energy.active.import.total"] + v["energy.active.export.total"]
    assert v["energy.reactive.combined1.total"] == v["energy.reactive.q1.total"] + v["energy.reactive.q2.total"]


def test_registers_roll_over_like_a_real_meter() -> None:
    energy = tuple((10**8 - 1, 2, 0, 0) if i == 0 else (4 * 10**7, 0, 0, 0) for i in range(8))
    v = Snapshot(T0, energy).energy_values("energy.")
    assert v["energy.active.import.rate1"] == Decimal("999999.99")
    assert v["energy.active.import.total"] == Decimal("0.01")  # 1000000.01 shows as 000000.01
    assert v["energy.active.combined.total"] == Decimal("600000.01")  # 1400000.01 wraps at 800000.00
    assert encode(0x0001FF00, v)


def test_pv_makes_the_meter_export_at_noon_and_reactive_moves_in_two_quadrants() -> None:
    m = meter(profile=LoadProfile(pv_peak_kw=5.0, jitter=0.0))
    v0 = m.values(T0)
    v1 = m.values(T0 + timedelta(days=1))
    assert v1["energy.active.export.total"] > v0["energy.active.export.total"]
    assert v1["energy.reactive.q1.total"] > v0["energy.reactive.q1.total"]  # inductive by day
    assert v1["energy.reactive.q4.total"] > v0["energy.reactive.q4.total"]  # capacitive at night
    noon = m.values(T0 + timedelta(days=1, hours=12))
    assert noon["power.active.total"] < 0 and noon["current.a"] < 0 and noon["pf.total"] < 0


def test_same_seed_same_meter_other_seed_other_meter() -> None:
    t = T0 + timedelta(hours=5)
    a = MeterModel(1, start=T0, seed=3).values(t)
    b = MeterModel(1, start=T0, seed=3).values(t)
    c = MeterModel(1, start=T0, seed=4).values(t)
    assert a == b
    assert a["energy.active.import.total"] != c["energy.active.import.total"]


# --- tariff ------------------------------------------------------------------------------------


def test_default_schedule_is_the_typical_chinese_day() -> None:
    tou = TouSchedule()
    assert tou.periods == CHINA_TOU
    assert [tou.rate_at(T0.replace(hour=h)) for h in (3, 8, 10, 11, 14, 16, 18, 20, 22, 23)] == [
        4, 3, 2, 1, 2, 3, 2, 1, 3, 4,
    ]  # fmt: skip


def test_energy_lands_in_the_rate_active_at_that_minute() -> None:
    m = meter()
    start = T0.replace(hour=10)  # peak 10:00-11:00, sharp 11:00-13:00
    m.advance(start)
    v0 = m.values(start)
    v1 = m.values(start + timedelta(hours=1, minutes=30))
    delta = {r: v1[f"energy.active.import.rate{r}"] - v0[f"energy.active.import.rate{r}"] for r in range(1, 5)}
    assert delta == {1: Decimal("1.00"), 2: Decimal("2.00"), 3: 0, 4: 0}


def test_schedule_wraps_and_parses() -> None:
    tou = TouSchedule.parse("08:00=2, 22:00=4")
    assert tou.rate_at(T0.replace(hour=3)) == 4  # before the first start: the last period
    assert tou.rate_at(T0.replace(hour=9)) == 2
    with pytest.raises(ValueError, match="rates are 1..4"):
        TouSchedule((("00:00", 5),))
    with pytest.raises(ValueError, match="hh:mm"):
        TouSchedule.parse("8=2")


# --- freezes, settlement, curves ---------------------------------------------------------------


def test_daily_freeze_at_midnight_with_the_midnight_registers() -> None:
    start = datetime(2025, 3, 10, 23, 50)
    twin = meter(start)
    at_midnight = twin.values(datetime(2025, 3, 11))
    m = meter(start)
    m.advance(datetime(2025, 3, 11, 0, 10))
    frozen = m.frozen("daily", 1)
    assert frozen is not None
    assert frozen["frozen.daily.time"] == datetime(2025, 3, 11)
    assert frozen["frozen.daily.energy.active.import.total"] == at_midnight["energy.active.import.total"]
    assert frozen["frozen.daily.energy.active.import.rate4"] == at_midnight["energy.active.import.rate4"]
    assert m.frozen("daily", 2) is None
    payload = encode(0x05060101, frozen)
    assert len(payload) == 5 * 4
    assert encode(0x05060001, frozen)  # its time


def test_daily_freezes_keep_62_and_hourly_every_hour() -> None:
    m = meter(profile=LoadProfile(jitter=0.0))
    m.advance(T0 + timedelta(days=64, minutes=1))
    assert len(m.frozen_snapshots("daily")) == 62
    assert m.frozen("daily", 1)["frozen.daily.time"] == T0 + timedelta(days=64)  # type: ignore[index]
    assert m.frozen("daily", 62)["frozen.daily.time"] == T0 + timedelta(days=3)  # type: ignore[index]
    assert m.frozen("hourly", 1)["frozen.hourly.time"] == T0 + timedelta(days=64)  # type: ignore[index]
    assert m.frozen("hourly", 2)["frozen.hourly.time"] == T0 + timedelta(days=63, hours=23)  # type: ignore[index]


def test_settlement_shifts_at_the_first_of_the_month() -> None:
    m = meter(datetime(2025, 1, 31, 23, 0))
    v = m.values(datetime(2025, 1, 31, 23, 30))
    assert "energy.active.import.total.prev1" not in v  # no settlement before the simulation
    at_feb = meter(datetime(2025, 1, 31, 23, 0)).values(datetime(2025, 2, 1))["energy.active.import.total"]
    v = m.values(datetime(2025, 2, 1, 1, 0))
    assert v["energy.active.import.total.prev1"] == at_feb
    assert v["energy.active.import.total"] == at_feb + Decimal("2.00")
    assert v["demand.active.import.total.time"] >= datetime(2025, 2, 1)  # demand reset at settlement
    v = m.values(datetime(2025, 3, 1, 0, 5))
    assert v["energy.active.import.total.prev2"] == at_feb
    assert v["energy.active.import.total.prev1"] == at_feb + Decimal("2.00") * 24 * 28
    assert encode(0x000100FF, v)  # current + the two previous settlements
    assert len(encode(0x000100FF, v)) == 3 * 4


def test_load_curve_records_every_interval() -> None:
    m = meter(curve_interval=timedelta(minutes=15))
    m.advance(T0 + timedelta(hours=2, minutes=7))
    first, points = m.curve("curve.energy.active.import.total", T0 + timedelta(minutes=1), 10)  # type: ignore[misc]
    assert first == T0 + timedelta(minutes=15)
    assert len(points) == 8  # 00:15 .. 02:00; nothing after the newest record
    steps = [b - a for a, b in zip(points, points[1:])]  # type: ignore[operator]
    assert steps == [Decimal("0.50")] * 7  # 2 kW for 15 minutes
    last_first, last = m.curve("curve.voltage.a", None, 3)  # type: ignore[misc]
    assert last_first == T0 + timedelta(hours=1, minutes=30)
    assert all(Decimal(200) < p < Decimal(240) for p in last)  # type: ignore[operator]
    assert m.curve("curve.voltage.a", T0 + timedelta(hours=3), 4) is None


def test_time_sync_forward_over_midnight_takes_the_missed_freeze() -> None:
    m = meter(datetime(2025, 3, 10, 23, 0))
    now = datetime(2025, 3, 10, 23, 30)
    m.set_clock(datetime(2025, 3, 11, 0, 5), now=now)
    assert m.meter_clock(now) == datetime(2025, 3, 11, 0, 5)
    assert m.frozen("daily", 1)["frozen.daily.time"] == datetime(2025, 3, 11)  # type: ignore[index]
    m.set_clock(datetime(2025, 3, 10, 23, 0), now=now)  # and back: no second freeze
    m.advance(datetime(2025, 3, 11, 1, 0))
    assert len(m.frozen_snapshots("daily")) == 1


def test_clock_offset_follows_the_meter_clock() -> None:
    m = meter(clock_offset=timedelta(minutes=-3))
    t = T0 + timedelta(hours=10, minutes=1)  # true peak; meter still flat (09:58)
    v = m.values(t)
    assert v["clock"] == datetime(2025, 3, 10, 9, 58)
    assert v["meter.time"] == "09:58:00"
    assert v["meter.date"] == datetime(2025, 3, 10)


def test_freeze_command_instant_and_timed() -> None:
    m = meter()
    m.freeze(now=T0 + timedelta(minutes=5, seconds=30))
    (snap,) = m.frozen_snapshots("instant")
    assert snap.time == T0 + timedelta(minutes=5, seconds=30)
    m.freeze(now=T0 + timedelta(minutes=6), minute=30, hour=None)
    m.advance(T0 + timedelta(hours=2))
    assert [s.time.minute for s in m.frozen_snapshots("timed")] == [30, 30]


# --- instantaneous values ----------------------------------------------------------------------


def test_instantaneous_values_are_plausible_and_encodable() -> None:
    m = meter(profile=LoadProfile(hourly_kw=(3.0,) * 24, jitter=0.0, power_factor=0.9, capacitive_hours=frozenset()))
    now = T0 + timedelta(hours=1, seconds=17)
    v = m.values(now)
    for ph in "abc":
        assert Decimal(210) < v[f"voltage.{ph}"] < Decimal(230)  # type: ignore[operator]
    assert v["power.active.total"] == Decimal("3.0000")
    assert v["pf.total"] == Decimal("0.900")
    assert Decimal("49.9") < v["frequency"] < Decimal("50.1")  # type: ignore[operator]
    p_sum = sum(v[f"power.active.{ph}"] for ph in "abc")  # type: ignore[misc]
    assert abs(p_sum - Decimal(3)) <= Decimal("0.0002")
    s_a = v["power.apparent.a"]
    assert abs(v["current.a"] - s_a * 1000 / v["voltage.a"]) < Decimal("0.01")  # type: ignore[operator]
    assert v["meter.address"] == "000000000001"
    for di in (0x0001FF00, 0x0201FF00, 0x0202FF00, 0x0203FF00, 0x0204FF00, 0x0205FF00, 0x0206FF00, 0x0207FF00,
               0x02800001, 0x02800002, 0x02800004, 0x02800008, 0x0400010C, 0x04000101, 0x04000102, 0x04000401,
               0x040005FF, 0x0101FF00, 0x0000FF00, 0x0005FF00, 0x000AFF00):  # fmt: skip
        assert encode(di, v), hex(di)
        assert all(f.quantity in v for f in lookup(di).fields)


def test_single_phase_meter_has_no_phase_b() -> None:
    v = meter(phases=1).values(T0 + timedelta(minutes=20))
    assert "voltage.a" in v and "voltage.b" not in v and "curve.voltage.b" not in v


# --- relay control -----------------------------------------------------------------------------


def ctl(m: MeterModel, cmd: RelayCommand, now: datetime, *, password: str = PW, until: datetime = FAR,
        operator: str = OP) -> object:
    return m.control(cmd, password=password, operator=operator, valid_until=until, now=now)


def word3(m: MeterModel, now: datetime) -> dict[str, bool]:
    return status3_flags(m.values(now)["status.word3"])  # type: ignore[arg-type]


def test_trip_stops_energy_and_reclose_restarts_it() -> None:
    m = meter()
    t1 = T0 + timedelta(hours=1)
    assert ctl(m, RelayCommand.TRIP, t1) is None
    assert word3(m, t1) == {"relay.open": True, "relay.command_open": True, "alarm.pre_trip": False,
                            "relay.protected": False}  # fmt: skip
    e1 = imp(m, t1)
    t2 = t1 + timedelta(hours=2)
    assert imp(m, t2) == e1
    v = m.values(t2)
    assert v["current.a"] == 0 and v["power.active.total"] == 0 and v["voltage.a"] > 200  # type: ignore[operator]
    assert ctl(m, RelayCommand.RECLOSE, t2) is None
    assert imp(m, t2 + timedelta(hours=1)) == e1 + Decimal("2.00")
    assert not word3(m, t2)["relay.open"]


def test_reclose_allowed_waits_for_the_button_then_closes() -> None:
    m = meter()
    ctl(m, RelayCommand.TRIP, T0)
    assert not m.press_button(T0)  # a tripped meter's button does nothing without a permit
    t1 = T0 + timedelta(hours=1)
    assert ctl(m, RelayCommand.RECLOSE_ALLOWED, t1) is None
    assert word3(m, t1) == {"relay.open": True, "relay.command_open": False, "alarm.pre_trip": False,
                            "relay.protected": False}  # fmt: skip  # permitted, still open
    e1 = imp(m, t1)
    t2 = t1 + timedelta(hours=1)
    assert imp(m, t2) == e1  # still no supply while it waits
    assert m.press_button(t2) and not m.reclose_permitted
    assert not word3(m, t2)["relay.open"]
    assert imp(m, t2 + timedelta(hours=1)) == e1 + Decimal("2.00")
    assert not m.press_button(t2 + timedelta(hours=1))  # pressed again: nothing left to do


def test_the_customer_presses_by_itself_after_button_after_and_a_trip_cancels_the_permit() -> None:
    m = meter(button_after=timedelta(minutes=30))
    ctl(m, RelayCommand.TRIP, T0)
    ctl(m, RelayCommand.RECLOSE_ALLOWED, T0)
    e0 = imp(m, T0)
    assert word3(m, T0 + timedelta(minutes=29))["relay.open"]
    t = T0 + timedelta(hours=1)
    assert not word3(m, t)["relay.open"]
    assert imp(m, t) == e0 + Decimal("1.00")  # closed at exactly 00:30: half an hour at 2 kW
    m2 = meter(button_after=timedelta(minutes=30))
    ctl(m2, RelayCommand.TRIP, T0)
    ctl(m2, RelayCommand.RECLOSE_ALLOWED, T0)
    ctl(m2, RelayCommand.TRIP, T0 + timedelta(minutes=10))  # the money ran out again meanwhile
    assert word3(m2, t)["relay.open"] and not m2.press_button(t)
    stuck = meter(stuck_relay=True)
    stuck.relay_open = True
    ctl(stuck, RelayCommand.RECLOSE_ALLOWED, T0)
    assert not stuck.press_button(T0) and stuck.relay_open


def test_reclose_allowed_on_a_closed_relay_leaves_nothing_waiting_and_alarm_bits() -> None:
    m = meter()
    assert ctl(m, RelayCommand.RECLOSE_ALLOWED, T0) is None
    assert not m.relay_open and not m.reclose_permitted
    ctl(m, RelayCommand.ALARM, T0)
    assert word3(m, T0)["alarm.pre_trip"]
    ctl(m, RelayCommand.ALARM_RELEASE, T0)
    assert not word3(m, T0)["alarm.pre_trip"]


def test_wrong_password_and_unknown_operator_are_unauthorized() -> None:
    m = meter(operators=frozenset({"00000001"}))
    refused = ctl(m, RelayCommand.TRIP, T0, password="02000000")
    assert refused.error is MeterErrorBits.UNAUTHORIZED  # type: ignore[attr-defined]
    assert "000000000001" in refused.reason and "02000000" in refused.reason  # type: ignore[attr-defined]
    refused = ctl(m, RelayCommand.TRIP, T0, operator="00000009")
    assert refused.error is MeterErrorBits.UNAUTHORIZED  # type: ignore[attr-defined]
    assert not m.relay_open and not m.command_open


def test_protected_meter_refuses_trip_until_released() -> None:
    m = meter()
    assert ctl(m, RelayCommand.PROTECT, T0) is None
    assert word3(m, T0)["relay.protected"]
    refused = ctl(m, RelayCommand.TRIP, T0)
    assert refused.error is MeterErrorBits.OTHER and "protected" in refused.reason  # type: ignore[attr-defined]
    assert not m.relay_open
    ctl(m, RelayCommand.PROTECT_RELEASE, T0)
    assert ctl(m, RelayCommand.TRIP, T0) is None and m.relay_open


def test_expired_command_is_refused_against_the_meter_clock() -> None:
    m = meter(clock_offset=timedelta(minutes=10))
    now = T0 + timedelta(hours=1)
    refused = ctl(m, RelayCommand.TRIP, now, until=now + timedelta(minutes=5))  # valid by true time only
    assert refused.error is MeterErrorBits.OTHER and "expired" in refused.reason  # type: ignore[attr-defined]
    assert ctl(m, RelayCommand.TRIP, now, until=now + timedelta(minutes=10)) is None


def test_stuck_relay_acknowledges_but_does_not_move() -> None:
    m = meter(stuck_relay=True)
    t1 = T0 + timedelta(hours=1)
    assert ctl(m, RelayCommand.TRIP, t1) is None
    flags = word3(m, t1)
    assert flags["relay.command_open"] and not flags["relay.open"]
    assert imp(m, t1 + timedelta(hours=1)) == imp(meter(), t1 + timedelta(hours=1))  # still consuming


def test_write_clock_checks_password() -> None:
    m = meter()
    new = datetime(2025, 3, 10, 12, 0, 0)
    data = encode(0x0400010C, {"clock": new})
    assert m.write(0x0400010C, data, password="02999999", operator=OP, now=T0).error is MeterErrorBits.UNAUTHORIZED  # type: ignore[union-attr]
    assert m.write(0x0400010C, data, password=PW, operator=OP, now=T0) is None
    assert m.meter_clock(T0) == new
    assert m.write(0x04000102, encode(0x04000102, {"meter.time": "08:30:00"}), password=PW, operator=OP,
                   now=T0) is None  # fmt: skip
    assert m.meter_clock(T0) == datetime(2025, 3, 10, 8, 30)
    assert m.write(0x04000401, b"\x01" * 6, password=PW, operator=OP, now=T0).error is MeterErrorBits.NO_DATA  # type: ignore[union-attr]


def test_bad_construction_names_the_meter() -> None:
    with pytest.raises(ValueError, match="000000000009.*kW"):
        MeterModel(9, start=T0, profile=LoadProfile(scale=60.0))
    with pytest.raises(ValueError, match="000000000009.*password"):
        MeterModel(9, start=T0, password="1234")
    with pytest.raises(ValueError, match="curve_interval"):
        MeterModel(9, start=T0, curve_interval=timedelta(minutes=7))
