"""The prepaid commands as an operator types them: accounts, payments, adjustments, manual commands,
the ledger, and every kind of bad input refused with its reason and nothing written; then the demo's
story (an account runs out, is tripped, pays, is reclosed, relay read back from the simulated meter)."""

from __future__ import annotations

import json
from decimal import Decimal

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
def meterd_cli(tmp_path):
    """As conftest's ``run_meterd``, but forked from one process that imported the package
    (tests/cliserver.py): a process of its own per command, without a second of imports each."""
    server = cliserver.shared()

    def run(*args: str, timeout: float = 60, input: str | None = None):
        return server.run(*args, timeout=timeout, input=input, cwd=tmp_path)

    return run


@pytest.fixture
def site(tmp_path):
    (tmp_path / "site.toml").write_text(SITE)
    return "site.toml"


def test_pay_adjust_ledger_and_account(meterd_cli, site):
    p = meterd_cli("pay", "A1", "100.50", "--ref", "R1", "-c", site)
    assert p.returncode == 0 and "balance 100.50" in p.stdout, p.stderr
    p = meterd_cli("pay", "A1", "100.50", "--ref", "R1", "-c", site)
    assert p.returncode == 0 and "not applied" in p.stdout and "already applied" in p.stdout
    p = meterd_cli("adjust", "A1", "-0.50", "--ref", "ADJ1", "--reason", "meter test", "--operator", "li",
                   "-c", site)
    assert p.returncode == 0 and "balance 100.00" in p.stdout, p.stderr
    p = meterd_cli("ledger", "A1", "-c", site, "--json")
    doc = json.loads(p.stdout)
    assert doc["balance"] == "100.00" and [e["kind"] for e in doc["entries"]] == ["payment", "adjustment"]
    assert doc["entries"][-1]["balance"] == "100.00"
    p = meterd_cli("account", "show", "A1", "-c", site, "--json")
    shown = json.loads(p.stdout)
    assert shown["balance"] == "100.00" and shown["meters"] == {"000000000001": "50"}
    assert shown["remaining_kwh"] == "200.00"  # balance ÷ current price
    p = meterd_cli("account", "list", "-c", site)
    assert "A1" in p.stdout and "H1" in p.stdout and "yes" in p.stdout


def test_accounts_start_pending_and_an_operator_activates_them_once(meterd_cli, site):
    listed = meterd_cli("account", "list", "-c", site)
    assert [line.split()[3] for line in listed.stdout.splitlines()[1:]] == ["pending", "pending"]
    assert [a["account"] for a in json.loads(meterd_cli("account", "list", "--state", "pending", "-c", site,
                                                         "--json").stdout)] == ["A1", "H1"]
    p = meterd_cli("account", "activate", "A1", "--opening-balance", "50.00", "--ref", "MIG-1", "--operator", "li",
                   "-c", site)
    assert p.returncode == 0 and "opening balance 50.00 applied" in p.stdout and "balance 50.00" in p.stdout, p.stderr
    p = meterd_cli("account", "activate", "A1", "--opening-balance", "50.00", "--ref", "MIG-1", "--operator", "li",
                   "-c", site)
    assert p.returncode == 0 and "nothing changed" in p.stdout and "balance 50.00" in p.stdout
    shown = json.loads(meterd_cli("account", "show", "A1", "-c", site, "--json").stdout)
    assert (shown["state"], shown["balance"], shown["alarmed_at"]) == ("normal", "50.00", None)
    entries = json.loads(meterd_cli("ledger", "A1", "-c", site, "--json").stdout)["entries"]
    assert [(e["key"], e["kind"], e["actor"]) for e in entries] == [("opening:A1", "opening", "li")]
    p = meterd_cli("account", "activate", "H1", "--ref", "MIG-2", "--operator", "li", "-c", site)
    assert p.returncode == 2 and "missing --opening-balance" in p.stderr
    for bad, why in (("1.005", "more than two decimals"), ("1e3", "--opening-balance \"1e3\" refused"),
                     ("2000000", "more than the limit")):
        p = meterd_cli("account", "activate", "H1", "--opening-balance", bad, "--ref", "MIG-2", "--operator", "li",
                       "-c", site)
        assert p.returncode == 2 and why in p.stderr, p.stderr
    assert json.loads(meterd_cli("account", "show", "H1", "-c", site, "--json").stdout)["state"] == "pending"


@pytest.mark.parametrize("args, message", [
    (("pay", "NOPE", "10", "--ref", "X"), "unknown account NOPE"),
    (("pay", "A1", "ten", "--ref", "X"), 'argument amount "ten" refused: it is not an amount'),
    (("pay", "A1", "-5", "--ref", "X"), 'argument amount "-5" refused: it takes no sign'),
    (("pay", "A1", "1.005", "--ref", "X"), "more than two decimals"),
    (("adjust", "A1", "0", "--ref", "X", "--reason", "r", "--operator", "o"), "zero is not an amount"),
    (("trip", "000000000002", "--reason", "test", "--operator", "li"), "protected account"),
    (("trip", "000000000099", "--reason", "test", "--operator", "li"), "unknown meter"),
    (("trip", "000000000001", "--reason", " ", "--operator", "li"), "reason"),
    # an operator's reason is kept in the command and the audit log: at most 500 characters, as the API takes
    (("trip", "000000000001", "--reason", "r" * 501, "--operator", "li"), "argument --reason: 501 characters, at most 500"),
    (("cancel", "1", "--reason", "r" * 10_000, "--operator", "li"), "argument --reason: 10000 characters, at most 500"),
    (("adjust", "A1", "5", "--ref", "X", "--reason", "r" * 501, "--operator", "o"), "at most 500"),
    (("protect", "A1", "--release", "--reason", "r" * 501, "--operator", "li"), "at most 500"),
    (("cancel", "99", "--reason", "x", "--operator", "li"), "no command #99"),
    (("ledger", "NOPE"), "unknown account NOPE"),
    (("replace-meter", "A1", "000000000002", "000000000003", "--old-final", "1", "--new-initial", "0",
      "--ref", "W", "--operator", "li"), "is not on account A1"),
    (("replace-meter", "A1", "000000000001", "000000000003", "--old-final", "x", "--new-initial", "0",
      "--ref", "W", "--operator", "li"), "not a number"),
])
def test_bad_input_is_refused_with_its_reason_and_nothing_is_written(meterd_cli, site, args, message):
    p = meterd_cli(*args, "-c", site)
    assert p.returncode == 2 and message in p.stderr, (p.stdout, p.stderr)
    ledger = json.loads(meterd_cli("ledger", "A1", "-c", site, "--json").stdout)
    assert ledger["entries"] == [] and ledger["balance"] == "0.00"
    assert json.loads(meterd_cli("commands", "-c", site, "--json").stdout) == []


# issue #14: "92233720368547758.07" drove the balance past int64 into a float; "1e3" … "10." were applied
# (the long one was a traceback, exit 1).  Now each is one line naming the argument, exit 2, nothing written.
REFUSED_AMOUNTS = [
    ("92233720368547758.07", "more than the limit of 5000 yuan (set by [prepaid] max_payment)"),
    ("5000.01", "more than the limit of 5000 yuan"), ("1e3", "exponent"), ("1E+2", "exponent"),
    ("1_000", "separators"), ("１０", "U+FF11 FULLWIDTH DIGIT ONE"), ("١٠", "U+0661 ARABIC-INDIC DIGIT ONE"),
    ("+10", "takes no sign"), (" 10", "whitespace"), ("10 ", "whitespace"), (".5", "before the point"),
    ("10.", "after the point"), ("NaN", "NaN"), ("Infinity", "infinity"), ("-0", "takes no sign"),
    ("0", "zero is not an amount"), ("", "empty"), ("1" * 5000, "longer than 24 characters"),
]


def test_amounts_outside_the_grammar_or_over_the_limit_exit_2_naming_the_argument(meterd_cli, tmp_path):
    (tmp_path / "limited.toml").write_text(SITE.replace("[prepaid]\n", '[prepaid]\nmax_payment = "5000"\n'
                                                                      'max_adjustment = "300"\n'))
    for amount, says in REFUSED_AMOUNTS:
        p = meterd_cli("pay", "--ref", "X", "-c", "limited.toml", "--", "A1", amount)
        assert p.returncode == 2 and p.stdout == "", (amount, p.stdout, p.stderr)
        [line] = p.stderr.splitlines()
        assert line.startswith("meterd: argument amount ") and says in line, (amount, line)
    for amount, says in (("-300.01", "more than the limit of 300 yuan (set by [prepaid] max_adjustment)"),
                         ("-1e3", "exponent"), ("-0", "zero is not an amount"), ("--5", "not an amount")):
        p = meterd_cli("adjust", "--ref", "Y", "--reason", "r", "--operator", "o", "-c", "limited.toml", "--", "A1",
                       amount)
        assert p.returncode == 2 and p.stderr.startswith("meterd: argument amount ") and says in p.stderr, p.stderr
    ledger = json.loads(meterd_cli("ledger", "A1", "-c", "limited.toml", "--json").stdout)
    assert ledger["entries"] == [] and ledger["balance"] == "0.00"
    p = meterd_cli("pay", "--ref", "OK1", "-c", "limited.toml", "--", "A1", "5000")
    assert p.returncode == 0 and "payment OK1: 5000.00 applied" in p.stdout and "balance 5000.00" in p.stdout
    p = meterd_cli("adjust", "--ref", "OK2", "--reason", "r", "--operator", "o", "-c", "limited.toml", "--", "A1",
                   "+0.5")
    assert p.returncode == 0 and "balance 5000.50" in p.stdout, p.stderr


def test_manual_commands_are_queued_listed_and_cancelled(meterd_cli, site):
    p = meterd_cli("trip", "1", "--reason", "tamper found", "--operator", "li", "-c", site, "--json")
    assert p.returncode == 0, p.stderr
    cmd = json.loads(p.stdout)
    assert cmd["kind"] == "trip" and cmd["state"] == "queued" and cmd["requested_by"] == "li" and cmd["manual"]
    p = meterd_cli("trip", "1", "--reason", "again", "--operator", "li", "-c", site)
    assert p.returncode == 2 and "already queued" in p.stderr
    p = meterd_cli("reclose", "1", "--reason", "fixed", "--operator", "li", "-c", site, "--json")
    assert json.loads(p.stdout)["kind"] == "reclose-allowed"
    listed = json.loads(meterd_cli("commands", "-c", site, "--json").stdout)
    assert [(c["kind"], c["state"]) for c in listed] == [("reclose-allowed", "queued"), ("trip", "cancelled")]
    p = meterd_cli("cancel", str(listed[0]["id"]), "--reason", "customer called", "--operator", "li", "-c", site)
    assert p.returncode == 0
    assert json.loads(meterd_cli("commands", "--state", "queued", "-c", site, "--json").stdout) == []


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
    # 合闸允许: confirmed with the relay still open, waiting for the customer, who presses the button
    assert "relay.command_open=no, relay.open=yes" in out and "waits for the customer to press its button" in out
    assert "the customer presses the button on meter 000000000009: the relay closes" in out, out
    assert "trip held: protected account" in out  # the clinic (保电)
    shown = json.loads(run_meterd("account", "show", "DEMO-1001", "--data-dir", str(data), "--json").stdout)
    assert shown["state"] == "normal" and shown["relay"]["000000000009"]["relay.command_open"] is False
    polled = json.loads(run_meterd("readings", "--meter", "9", "--quantity", "relay.open", "--data-dir", str(data),
                                   "--json").stdout)
    assert polled[-1]["value"] is False  # the relay poll after the press: the supply is back
    # the demo's area: yesterday's line loss (CST; the meters came with a history) is its 5 % loss, within
    # what 0.01 kWh registers behind CTs (the supply meter's is 80) allow
    [area] = json.loads(run_meterd("lineloss", "-c", str(data / "demo.toml"), "--json").stdout)
    assert area["unit"] == "TA-DEMO" and area["completeness"] == "100.00", area
    assert abs(Decimal(area["rate"]) - 5) <= Decimal("0.6"), area
    kinds = [e["kind"] for e in json.loads(run_meterd("ledger", "DEMO-1001", "--data-dir", str(data),
                                                      "--json").stdout)["entries"]]
    assert kinds.count("payment") == 2 and "charge" in kinds


# --- issue 18: meters typed as readings does, --wait's exit code, 保电 release, --json, text ----------


def test_commands_finds_a_meter_typed_short_as_readings_does(meterd_cli, site):
    assert meterd_cli("trip", "1", "--reason", "tamper", "--operator", "li", "-c", site).returncode == 0
    for typed in ("1", "000000000001", " 1 "):
        listed = json.loads(meterd_cli("commands", "--meter", typed, "-c", site, "--json").stdout)
        assert [(c["meter"], c["kind"]) for c in listed] == [("000000000001", "trip")], typed
    assert "000000000001 trip" in meterd_cli("commands", "--meter", "1", "-c", site).stdout


def test_wait_exits_3_when_the_command_is_still_queued_at_its_end(meterd_cli, site):
    p = meterd_cli("trip", "1", "--reason", "tamper", "--operator", "li", "--wait", "0.5", "-c", site)
    assert p.returncode == 3, (p.stdout, p.stderr)  # no daemon: nothing sends it
    [line] = [x for x in p.stderr.splitlines() if x.startswith("meterd:")]  # (a new database logs its migration)
    assert "command #1 trip to meter 000000000001: still queued after 0.5 s, not sent" in line, line
    p = meterd_cli("alarm", "1", "--reason", "low", "--operator", "li", "--wait", "0.3", "--json", "-c", site)
    assert p.returncode == 3 and json.loads(p.stdout)["state"] == "queued"
    help_text = meterd_cli("trip", "--help").stdout
    assert "3 still queued or sent" in " ".join(help_text.split())


def test_an_operator_releases_and_sets_protection_over_the_archive(meterd_cli, site, tmp_path):
    p = meterd_cli("trip", "2", "--reason", "works", "--operator", "li", "-c", site)
    assert p.returncode == 2 and "meterd protect H1 --release" in p.stderr
    p = meterd_cli("protect", "H1", "--release", "--reason", "clinic closed for works", "--operator", "li",
                   "--until", "8h", "-c", site)
    assert p.returncode == 0, p.stderr
    assert "H1: 保电 released by li" in p.stdout and "billing system or the config changes that flag" in p.stdout
    shown = meterd_cli("account", "show", "H1", "-c", site).stdout
    [line] = [x for x in shown.splitlines() if x.startswith("protected")]
    assert "no: 保电 released by li on " in line and "(clinic closed for works)" in line
    assert "+08:00" in line and "the archive says yes" in line, line
    doc = json.loads(meterd_cli("account", "show", "H1", "-c", site, "--json").stdout)
    assert (doc["protected"], doc["archive_protected"]) == (False, True)
    assert doc["protection_override"]["operator"] == "li" and doc["protection_override"]["until"]
    listed = meterd_cli("account", "list", "-c", site).stdout.splitlines()
    assert [x.split()[4] for x in listed if x.startswith("H1")] == ["no*"] and listed[-1].startswith("* 保电")
    trip = meterd_cli("trip", "2", "--reason", "works", "--operator", "li", "-c", site, "--json")
    assert trip.returncode == 0, trip.stderr
    meterd_cli("cancel", str(json.loads(trip.stdout)["id"]), "--reason", "r", "--operator", "li", "-c", site)
    p = meterd_cli("protect", "H1", "--set", "--reason", "works done", "--operator", "wang", "-c", site)
    assert p.returncode == 0 and "counts again" in p.stdout
    assert meterd_cli("trip", "2", "--reason", "x", "--operator", "li", "-c", site).returncode == 2
    # A1: protected by an operator, then the config protects it itself: the config's new value
    # supersedes the override, and the next use of -c says so
    p = meterd_cli("protect", "A1", "--set", "--reason", "hospital event", "--operator", "li", "--json", "-c", site)
    assert json.loads(p.stdout)["protection_override"]["reason"] == "hospital event"
    (tmp_path / site).write_text(SITE.replace('customer = "Zhang"', 'customer = "Zhang"\nprotected = true'))
    p = meterd_cli("account", "show", "A1", "-c", site, "--json")
    assert "supersedes the operator's override (保电 set by li" in p.stderr, p.stderr
    doc = json.loads(p.stdout)
    assert doc["protected"] is True and doc["protection_override"] is None


@pytest.mark.parametrize("args, says", [
    (("--until", "-2h"), "the end of an override is in the future"),
    (("--until", "2020-01-01"), "is not in the future"),
    (("--until", "soon"), "is not a time: use a duration from now"),
    (("--until", "8h", "--meters"), "--meters with --until"),
])
def test_protect_refusals_are_one_line_and_change_nothing(meterd_cli, site, args, says):
    p = meterd_cli("protect", "H1", "--release", "--reason", "r", "--operator", "li", *args, "-c", site)
    assert p.returncode == 2 and says in p.stderr, p.stderr
    assert len([x for x in p.stderr.splitlines() if "INFO" not in x]) == 1, p.stderr
    assert json.loads(meterd_cli("account", "show", "H1", "-c", site, "--json").stdout)["protected"] is True
    p = meterd_cli("protect", "NOPE", "--set", "--reason", "r", "--operator", "li", "-c", site)
    assert p.returncode == 2 and "unknown account" in p.stderr


def test_protect_with_meters_queues_the_meters_own_commands(meterd_cli, site):
    p = meterd_cli("protect", "A1", "--set", "--reason", "event", "--operator", "li", "--meters", "-c", site,
                   "--json")
    assert p.returncode == 0, p.stderr
    assert [(c["meter"], c["kind"], c["requested_by"]) for c in json.loads(p.stdout)["commands"]] == [
        ("000000000001", "protect", "li")]


def test_cancel_and_replace_meter_print_json(meterd_cli, site):
    queued = json.loads(meterd_cli("trip", "1", "--reason", "t", "--operator", "li", "-c", site, "--json").stdout)
    p = meterd_cli("cancel", str(queued["id"]), "--reason", "called", "--operator", "li", "-c", site, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["state"] == "cancelled"
    args = ("replace-meter", "A1", "1", "3", "--old-final", "12.5", "--new-initial", "0", "--ref", "W1",
            "--operator", "li", "-c", site, "--json")
    first, again = json.loads(meterd_cli(*args).stdout), json.loads(meterd_cli(*args).stdout)
    assert (first["recorded"], again["recorded"]) == (True, False)
    assert (first["old_meter"], first["new_meter"]) == ("000000000001", "000000000003")


def test_human_output_reads_as_text(meterd_cli, site, tmp_path):
    from datetime import UTC, datetime

    from meterd.control.state import ControlStore

    (tmp_path / site).write_text(SITE.replace('customer = "Zhang"', 'customer = "Zhang"\nthresholds = { trip = "-10" }'))
    meterd_cli("pay", "A1", "20", "--ref", "R1", "-c", site)
    with ControlStore(tmp_path / "data") as store:  # as the daemon records a relay read back
        store.record_relay("000000000001", {"relay.open": False, "relay.command_open": False,
                                            "alarm.pre_trip": True, "relay.protected": False},
                           now=datetime(2026, 11, 2, 2, 0, tzinfo=UTC))
    meterd_cli("trip", "1", "--reason", "t", "--operator", "li", "-c", site)
    outputs = {name: meterd_cli(*args, "-c", site).stdout for name, args in (
        ("show A1", ("account", "show", "A1")), ("show H1", ("account", "show", "H1")),
        ("list", ("account", "list")), ("commands", ("commands",)), ("ledger", ("ledger", "A1")))}
    for name, out in outputs.items():
        for python in ("False", "True", "None", "{", "["):
            assert python not in out, (name, python, out)
    show = outputs["show A1"]
    assert "protected          no" in show and "balance            20.00 yuan" in show
    assert "thresholds         trip -10 (this account's own" in show
    assert ("meter 000000000001 ×50: relay closed, commanded closed, pre-trip alarm on, meter 保电 off "
            "(confirmed 2026-11-02 10:00:00+08:00)") in show
    assert "protected          yes (保电, from the archive)" in outputs["show H1"]
    assert "+08:00" in outputs["ledger"] and "+08:00" in outputs["commands"]
