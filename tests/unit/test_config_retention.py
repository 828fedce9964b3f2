"""``[store] keep_readings``, ``keep_attempts`` and ``prune_at``: defaults, "forever", and errors
that name the key."""

from __future__ import annotations

import tomllib
from datetime import time

import pytest

from meterd.config.loader import parse_config
from meterd.errors import ConfigError


def store(extra: str):
    return parse_config(tomllib.loads(f'[store]\ndata_dir = "/srv/meterd"\n{extra}\n'), source="site.toml").store


def test_defaults_keep_raw_readings_400_days_and_attempts_90_days():
    s = store("")
    assert (s.keep_readings, s.keep_attempts, s.prune_at) == (400 * 86400, 90 * 86400, time(3, 30))


@pytest.mark.parametrize("forever", ['"forever"', '"Forever "', "0", '"0"', "0.0"])
def test_forever_or_zero_keeps_everything(forever):
    s = store(f"keep_readings = {forever}\nkeep_attempts = {forever}")
    assert (s.keep_readings, s.keep_attempts) == (None, None)


def test_durations_and_times_of_day():
    s = store('keep_readings = "730d"\nkeep_attempts = "36h"\nprune_at = "4:05"')
    assert (s.keep_readings, s.keep_attempts, s.prune_at) == (730 * 86400, 36 * 3600, time(4, 5))
    assert store("prune_at = 02:15:00").prune_at == time(2, 15)  # a TOML local time


@pytest.mark.parametrize(("extra", "message"), [
    ('keep_readings = "1h"', ('store.keep_readings: must be at least 2d (the re-read tasks look back to yesterday\'s '
                             'readings), or "forever" to keep everything, got "1h"')),
    ('keep_attempts = "12h"', "store.keep_attempts: must be at least 1d"),
    ('keep_attempts = "-5d"', 'store.keep_attempts: must be a duration ("400d", "90d", "12h"), or "forever" (or 0)'),
    ("keep_readings = true", "store.keep_readings: must be a duration"),
    ('keep_readings = "400 days"', "store.keep_readings: must be a duration"),
    ('keep_readings = "never"', "store.keep_readings: must be a duration"),
    ('prune_at = "25:00"', ('store.prune_at: must be a time of day in the site\'s time zone, "HH:MM" (e.g. "03:30"), '
                           'got "25:00"')),
    ("prune_at = 3", "store.prune_at: must be a time of day"),
    ('keep_reading = "30d"', "store.keep_reading"),  # a typo is an unknown key
])
def test_errors_name_the_key(extra, message):
    with pytest.raises(ConfigError) as caught:
        store(extra)
    assert message in str(caught.value)
    assert "site.toml" in str(caught.value)


def test_every_retention_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        store('keep_readings = "1s"\nkeep_attempts = "x"\nprune_at = "noon"')
    text = str(caught.value)
    assert all(key in text for key in ("store.keep_readings", "store.keep_attempts", "store.prune_at"))
