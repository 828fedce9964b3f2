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


@pytest.mark.parametrize("value", ["0", "1025", "true", '"64"', "1.5", "-1"])
def test_a_sync_jobs_file_limit_is_a_whole_number_of_mib(value):
    text = BASE + f"""
[[sync.jobs]]
name = "pay"
kind = "import_payments"
folder = "in"
max_file_mb = {value}
"""
    with pytest.raises(ConfigError) as info:
        load(text)
    [problem] = info.value.problems
    assert "sync.jobs[0].max_file_mb: must be an integer 1..1024 (MiB), got " in problem, problem


def test_a_sync_jobs_file_limit_defaults_to_64_mib_and_is_kept():
    job = BASE + """
[[sync.jobs]]
name = "pay"
kind = "import_payments"
folder = "in"
"""
    assert load(job).sync.jobs[0].max_file_mb == 64
    assert load(job + "max_file_mb = 1024\n").sync.jobs[0].max_file_mb == 1024


def test_trip_notice_and_opening_balances():
    p = load(GOOD).prepaid
    assert p.settings.rules.trip_notice == timedelta(hours=24)  # the default
    assert p.accounts[0].opening_balance is None  # no key: the account starts pending
    text = GOOD.replace('command_ttl = "1h"', 'command_ttl = "1h"\ntrip_notice = "36h"').replace(
        'thresholds = { alarm = "30" }', 'thresholds = { alarm = "30" }\nopening_balance = "-12.30"')
    p = load(text).prepaid
    assert p.settings.rules.trip_notice == timedelta(hours=36)
    assert p.accounts[0].opening_balance == Decimal("-12.30") and "prepaid.accounts[0]" in p.accounts[0].opening_ref
    for value, opening in (('"0"', Decimal(0)), ("50", Decimal(50))):
        p = load(GOOD.replace('thresholds = { alarm = "30" }', f"opening_balance = {value}")).prepaid
        assert p.accounts[0].opening_balance == opening
    assert load(GOOD.replace('command_ttl = "1h"', 'trip_notice = "0s"')).prepaid.settings.rules.trip_notice \
        == timedelta(0)


@pytest.mark.parametrize("key, value, message", [
    ("opening_balance", '"1.234"', "prepaid.accounts[0].opening_balance: opening balance \"1.234\" refused: more than two decimals"),
    ("opening_balance", '"lots"', "prepaid.accounts[0].opening_balance: opening balance \"lots\" refused: it is not an amount"),
    ("opening_balance", "12.5", "prepaid.accounts[0].opening_balance: must be an amount in yuan written as a string"),
    ("opening_balance", "true", "prepaid.accounts[0].opening_balance: must be an amount"),
    ("trip_notice", '"-1h"', "prepaid.trip_notice: must be a duration of zero or more"),
    ("trip_notice", '"soon"', "prepaid.trip_notice: must be a duration of zero or more"),
])
def test_trip_notice_and_opening_balance_mistakes_are_named(key, value, message):
    where = 'thresholds = { alarm = "30" }' if key == "opening_balance" else 'command_ttl = "1h"'
    with pytest.raises(ConfigError) as info:
        load(GOOD.replace(where, f"{where}\n{key} = {value}"))
    assert any(message in p for p in info.value.problems), info.value.problems


# --- amounts (issue #14): the limits per payment / adjustment, and thresholds by the amount grammar ---


def test_amount_limits_default_to_a_million_yuan_and_can_be_set():
    assert load(GOOD).prepaid.amounts.max_payment == Decimal(1_000_000)
    assert load(GOOD).prepaid.amounts.max_adjustment == Decimal(1_000_000)
    p = load(GOOD.replace('command_ttl = "1h"', 'command_ttl = "1h"\nmax_payment = "5000"\nmax_adjustment = 200'))
    assert p.prepaid.amounts.max_payment == Decimal(5000) and p.prepaid.amounts.max_adjustment == Decimal(200)


@pytest.mark.parametrize("key, value, message", [
    ("max_payment", '"1e6"', 'prepaid.max_payment: amount "1e6" refused: an exponent'),
    ("max_payment", "1e6", "prepaid.max_payment: must be an amount in yuan written as a string"),
    ("max_payment", '"0"', 'prepaid.max_payment: amount "0" refused: zero'),
    ("max_payment", '"-5"', 'prepaid.max_payment: amount "-5" refused: it takes no sign'),
    ("max_payment", "true", "prepaid.max_payment: must be an amount"),
    ("max_adjustment", '"92233720368547758.07"', "prepaid.max_adjustment: amount \"92233720368547758.07\" refused: "
                                                 "more than the limit of 10000000000 yuan"),
    ("max_adjustment", '"１０"', "prepaid.max_adjustment: amount \"１０\" refused: only ASCII digits"),
])
def test_amount_limit_mistakes_are_named(key, value, message):
    with pytest.raises(ConfigError) as info:
        load(GOOD.replace('command_ttl = "1h"', f'command_ttl = "1h"\n{key} = {value}'))
    assert any(p.startswith("site.toml: ") and message in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("value, message", [
    ('"1e30"', 'prepaid.thresholds.reminder: threshold "1e30" refused: an exponent'),
    ('"99999999999"', "prepaid.thresholds.reminder: threshold \"99999999999\" refused: more than the limit"),
    ('" 50"', "prepaid.thresholds.reminder: threshold \" 50\" refused: it has whitespace"),
    ('"50.001"', "prepaid.thresholds.reminder: threshold \"50.001\" refused: more than two decimals"),
    ("50.5", "prepaid.thresholds.reminder: must be an amount in yuan written as a string"),
    ('"1e30d"', 'prepaid.thresholds.reminder: days "1e30" refused: an exponent'),
    ('"9999d"', 'prepaid.thresholds.reminder: days "9999" refused: more than the limit of 3650'),
])
def test_thresholds_follow_the_amount_grammar(value, message):
    with pytest.raises(ConfigError) as info:
        load(GOOD.replace('thresholds = { reminder = "50",', f"thresholds = {{ reminder = {value},"))
    assert any(message in p for p in info.value.problems), info.value.problems


def test_good_thresholds_still_load():
    p = load(GOOD.replace('thresholds = { reminder = "50",', 'thresholds = { reminder = 60,')).prepaid
    assert p.settings.thresholds.reminder.amount == Decimal(60) and p.settings.thresholds.alarm.days == Decimal(3)
