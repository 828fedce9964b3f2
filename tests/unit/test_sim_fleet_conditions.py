"""Meter conditions and areas in a fleet spec (``--fault ADDR:sag:0.85``, ``areas=[...]``), and the
control commands (:class:`SimControl`) a running fleet takes; time passed in."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from meterd.errors import ConfigError
from meterd.simulators.control import SimControl
from meterd.simulators.fleet import AreaSpec, FleetSpec, build_areas, build_meters

T0 = datetime(2026, 11, 23, 8, 0)


def spec(**kw: object) -> FleetSpec:
    kw.setdefault("pty_buses", 0)
    kw.setdefault("tcp_buses", 2)
    kw.setdefault("meters_per_bus", 4)
    return FleetSpec(**kw)  # type: ignore[arg-type]


def test_conditions_from_fault_text_with_their_defaults_and_values() -> None:
    s = spec(faults={"1": "sag", "2": "swell:1.2,garble:0.5", "3": "imbalance:0.8", "7": "reverse",
                     "5": "clock_drift:-30", "6": "power_down", "4": {"sag": 0.9}})
    assert s.conditions() == {
        "000000000001": {"sag": 0.85}, "000000000002": {"swell": 1.2}, "000000000003": {"imbalance": 0.8},
        "000000000007": {"reverse": 1.0}, "000000000005": {"clock_drift": -30.0},
        "000000000006": {"power_down": 1.0}, "000000000004": {"sag": 0.9}}
    plans, stuck = s.fault_plans()
    assert list(plans) == ["000000000002"] and plans["000000000002"].garble == 0.5 and not stuck
    models = build_meters(s, T0)
    t = T0 + timedelta(minutes=1)
    assert models["000000000001"]._v_scale == (0.85,) * 3 and models["000000000002"]._v_scale == (1.2,) * 3
    assert models["000000000003"]._weights == pytest.approx((0.8, 0.1, 0.1))
    assert models["000000000007"].values(t)["power.active.total"] < 0  # type: ignore[operator]  # no PV here
    assert models["000000000005"].clock_drift == pytest.approx(-30.0)
    assert not models["000000000006"].powered and models["000000000008"].powered


@pytest.mark.parametrize(("fault", "says"), [
    ("sag:0.2", "sag 0.2 must be within 0.5..1"),
    ("swell:0.9", "swell 0.9 must be within 1..1.5"),
    ("imbalance:0.1", "imbalance 0.1 must be within"),
    ("clock_drift:1e9", "clock_drift 1e+09 must be within"),
    ("reverse:0.5", "reverse takes no number"),
    ("sag:0.8:3", "has too many fields"),
    ("sag:x", "is not KIND[:PROB]"),
])
def test_bad_condition_values_are_config_errors_naming_the_meter(fault: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        spec(faults={"3": fault})
    assert any("000000000003" in p and says in p for p in caught.value.problems), caught.value.problems


def test_a_modbus_meter_has_no_power_down_but_takes_the_other_conditions() -> None:
    with pytest.raises(ConfigError, match="unknown Modbus fault kind 'power_down'"):
        spec(tcp_buses=0, modbus_tcp_buses=1, faults={"1": "power_down"})
    assert spec(tcp_buses=0, modbus_tcp_buses=1, faults={"1": "sag"}).conditions() == {"000000000001": {"sag": 0.85}}


def test_areas_are_checked_all_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        spec(areas=[{"name": "TA1", "supply": "1", "customers": ["2", "3", "99"], "loss": 0.4, "ct": {"7": 5}},
                    {"name": "TA1", "supply": "1", "customers": ["3"]},
                    {"name": "TA3", "supply": "4", "customers": "5"},
                    {"name": "TA4", "supply": "6", "customers": ["7"], "colour": "red"}])
    problems = caught.value.problems
    for says in ("areas.TA1: no such meter in the fleet: 000000000099",
                 "areas.TA1: loss 0.4 must be within 0..0.3",
                 "areas.TA1.ct: meter 000000000007 is not in this area",
                 "areas[1]: every area needs a name of its own",
                 "meter 000000000001 is the supply meter of another area already",
                 "meter 000000000003 is a customer of area TA1 already",
                 "areas[2].customers: must be a list of meter addresses",
                 "areas[3]: unknown key(s) colour"):
        assert any(says in p for p in problems), (says, problems)


def test_an_area_of_the_spec_is_built_over_the_fleets_models() -> None:
    s = spec(areas=[AreaSpec("TA1", "5", ("1", "2", "3"), loss=0.04, ct={"5": 10})])
    models = build_meters(s, T0)
    [area] = build_areas(s, models).values()
    assert area.supply is models["000000000005"] and [c.address for c in area.customers] == [
        "000000000001", "000000000002", "000000000003"]
    assert area.loss == 0.04 and area.ct == {"000000000005": 10}


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_control_commands_act_at_the_simulated_time_and_refuse_nonsense() -> None:
    s = spec(areas=[{"name": "TA1", "supply": "5", "customers": ["1", "2", "3"]}])
    models = build_meters(s, T0)
    clock = _Clock()
    control = SimControl(models, build_areas(s, models), clock)
    clock.now += timedelta(minutes=10)
    assert control.execute("power-down TA1 8") == {"ok": True, "meters": [
        "000000000005", "000000000001", "000000000002", "000000000003", "000000000008"]}
    clock.now += timedelta(minutes=20)
    assert control.execute("power-up TA1")["ok"] and not models["000000000008"].powered
    assert models["000000000001"].power_down_record(1) == {
        "event.power_down.start": datetime(2026, 11, 23, 8, 10), "event.power_down.end": datetime(2026, 11, 23, 8, 30)}
    status = control.execute("reverse 4 on")
    assert status["ok"] and status["reversed"] is True and status["meter"] == "000000000004"
    assert control.execute("voltage 4 0.9,1,1.1")["voltage_scale"] == [0.9, 1.0, 1.1]
    assert control.execute("shares 4 2,1,1")["phase_shares"] == [0.5, 0.25, 0.25]
    assert control.execute("shares 4 even")["ok"]
    assert control.execute("drift 4 120")["clock_drift"] == pytest.approx(120.0)
    assert control.execute("press 4") == {"ok": True, "meter": "000000000004", "closed": False}  # nothing waiting
    assert "press ADDR" in control.execute("help")["commands"]
    for line, says in (("", "empty command"), ("frobnicate 1", "unknown command 'frobnicate'"),
                       ("press", "name a meter"), ("press 77", "no meter 000000000077"),
                       ("press 12345678901234", "not a meter address"), ("reverse 4 maybe", "on or off"),
                       ("voltage 4 0.1", "within 0.5..1.5"), ("voltage 4 nan", "not a finite number"),
                       ("shares 4 1,2", "three shares"), ("drift 4 1e12", "clock drift"),
                       ("press 4 now", "expected 0 argument(s)"), ("power-down", "name a meter or an area"),
                       ("power-down TA9", "not a meter address")):
        reply = control.execute(line)
        assert reply["ok"] is False and says in reply["error"], (line, reply)
