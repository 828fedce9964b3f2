"""A whole site on PostgreSQL, driven through the real ``meterd`` command as an operator would.

The config names ``[store] database`` (a fresh database of the tests' own server) with its
password in the environment; ``meterd migrate`` makes every store; accounts, payments,
adjustments, manual commands, API tokens and a billing import go in through the CLI; ``meterd run``
polls a simulated DL/T 645 bus (a ``meterd simulate`` process) and serves the API, which answers
with the token made earlier; the readings come back through ``meterd readings`` and the reports
through ``meterd quality`` / ``lineloss`` / ``stats``.  Everything is then found in PostgreSQL,
and not one SQLite file exists: the data directory holds only what is files by nature (the
billing drop folder).

Every ``meterd`` process -- the commands, the daemon, the simulator -- is forked from one that
imported the package (tests/cliserver.py), without a second of imports each.  The daemon runs until
what the checks after it need is in PostgreSQL, then gets SIGTERM (what ``--duration`` does at its
end: the same stop).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import cliserver
from conftest import free_port
from meterd.clock import CST
from meterd.readings import Reading
from meterd.storage.database import Database

A1, A2 = "000000000001", "000000000002"


def site_toml(pg_url: str, bus_port: int, api_port: int) -> str:
    return f"""
[store]
data_dir = "data"
database = "{pg_url}"
password_env = "METERD_DB_PASSWORD"
pool_size = 4
flush_interval = "200ms"

[channels.bus1]
tcp = {{ host = "127.0.0.1", port = {bus_port} }}
response_timeout = "1s"
inter_byte_timeout = "200ms"

[[meters]]
address = "{A1}"
channel = "bus1"

[[meters]]
address = "{A2}"
channel = "bus1"

[[polls]]
name = "rt"
interval = 1
quantities = ["energy.active.import.total", "voltage.a", "power.active.total"]

[plausibility]
# the simulated meters run 600x faster than the master's clock: a register advancing 10 minutes'
# energy a second is a real 600-fold load, flagged implausible and never charged at a real rating
rated_current = 600000

[prepaid]
dry_run = true
check_every = "1s"
thresholds = {{ reminder = "50", alarm = "20", trip = "0", reclose = "10" }}

[[prepaid.tariffs]]
name = "res"
[[prepaid.tariffs.versions]]
effective = 2020-01-01
kind = "flat"
price = "0.50"

[[prepaid.accounts]]
account = "A1"
customer = "Zhang"
area = "TA1"
tariff = "res"
meters = ["{A1}"]

[[prepaid.accounts]]
account = "A2"
customer = "Li"
area = "TA1"
tariff = "res"
meters = ["{A2}"]

[[topology.units]]
name = "TA1"

[[topology.points]]
meter = "{A2}"
unit = "TA1"
role = "supply"

[[topology.points]]
meter = "{A1}"
unit = "TA1"
role = "sales"
industry = "residential"

[[sync.jobs]]
name = "payments"
kind = "import_payments"
folder = "billing/payments"

[api]
host = "127.0.0.1"
port = {api_port}
"""


def psql(url: str, statement: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement).fetchall()


def sqlite_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.suffix in (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".db")]


def api_get(port: int, path: str, token: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture
def cli_server():
    """``meterd`` processes forked from one that imported the package (tests/cliserver.py)."""
    return cliserver.shared()


@pytest.fixture
def run_meterd(cli_server, tmp_path):
    """As conftest's: ``meterd`` with ``args`` in the test's folder; a forked process."""

    def run(*args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return cli_server.run(*args, timeout=timeout, input=input, cwd=tmp_path)

    return run


def wait_for(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def simulator(cli_server, tmp_path: Path):
    """One simulated DL/T 645 TCP bus with two meters (a ``meterd simulate`` process)."""
    proc = cli_server.spawn("--log-level", "WARNING", "simulate", "--tcp-buses", "1", "--pty", "0", "--meters-per-bus",
                            "2", "--speed", "600", "--json", "--duration", "300", cwd=tmp_path)
    try:
        wait_for("the document of meterd simulate", lambda: "\n" in proc.stdout() or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stderr()
        doc = json.loads(proc.stdout().splitlines()[0])
        (bus,) = doc["buses"]
        assert bus["meters"] == [A1, A2]
        yield bus["port"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_whole_site_on_postgresql_through_the_cli(pg_url, simulator, tmp_path, run_meterd, cli_server, monkeypatch):
    monkeypatch.setenv("METERD_DB_PASSWORD", "not-asked-by-a-trust-server")  # the config names it: must be set
    api_port = free_port()
    (tmp_path / "site.toml").write_text(site_toml(pg_url, simulator, api_port))

    def meterd(*args: str, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = run_meterd(*args, "-c", "site.toml", timeout=timeout)
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def meterd_json(*args: str) -> Any:
        return json.loads(meterd(*args, "--json").stdout)

    # -- the schema ----------------------------------------------------------------------------
    migrated = meterd_json("migrate")
    assert migrated["backend"] == "postgresql" and migrated["location"] == pg_url
    assert {v["store"] for v in migrated["versions"]} >= {"control", "readings", "archive"}
    assert meterd_json("migrate")["migrated"] is False

    # -- accounts and money --------------------------------------------------------------------
    accounts = {a["account"]: a for a in meterd_json("account", "list")}
    assert set(accounts) == {"A1", "A2"} and {a["state"] for a in accounts.values()} == {"pending"}
    meterd("account", "activate", "A1", "--opening-balance", "50.00", "--ref", "MIG-A1", "--operator", "li")
    meterd("account", "activate", "A2", "--opening-balance", "5.00", "--ref", "MIG-A2", "--operator", "li")
    assert "balance 150.00" in meterd("pay", "A1", "100", "--ref", "P-1").stdout
    again = meterd("pay", "A1", "100", "--ref", "P-1")
    assert "not applied" in again.stdout  # one ledger key, one payment: in PostgreSQL as in SQLite
    assert "balance 149.50" in meterd("adjust", "A1", "-0.50", "--ref", "ADJ-1", "--reason", "meter test",
                                      "--operator", "li").stdout
    ledger = meterd_json("ledger", "A1")
    assert ledger["balance"] == "149.50"
    assert [e["kind"] for e in ledger["entries"]] == ["opening", "payment", "adjustment"]

    # -- a manual command, queued and cancelled --------------------------------------------------
    queued = meterd_json("trip", A2, "--reason", "tamper found", "--operator", "li")
    meterd("cancel", str(queued["id"]), "--reason", "customer called", "--operator", "li")
    assert [c["state"] for c in meterd_json("commands")] == ["cancelled"]

    # -- API tokens ----------------------------------------------------------------------------
    token = meterd_json("token", "create", "grafana", "--role", "viewer")
    assert [t["id"] for t in meterd_json("token", "list")] == [token["id"]]

    # -- a billing import from the drop folder ---------------------------------------------------
    inbox = tmp_path / "billing" / "payments" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "pay.csv").write_text("payment_id,account,amount,paid_at,channel\n"
                                   "B-1,A2,20.00,2026-11-20 10:00:00,counter\nB-2,A9,1,2026-11-20,counter\n")
    run = meterd_json("sync", "run", "payments")
    assert (run["applied"], run["quarantined"]) == (1, 1)
    (status,) = meterd_json("sync", "status")
    assert status["last_status"] == "ok" and status["quarantined_total"] == 1
    assert [q["reason"] for q in meterd_json("sync", "quarantine")] == ["unknown account A9"]
    assert meterd_json("account", "show", "A2")["balance"] == "25.00"

    # -- the daemon: polls the simulated bus, charges, serves the API ----------------------------
    daemon = cli_server.spawn("run", "-c", "site.toml", "--duration", "90", cwd=tmp_path)
    try:
        seen: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            time.sleep(0.2)
            try:
                seen = api_get(api_port, f"/api/v1/meters/{A1}/readings", token["token"])
            except OSError:
                continue  # not listening yet
        assert seen, "the API served no readings of the polled meter"
        account = api_get(api_port, "/api/v1/accounts/A1", token["token"])
        assert account["account"] == "A1"

        def collected_and_charged() -> bool:
            energy = psql(pg_url, f"SELECT COUNT(*) FROM readings WHERE meter = '{A1}' "
                                  "AND quantity = 'energy.active.import.total'")[0][0]
            charges = psql(pg_url, "SELECT COUNT(*) FROM ledger WHERE account = 'A1' AND kind = 'charge'")[0][0]
            return energy >= 3 and charges > 0

        wait_for("three register readings of A1 and a charge in PostgreSQL", collected_and_charged, 60)
        daemon.terminate()
        daemon.wait(60)
        err = daemon.stderr()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    assert daemon.returncode == 0, err
    assert not [line for line in err.splitlines() if " ERROR   meterd" in line], err
    assert "Traceback" not in err, err

    readings = meterd_json("readings", "--meter", A1)
    quantities = {r["quantity"] for r in readings}
    assert {"energy.active.import.total", "voltage.a"} <= quantities
    energy = [Decimal(r["value"]) for r in readings if r["quantity"] == "energy.active.import.total"]
    assert len(energy) >= 3 and energy == sorted(energy)  # a register read round after round, never back
    quality = meterd_json("quality")
    assert quality["total"]["attempts"] > 0 and quality["total"]["ok"] > 0
    assert meterd("anomalies").returncode == 0 and meterd("outages").returncode == 0

    # charging passes ran on the polled registers: the ledger in PostgreSQL has the charges
    ledger = meterd_json("ledger", "A1")
    assert "charge" in {e["kind"] for e in ledger["entries"]}, ledger["entries"]
    assert Decimal(ledger["balance"]) < Decimal("149.50")

    # -- where it all is ------------------------------------------------------------------------
    counts = {table: psql(pg_url, f"SELECT COUNT(*) FROM {table}")[0][0]
              for table in ("accounts", "ledger", "commands", "audit", "api_tokens", "sync_jobs", "sync_files",
                            "sync_quarantine", "meters", "readings", "attempts")}
    assert all(n > 0 for n in counts.values()), counts
    assert psql(pg_url, "SELECT COUNT(*) FROM readings WHERE meter = '000000000001'")[0][0] >= len(readings)
    assert sqlite_files(tmp_path) == []
    assert not (tmp_path / "data" / "state.sqlite3").exists()
    assert not (tmp_path / "data" / "readings.sqlite3").exists()


def test_reports_read_the_postgresql_site(pg_url, tmp_path, run_meterd, monkeypatch):
    """lineloss, stats energy and the load curve through the CLI, from registers and readings that
    are only in PostgreSQL."""
    from meterd.analytics.energy import IMPORT_DAILY, DailyRegisterStore
    from meterd.storage import open_store

    monkeypatch.setenv("METERD_DB_PASSWORD", "unused")
    (tmp_path / "site.toml").write_text(site_toml(pg_url, 9, free_port()))
    day = datetime(2026, 11, 20, tzinfo=CST)
    db = Database(pg_url, pool_size=2)

    def frozen(meter: str, offset: int, kwh: str) -> Reading:
        return Reading(meter, IMPORT_DAILY, (day + timedelta(days=offset)).astimezone(UTC), Decimal(kwh), "kWh")

    with DailyRegisterStore(db) as registers:
        registers.record([frozen(A2, 0, "1000"), frozen(A2, 1, "1100"), frozen(A1, 0, "500"), frozen(A1, 1, "590")])
    with open_store(db) as store:
        store.write_readings([Reading(A1, "power.active.total", (day + timedelta(minutes=5 + 15 * k)).astimezone(UTC),
                                      Decimal("2.5"), "kW") for k in range(4)])

    loss = run_meterd("lineloss", "--period", "2026-11-20", "-c", "site.toml", "--json")
    assert loss.returncode == 0, loss.stderr
    (ta1,) = json.loads(loss.stdout)
    assert (ta1["unit"], Decimal(ta1["supply"]), Decimal(ta1["sales"]), Decimal(ta1["loss"])) == (
        "TA1", Decimal(100), Decimal(90), Decimal(10))
    energy = run_meterd("stats", "energy", "--by", "industry", "--period", "2026-11-20", "-c", "site.toml", "--json")
    assert energy.returncode == 0, energy.stderr
    assert {r["industry"]: r["kwh"] for r in json.loads(energy.stdout)} == {"residential": "90"}
    curve = run_meterd("stats", "curve", "--meter", A1, "--period", "2026-11-20", "--step", "15m", "-c", "site.toml",
                       "--json")
    assert curve.returncode == 0, curve.stderr
    assert [(c["kw"], c["meters"]) for c in json.loads(curve.stdout)[:4]] == [("2.5", 1)] * 4
    assert sqlite_files(tmp_path) == []


@pytest.fixture
def password_server(pg_server):
    """The run's PostgreSQL (tests/pgserver.py, session-scoped: no initdb of this test's own) asking a
    role of this test's own for its password (scram-sha-256: a line for that role ahead of the
    trust lines in pg_hba.conf), with a database that role owns; all undone afterwards."""
    import psycopg

    role = database = f"pw_{os.getpid()}_{time.monotonic_ns()}"
    hba = pg_server.data / "pg_hba.conf"
    trusting = hba.read_text()
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'c0rrect horse'")
        conn.execute(f"CREATE DATABASE {database} OWNER {role} TEMPLATE template0")
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + trusting)
    url = pg_server.url(database).replace(f"{pg_server.user}@", f"{role}@")
    try:
        pg_server._run("pg_ctl", "-D", str(pg_server.data), "reload")
        wait_for("pg_hba.conf reloaded", lambda: _refused(url), 10)
        yield url
    finally:
        from meterd.storage.database import close_pools

        close_pools()
        hba.write_text(trusting)
        pg_server._run("pg_ctl", "-D", str(pg_server.data), "reload")
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def _refused(url: str) -> bool:
    """Whether the server asks ``url``'s role for a password it was not given."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5, password="").close()
    except psycopg.OperationalError as exc:
        return "password" in str(exc)
    return False


def test_the_password_reaches_postgresql_from_the_secrets_file_or_the_environment(password_server, tmp_path,
                                                                                   run_meterd, monkeypatch):
    for name in ("METERD_DB_PASSWORD", "PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))  # never the runner's ~/.pgpass
    secrets = tmp_path / "secrets.env"
    secrets.write_text("METERD_DB_PASSWORD='c0rrect horse'\n")
    secrets.chmod(0o600)
    site = tmp_path / "site.toml"
    base = f'[store]\ndata_dir = "data"\ndatabase = "{password_server}"\npool_size = 2\n'
    site.write_text('secrets_file = "secrets.env"\n' + base + 'password_env = "METERD_DB_PASSWORD"\n')

    migrated = run_meterd("migrate", "-c", "site.toml", "--json")
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["backend"] == "postgresql"
    paid = run_meterd("pay", "A1", "10", "--ref", "P1", "-c", "site.toml")
    assert paid.returncode == 2 and "A1" in paid.stderr  # no such account: refused by the store, which was reached

    monkeypatch.setenv("METERD_DB_PASSWORD", "wrong")  # the environment wins over the secrets file
    refused = run_meterd("migrate", "-c", "site.toml")
    assert refused.returncode == 1
    assert "cannot reach the database" in refused.stderr and "password authentication failed" in refused.stderr
    assert "wrong" not in refused.stderr.replace("password authentication failed", "")
    assert "c0rrect" not in refused.stderr

    monkeypatch.delenv("METERD_DB_PASSWORD")
    site.write_text(base)  # no password_env: libpq's own PGPASSWORD
    assert run_meterd("migrate", "-c", "site.toml").returncode == 1
    monkeypatch.setenv("PGPASSWORD", "c0rrect horse")
    again = run_meterd("migrate", "-c", "site.toml", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["migrated"] is False
    assert sqlite_files(tmp_path) == []
