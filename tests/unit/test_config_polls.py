"""Polls by meter address (``polls[].meters``) and the frozen quantities in polls (issue 18)."""

from __future__ import annotations

import tomllib

import pytest

from meterd.collector.daemon import compile_plan
from meterd.config.loader import parse_config
from meterd.errors import ConfigError

SITE = """
[store]
data_dir = "data"

[channels.bus1]
serial = { device = "/dev/ttyUSB0" }

[channels.gw1]
tcp = { host = "127.0.0.1", port = 5020 }

[[meters]]
address = "1"
channel = "bus1"
group = "residential"

[[meters]]
address = "2"
channel = "bus1"
group = "residential"

[[meters]]
address = "3"
channel = "bus1"
protocol = "dlt645-1997"
group = "legacy"

[[meters]]
address = "000000002001"
channel = "gw1"
protocol = "modbus"
unit = 1
model = "eastron-sdm630"
group = "large"
"""


def load(poll: str) -> object:
    return parse_config(tomllib.loads(SITE + "\n[[polls]]\n" + poll), source="site.toml")


def problems(poll: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(poll)
    return caught.value.problems


def selected(config, name: str = "p") -> list[str]:
    (poll,) = [p for p in config.polls if p.name == name]
    return [m.address for m in config.meters_for(poll)]


def test_a_poll_reads_the_meters_it_lists_short_forms_too():
    config = load('name = "p"\ninterval = "15m"\nmeters = ["2", "000000000003"]\nquantities = ["energy.active.import.total"]')
    assert config.polls[0].meters == ("000000000002", "000000000003")
    assert selected(config) == ["000000000002", "000000000003"]


def test_listed_meters_add_to_the_groups_meters():
    config = load('name = "p"\ninterval = "15m"\ngroups = ["residential"]\nmeters = ["3"]\n'
                  'quantities = ["energy.active.import.total"]')
    assert selected(config) == ["000000000001", "000000000002", "000000000003"]
    (bus,) = [p for p in compile_plan(config) if p.channel.name == "bus1"]
    assert [t.address for t, _ in bus.polls[0].meters] == ["000000000001", "000000000002", "000000000003"]


def test_a_poll_naming_neither_groups_nor_meters_reads_every_meter():
    config = load('name = "p"\ninterval = "15m"\nquantities = ["energy.active.import.total"]')
    assert len(selected(config)) == 4


def test_every_wrong_entry_of_meters_is_named_at_once():
    assert problems('name = "p"\ninterval = "15m"\nmeters = ["1", "1", "99", "x", true, "999999999999"]\n'
                    'quantities = ["energy.active.import.total"]') == [
        "site.toml: polls[0].meters[1]: meter 000000000001 is listed twice",
        "site.toml: polls[0].meters[2]: no meter 000000000099 in [[meters]]",
        'site.toml: polls[0].meters[3]: must be a meter address of 1 to 12 decimal digits, got "x"',
        "site.toml: polls[0].meters[4]: must be a meter address of 1 to 12 decimal digits, got true",
        "site.toml: polls[0].meters[5]: 999999999999 is the broadcast address, not a meter",
    ]


def test_meters_must_be_a_list():
    assert problems('name = "p"\ninterval = "15m"\nmeters = "1"\nquantities = ["voltage.a"]') == [
        'site.toml: polls[0].meters: must be a list of meter addresses such as ["000000000001", "2"], got "1"']


def test_a_meter_with_other_problems_is_not_also_unknown_to_the_poll():
    text = SITE.replace('address = "2"\nchannel = "bus1"', 'address = "2"\nchannel = "bus1"\nct = -1')
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text + '[[polls]]\nname = "p"\ninterval = "1m"\nmeters = ["2"]\nitems = ["00010000"]'),
                     source="site.toml")
    assert caught.value.problems == ['site.toml: meters[1].ct: must be a positive number, got -1']


def test_frozen_quantities_are_read_from_the_last_freeze():
    """The README's frozen.daily.energy.active.import.total was "unknown quantity" in a poll: the
    quantity index held present values only."""
    config = load('name = "p"\ninterval = "1h"\nmeters = ["1"]\nquantities = ["frozen.daily.energy.active.import.total", '
                  '"frozen.daily.energy.active.import.rate1", "frozen.hourly.energy.active.import.total", '
                  '"energy.active.import.total"]')
    (bus,) = [p for p in compile_plan(config) if p.channel.name == "bus1"]
    ((meter, reads),) = bus.polls[0].meters
    assert meter.driver.item_labels(reads) == ["05060101", "05040101", "00010000"]
    assert reads.keep[0x05060101] == {"frozen.daily.energy.active.import.total", "frozen.daily.energy.active.import.rate1"}


@pytest.mark.parametrize("quantity", ["frozen.daily.time", "frozen.daily.energy.active.export.rate4",
                                      "frozen.daily.energy.reactive.q1.total", "frozen.hourly.energy.active.export.total"])
def test_each_kind_of_frozen_quantity_is_accepted(quantity):
    load(f'name = "p"\ninterval = "1h"\ngroups = ["residential"]\nquantities = ["{quantity}"]')


def test_a_meter_without_freezes_is_named_when_a_poll_asks_it_for_one():
    assert problems('name = "p"\ninterval = "1h"\nmeters = ["3", "2001"]\n'
                    'quantities = ["frozen.daily.energy.active.import.total"]') == [
        ("site.toml: polls[0].quantities: meters[2] (000000000003, dlt645-1997) has no identifier for "
        "frozen.daily.energy.active.import.total"),
        ("site.toml: polls[0].quantities: meters[3] (000000002001, modbus model eastron-sdm630) has no register for "
        "frozen.daily.energy.active.import.total"),
    ]


def test_frozen_quantities_in_a_task():
    config = parse_config(tomllib.loads(SITE + '[[tasks]]\nname = "day"\nkind = "daily_frozen"\ngroups = ["residential"]\n'
                                               'quantities = ["frozen.daily.energy.active.import.total"]'))
    assert config.tasks[0].quantities == ("frozen.daily.energy.active.import.total",)


def test_an_unknown_key_in_a_tariff_tier_is_named():
    """Tier, schedule and power-limit window entries were not checked for unknown keys: a typo
    ``prise`` was silently ignored (and the price reported missing without a word about why)."""
    text = SITE + """
[prepaid]
dry_run = true
[[prepaid.tariffs]]
name = "t"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "tiered"
tier_period = "year"
tiers = [{ upto = "2160", price = "0.4883" }, { prise = "0.7883", price = "0.7883" }]
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), source="site.toml")
    assert caught.value.problems == [
        'site.toml: prepaid.tariffs[0].versions[0].tiers[1].prise: unknown key (did you mean "price"?)']
