"""Switching prepaid on cuts nobody off by surprise: a district imported from billing without opening
balances is charged but never alarmed or tripped; an account that opens at 0.00 -- at the trip
level -- is alarmed first and tripped only when the notice period has passed, across a restart.
The engine runs on a real state database and a real billing import; time is passed in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from meterd.billing_link.jobs import JobKind, JobSpec, run_job
from meterd.control.engine import PrepaidEngine, PrepaidSettings
from meterd.control.model import CommandKind
from meterd.control.policy import SafetyRules, Threshold, Thresholds
from meterd.control.state import ControlStore
from meterd.control.tariff import Tariff, TariffKind, TariffVersion
from meterd.readings import Reading

T0 = datetime(2026, 12, 7, 2, 0, tzinfo=timezone.utc)  # Monday 10:00 CST
FLAT = Tariff("flat", (TariffVersion(effective=datetime(2020, 1, 1).date(), kind=TariffKind.FLAT,
                                     price=Decimal("0.50")),))
THRESHOLDS = Thresholds(Threshold(Decimal(20)), Threshold(Decimal(10)), Threshold(Decimal(0)), Threshold(Decimal(5)))
DISTRICT = 40


def meter(i: int) -> str:
    return f"{i:012d}"


def import_accounts(tmp_path: Path, data_dir: Path, rows: list[str], name: str, now: datetime):
    inbox = tmp_path / "drop" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_text("account,tariff,meters,area,opening_balance\n" + "".join(rows))
    return run_job(JobSpec("accounts", JobKind.IMPORT_ACCOUNTS, folder=tmp_path / "drop"), where=data_dir,
                   now=now, known_tariffs=("flat",))


def engine_on(data_dir: Path, rules: SafetyRules = SafetyRules()) -> tuple[ControlStore, PrepaidEngine]:
    store = ControlStore(data_dir)
    return store, PrepaidEngine(store, PrepaidSettings(THRESHOLDS, rules), {"flat": FLAT})


def energy(i: int, at: datetime, kwh: int) -> Reading:
    return Reading(meter(i), "energy.active.import.total", at, Decimal(kwh), "kWh")


def test_a_district_imported_without_opening_balances_trips_nobody(tmp_path):
    data_dir = tmp_path / "data"
    rows = [f"C{i:03d},flat,{meter(i)},TA{i % 4},\n" for i in range(1, DISTRICT + 1)]
    result = import_accounts(tmp_path, data_dir, rows, "district.csv", T0)
    assert result.counts["created"] == DISTRICT
    store, engine = engine_on(data_dir)
    commands, notices = [], []
    for hour in range(0, 72, 6):  # three days of passes, every account using 10 kWh (5.00) an hour
        at = T0 + timedelta(hours=hour)
        engine.observe([energy(i, at, 1000 + 10 * hour) for i in range(1, DISTRICT + 1)])
        summary = engine.run_pass(at)
        commands += summary.commands
        notices += summary.notices
    assert commands == [] and notices == [] and store.commands() == []
    accounts = store.accounts()
    assert {a.state for a in accounts} == {"pending"}
    # charging went on: every balance is honest, far below the trip level, and equal to its ledger
    assert {a.balance for a in accounts} == {Decimal("-330.00")}
    assert store.verify_balances() == []
    store.close()


def test_an_opening_balance_of_zero_is_alarmed_first_and_tripped_after_the_notice(tmp_path):
    data_dir = tmp_path / "data"
    import_accounts(tmp_path, data_dir, [f"A1,flat,{meter(1)},TA1,0\n", f"A2,flat,{meter(2)},TA1,\n"],
                    "open.csv", T0)
    store, engine = engine_on(data_dir)
    first = engine.run_pass(T0)
    assert [(c.meter, c.kind) for c in first.commands] == [(meter(1), CommandKind.ALARM)]
    assert [n.kind for n in first.notices] == ["alarm", "held"]
    a1 = store.account("A1")
    assert (a1.state, a1.alarmed_at) == ("alarmed", T0)
    assert a1.held == "notice period: alarmed 2026-12-07 10:00 CST, trip not before 2026-12-08 10:00 CST"
    assert "supply cut not before 2026-12-08 10:00 CST" in first.notices[0].message
    for hours in (1, 6, 12):
        p = engine.run_pass(T0 + timedelta(hours=hours))
        assert p.commands == [] and p.notices == []  # held, said once
    store.close()
    # the daemon restarts in the middle of the notice: the alarm time is in the state database
    store, engine = engine_on(data_dir)
    assert engine.run_pass(T0 + timedelta(hours=23, minutes=59)).commands == []
    assert store.account("A1").state == "alarmed"
    due = engine.run_pass(T0 + timedelta(hours=24))
    assert [(c.meter, c.kind) for c in due.commands] == [(meter(1), CommandKind.TRIP)]
    assert store.account("A1").state == "tripped" and store.account("A1").held is None
    assert store.account("A2").state == "pending"  # nothing at any point for the pending one
    assert [c.account for c in store.commands()] == ["A1", "A1"]
    store.close()


def test_activating_a_pending_account_alarms_it_at_the_next_pass_and_gives_notice(tmp_path):
    data_dir = tmp_path / "data"
    import_accounts(tmp_path, data_dir, [f"A1,flat,{meter(1)},TA1,\n"], "a.csv", T0)
    store, engine = engine_on(data_dir)
    engine.observe([energy(1, T0, 100)])
    engine.run_pass(T0)
    engine.observe([energy(1, T0 + timedelta(hours=1), 120)])  # -10.00 while pending
    assert engine.run_pass(T0 + timedelta(hours=1)).commands == []
    assert store.balance("A1") == Decimal("-10.00")
    with ControlStore(data_dir) as cli:  # meterd account activate, from another process
        done = cli.activate("A1", Decimal("5"), "MIG-1", actor="wang", now=T0 + timedelta(hours=2))
    assert done.applied and done.balance == Decimal("-5.00")
    p = engine.run_pass(T0 + timedelta(hours=2))
    assert [c.kind for c in p.commands] == [CommandKind.ALARM]  # alarmed first, not tripped
    assert store.account("A1").held.startswith("notice period: alarmed 2026-12-07 12:00 CST")
    # a payment out of the alarm band ends the episode; the next fall below trip gives notice again
    store.pay("A1", "100", "P1", actor="counter", now=T0 + timedelta(hours=3))
    p = engine.run_pass(T0 + timedelta(hours=3))
    assert [c.kind for c in p.commands] == [CommandKind.ALARM_RELEASE] and store.account("A1").alarmed_at is None
    engine.observe([energy(1, T0 + timedelta(days=2), 320)])  # -100.00: below the trip level again
    late = T0 + timedelta(days=2)
    p = engine.run_pass(late)
    assert [c.kind for c in p.commands] == [CommandKind.ALARM] and store.account("A1").alarmed_at == late
    assert engine.run_pass(late + timedelta(hours=23)).commands == []
    assert [c.kind for c in engine.run_pass(late + timedelta(hours=24)).commands] == [CommandKind.TRIP]
    store.close()


def test_dry_run_shows_the_same_notice_and_the_trip_when_it_would_go_out(tmp_path):
    data_dir = tmp_path / "data"
    import_accounts(tmp_path, data_dir, [f"A1,flat,{meter(1)},TA1,0\n"], "a.csv", T0)
    store, engine = engine_on(data_dir, SafetyRules(dry_run=True))
    assert [c.kind for c in engine.run_pass(T0).commands] == [CommandKind.ALARM]
    assert engine.run_pass(T0 + timedelta(hours=12)).commands == []
    assert [c.kind for c in engine.run_pass(T0 + timedelta(hours=24)).commands] == [CommandKind.TRIP]
    assert {c.state.value for c in store.commands()} == {"dry-run"}
    store.close()
