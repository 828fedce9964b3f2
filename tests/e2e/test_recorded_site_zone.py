"""The site's zone recorded in the state database, for the commands run without the config.

A technician runs ``meterd readings --data-dir /var/lib/meterd ...`` without the site's config:
the times printed are still the site's (America/New_York here, -05:00 in November), because the
daemon and every command given the config recorded ``[site] timezone`` in the state database
(``site_settings``, :mod:`meterd.storage.site`).  A data directory that records none -- written by
a meterd before the record existed -- prints the default zone, +08:00, and says so once on stderr.
A config always wins and replaces a zone recorded before.

The commands are ``meterd`` processes forked from one that has imported the package
(tests/cliserver.py).
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import cliserver
from meterd.cli.common import site_zone
from meterd.clock import CST
from meterd.readings import Reading
from meterd.storage import site
from meterd.storage.database import Database
from meterd.storage.sqlite import Attempt, SqliteStore
from sync_site import sync_site

METER = "000000000001"
AT = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # 10:00 in New York (EST, -05:00), 23:00 in Beijing
NOTE = "note: times in +08:00 (Asia/Shanghai): no config given and the data directory"
STAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?([+-]\d{2}:\d{2}|Z)?")


@pytest.fixture
def run_meterd(tmp_path):
    server = cliserver.shared()

    def run(*args: str, ok: tuple[int, ...] = (0,)):
        p = server.run(*args, timeout=120, cwd=tmp_path)
        assert p.returncode in ok, (args, p.returncode, p.stdout, p.stderr)
        return p

    return run


def write_site(folder: Path, zone: str | None) -> Path:
    """A prepaid site (account A1 on meter 1) in ``zone`` (None: no ``[site]``), its data directory
    holding a reading and two poll attempts at :data:`AT`, written as the daemon would."""
    head = f'[site]\ntimezone = "{zone}"\n' if zone else ""
    (folder / "site.toml").write_text(sync_site({"A1": METER}, interval=3600, head=head))
    data = folder / "data"
    data.mkdir(exist_ok=True)
    with SqliteStore(data) as store:
        store.write_readings([Reading(METER, "energy.active.import.total", AT, Decimal("100.50"), "kWh")])
        store.record_attempts([Attempt(METER, "bus1", "00010000", AT, "ok", 0.2)])
    return data


def offsets(text: str) -> set[str]:
    return {m.group(1) or "none" for m in STAMP.finditer(text)}


def data_dir_walk(run_meterd) -> list[tuple[tuple[str, ...], str, str]]:
    """Every command that prints times, on the data directory alone: (args, stdout, stderr)."""
    out = []
    for args in [("readings", "--meter", "1"), ("ledger", "A1"), ("account", "show", "A1"), ("commands",),
                 ("alarms", "list", "--state", "all"), ("quality", "--date", "2026-11-20"),
                 ("backup", "--to", "b1"), ("restore", "--from", "b1", "--force")]:
        p = run_meterd(*args, "--data-dir", "data")
        out.append((args, p.stdout, p.stderr))
    return out


def test_commands_without_config_print_the_recorded_zone(tmp_path, run_meterd):
    write_site(tmp_path, "America/New_York")
    run_meterd("pay", "A1", "30", "--ref", "R1", "-c", "site.toml")  # a command with the config records the zone
    run_meterd("alarm", "1", "--reason", "test", "--operator", "li", "--wait", "0.2", "-c", "site.toml", ok=(3,))
    assert site.recorded(tmp_path / "data") == "America/New_York"

    walk = data_dir_walk(run_meterd)
    for args, out, err in walk:
        assert "note:" not in err, (args, err)
        assert offsets(out) <= {"-05:00"}, (args, out)
    printed = {args[0]: out for args, out, _ in walk}
    assert "2026-11-20 10:00:00-05:00" in printed["readings"]
    for name in ("ledger", "account", "commands", "restore"):
        assert offsets(printed[name]) == {"-05:00"}, (name, printed[name])
    assert "(America/New_York -05:00, 00:00-24:00)" in printed["quality"]
    # a date typed without a zone is New York's midnight, and the day the quality report cuts is New York's
    since = run_meterd("readings", "--meter", "1", "--since", "2026-11-20T11:00", "--data-dir", "data")
    assert since.stdout.strip() == f"no readings for meter {METER}"  # 10:00 New York is before 11:00 New York
    report = run_meterd("quality", "--date", "2026-11-20", "--data-dir", "data", "--json").stdout
    assert '"attempts": 1' in report and "2026-11-20T00:00:00-05:00" in report


def test_without_a_recorded_zone_the_default_and_a_note_once(tmp_path, run_meterd):
    write_site(tmp_path, "America/New_York")  # written as a meterd before the record would have
    with sqlite3.connect(tmp_path / "data" / "state.sqlite3") as conn:
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'site_settings'").fetchone() is None
    p = run_meterd("readings", "--meter", "1", "--data-dir", "data")
    assert p.stdout.startswith("2026-11-20 23:00:00+08:00"), p.stdout
    assert p.stderr.count("note: times in") == 1, p.stderr
    assert f"{NOTE} data records no site zone" in p.stderr, p.stderr
    with sqlite3.connect(tmp_path / "data" / "state.sqlite3") as conn:  # a command without the config writes nothing
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'site_settings'").fetchone() is None
    # a command printing many times says it once; it writes nothing, the record included
    run_meterd("pay", "A1", "30", "--ref", "R1", "-c", "site.toml")
    run_meterd("pay", "A1", "20", "--ref", "R2", "-c", "site.toml")
    with sqlite3.connect(tmp_path / "data" / "state.sqlite3") as conn:
        conn.execute("DELETE FROM site_settings")  # as if written before the record
    p = run_meterd("ledger", "A1", "--data-dir", "data")
    assert offsets(p.stdout) == {"+08:00"} and p.stderr.count("note: times in") == 1, (p.stdout, p.stderr)
    assert site.recorded(tmp_path / "data") is None


def test_a_recorded_zone_this_host_does_not_know(tmp_path, run_meterd):
    data = write_site(tmp_path, None)
    site.record(data, site.TIMEZONE, "Mars/Olympus_Mons", AT)
    p = run_meterd("readings", "--meter", "1", "--data-dir", "data")
    assert p.stdout.startswith("2026-11-20 23:00:00+08:00"), p.stdout
    assert f"{NOTE} data records a zone this host does not know (unknown time zone 'Mars/Olympus_Mons'" in p.stderr


def test_a_config_wins_and_its_changed_zone_replaces_the_record(tmp_path, run_meterd):
    data = write_site(tmp_path, "America/New_York")
    run_meterd("token", "list", "-c", "site.toml")
    assert site.recorded(data) == "America/New_York"
    write_site(tmp_path, "Asia/Urumqi")  # the site's config now names another zone
    assert "2026-11-20 21:00:00+06:00" in run_meterd("readings", "--meter", "1", "-c", "site.toml").stdout
    assert site.recorded(data) == "Asia/Urumqi"
    assert "2026-11-20 21:00:00+06:00" in run_meterd("readings", "--meter", "1", "--data-dir", "data").stdout


def test_the_daemon_records_the_zone_and_logs_a_change(tmp_path, run_meterd, monkeypatch):
    """``meterd run``: the zone recorded at start; one the config changed logged at INFO."""
    data = write_site(tmp_path, None)
    for name, value in {"METERD_METER_PASSWORD": "02123456", "METERD_OPERATOR_CODE": "00000001"}.items():
        monkeypatch.setenv(name, value)
    run_meterd("run", "-c", "site.toml", "--duration", "0.5")
    assert site.recorded(data) == "Asia/Shanghai"  # a config without [site]: the default is recorded too
    write_site(tmp_path, "America/New_York")
    p = run_meterd("run", "-c", "site.toml", "--duration", "0.5")
    assert "INFO    meterd.app: site zone America/New_York recorded in the state database data " \
           "(it recorded Asia/Shanghai)" in p.stderr, p.stderr
    assert site.recorded(data) == "America/New_York"
    assert "2026-11-20 10:00:00-05:00" in run_meterd("readings", "--meter", "1", "--data-dir", "data").stdout


def test_the_record_on_both_backends(state_where):
    """The record made, read without writing, and replaced -- on SQLite and PostgreSQL; a location
    that records nothing gives the default zone."""
    assert site.recorded(state_where) is None
    assert site_zone(None, state_where) is CST
    assert site.record(state_where, site.TIMEZONE, "America/New_York", AT) == (True, None)
    assert site.record(state_where, site.TIMEZONE, "America/New_York", AT) == (False, "America/New_York")
    assert site.recorded(state_where) == "America/New_York"
    assert datetime(2026, 11, 20, 15, tzinfo=UTC).astimezone(site_zone(None, state_where)).isoformat() == \
        "2026-11-20T10:00:00-05:00"
    assert site.record(state_where, site.TIMEZONE, "Asia/Urumqi", AT) == (True, "America/New_York")
    with site.SiteSettings(state_where) as settings:
        assert settings.get(site.TIMEZONE) == "Asia/Urumqi"


def test_migrate_records_the_zone_in_postgresql(pg_url, tmp_path, run_meterd, monkeypatch):
    """``meterd migrate -c`` on a site in PostgreSQL makes the table and records the config's zone;
    a command given the database then prints New York times without the config."""
    monkeypatch.setenv("METERD_DB_PASSWORD", "unused")
    (tmp_path / "site.toml").write_text(sync_site({"A1": METER}, head='[site]\ntimezone = "America/New_York"\n',
                                                  store=f'database = "{pg_url}"\npassword_env = "METERD_DB_PASSWORD"\n'))
    db = Database(pg_url, pool_size=2)
    assert site.recorded(db) is None
    p = run_meterd("migrate", "-c", "site.toml")
    assert re.search(r"site +0 +1 +migrated", p.stdout), p.stdout
    assert site.recorded(db) == "America/New_York"
    assert AT.astimezone(site_zone(None, db)).isoformat() == "2026-11-20T10:00:00-05:00"
