"""The reports as an operator runs them: line loss (table, JSON, CSV) computed from the daily
registers in the state database, anomalies, outages, energy statistics and a load curve; bad
periods and unknown areas refused."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterd.analytics.anomalies import AnomalyStore, Finding, Kind, Severity
from meterd.analytics.energy import DailyRegisterStore
from meterd.analytics.outages import OutageFinding, OutageStore
from meterd.readings import Quality, Reading
from meterd.storage.sqlite import SqliteStore
from report_site import cst, daily_register, district_site

SITE = district_site({"TA1": {"loss_threshold": "8"}, "TA2": {}})
DAY = cst(2026, 11, 20)


def frozen(meter: int, day_offset: int, kwh: str, quality: Quality = Quality.GOOD) -> Reading:
    return daily_register(meter, DAY.date() + timedelta(days=day_offset), kwh, quality)


@pytest.fixture
def site(tmp_path):
    (tmp_path / "site.toml").write_text(SITE)
    data = tmp_path / "data"
    data.mkdir()
    with DailyRegisterStore(data) as store:
        store.record([
            # TA1: supply 1000 -> 1100 (100); sales 2: 40, sales 3: 25 x 2 = 50 -> loss 10 (10 %, over 8 %)
            frozen(1, 0, "1000"), frozen(1, 1, "1100"),
            frozen(2, 0, "500"), frozen(2, 1, "540"),
            frozen(3, 0, "200"), frozen(3, 1, "225"),
            # TA2: supply 300 -> 350 (50); sales meter 5 has no value for the 21st: missing
            frozen(4, 0, "300"), frozen(4, 1, "350"), frozen(5, 0, "10"),
        ])
    return "site.toml"


def test_line_loss_table_json_and_csv(run_meterd, site, tmp_path):
    p = run_meterd("lineloss", "--period", "2026-11-20", "-c", site, "--json")
    assert p.returncode == 0, p.stderr
    reports = {r["unit"]: r for r in json.loads(p.stdout)}
    ta1, ta2 = reports["TA1"], reports["TA2"]
    assert (ta1["supply"], ta1["sales"], ta1["loss"], ta1["rate"]) == ("100", "90", "10", "10.00")
    assert "over_threshold" in ta1["flags"] and ta1["missing"] == []
    assert ta2["missing"] == ["000000000005"] and "incomplete" in ta2["flags"]
    p = run_meterd("lineloss", "--period", "2026-11-20", "-c", site)
    assert "TA1" in p.stdout and "missing 000000000005" in p.stdout
    p = run_meterd("lineloss", "--period", "2026-11-20", "-c", site, "--csv", "-")
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [r["unit"] for r in rows] == ["TA1", "TA2"] and rows[0]["rate"] == "10.00"
    p = run_meterd("lineloss", "--period", "2026-11-20", "--area", "TA2", "-c", site, "--csv", "loss.csv")
    assert p.returncode == 0 and (tmp_path / "loss.csv").read_text().count("\n") == 2


@pytest.mark.parametrize("args, message", [
    (("lineloss", "--period", "2026-13"), "--period"),
    (("lineloss", "--period", "2026-11-20..2026-11-01"), "before the start"),
    (("lineloss", "--area", "NOPE"), "unknown area/line 'NOPE'"),
    (("stats", "curve"), "exactly one of"),
])
def test_bad_report_arguments_are_refused(run_meterd, site, args, message):
    p = run_meterd(*args, "-c", site)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_energy_statistics_by_industry(run_meterd, site):
    p = run_meterd("stats", "energy", "--by", "industry", "--period", "2026-11-20", "-c", site, "--json")
    assert p.returncode == 0, p.stderr
    got = {r["industry"]: r["kwh"] for r in json.loads(p.stdout)}
    assert got == {"residential": "40", "commercial": "50"}


def test_load_curve_of_an_area(run_meterd, site, tmp_path):
    with SqliteStore(tmp_path / "data") as store:
        store.write_readings([Reading(f"{m:012d}", "power.active.total",
                                      (DAY + timedelta(minutes=5 + 15 * k)).astimezone(timezone.utc),
                                      Decimal(m), "kW") for m in (2, 3) for k in range(4)])
    p = run_meterd("stats", "curve", "--unit", "TA1", "--period", "2026-11-20", "--step", "15m", "-c", site, "--json")
    assert p.returncode == 0, p.stderr
    curve = json.loads(p.stdout)
    assert [(c["kw"], c["meters"]) for c in curve[:4]] == [("5", 2)] * 4


def test_anomalies_and_outages_are_listed(run_meterd, site, tmp_path):
    now = datetime(2026, 11, 21, 2, 0, tzinfo=timezone.utc)
    with AnomalyStore(tmp_path / "data") as store:
        store.update([Finding("000000000002", Kind.VOLTAGE, Severity.WARNING, now, "Ua 251.0 V > 235.4 V", ())],
                     [], now)
    with OutageStore(tmp_path / "data") as store:
        store.update([OutageFinding("TA1", now, ("000000000001", "000000000002"), Decimal("0.6667"))], now,
                     lambda m: {"000000000002": "A2"}.get(m))
    p = run_meterd("anomalies", "-c", site, "--json")
    [event] = json.loads(p.stdout)
    assert event["kind"] == "voltage_out_of_limits" and event["closed"] is None
    p = run_meterd("outages", "--open", "-c", site, "--json")
    [outage] = json.loads(p.stdout)
    assert outage["unit"] == "TA1" and outage["accounts"] == ["A2"]
    p = run_meterd("outages", "-c", site)
    assert "TA1" in p.stdout and "ongoing" in p.stdout
