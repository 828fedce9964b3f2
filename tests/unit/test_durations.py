"""The one duration grammar (meterd.config.durations): config values, CLI options, API parameters."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from meterd.cli.common import parse_time
from meterd.config.durations import MAX_SECONDS, parse_duration, parse_step
from meterd.config.loader import parse_config
from meterd.errors import ConfigError


@pytest.mark.parametrize(("value", "seconds"), [
    (900, 900.0), (1.5, 1.5), ("900", 900.0), (" 2.5 ", 2.5), ("250ms", 0.25), ("30s", 30.0), ("15m", 900.0),
    ("1h", 3600.0), ("1h30m", 5400.0), ("1H 30M", 5400.0), ("1d", 86400.0), (".5h", 1800.0), ("0s", 0.0),
    (-5, -5.0),  # a TOML number keeps its sign: the caller refuses it with the key's name
])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    True, None, [], "", "m", "-5m", "+5m", "1e3s", "15 minutes", "5 m s", "1h-30m", "nan", "inf", math.nan, math.inf,
    10**400, "1" * 400 + "h", "9999999999999h", MAX_SECONDS * 2,
])
def test_not_durations(value: object) -> None:
    assert parse_duration(value) is None


def test_a_step_in_plain_seconds_is_a_step() -> None:
    """``--step 900`` and ``?step=900`` were refused with "use e.g. 15m, 1h, 900"."""
    assert parse_step("900") == timedelta(minutes=15)


def test_a_step_too_long_for_a_timedelta_is_a_config_error() -> None:
    """It used to raise OverflowError (a traceback from the CLI, a 500 from the API)."""
    with pytest.raises(ConfigError, match="--step '1111"):
        parse_step("1" * 30 + "h")


def test_a_config_duration_too_long_for_a_timedelta_names_its_key() -> None:
    """``command_ttl = "9999999999999h"`` used to stop the loader with OverflowError."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"store": {"data_dir": "d"}, "prepaid": {"command_ttl": "9999999999999h"}})
    assert len(caught.value.problems) == 1 and "prepaid.command_ttl: must be a positive duration" in str(caught.value)


def test_config_and_cli_share_the_grammar() -> None:
    config = parse_config({"store": {"data_dir": "d"}, "prepaid": {"command_ttl": "1d"}})
    assert config.prepaid is not None and config.prepaid.settings.command_ttl == timedelta(days=1)
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert parse_time("-1h30m", now) == now - timedelta(minutes=90)
    assert parse_time("-2h", now) == now - timedelta(hours=2)
    with pytest.raises(ValueError, match="is not a time"):
        parse_time("-5 minutes", now)


@pytest.mark.parametrize(("text", "expected"), [
    ("2h", datetime(2026, 11, 23, 8, 0, tzinfo=UTC)),  # issue 18: the README's form without the sign
    ("-10m", datetime(2026, 11, 23, 9, 50, tzinfo=UTC)),
    ("today", datetime(2026, 11, 22, 16, 0, tzinfo=UTC)),  # local (CST) midnight
    ("yesterday", datetime(2026, 11, 21, 16, 0, tzinfo=UTC)),
    ("2026-11-20", datetime(2026, 11, 19, 16, 0, tzinfo=UTC)),
    ("20261120", datetime(2026, 11, 19, 16, 0, tzinfo=UTC)),  # a bare number is a date, not seconds
    ("2026-11-20T10:00", datetime(2026, 11, 20, 2, 0, tzinfo=UTC)),  # no offset: site local time
    ("2026-11-20 10:00", datetime(2026, 11, 20, 2, 0, tzinfo=UTC)),
    ("2026-11-20T10:00Z", datetime(2026, 11, 20, 10, 0, tzinfo=UTC)),
    ("now", datetime(2026, 11, 23, 10, 0, tzinfo=UTC)),
])
def test_times_an_operator_types(text, expected):
    assert parse_time(text, datetime(2026, 11, 23, 10, 0, tzinfo=UTC)) == expected


@pytest.mark.parametrize("text", ["", "soon", "-x", "2026-13-01", "99999999d", "1e9d"])
def test_times_that_are_not_times_say_so(text):
    with pytest.raises(ValueError, match="is not a time"):
        parse_time(text, datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
