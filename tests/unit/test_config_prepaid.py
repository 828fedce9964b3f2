"""The [prepaid] section: a good one becomes typed objects; every mistake is named with file and key,
all of them in one run."""

from __future__ import annotations

import tomllib
from datetime import date, time, timedelta
from decimal import Decimal

import pytest

from meterd.config.loader import parse_config
from meterd.control.model import CommandKind, Rate
from meterd.control.tariff import TariffKind
from meterd.errors import ConfigError

BASE = """
[store]
data_dir = "d"
[channels.bus1]
tcp = { host = "127.0.0.1", port = 9 }
[[meters]]
address = "000000000001"
channel = "bus1"
ct = 50
pt = 2
[[meters]]
address = "000000000002"
channel = "bus1"
[[polls]]
name = "p"
interval = 60
quantities = ["energy.active.import.total"]
"""

GOOD = BASE + """
[prepaid]
dry_run = true
quiet_hours = ["22:00-07:00"]
no_trip_weekends = true
holidays = [2026-10-01, "2026-10-02"]
max_trips_per_area_hour = 5
reclose = "direct"
command_ttl = "1h"
thresholds = { reminder = "50", alarm = "3d", trip = "-10", reclose = "5" }

[[prepaid.tariffs]]
name = "tou"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "tou"
rates = { sharp = "1.2", peak = "0.95", flat = "0.62", valley = "0.31" }
[[prepaid.tariffs.versions]]
effective = 2026-07-01
kind = "flat"
price = "0.6"
fixed_monthly = "5"

[[prepaid.accounts]]
account = "A1"
area = "TA1"
tariff = "tou"
meters = ["1"]
thresholds = { alarm = "30" }

[[prepaid.power_limits]]
meter = "000000000001"
limit_kw = "80"
hold = "5m"
action = "trip"
windows = [{ start = "08:00", end = "11:00", limit_kw = "60" }]

[[prepaid.notify]]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
template = '{"text": "$message"}'
kinds = ["trip"]
"""


def load(text: str):
    return parse_config(tomllib.loads(text), source="site.toml")


def test_a_good_prepaid_section():
    p = load(GOOD).prepaid
    rules = p.settings.rules
    assert rules.dry_run and rules.no_trip_weekends and rules.max_trips_per_area_hour == 5
    assert rules.quiet_hours == ((time(22), time(7)),) and date(2026, 10, 2) in rules.holidays
    assert rules.reclose_kind is CommandKind.RECLOSE and p.settings.command_ttl == timedelta(hours=1)
    assert p.settings.thresholds.alarm.days == Decimal(3) and p.settings.thresholds.trip.amount == Decimal(-10)
    tariff = p.tariffs["tou"]
    assert [v.kind for v in tariff.versions] == [TariffKind.TOU, TariffKind.FLAT]
    assert tariff.versions[0].rate_prices[Rate.PEAK] == Decimal("0.95")
    [account] = p.accounts
    assert account.meters == {"000000000001": Decimal(100)}  # CT x PT from the meter
    assert account.thresholds == {"alarm": "30"}
    [limit] = p.power_limits
    assert limit.account == "A1" and limit.action is CommandKind.TRIP and limit.windows[0].limit_kw == Decimal(60)
    assert p.notify[0].kinds == frozenset({"trip"})


def test_every_mistake_is_named_in_one_run():
    bad = BASE + """
[prepaid]
password = "02123456"
quiet_hours = ["25:00-07:00"]
reclose = "sometimes"
thresholds = { reminder = "5", alarm = "20", trip = "0", reclose = "0" }
surprise = 1

[[prepaid.tariffs]]
name = "t"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "tiered"
tiers = [{ upto = "100", price = "0.5" }, { upto = "50", price = "0.6" }]

[[prepaid.tariffs]]
name = "flat"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "flat"
price = 0.5

[[prepaid.accounts]]
account = "A1"
tariff = "nope"
meters = ["000000000077"]

[[prepaid.accounts]]
account = "A2"
tariff = "flat"
meters = ["000000000002"]
thresholds = { alarm = "lots" }

[[prepaid.power_limits]]
meter = "000000000002"
action = "explode"

[[prepaid.notify]]
kind = "webhook"
url = "ftp://x"

[[prepaid.notify]]
kind = "webhook"
url = "http://x"
template = "$phone"
"""
    with pytest.raises(ConfigError) as info:
        load(bad)
    text = "\n".join(info.value.problems)
    for expected in ("prepaid.password: secrets are not written in the config",
                     "prepaid.quiet_hours[0]", "prepaid.reclose", "prepaid.surprise: unknown key",
                     "prepaid.thresholds", "prepaid.tariffs[0]", "prepaid.accounts[0].tariff: unknown tariff 'nope'",
                     "prepaid.accounts[0].meters[0]: meter 000000000077 is not in [[meters]]",
                     "prepaid.accounts[1].thresholds.alarm", "prepaid.power_limits[0].action",
                     "prepaid.power_limits[0]: needs limit_kw", "prepaid.notify[0].url", "prepaid.notify[1].template"):
        assert expected in text, (expected, text)
    assert all(p.startswith("site.toml: ") for p in info.value.problems)


def test_a_meter_can_belong_to_one_account_only():
    text = GOOD + """
[[prepaid.accounts]]
account = "A2"
tariff = "tou"
meters = ["000000000001"]
"""
    with pytest.raises(ConfigError, match="already belongs to account A1"):
        load(text)


TOPOLOGY = BASE + """
[[topology.units]]
name = "TA1"
loss_threshold = "8"

[[topology.points]]
meter = "1"
unit = "TA1"
role = "supply"
[[topology.points]]
meter = "000000000002"
unit = "TA1"
industry = "residential"
groups = ["north"]

[analytics]
check_every = "30s"
voltage_high_pct = "10"
generators = ["000000000002"]
outage_min_meters = 5
"""


def test_topology_and_analytics_sections():
    a = load(TOPOLOGY).analytics
    assert set(a.topology.units) == {"TA1"} and a.topology.units["TA1"].loss_threshold == Decimal(8)
    assert [p.role.value for p in a.topology.points_of("TA1")] == ["supply", "sales"]
    assert a.limits.voltage_high_pct == Decimal(10) and a.check_every == 30.0
    assert a.generators == frozenset({"000000000002"}) and a.outage_min_meters == 5


def test_topology_and_sync_mistakes_are_named():
    bad = BASE + """
[[topology.units]]
name = "TA1"
kind = "village"
[[topology.units]]
name = "TA2"
parent = "nowhere"
[[topology.points]]
meter = "000000000009"
unit = "TA9"
role = "boss"

[[sync.jobs]]
name = "pay"
kind = "import_everything"
folder = "in"
url = "http://x"
token = "secret"
schedule = "every tuesday"
"""
    with pytest.raises(ConfigError) as info:
        load(bad)
    text = "\n".join(info.value.problems)
    for expected in ("topology.units[0].kind", "parent 'nowhere' is not a unit", "topology.points[0].meter",
                     "topology.points[0].unit: unknown unit 'TA9'", "topology.points[0].role",
                     "sync.jobs[0].kind", "needs exactly one of folder", "sync.jobs[0].token: secrets",
                     "sync.jobs[0].schedule"):
        assert expected in text, (expected, text)
