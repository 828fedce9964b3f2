"""``meterd alarms`` as an operator types it, as a process: the list synced from the stores (an
anomaly, a stuck relay, a DTU offline that the master has polled), ack / assign / close with the
operator named and audited, closing twice and other bad input refused with exit 2 and nothing written."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from meterd.analytics.anomalies import AnomalyStore, Finding, Kind, Severity
from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.state import AccountSpec, ControlStore
from meterd.storage.quality import QualityStore

AT = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # the seeded events' time (the CLI itself runs on the real clock)

SITE = """
[store]
data_dir = "data"

[listeners.gprs]
host = "127.0.0.1"
port = 9
formats = ["usr-ascii"]

[channels.d1]
dtu = { listener = "gprs", terminal = "DTU00000001" }

[channels.d2]
dtu = { listener = "gprs", terminal = "DTU00000002" }

[[meters]]
address = "000000000001"
channel = "d1"

[[meters]]
address = "000000000002"
channel = "d2"
"""


@pytest.fixture
def site(tmp_path: Path) -> str:
    (tmp_path / "site.toml").write_text(SITE)
    data = tmp_path / "data"
    data.mkdir()
    with ControlStore(data) as control:
        control.upsert_accounts([AccountSpec("A1", "flat", {"000000000001": Decimal(1)})], actor="test", now=AT)
        [cmd] = control.queue_commands([CommandRequest("000000000001", CommandKind.TRIP, "low balance", "policy",
                                                       account="A1")], now=AT, ttl=timedelta(hours=2))
        control.mark_sent(cmd.id, now=AT)
        control.finish(cmd.id, CommandState.FAILED, now=AT, detail="control anomaly: relay.open reads no",
                       read_back={"relay.open": False})
    with AnomalyStore(data) as anomalies:
        anomalies.update([Finding("000000000002", Kind.CLOCK, Severity.WARNING, AT, "meter clock 0:09:00 ahead", ())],
                         [], AT)
    with QualityStore(data) as quality:
        quality.record_watch("d1", AT)  # d1 was polled and is not online; d2 was never polled: not judged
    return "site.toml"


def _audit(tmp_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "data" / "state.sqlite3") as conn:
        return conn.execute("SELECT actor, action FROM audit WHERE action LIKE 'alarm-%' ORDER BY id").fetchall()


def test_list_ack_assign_close(run_meterd, site, tmp_path) -> None:
    p = run_meterd("alarms", "-c", site, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    by_kind = {a["kind"]: a for a in doc["alarms"]}
    assert set(by_kind) == {"relay_stuck", "anomaly", "terminal_offline"}, by_kind
    assert by_kind["terminal_offline"]["subject"] == "DTU00000001"
    assert by_kind["relay_stuck"]["severity"] == "critical"
    assert doc["counts"] == {"open": 3, "acknowledged": 0, "closed": 0}
    stuck = by_kind["relay_stuck"]["id"]
    again = json.loads(run_meterd("alarms", "-c", site, "--json").stdout)
    assert sorted(a["id"] for a in again["alarms"]) == sorted(a["id"] for a in doc["alarms"])  # not raised twice

    p = run_meterd("alarms", "ack", str(stuck), "--operator", "li", "--comment", "calling the crew", "-c", site)
    assert p.returncode == 0 and "acknowledged" in p.stdout and "calling the crew" in p.stdout, p.stderr
    p = run_meterd("alarms", "assign", str(stuck), "--to", "wang", "--operator", "li", "-c", site)
    assert p.returncode == 0 and "-> wang" in p.stdout, p.stderr
    p = run_meterd("alarms", "close", str(stuck), "--operator", "wang", "--comment", "relay replaced", "-c", site,
                   "--json")
    assert p.returncode == 0, p.stderr
    closed = json.loads(p.stdout)
    assert closed["state"] == "closed" and closed["assignee"] == "wang"
    assert [(h["action"], h["by"]) for h in closed["history"]] == [
        ("raised", "meterd"), ("acknowledged", "li"), ("assigned", "li"), ("closed", "wang")]
    assert _audit(tmp_path) == [("li", "alarm-acknowledge"), ("li", "alarm-assign"), ("wang", "alarm-close")]

    text = run_meterd("alarms", "-c", site).stdout  # active ones, in the site's zone with the offset
    assert f"#{stuck} " not in text and "2 open, 0 acknowledged, 1 closed" in text and "+08:00" in text
    closed_list = json.loads(run_meterd("alarms", "--state", "closed", "-c", site, "--json").stdout)
    assert [a["id"] for a in closed_list["alarms"]] == [stuck]


BAD = [
    (("close", "1", "--operator", "li"), "comment is required"),
    (("close", "99", "--operator", "li", "--comment", "x"), "no alarm #99"),
    (("ack", "1"), "--operator is required"),
    (("close", "1", "--operator", "li", "--comment", "x" * 2001), "at most 2000"),
]


def test_bad_input_and_closing_twice_are_refused_with_exit_2(run_meterd, site, tmp_path) -> None:
    first = json.loads(run_meterd("alarms", "-c", site, "--json").stdout)["alarms"][-1]["id"]
    assert first == 1
    for args, message in BAD:
        p = run_meterd("alarms", *args, "-c", site)
        assert p.returncode == 2 and message in p.stderr, (args, p.stdout, p.stderr)
    assert _audit(tmp_path) == []
    assert run_meterd("alarms", "close", "1", "--operator", "li", "--comment", "done", "-c", site).returncode == 0
    p = run_meterd("alarms", "close", "1", "--operator", "li", "--comment", "done again", "-c", site)
    assert p.returncode == 2 and "closed already" in p.stderr
    assert _audit(tmp_path) == [("li", "alarm-close")]
