"""Plausibility at the door (issue 14): the impossible is flagged, kept, and named."""

from __future__ import annotations

import tomllib
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from meterd.collector.door import bounds
from meterd.config.loader import parse_config
from meterd.errors import ConfigError
from meterd.plausibility import DEFAULT_RATING, FLOAT_ENERGY_SPAN, Gate, MeterBounds, Rating
from meterd.readings import Quality, Reading

M = "000000000001"
E = "energy.active.import.total"
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=timezone.utc)


def r(value, minutes: float = 0, quantity: str = E, meter: str = M) -> Reading:
    return Reading(meter, quantity, T0 + timedelta(minutes=minutes), value if not isinstance(value, str) else D(value))


def verdicts(gate: Gate, *readings: Reading) -> list[Quality]:
    out, _ = gate.screen(list(readings))
    return [x.quality for x in out]


def test_the_default_rating_is_the_loosest_common_meter():
    assert DEFAULT_RATING.max_kw() == D("79.2")  # 3 x 220 V x 100 A x 1.2
    assert Rating(rated_current=D(60), phases=1).max_kw(D(1)) == D("15.84")
    assert DEFAULT_RATING.max_kw(D(200)) == D("15840")


@pytest.mark.parametrize("value", ["NaN", "sNaN", "Infinity", "-Infinity", "3.4028234663852886E+38", "1E+30",
                                   "1E+16", "1000000", "-0.01"])
def test_values_that_are_no_register_value_are_flagged(value):
    gate = Gate({})
    out, found = gate.screen([r(value)])
    assert out[0].quality is Quality.IMPLAUSIBLE and str(out[0].value) == str(D(value))  # kept, as it came
    assert len(found) == 1 and found[0].meter == M and found[0].quantity == E
    assert M in found[0].describe() and str(D(value))[:10] in found[0].describe()


def test_other_quantities_must_be_finite_and_of_a_measurable_size():
    gate = Gate({})
    assert verdicts(gate, r("231.4", quantity="voltage.a"), r("NaN", quantity="voltage.a"),
                    r("1E+13", quantity="power.active.total"), r("-12.5", quantity="power.active.total")) == [
        Quality.GOOD, Quality.IMPLAUSIBLE, Quality.IMPLAUSIBLE, Quality.GOOD]
    assert verdicts(gate, r(True, quantity="relay.open"),
                    Reading(M, "meter.id", T0, "1E+99")) == [Quality.GOOD] * 2


def test_an_advance_more_than_the_meter_can_carry_is_flagged_and_a_spike_does_not_poison_the_next():
    gate = Gate({})
    # 79.2 kW for 15 minutes = 19.8 kWh, plus two 0.01 kWh steps
    assert verdicts(gate, r("1000"), r("1019.82", 15)) == [Quality.GOOD, Quality.GOOD]
    assert verdicts(gate, r("1039.65", 30)) == [Quality.IMPLAUSIBLE]
    # the reading after a spike, back where it belongs, is fine (a fall is charging's to judge)
    assert verdicts(gate, r("1040", 45)) == [Quality.GOOD]
    # an older reading (a frozen value arriving late) is not judged against a newer baseline
    assert verdicts(gate, r("1020", 20)) == [Quality.GOOD]


def test_live_and_frozen_registers_and_meters_are_judged_apart():
    gate = Gate({})
    frozen = "frozen.daily.energy.active.import.total"
    assert verdicts(gate, r("1000"), r("5000", 1, quantity=frozen), r("1001", 15), r("5001", 16, quantity=frozen),
                    r("9000", 15, meter="000000000002")) == [Quality.GOOD] * 5


def test_bounds_follow_rating_ct_pt_and_the_modbus_register():
    gate = Gate({M: MeterBounds.of(Rating(rated_current=D(6)), D(200))})  # a 1.5(6) A meter behind a 1000/5 CT
    # 3 x 220 x 6 x 1.2 x 200 / 1000 = 950.4 kW; in an hour 950.4 kWh + 2 x 0.01 x 200
    assert verdicts(gate, r("1000"), r("1954.4", 60), r("2908.9", 120)) == [Quality.GOOD, Quality.GOOD,
                                                                          Quality.IMPLAUSIBLE]
    fresh = Gate(gate.bounds)  # the primary span is 2 x 10^8
    assert verdicts(fresh, r(str(200 * 1_000_000 - 1))) == [Quality.GOOD]
    assert verdicts(fresh, r(str(200 * 1_000_000), 1)) == [Quality.IMPLAUSIBLE]


SITE = """
[store]
data_dir = "data"
[channels.bus]
tcp = {{ host = "127.0.0.1", port = 1 }}
{extra}
[[meters]]
address = "1"
channel = "bus"
ct = 10
{meter}
[[meters]]
address = "2"
channel = "bus"
protocol = "modbus"
unit = 1
model = "eastron-sdm630"
[[meters]]
address = "3"
channel = "bus"
protocol = "modbus"
unit = 2
model = "chint-dtsu666"
"""


def load(extra: str = "", meter: str = ""):
    return parse_config(tomllib.loads(SITE.format(extra=extra, meter=meter)), "site.toml")


def test_ratings_come_from_the_meter_then_its_model_then_the_site():
    config = load('[plausibility]\nrated_current = 60\n[plausibility.models.eastron-sdm630]\nphases = 1\n',
                  "rated_voltage = 230")
    m1, m2, m3 = config.meters
    assert m1.rating == Rating(rated_current=D(60), rated_voltage=D(230))
    assert m2.rating == Rating(rated_current=D(60), phases=1)
    assert m3.rating == Rating(rated_current=D(60))
    assert load().meters[0].rating == DEFAULT_RATING
    b1 = bounds(m1)
    assert b1.max_kw == D(60) * 230 * 3 * D("1.2") * 10 / 1000 and b1.span_of(E) == D(10_000_000)


def test_modbus_energy_spans_come_from_the_register_type():
    config = load()
    sdm = bounds(config.meters[1])
    assert sdm.span_of(E) == FLOAT_ENERGY_SPAN  # SDM630 keeps energy in float32
    dtsu = config.meters[2].regmap
    entry = dtsu.entry(E)
    expected = FLOAT_ENERGY_SPAN if entry.type.is_float else D(entry.type.int_range[1] + 1) * entry.scale
    assert bounds(config.meters[2]).span_of(E) == (expected if entry.primary else expected * 1)


@pytest.mark.parametrize("extra, meter, message", [
    ("", "rated_current = -5", "meters[0].rated_current: must be a positive number"),
    ("", "rated_current = 1e9", "meters[0].rated_current: must be at most"),
    ("", "phases = 2", "meters[0].phases: must be 1 or 3"),
    ("", "pt = 1e30", "meters[0].pt: must be at most"),
    ("[plausibility]\noverload = 50\n", "", "plausibility.overload: must be between 1 and 10"),
    ("[plausibility]\nvoltage = 5\n", "", "plausibility.voltage: unknown key"),
    ("[plausibility.models.x]\nphases = 4\n", "", "plausibility.models.x.phases: must be 1 or 3"),
])
def test_bad_ratings_are_config_errors_naming_the_key(extra, meter, message):
    with pytest.raises(ConfigError) as caught:
        load(extra, meter)
    assert any(message in p for p in caught.value.problems), caught.value.problems


def test_the_load_curve_leaves_out_implausible_power(tmp_path):
    from meterd.analytics.views import curve_points
    from meterd.clock import CST
    from meterd.storage.sqlite import SqliteStore

    day = datetime(2026, 11, 2, tzinfo=CST)
    with SqliteStore(tmp_path) as store:
        store.write_readings([
            Reading(M, "power.active.total", day + timedelta(hours=1), D("2.5"), "kW"),
            Reading(M, "power.active.total", day + timedelta(hours=1, minutes=5), D("NaN"), "kW", Quality.IMPLAUSIBLE),
            Reading(M, "power.active.total", day + timedelta(hours=2), D("1E+30"), "kW", Quality.IMPLAUSIBLE),
        ])
    points = curve_points(tmp_path, [M], day.date(), timedelta(minutes=15))
    assert [(at.hour, kw, n) for at, kw, n in points] == [(1, D("2.5"), 1)]


def test_the_times_an_operator_reads_are_in_the_sites_zone():
    """The door's log line and the anomaly said '2026-11-02 10:00:00 CST' on every site; a New York
    site reads its own time, with its offset (the rest of meterd's human-facing times)."""
    from zoneinfo import ZoneInfo

    from meterd.collector.door import Door
    from meterd.config.model import MeterConfig

    new_york = ZoneInfo("America/New_York")
    gate = Gate({}, zone=new_york)
    _, found = gate.screen([r("1000"), r("1039.65", 15)])
    [flagged] = found
    assert "since 1000 at 2026-11-01 21:00:00-05:00" in flagged.reason
    assert flagged.describe(new_york).startswith(f"meter {M} {E} = 1039.65 at 2026-11-01 21:15:00-05:00: ")
    assert "at 2026-11-02 10:15:00+08:00" in flagged.describe()  # the default: the meters' zone, CST
    door = Door([MeterConfig(M, "bus1")], zone=new_york)
    assert door.gate.zone is new_york and door.zone is new_york
