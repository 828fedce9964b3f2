"""``meterd run`` prints a summary when it stops: a table of each channel's figures, or one JSON
document with ``--json`` (issue 18: it logged a Python dict)."""

from __future__ import annotations

import json

from conftest import free_port


def site(tmp_path) -> str:
    (tmp_path / "site.toml").write_text(f"""
[store]
data_dir = "data"
[channels.bus1]
tcp = {{ host = "127.0.0.1", port = {free_port()} }}
retries = 0
[[meters]]
address = "1"
channel = "bus1"
[[polls]]
name = "rt"
interval = "1s"
quantities = ["energy.active.import.total"]
""")
    return "site.toml"


def test_run_prints_its_summary_as_a_table_or_as_json(run_meterd, tmp_path):
    config = site(tmp_path)
    p = run_meterd("run", "-c", config, "--duration", "1.5", "-q")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("meterd stopped after ") and "+08:00" in lines[0], lines
    assert lines[1].split()[:4] == ["CHANNEL", "ROUNDS", "ATTEMPTS", "OK"]
    assert lines[2].split()[0] == "bus1" and "link" in lines[2], lines
    for python in ("{", "'", "None", "True", "False"):
        assert python not in p.stdout, p.stdout
    p = run_meterd("run", "-c", config, "--duration", "1.5", "-q", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["config"] == config and doc["seconds"] >= 1.5 and doc["started"] < doc["stopped"]
    bus = doc["channels"]["bus1"]
    assert bus["successes"] == 0 and bus["failures"]["link"] >= 1 and bus["rounds"] >= 1


def test_a_first_run_says_once_per_store_that_its_tables_were_created(run_meterd, tmp_path):
    # meterd run logged each store's line twice on a new data directory, the second time as
    # "migrated from schema version 0", as if an old database had been there
    config = site(tmp_path)
    p = run_meterd("run", "-c", config, "--duration", "0.5", "--log-level", "INFO")
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if "schema version" in line]
    stores = sorted(line.split(": ")[-1].split()[0] for line in lines)
    assert stores == ["alarms", "anomalies", "archive", "control", "readings", "site"], lines  # one line each
    assert all("tables created at schema version" in line for line in lines), lines
    p = run_meterd("run", "-c", config, "--duration", "0.5", "--log-level", "INFO")
    assert p.returncode == 0 and "schema version" not in p.stderr, p.stderr  # nothing to do the second time
