"""The prepaid commands as an operator types them: accounts, payments, adjustments, manual commands,
the ledger, and every kind of bad input refused with its reason and nothing written; then the demo's
story (an account runs out, is tripped, pays, is reclosed, relay read back from the simulated meter)."""

from __future__ import annotations

import json

import pytest

SITE = """
[store]
data_dir = "data"

[channels.bus1]
tcp = { host = "127.0.0.1", port = 9 }

[[meters]]
address = "000000000001"
channel = "bus1"
ct = 50

[[meters]]
address = "000000000002"
channel = "bus1"

[[meters]]
address = "000000000003"
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

[[prepaid.accounts]]
account = "H1"
customer = "Clinic"
area = "TA1"
tariff = "res"
meters = ["000000000002"]
protected = true
"""


@pytest.fixture
def site(tmp_path):
    (tmp_path / "site.toml").write_text(SITE)
    return "site.toml"


def test_pay_adjust_ledger_and_account(run_meterd, site):
    p = run_meterd("pay", "A1", "100.50", "--ref", "R1", "-c", site)
    assert p.returncode == 0 and "balance 100.50" in p.stdout, p.stderr
    p = run_meterd("pay", "A1", "100.50", "--ref", "R1", "-c", site)
    assert p.returncode == 0 and "not applied" in p.stdout and "already applied" in p.stdout
    p = run_meterd("adjust", "A1", "-0.50", "--ref", "ADJ1", "--reason", "meter test", "--operator", "li",
                   "-c", site)
    assert p.returncode == 0 and "balance 100.00" in p.stdout, p.stderr
    p = run_meterd("ledger", "A1", "-c", site, "--json")
    doc = json.loads(p.stdout)
    assert doc["balance"] == "100.00" and [e["kind"] for e in doc["entries"]] == ["payment", "adjustment"]
    assert doc["entries"][-1]["balance"] == "100.00"
    p = run_meterd("account", "show", "A1", "-c", site, "--json")
    shown = json.loads(p.stdout)
    assert shown["balance"] == "100.00" and shown["meters"] == {"000000000001": "50"}
    assert shown["remaining_kwh"] == "200.00"  # balance ÷ current price
    p = run_meterd("account", "list", "-c", site)
    assert "A1" in p.stdout and "H1" in p.stdout and "yes" in p.stdout


@pytest.mark.parametrize("args, message", [
    (("pay", "NOPE", "10", "--ref", "X"), "unknown account NOPE"),
    (("pay", "A1", "ten", "--ref", "X"), "not a number"),
    (("pay", "A1", "-5", "--ref", "X"), "must be positive"),
    (("pay", "A1", "1.005", "--ref", "X"), "two decimal places"),
    (("adjust", "A1", "0", "--ref", "X", "--reason", "r", "--operator", "o"), "must not be zero"),
    (("trip", "000000000002", "--reason", "test", "--operator", "li"), "protected account"),
    (("trip", "000000000099", "--reason", "test", "--operator", "li"), "unknown meter"),
    (("trip", "000000000001", "--reason", " ", "--operator", "li"), "reason"),
    (("cancel", "99", "--reason", "x", "--operator", "li"), "no command #99"),
    (("ledger", "NOPE"), "unknown account NOPE"),
    (("replace-meter", "A1", "000000000002", "000000000003", "--old-final", "1", "--new-initial", "0",
      "--ref", "W", "--operator", "li"), "is not on account A1"),
    (("replace-meter", "A1", "000000000001", "000000000003", "--old-final", "x", "--new-initial", "0",
      "--ref", "W", "--operator", "li"), "not a number"),
])
def test_bad_input_is_refused_with_its_reason_and_nothing_is_written(run_meterd, site, args, message):
    p = run_meterd(*args, "-c", site)
    assert p.returncode == 2 and message in p.stderr, (p.stdout, p.stderr)
    ledger = json.loads(run_meterd("ledger", "A1", "-c", site, "--json").stdout)
    assert ledger["entries"] == [] and ledger["balance"] == "0.00"
    assert json.loads(run_meterd("commands", "-c", site, "--json").stdout) == []


def test_manual_commands_are_queued_listed_and_cancelled(run_meterd, site):
    p = run_meterd("trip", "1", "--reason", "tamper found", "--operator", "li", "-c", site, "--json")
    assert p.returncode == 0, p.stderr
    cmd = json.loads(p.stdout)
    assert cmd["kind"] == "trip" and cmd["state"] == "queued" and cmd["requested_by"] == "li" and cmd["manual"]
    p = run_meterd("trip", "1", "--reason", "again", "--operator", "li", "-c", site)
    assert p.returncode == 2 and "already queued" in p.stderr
    p = run_meterd("reclose", "1", "--reason", "fixed", "--operator", "li", "-c", site, "--json")
    assert json.loads(p.stdout)["kind"] == "reclose-allowed"
    listed = json.loads(run_meterd("commands", "-c", site, "--json").stdout)
    assert [(c["kind"], c["state"]) for c in listed] == [("reclose-allowed", "queued"), ("trip", "cancelled")]
    p = run_meterd("cancel", str(listed[0]["id"]), "--reason", "customer called", "--operator", "li", "-c", site)
    assert p.returncode == 0
    assert json.loads(run_meterd("commands", "--state", "queued", "-c", site, "--json").stdout) == []


def test_the_demo_tells_the_prepaid_story(run_meterd, tmp_path):
    data = tmp_path / "demo-data"
    p = run_meterd("demo", "--quiet", "--stop-after-story", "--duration", "90", "--interval", "2", "--data-dir",
                   str(data), timeout=180)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "DEMO-1001 opens with a payment" in out
    assert "trip -> meter 000000000009: confirmed" in out and "relay.open=yes" in out, out
    assert "the customer pays" in out
    assert "reclose-allowed -> meter 000000000009: confirmed" in out, out
    assert "trip held: protected account" in out  # the clinic (保电)
    shown = json.loads(run_meterd("account", "show", "DEMO-1001", "--data-dir", str(data), "--json").stdout)
    assert shown["state"] == "normal" and shown["relay"]["000000000009"]["relay.open"] is False
    kinds = [e["kind"] for e in json.loads(run_meterd("ledger", "DEMO-1001", "--data-dir", str(data),
                                                      "--json").stdout)["entries"]]
    assert kinds.count("payment") == 2 and "charge" in kinds
