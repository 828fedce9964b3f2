"""Command-line inputs absurd in size, not only in format: each is refused with exit 2 and one line
naming the argument or file and the limit, quotes at most a few dozen of its characters, and writes
nothing.  Before, a 4,000-digit --limit or id reached SQLite (an OverflowError traceback, exit 1), a
100 KB --ref or token name was stored and printed back whole, a 4,000-digit register was recorded
as a meter's final reading, and a 1 GB secrets_file was read whole (2.1 GB peak)."""

from __future__ import annotations

import json

import pytest

import cliserver

SITE = """
[store]
data_dir = "data"

[channels.bus1]
tcp = { host = "127.0.0.1", port = 9 }

[[meters]]
address = "000000000001"
channel = "bus1"

[[meters]]
address = "000000000002"
channel = "bus1"

[[polls]]
name = "energy"
interval = 60
quantities = ["energy.active.import.total"]

[prepaid]
thresholds = { reminder = "50", alarm = "20", trip = "0", reclose = "10" }

[[prepaid.tariffs]]
name = "res"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "flat"
price = "0.50"

[[prepaid.accounts]]
account = "A1"
customer = "Zhang"
area = "TA1"
tariff = "res"
meters = ["000000000001"]
"""

DIGITS = "9" * 4000  # int() refuses 5,000; 4,000 passed it and reached the database
LONG = "R" * 100_000


@pytest.fixture
def meterd_cli(tmp_path, monkeypatch):
    server = cliserver.shared()
    monkeypatch.setenv("METERD_METER_PASSWORD", "00000000")
    monkeypatch.setenv("METERD_OPERATOR_CODE", "00000000")

    def run(*args: str, timeout: float = 60, input: str | None = None):
        return server.run(*args, timeout=timeout, input=input, cwd=tmp_path)

    return run


@pytest.fixture
def site(tmp_path, meterd_cli):
    (tmp_path / "site.toml").write_text(SITE)
    done = meterd_cli("migrate", "-c", "site.toml")
    assert done.returncode == 0, done.stderr
    return tmp_path


def refused(done, *words: str) -> str:
    """The one error line of a refused command: exit 2, no traceback, the words in it, the absurd
    input not echoed whole."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr) < 2000, done.stderr[:300]
    line = done.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in line, line
    return line


@pytest.mark.parametrize("argv", [
    ("readings", "--meter", "1", "--limit", DIGITS),
    ("commands", "--limit", DIGITS),
    ("anomalies", "--limit", DIGITS),
    ("ledger", "A1", "--limit", DIGITS),
    ("sync", "status", "--limit", DIGITS),
], ids=lambda a: a[0])
def test_a_limit_of_thousands_of_digits_is_refused_naming_it(site, meterd_cli, argv):
    refused(meterd_cli(*argv, "-c", "site.toml"), "--limit", "4000 characters", "1,000,000")


def test_an_id_of_thousands_of_digits_is_refused(site, meterd_cli):
    refused(meterd_cli("cancel", DIGITS, "-c", "site.toml", "--reason", "typo", "--operator", "li"),
            "argument id", "9,223,372,036,854,775,807")


def test_a_time_before_the_first_instant_is_refused(site, meterd_cli):
    refused(meterd_cli("readings", "-c", "site.toml", "--meter", "1", "--since", "0001-01-01"),
            "'0001-01-01' is out of range")
    refused(meterd_cli("readings", "-c", "site.toml", "--meter", "1", "--since", DIGITS + "d"), "is not a time")


def test_a_100_kb_reference_is_refused_and_nothing_is_paid(site, meterd_cli):
    refused(meterd_cli("pay", "A1", "10", "--ref", LONG, "-c", "site.toml"), "--ref", "longer than 200 characters")
    ledger = meterd_cli("ledger", "A1", "-c", "site.toml", "--json")
    assert ledger.returncode == 0, ledger.stderr
    assert "10.00" not in ledger.stdout and LONG not in ledger.stdout
    refused(meterd_cli("readings", "-c", "site.toml", "--meter", LONG), "--meter", "100000 characters")


def test_a_100_kb_token_name_is_refused_and_no_token_made(site, meterd_cli):
    refused(meterd_cli("token", "create", LONG, "-c", "site.toml"), "argument name", "longer than 64 characters")
    tokens = meterd_cli("token", "list", "-c", "site.toml", "--json")
    assert tokens.returncode == 0, tokens.stderr
    assert json.loads(tokens.stdout) == []


def test_a_register_of_thousands_of_digits_is_not_recorded(site, meterd_cli):
    args = ("replace-meter", "A1", "000000000001", "000000000002", "--new-initial", "1", "--ref", "W1",
            "--operator", "li", "-c", "site.toml")
    refused(meterd_cli(*args, "--old-final", DIGITS), "--old-final", "longer than 24 characters")
    done = meterd_cli(*args, "--old-final", "1234.5")  # the same work order, now right: recorded
    assert done.returncode == 0, done.stderr
    assert "recorded" in done.stdout


def test_a_1_gib_secrets_file_is_refused_unread(site, meterd_cli):
    secrets = site / "secrets.env"
    with secrets.open("wb") as f:  # sparse: costs no disk
        f.write(b"METERD_X=1\n")
        f.truncate(2**30)
    secrets.chmod(0o600)
    (site / "sec.toml").write_text('secrets_file = "secrets.env"\n' + SITE)
    refused(meterd_cli("config", "check", "-c", "sec.toml"), "secrets_file", "secrets.env",
            "larger than 1024 KiB")


def test_a_fleet_config_larger_than_a_config_is_refused(tmp_path, meterd_cli):
    fleet = tmp_path / "fleet.toml"
    with fleet.open("wb") as f:
        f.truncate(2**30)
    line = refused(meterd_cli("simulate", "--fleet-config", str(fleet), "--duration", "0"), "--fleet-config",
                   "larger than 256 MiB")
    assert "fleet.toml" in line


def test_a_wait_of_1e308_seconds_is_refused_not_waited(site, meterd_cli):
    # no daemon runs: a wait the old code took would never end (the test's timeout fails it)
    done = meterd_cli("trip", "000000000001", "--reason", "test", "--operator", "li", "--wait", "1e308",
                      "-c", "site.toml", timeout=30)
    refused(done, "--wait", "from 0 to 86,400")
    for bad in ("inf", "nan", "-1"):
        refused(meterd_cli("trip", "000000000001", "--reason", "t", "--operator", "li", "--wait", bad, "-c",
                           "site.toml", timeout=30), "--wait")
    queue = meterd_cli("commands", "-c", "site.toml", "--json")
    assert queue.returncode == 0, queue.stderr
    assert json.loads(queue.stdout) == []  # nothing was queued by the refused commands


def test_a_1_gib_backup_manifest_is_refused_unread(site, meterd_cli):
    done = meterd_cli("backup", "-c", "site.toml", "--to", "bk")
    assert done.returncode == 0, done.stderr
    with (site / "bk" / "MANIFEST.json").open("r+b") as f:  # sparse
        f.truncate(2**30)
    (site / "other.toml").write_text(SITE.replace('data_dir = "data"', 'data_dir = "other"'))
    done = meterd_cli("restore", "-c", "other.toml", "--from", "bk")
    assert done.returncode == 1, done.stderr  # a damaged backup, as any other manifest that cannot be read
    assert "MANIFEST.json: larger than 1 MiB: not a meterd backup manifest" in done.stderr
    assert not (site / "other" / "state.sqlite3").exists()


@pytest.fixture
def silent_meter():
    """A TCP port that takes connections and never answers (a DTU whose meter is dead)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("option", [("--timeout", "1e308"), ("--timeout", "inf"), ("--retries", "1000000000"),
                                    ("--retries", DIGITS)], ids=lambda o: f"{o[0]}-{o[1][:10]}")
@pytest.mark.parametrize("command", ["read", "probe"])
def test_a_technicians_wait_of_forever_is_refused(meterd_cli, silent_meter, command, option):
    # the old code waited on the silent meter for ever (the test's timeout fails it)
    args = [command, "--tcp", silent_meter, "--address", "1", *option]
    if command == "read":
        args += ["--di", "00010000"]
    refused(meterd_cli(*args, timeout=30), option[0])


def test_a_baud_or_unit_of_thousands_of_digits_is_named(meterd_cli, silent_meter):
    many = "9" * 5000  # int() raised ValueError: a traceback, exit 1
    refused(meterd_cli("probe", "--serial", "/dev/null", "--address", "1", "--baud", many), "--baud",
            "(5000 characters) is not a baud rate")
    refused(meterd_cli("probe", "--tcp", silent_meter, "--address", "1", "--unit", f"1-{many}"), "--unit",
            "(5002 characters)")


@pytest.mark.parametrize("argv, words", [
    (("--pty", "1000000000"), ("--pty", "from 0 to 4,096")),  # 13.7 GB in 30 s, not started yet
    (("--tcp-buses", DIGITS), ("--tcp-buses", "4000 characters")),
    (("--pty", "0", "--dtus", "99999999"), ("999,999,990 meters", "at most 1,000,000")),  # 5 GB in 20 s
    (("--pty", "0", "--concentrators", "65535", "--meters-per-concentrator", "2040"), ("133,691,400 meters",)),
], ids=["pty", "tcp-buses", "dtus", "concentrators"])
def test_a_simulated_fleet_past_a_city_is_refused_before_it_is_built(meterd_cli, argv, words):
    refused(meterd_cli("simulate", *argv, "--duration", "0", timeout=30), *words)


def test_a_period_or_day_past_the_calendar_is_refused(tmp_path, meterd_cli):
    from report_site import district_site

    (tmp_path / "dist.toml").write_text(district_site({"TA1": {}, "TA2": {}}))
    assert meterd_cli("migrate", "-c", "dist.toml").returncode == 0
    # 9999-12-31 has no next day: both were an OverflowError traceback (exit 1)
    refused(meterd_cli("lineloss", "-c", "dist.toml", "--period", "0001-01-01..9999-12-31"), "--period",
            "out of range (from 1970-01-01 to 2099-12-31)")
    refused(meterd_cli("quality", "-c", "dist.toml", "--date", "9999-12-31"), "--date", "out of range")
