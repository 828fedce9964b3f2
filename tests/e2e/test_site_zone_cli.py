"""One time zone (issue 18): a site whose ``[site] timezone`` is not Beijing time.

The operator's commands run as processes against a small store: every timestamp they print --
readings, ledger, commands, account, quality, anomalies, outages, the load curve, sync status and
quarantine, tokens, backup and restore, the daemon's stop summary and its log lines -- is the
site's wall time with the site's offset (no bare time, no ``Z``, no UTC, no Beijing time); and
the days they report cut at the site's midnight: an attempt and a reading five minutes either
side of it fall on two days there, where both would be one day in Beijing time.

Two zones: Asia/Urumqi (UTC+6) and America/Sao_Paulo (UTC-3, west of Greenwich); neither keeps
daylight saving now, so the offset printed is the same whenever the test runs.  And a config
without ``[site]``: Asia/Shanghai (UTC+8), as before the setting existed -- there the walk catches
what printed UTC before (the ledger cut the zone off; anomalies, token list and sync status printed
UTC times).

The commands are ``meterd`` processes forked from one that has imported the package
(tests/cliserver.py): each is a process of its own, without a second of imports each.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

import cliserver
from meterd.analytics.anomalies import AnomalyStore, Finding, Kind, Severity
from meterd.analytics.outages import OutageFinding, OutageStore
from meterd.control.state import ControlStore
from meterd.readings import Reading
from meterd.storage.sqlite import Attempt, SqliteStore
from sync_site import payments_inbox, sync_site

DAY = date(2026, 11, 20)  # the site's day the data straddles the start of
METER = "000000000001"

TOPOLOGY = """
[[topology.units]]
name = "TA1"
[[topology.points]]
meter = "1"
unit = "TA1"
role = "supply"
[[topology.points]]
meter = "2"
unit = "TA1"
role = "sales"
"""

# A date and a time, with whatever follows it that could be an offset.
STAMP = re.compile(r"(?<![\d-])(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?")
CLOCK = re.compile(r"(?<![\d:.])\d{2}:\d{2}:\d{2}")  # a time of day to the second


def stamps_carry(text: str, offset: str) -> list[str]:
    """The problems with the times in ``text``: a dated time without ``offset``, a time to the
    second without its date, ``Z`` or a UTC / Beijing-time label."""
    problems = []
    for m in STAMP.finditer(text):
        if m.group(3) != offset:
            problems.append(f"{m.group(0)!r} does not carry {offset}")
    for m in CLOCK.finditer(STAMP.sub("", text)):
        problems.append(f"bare time {m.group(0)!r}")
    for word in ("+00:00", "UTC", *((" CST", "+08:00") if offset != "+08:00" else ())):
        if word in text:
            problems.append(f"{word.strip()!r} in the output")
    return problems


@pytest.fixture
def cli_server():
    """``meterd`` processes forked from one that imported the package (tests/cliserver.py)."""
    return cliserver.shared()


@pytest.fixture
def run_meterd(cli_server, tmp_path):
    """As conftest's: ``meterd`` with ``args`` in the test's folder; a forked process."""

    def run(*args: str, timeout: float = 60, input: str | None = None):
        return cli_server.run(*args, timeout=timeout, input=input, cwd=tmp_path)

    return run


@pytest.fixture(params=["Asia/Urumqi", "America/Sao_Paulo", None])
def site(request, tmp_path):
    """``None``: a config without ``[site]``, Asia/Shanghai."""
    name = request.param or "Asia/Shanghai"
    zone = ZoneInfo(name)
    head = f'[site]\ntimezone = "{name}"\n' if request.param else ""
    (tmp_path / "site.toml").write_text(sync_site({"A1": METER}, interval=3600, head=head,
                                                  store='keep_attempts = "30d"\n', topology=TOPOLOGY))
    data = tmp_path / "data"
    data.mkdir()
    midnight = datetime.combine(DAY, datetime.min.time(), zone)
    before, after = midnight - timedelta(minutes=5), midnight + timedelta(minutes=5)
    with SqliteStore(data) as store:
        for at, kwh in ((before, "100.00"), (after, "100.50")):
            store.write_readings([
                Reading(METER, "energy.active.import.total", at.astimezone(UTC), Decimal(kwh), "kWh"),
                Reading(METER, "power.active.total", at.astimezone(UTC), Decimal("1.5"), "kW"),
            ])
        store.write_readings([Reading(METER, "clock", after.astimezone(UTC), after.astimezone(UTC), "")])
        store.record_attempts([Attempt(METER, "bus1", "00010000", at.astimezone(UTC), "ok", 0.2)
                               for at in (before, after)])
    with AnomalyStore(data) as anomalies:
        anomalies.update([Finding(METER, Kind.NO_DATA, Severity.WARNING, after, "no data for 25.0 h", ())], [], after)
    with OutageStore(data) as outages:
        outages.update([OutageFinding("TA1", after, (METER,), Decimal(1))], after, lambda m: "A1")
    inbox = payments_inbox(tmp_path)
    (inbox / "day1.csv").write_text("payment_id,account,amount,paid_at,channel\n"
                                    "P1,A1,20.00,2026-11-20 00:30:00,counter\n"
                                    "P2,NOPE,5,2026-11-20,counter\n")  # quoted raw in the quarantine: no time
    return name, midnight.isoformat()[19:], tmp_path  # the zone, its offset (+06:00), the site folder


def test_every_time_printed_is_site_time_with_its_offset(run_meterd, site, monkeypatch):
    zone, offset, folder = site
    for name, value in {"METERD_METER_PASSWORD": "02123456", "METERD_OPERATOR_CODE": "00000001"}.items():
        monkeypatch.setenv(name, value)  # meterd run's relay-control secrets
    outputs = []

    def meterd(*args: str, ok: tuple[int, ...] = (0,)) -> str:
        p = run_meterd(*args, "-c", "site.toml", timeout=120)
        assert p.returncode in ok, (args, p.returncode, p.stderr)
        outputs.append((args, p.stdout + p.stderr))
        return p.stdout

    meterd("account", "list")  # the config's accounts are written
    with ControlStore(folder / "data") as control:
        control.record_relay(METER, {"relay.open": False}, now=datetime.now(UTC))
    meterd("pay", "A1", "30", "--ref", "R1")
    meterd("sync", "run", "payments")
    meterd("alarm", "1", "--reason", "test", "--operator", "li", "--wait", "0.2", ok=(3,))  # stays queued
    meterd("token", "create", "grafana")
    for command in [("readings", "--meter", "1"), ("account", "show", "A1"), ("ledger", "A1"), ("commands",),
                    ("quality", "--date", DAY.isoformat()), ("anomalies", "--state", "all"), ("outages",),
                    ("stats", "curve", "--meter", "1", "--period", DAY.isoformat()), ("sync", "status"),
                    ("sync", "quarantine"), ("token", "list"), ("prune", "--dry-run"), ("backup", "--to", "b1")]:
        meterd(*command)
    meterd("run", "--duration", "1.5")
    meterd("restore", "--from", "b1", "--force")

    for args, text in outputs:
        assert not stamps_carry(text, offset), (args, stamps_carry(text, offset), text)
    printed = "".join(text for _, text in outputs)
    assert len(STAMP.findall(printed)) >= 25, printed  # the walk did print times
    timed = {"readings", "account show", "ledger", "commands", "anomalies", "outages", "stats curve", "sync status",
             "sync quarantine", "token list", "prune", "run", "restore", "alarm"}
    for args, text in outputs:
        if args[0] in timed or " ".join(args[:2]) in timed:
            assert STAMP.search(text), (args, text)
    assert f"({zone} {offset}, 00:00-24:00)" in printed  # the quality report names the zone and its offset


def test_days_cut_at_the_sites_midnight(run_meterd, site):
    _, offset, _ = site

    def doc(*args: str):
        p = run_meterd(*args, "-c", "site.toml", "--json")
        assert p.returncode == 0, (args, p.stderr)
        return json.loads(p.stdout)

    # the attempts 5 min before and after the site's midnight fall on two days (in Beijing time
    # both are on the 20th: 01:55 and 02:05 for Urumqi, 10:55 and 11:05 for Sao Paulo)
    assert doc("quality", "--date", DAY.isoformat())["total"]["attempts"] == 1
    assert doc("quality", "--date", (DAY - timedelta(days=1)).isoformat())["total"]["attempts"] == 1
    report = doc("quality", "--date", DAY.isoformat())
    assert report["start"] == f"{DAY}T00:00:00{offset}"
    # the load curve of the 20th starts at its midnight: the reading before it is the 19th's
    points = doc("stats", "curve", "--meter", "1", "--period", DAY.isoformat(), "--step", "15m")
    assert [(p["at"], p["kw"]) for p in points] == [(f"{DAY}T00:00:00{offset}", "1.5")]
    # a date typed to --since is the site's midnight
    got = doc("readings", "--meter", "1", "--since", DAY.isoformat(), "--quantity", "energy.active.import.total")
    assert [r["value"] for r in got] == ["100.50"]
    # the payment the billing file dated 00:30 without a zone was paid at 00:30 site time
    run_meterd("account", "list", "-c", "site.toml")
    assert run_meterd("sync", "run", "payments", "-c", "site.toml").returncode == 0
    [entry] = doc("ledger", "A1")["entries"]
    assert f"paid {DAY}T00:30:00{offset}" in entry["detail"], entry
