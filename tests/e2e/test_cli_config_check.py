"""``meterd config check``: a valid config exits 0 with its plan, a broken one exits 2 listing every
problem, and neither opens a port or writes a file (issue 18)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from meterd.config.reference import render

VALID = """
[store]
data_dir = "data"

[listeners.gprs]
port = {listener_port}

[api]
port = {api_port}

[channels.bus1]
serial = {{ device = "/dev/ttyUSB-meterd-test-none" }}

[channels.feeder7]
dtu = {{ listener = "gprs", terminal = "DTU00000001" }}

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
channel = "feeder7"
protocol = "dlt645-1997"
group = "legacy"

[[polls]]
name = "realtime"
interval = "15m"
groups = ["residential"]
quantities = ["energy.active.import.total", "voltage.a"]

[[polls]]
name = "daily"
interval = "1h"
meters = ["1"]
quantities = ["frozen.daily.energy.active.import.total"]

[[polls]]
name = "legacy"
interval = "1h"
meters = ["3"]
items_1997 = ["901F"]

[[tasks]]
name = "reread"
kind = "reread"
"""

BROKEN = """
[store]
data_dir = "data"
batch_sise = 10

[channels.bus1]
serial = { device = "/dev/ttyUSB0", baud = 1234 }

[[meters]]
address = "1"
channel = "bus2"

[[polls]]
name = "realtime"
interval = "15m"
meters = ["1", "99"]
quantities = ["energy.active.import.totl"]
"""


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_a_valid_config_prints_its_plan_and_opens_and_writes_nothing(run_meterd, tmp_path):
    # the listener's and the API's ports are taken: binding either would fail the check
    with _listening() as listener, _listening() as api:
        (tmp_path / "site.toml").write_text(VALID.format(listener_port=listener.getsockname()[1],
                                                         api_port=api.getsockname()[1]))
        before = _files(tmp_path)
        p = run_meterd("config", "check", "-c", "site.toml")
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines[0] == "site.toml: valid (channels: 2, meters: 3, polls: 3, tasks: 1, listeners: 1)"
        assert "  channel bus1 (serial /dev/ttyUSB-meterd-test-none 2400 8E1)" in lines
        assert "    poll realtime every 900 s: 2 meter(s)" in lines
        assert "      dlt645-2007 items 00010000 02010100: 000000000001, 000000000002" in lines
        assert "      dlt645-2007 items 05060101: 000000000001" in lines
        assert "  channel feeder7 (dtu DTU00000001 via listener gprs)" in lines
        assert "      dlt645-1997 items 901F: 000000000003" in lines
        assert "  task reread (reread, cron '0 10,16,22 * * *', groups all): 3 meter(s) on bus1, feeder7" in lines

        p = run_meterd("config", "check", "-c", "site.toml", "--json")
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert doc["valid"] is True and doc["errors"] == []
        bus1 = next(c for c in doc["channels"] if c["name"] == "bus1")
        daily = next(poll for poll in bus1["polls"] if poll["name"] == "daily")
        assert daily["listed_meters"] == ["000000000001"]
        assert daily["meters"] == [{"address": "000000000001", "protocol": "dlt645-2007", "unit": None,
                                    "reads": ["05060101"]}]
        assert _files(tmp_path) == before  # no data_dir, no store, no spool


def test_a_broken_config_exits_2_listing_every_problem(run_meterd, tmp_path):
    (tmp_path / "site.toml").write_text(BROKEN)
    p = run_meterd("config", "check", "-c", "site.toml")
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        "meterd: 5 configuration error(s):",
        '  - site.toml: store.batch_sise: unknown key (did you mean "batch_size"?)',
        ("  - site.toml: channels.bus1.serial.baud: must be one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, "
        "57600, 115200, got 1234"),
        '  - site.toml: meters[0].channel: no channel named "bus2" (did you mean "bus1"?)',
        "  - site.toml: polls[0].meters[1]: no meter 000000000099 in [[meters]]",
        ('  - site.toml: polls[0].quantities[0]: unknown quantity "energy.active.import.totl" '
        '(did you mean "energy.active.import.total"?)'),
    ]
    problems = p.stderr.splitlines()[1:]

    p = run_meterd("config", "check", "-c", "site.toml", "--json")
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    assert doc["valid"] is False and doc["errors"] == [line.removeprefix("  - ") for line in problems]
    assert _files(tmp_path) == {"site.toml"}


def test_the_config_comes_from_meterd_config_and_secrets_are_checked(meterd_bin, tmp_path):
    (tmp_path / "site.toml").write_text(
        '[store]\ndata_dir = "data"\n[store.influxdb]\nurl = "http://127.0.0.1:8086"\norg = "o"\nbucket = "b"\n'
        'token_env = "METERD_TEST_INFLUX_TOKEN"\n')
    env = {k: v for k, v in os.environ.items() if k != "METERD_TEST_INFLUX_TOKEN"}
    env["METERD_CONFIG"] = str(tmp_path / "site.toml")

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([meterd_bin, "config", "check", *args], check=False, capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, env={**env, **extra})

    p = run()
    assert p.returncode == 2
    assert "store.influxdb.token_env: environment variable METERD_TEST_INFLUX_TOKEN is not set" in p.stderr
    p = run("--no-secrets")
    assert p.returncode == 0 and "secrets: not checked (--no-secrets)" in p.stdout
    p = run(METERD_TEST_INFLUX_TOKEN="t0ken")
    assert p.returncode == 0 and p.stdout.startswith(f"{tmp_path / 'site.toml'}: valid")
    assert _files(tmp_path) == {"site.toml"}


def test_the_reference_command_prints_docs_config_md(run_meterd):
    p = run_meterd("config", "reference")
    assert p.returncode == 0 and p.stdout == render()
