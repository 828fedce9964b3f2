"""The site's time zone: ``[site] timezone`` (config), and the zone helpers of ``meterd.clock``.

Default: Asia/Shanghai, which is the very CST object the calendar code used before the setting
existed, so a config without ``[site]`` behaves exactly as before."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from meterd.clock import CST, day_bounds, local_date, local_text, zone_name, zone_named
from meterd.config.loader import parse_config
from meterd.errors import ConfigError


def site(extra: str):
    return parse_config(tomllib.loads(f'[store]\ndata_dir = "/srv/meterd"\n{extra}\n'), source="site.toml").site


def test_no_site_section_is_asia_shanghai_which_is_cst_itself():
    s = site("")
    assert s.timezone == "Asia/Shanghai"
    assert s.zone is CST
    assert site('[site]\ntimezone = "Asia/Shanghai"').zone is CST
    assert zone_name(CST) == "Asia/Shanghai"


@pytest.mark.parametrize("name", ["Asia/Urumqi", "Europe/Berlin", "UTC", "America/Sao_Paulo"])
def test_an_iana_name_is_its_zoneinfo(name):
    s = site(f'[site]\ntimezone = "{name}"')
    assert s.zone == ZoneInfo(name)
    assert zone_name(s.zone) == name


@pytest.mark.parametrize(("value", "message"), [
    ('"asia/shanghai"', ("site.timezone: unknown time zone 'asia/shanghai' (an IANA name such as Asia/Shanghai or "
                        'Europe/Berlin) (did you mean "Asia/Shanghai"?)')),
    ('"Europe/Berln"', ('site.timezone: unknown time zone \'Europe/Berln\' (an IANA name such as Asia/Shanghai or '
                       'Europe/Berlin) (did you mean "Europe/Berlin"?)')),
    ('"+08:00"', "site.timezone: unknown time zone '+08:00'"),
    ('"localtime"', "site.timezone: 'localtime' is the host's zone, not a site's"),
    ('"../../etc/passwd"', "site.timezone: unknown time zone"),
    ('""', "site.timezone: '' is not a time zone name"),
    ('" Asia/Shanghai"', "site.timezone: ' Asia/Shanghai' is not a time zone name"),
    (f'"{"A" * 100_000}"', "site.timezone: 'AAAA"),
    ("8", 'site.timezone: must be an IANA time zone name such as "Asia/Shanghai", got 8'),
])
def test_a_bad_zone_is_a_config_error_naming_the_key(value, message):
    with pytest.raises(ConfigError) as caught:
        site(f"[site]\ntimezone = {value}")
    assert f"site.toml: {message}" in str(caught.value)
    assert len(str(caught.value)) < 500  # an absurd name is not echoed whole


def test_an_unknown_key_in_site_is_named():
    with pytest.raises(ConfigError, match=r"site\.toml: site\.time_zone: unknown key \(did you mean \"timezone\"\?\)"):
        site('[site]\ntime_zone = "Asia/Shanghai"')


def test_days_cut_at_the_zones_midnight_and_last_23_or_25_hours_across_daylight_saving():
    berlin = ZoneInfo("Europe/Berlin")
    start, end = day_bounds(date(2026, 3, 29), berlin)  # clocks go forward at 02:00
    assert start.astimezone(UTC) == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert end - start == timedelta(hours=23)
    start, end = day_bounds(date(2026, 10, 25), berlin)  # and back at 03:00
    assert end - start == timedelta(hours=25)
    start, end = day_bounds(date(2026, 11, 23))  # default: CST
    assert (start.astimezone(UTC), end - start) == (datetime(2026, 11, 22, 16, 0, tzinfo=UTC), timedelta(days=1))
    urumqi = ZoneInfo("Asia/Urumqi")  # UTC+6: 20:00 UTC is the next day there, not yet in Berlin
    at = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
    assert (local_date(at, urumqi), local_date(at, berlin), local_date(at)) == (
        date(2026, 11, 23), date(2026, 11, 22), date(2026, 11, 23))


def test_local_text_is_the_wall_time_with_its_offset():
    at = datetime(2026, 11, 22, 20, 0, 5, 123456, tzinfo=UTC)
    assert local_text(at) == "2026-11-23 04:00:05+08:00"
    assert local_text(at, zone_named("Asia/Urumqi")) == "2026-11-23 02:00:05+06:00"
    assert local_text(at, zone_named("Europe/Berlin"), timespec="minutes") == "2026-11-22 21:00+01:00"
    with pytest.raises(ValueError, match="has no zone"):
        local_text(datetime(2026, 11, 22, 20, 0))
