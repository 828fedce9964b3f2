"""Daily figures cut at the site's midnight (``[site] timezone``), part by part: collection
quality on SQLite and PostgreSQL across a daylight-saving day, the API's overview, curve and quality
days through a real server, retention's days and prune time, anomaly texts, billing export days and
file names.  A config without ``[site]`` keeps China Standard Time (``meterd.clock.CST`` itself)."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from test_api import ROLES, Site, serve

from meterd.analytics.anomalies import detect
from meterd.api import TokenStore, create_app
from meterd.billing_link.jobs import JobKind, JobSpec, run_job
from meterd.clock import CST
from meterd.config.loader import parse_config
from meterd.control.state import AccountSpec, ControlStore
from meterd.readings import Reading
from meterd.storage import open_store
from meterd.storage.quality import QualityStore
from meterd.storage.retention import Policy
from meterd.storage.sqlite import Attempt, MeterRecord, SqliteStore

BERLIN = ZoneInfo("Europe/Berlin")
SAO_PAULO = ZoneInfo("America/Sao_Paulo")
A1 = "000000000001"


def berlin(day: int, hour: int, minute: int = 0) -> datetime:
    """A Berlin wall time in March 2026 (clocks go forward at 02:00 on the 29th) as UTC."""
    return datetime(2026, 3, day, hour, minute, tzinfo=BERLIN).astimezone(UTC)


def test_quality_days_are_the_sites_on_both_backends_across_daylight_saving(state_where):
    # 23:30 and 00:30 either side of the midnights that start and end the 29th, a 23-hour day
    times = [berlin(28, 23, 30), berlin(29, 0, 30), berlin(29, 23, 30), berlin(30, 0, 30)]
    with open_store(state_where) as store:
        store.upsert_meters([MeterRecord(A1, "bus1", "dlt645-2007", Decimal(1), Decimal(1))])
        store.record_attempts([Attempt(A1, "bus1", "00010000", t, "ok", 0.1) for t in times])
        with QualityStore(store, zone=BERLIN) as quality:
            counts = {d: quality.report(date(2026, 3, d), now=berlin(31, 12)).total.attempts for d in (28, 29, 30)}
            assert counts == {28: 1, 29: 2, 30: 1}
            report = quality.report(date(2026, 3, 29), now=berlin(31, 12))
            assert report.end - report.start == timedelta(hours=23)
            assert (report.start.isoformat(), report.end.isoformat()) == (
                "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
            assert report.whole_day
            assert quality.rollup(date(2026, 3, 29)) == 2  # recomputed from the log: the same day
        with QualityStore(store) as cst:  # the default zone: Berlin's 23:30 on the 28th is the 29th in CST
            assert cst.report(date(2026, 3, 29), now=berlin(31, 12), refresh=False).start.utcoffset() == timedelta(
                hours=8)


def test_retention_days_and_prune_time_are_the_sites():
    policy = Policy(None, timedelta(days=2), time(3, 30), SAO_PAULO)
    now = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # 22:00 on the 22nd in Sao Paulo, 09:00 on the 23rd in CST
    assert policy.attempts_cut(now) == datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # the 20th's midnight there
    assert policy.next_run(now) == datetime(2026, 11, 23, 6, 30, tzinfo=UTC)  # 03:30 on the 23rd there
    cst = Policy(None, timedelta(days=2), time(3, 30))
    assert cst.attempts_cut(now) == datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
    assert cst.next_run(now) == datetime(2026, 11, 23, 19, 30, tzinfo=UTC)


def test_anomaly_texts_name_site_time():
    since = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    reading = Reading(A1, "voltage.a", since, Decimal(300), "V")
    [finding] = detect(A1, [reading], since + timedelta(hours=30), zone=SAO_PAULO)
    assert finding.detail == "no data for 30.0 h (since 2026-11-22 09:00:00-03:00)"
    [finding] = detect(A1, [reading], since + timedelta(hours=30))
    assert finding.detail == "no data for 30.0 h (since 2026-11-22 20:00:00+08:00)"


def test_reading_day_export_and_balance_file_follow_the_sites_day(tmp_path):
    now = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # the 22nd in Sao Paulo, the 23rd in Beijing
    with ControlStore(tmp_path) as control:
        control.upsert_accounts([AccountSpec("A1", "res", {A1: Decimal(1)}, opening_balance=Decimal(0))],
                                actor="test", now=now)
    folder = tmp_path / "billing"
    spec = JobSpec(name="reads", kind=JobKind.EXPORT_READINGS, folder=folder, format="json")
    got = run_job(spec, where=tmp_path, now=now, register_of=lambda meter, day: Decimal(5), zone=SAO_PAULO)
    assert got.files == ["reads-20261122.json"]
    spec = JobSpec(name="bal", kind=JobKind.EXPORT_BALANCES, folder=folder, format="json")
    assert run_job(spec, where=tmp_path, now=now, zone=SAO_PAULO).files == ["bal-20261122-220000.json"]
    assert run_job(spec, where=tmp_path, now=now).files == ["bal-20261123-090000.json"]  # default: CST
    assert json.loads((folder / "outbox" / "reads-20261122.json").read_text())["day"] == "2026-11-22"


SITE = """
[site]
timezone = "America/Sao_Paulo"
[store]
data_dir = "{data}"
[channels.bus1]
tcp = {{ host = "127.0.0.1", port = 9 }}
[[meters]]
address = "000000000001"
channel = "bus1"
[[polls]]
name = "p"
interval = 60
quantities = ["energy.active.import.total"]
"""


@pytest.fixture
def api(tmp_path):
    """The API of a site in Sao Paulo at 22:00 on the 22nd there (the 23rd, 09:00, in Beijing)."""
    now = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    config = parse_config(tomllib.loads(SITE.format(data=tmp_path)), source="sp.toml")
    with SqliteStore(tmp_path) as store:
        store.upsert_meters([MeterRecord(A1, "bus1", "dlt645-2007", Decimal(1), Decimal(1))])
        evening = datetime(2026, 11, 22, 21, 5, tzinfo=SAO_PAULO).astimezone(UTC)
        store.write_readings([Reading(A1, "power.active.total", evening, Decimal(2), "kW")])
        store.record_attempts([Attempt(A1, "bus1", "00010000", evening, "ok", 0.1)])
    with TokenStore(tmp_path) as tokens:
        secrets = {role: tokens.create(f"{role}-user", role, now)[1] for role in ROLES}
    with serve(create_app(tmp_path, clock=lambda: now, config=config)) as base:
        yield Site(tmp_path, base, secrets)


def test_api_days_are_the_sites_and_the_overview_names_its_zone(api):
    _, _, overview = api.call("GET", "/api/v1/overview", role="viewer")
    assert (overview["day"], overview["timezone"], overview["utc_offset"]) == ("2026-11-22", "America/Sao_Paulo",
                                                                               "-03:00")
    assert overview["at"] == "2026-11-23T01:00:00+00:00"  # instants stay UTC in JSON, with the offset
    assert overview["collection"]["attempts"] == 1
    _, _, curve = api.call("GET", "/api/v1/curve?meter=1&step=1h", role="viewer")
    assert curve["day"] == "2026-11-22"
    assert [(p["at"], p["kw"]) for p in curve["points"]] == [("2026-11-22T21:00:00-03:00", "2")]
    _, _, quality = api.call("GET", "/api/v1/quality", role="viewer")
    assert quality["day"] == "2026-11-22" and quality["start"] == "2026-11-22T00:00:00-03:00"


def test_a_config_without_site_is_china_standard_time(tmp_path):
    config = parse_config(tomllib.loads('[store]\ndata_dir = "d"\n'))
    assert config.site.zone is CST
