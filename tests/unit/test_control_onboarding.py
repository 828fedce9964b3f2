"""Onboarding in the state database: opening balances applied once, pending accounts, activation,
the alarm episode kept across restarts, and the schema migrations that bring old databases up to
date -- on SQLite and on PostgreSQL (``state_where``)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterd.control.model import EntryKind
from meterd.control.state import _MIGRATIONS, _SCHEMA, AccountSpec, ControlStore, LedgerError
from meterd.errors import ConfigError
from meterd.storage.database import Database, translate_schema
from meterd.storage.sqlite import STATE_FILE

T0 = datetime(2026, 12, 7, 2, 0, tzinfo=timezone.utc)  # 10:00 CST
M1, M2, M3 = "000000000001", "000000000002", "000000000003"


@pytest.fixture
def store(state_where):
    with ControlStore(state_where) as s:
        yield s


class _Raw:
    """A connection of the test's own to where the store lives, past the store (sqlite3 or psycopg)."""

    def __init__(self, where) -> None:
        if isinstance(where, Database):
            import psycopg

            self.postgres = True
            self.conn = psycopg.connect(where.url, autocommit=True)
        else:
            self.postgres = False
            self.conn = sqlite3.connect(where / STATE_FILE, isolation_level=None)

    def execute(self, sql: str, params=()):
        return self.conn.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    def script(self, script: str) -> None:
        for statement in translate_schema(script) if self.postgres else [script]:
            (self.conn.execute if self.postgres else self.conn.executescript)(statement)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.conn.close()


def test_an_account_without_an_opening_balance_is_created_pending(store):
    changes = store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)})], actor="billing", now=T0)
    assert changes[0] == "account A1: created (tariff res, area ''), pending: no opening balance"
    a = store.account("A1")
    assert (a.state, a.balance, store.ledger("A1")) == ("pending", Decimal("0.00"), [])
    # the policy pass never reads it
    assert store.policy_rows(changed_since=None, quiet_above=None, now=T0) == []


def test_an_opening_balance_is_one_ledger_entry_applied_once_and_activates(store):
    spec = AccountSpec("A1", "res", {M1: Decimal(1)}, opening_balance=Decimal("50.00"), opening_ref="WO-7")
    changes = store.upsert_accounts([spec], actor="config", now=T0)
    assert "account A1: opening balance 50.00 applied" in changes
    a = store.account("A1")
    assert (a.state, a.balance) == ("normal", Decimal("50.00"))
    [row] = store.ledger("A1")
    assert (row.key, row.kind, row.amount, row.actor) == ("opening:A1", EntryKind.OPENING, Decimal("50.00"), "config")
    assert "WO-7" in row.detail
    # a restart with the same config, a replayed import: nothing twice, nothing said
    assert store.upsert_accounts([spec], actor="config", now=T0 + timedelta(hours=1)) == []
    assert store.balance("A1") == Decimal("50.00") and len(store.ledger("A1")) == 1
    assert store.opening_balances() == {"A1": Decimal("50.00")}
    audit = [(r.action, r.detail.get("key")) for r in store.audit_log(subject="A1")]
    assert ("opening", "opening:A1") in audit
    assert store.verify_balances() == []


def test_a_different_opening_balance_later_is_not_applied_and_is_reported(store):
    store.upsert_accounts([AccountSpec("A1", "res", {}, opening_balance=Decimal("50"))], actor="billing", now=T0)
    changes = store.upsert_accounts([AccountSpec("A1", "res", {}, opening_balance=Decimal("80"))], actor="billing",
                                    now=T0 + timedelta(days=1))
    assert changes == ["account A1: opening balance 80.00 not applied: 50.00 was applied on 2026-12-07 10:00 CST by "
                       "billing (an opening balance is applied once; correct it with an adjustment)"]
    assert store.balance("A1") == Decimal("50.00")
    assert "opening-duplicate" in [r.action for r in store.audit_log(subject="A1")]


def test_one_upsert_of_many_specs_is_applied_in_order_as_one_by_one(store, state_where):
    """One call (on PostgreSQL: read at once, written as batches) says and does what the specs
    would one after the other: an account given twice, a meter unassigned then taken by a later
    spec, a meter moved from an earlier spec's account, opening balances applied, duplicated and
    refused, accounts activated, and the audit lines in that order."""
    M4, M6 = "000000000004", "000000000006"
    store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}, opening_balance=Decimal(50)),
                           AccountSpec("A2", "res", {M2: Decimal(1), M3: Decimal(1)}),
                           AccountSpec("A3", "res", {})], actor="billing", now=T0)
    with _Raw(state_where) as raw:  # live before opening balances existed
        raw.execute("UPDATE accounts SET state = 'normal' WHERE account = 'A3'")
    audits = len(store.audit_log(limit=1000))
    later = T0 + timedelta(days=1)
    changes = store.upsert_accounts([
        AccountSpec("A2", "tou", {M2: Decimal(1), M4: Decimal(30)}, customer="Li"),
        AccountSpec("A1", "res", {M1: Decimal(1), M3: Decimal(2)}, opening_balance=Decimal(80)),
        AccountSpec("A5", "res", {M4: Decimal(30)}, opening_balance=Decimal(10), opening_ref="WO-5"),
        AccountSpec("A2", "tou", {M2: Decimal(1)}, customer="Li", opening_balance=Decimal(5)),
        AccountSpec("A3", "res", {}, opening_balance=Decimal(7)),
        AccountSpec("A6", "res", {M6: Decimal(1)}, area="TA9"),
    ], actor="billing", now=later)
    assert changes == [
        "account A2: customer '' -> 'Li', tariff 'res' -> 'tou'",
        f"account A2: meter {M4} assigned (×30)",
        f"account A2: meter {M3} unassigned",
        f"account A1: meter {M3} assigned (×2)",
        "account A1: opening balance 80.00 not applied: 50.00 was applied on 2026-12-07 10:00 CST by billing (an "
        "opening balance is applied once; correct it with an adjustment)",
        "account A5: created (tariff res, area '')",
        f"account A5: meter {M4} moved from A2 (×30 -> ×30)",
        "account A5: opening balance 10.00 applied",
        "account A5: activated (was pending)",
        "account A2: opening balance 5.00 applied",
        "account A2: activated (was pending)",
        "account A3: opening balance 7.00 not applied: the account is active (opened 2026-12-07 10:00 CST) without "
        "one; correct its balance with an adjustment",
        "account A6: created (tariff res, area 'TA9'), pending: no opening balance",
        f"account A6: meter {M6} assigned (×1)",
    ]
    assert store.meter_accounts() == {M1: ("A1", Decimal(1)), M2: ("A2", Decimal(1)), M3: ("A1", Decimal(2)),
                                      M4: ("A5", Decimal(30)), M6: ("A6", Decimal(1))}
    got = {a.account: (a.state, a.balance, a.tariff, a.customer, a.area, a.opened) for a in store.accounts()}
    assert got == {"A1": ("normal", Decimal("50.00"), "res", "", "", T0),
                   "A2": ("normal", Decimal("5.00"), "tou", "Li", "", T0),
                   "A3": ("normal", Decimal("0.00"), "res", "", "", T0),
                   "A5": ("normal", Decimal("10.00"), "res", "", "", later),
                   "A6": ("pending", Decimal("0.00"), "res", "", "TA9", later)}
    opened = sorted((r for a in ("A2", "A5") for r in store.ledger(a)), key=lambda r: r.seq)
    assert [(r.key, r.amount, r.actor, r.recorded) for r in opened] == [
        ("opening:A5", Decimal("10.00"), "billing", later), ("opening:A2", Decimal("5.00"), "billing", later)]
    assert "WO-5" in opened[0].detail and store.verify_balances() == []
    new = store.audit_log(limit=1000)[audits:]
    assert [(r.action, r.subject) for r in new] == [
        ("opening-duplicate", "A1"), ("opening", "A5"), ("control-state", "A5"), ("opening", "A2"),
        ("control-state", "A2"), ("opening-refused", "A3"), *[("account", line.split()[1][:-1]) for line in changes]]
    assert [r.detail for r in new[len(new) - len(changes):]] == [{"change": line} for line in changes]
    assert new[1].detail == {"key": "opening:A5", "amount": "10.00", "detail": "opening balance (billing, WO-5)",
                             "ref": "WO-5"}
    assert new[2].detail == {"from": "pending", "to": "normal", "held": None, "reason": "activated", "ref": "WO-5"}
    assert {(r.actor, r.at) for r in new} == {("billing", later)}


def test_an_upsert_refused_part_way_changes_nothing(store):
    store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)})], actor="billing", now=T0)
    audits = len(store.audit_log(limit=1000))
    with pytest.raises(LedgerError, match="account F: opening balance 1.005 has more than two decimal places"):
        store.upsert_accounts([AccountSpec("A1", "tou", {M2: Decimal(1)}, opening_balance=Decimal(3)),
                               AccountSpec("A7", "res", {M3: Decimal(1)}, opening_balance=Decimal(1)),
                               AccountSpec("F", "res", {}, opening_balance=Decimal("1.005"))], actor="b", now=T0)
    assert store.account("A7") is None and store.account("F") is None
    a = store.account("A1")
    assert (a.tariff, a.state, a.balance, a.meters) == ("res", "pending", Decimal("0.00"), {M1: Decimal(1)})
    assert store.meter_accounts() == {M1: ("A1", Decimal(1))} and store.ledger("A1") == []
    assert len(store.audit_log(limit=1000)) == audits
    assert store.upsert_accounts([], actor="b", now=T0) == []


def test_opening_balances_may_be_zero_or_negative_but_not_finer_than_a_fen(store):
    store.upsert_accounts([AccountSpec("Z", "res", {}, opening_balance=Decimal(0)),
                           AccountSpec("N", "res", {}, opening_balance=Decimal("-12.30"))], actor="billing", now=T0)
    assert (store.account("Z").state, store.balance("Z")) == ("normal", Decimal("0.00"))
    assert store.ledger("Z")[0].key == "opening:Z"
    assert store.balance("N") == Decimal("-12.30")
    with pytest.raises(LedgerError, match="account F: opening balance 1.005 has more than two decimal places"):
        store.upsert_accounts([AccountSpec("F", "res", {}, opening_balance=Decimal("1.005"))], actor="b", now=T0)
    assert store.account("F") is None  # the whole upsert was rolled back


def test_an_operator_activates_a_pending_account_once(store):
    store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)})], actor="billing", now=T0)
    store.pay("A1", "20", "P1", actor="counter", now=T0)  # payments and charges go on while pending
    done = store.activate("A1", Decimal("30.50"), "MIG-1", actor="wang", now=T0 + timedelta(hours=1))
    assert done.applied and done.balance == Decimal("50.50")
    assert store.account("A1").state == "normal"
    again = store.activate("A1", Decimal("30.50"), "MIG-1", actor="wang", now=T0 + timedelta(hours=2))
    assert not again.applied and "already" in again.reason and again.balance == Decimal("50.50")
    other = store.activate("A1", Decimal("99"), "MIG-2", actor="wang", now=T0 + timedelta(hours=2))
    assert not other.applied and "30.50 was applied" in other.reason and store.balance("A1") == Decimal("50.50")
    states = [r.detail for r in store.audit_log(subject="A1") if r.action == "control-state"]
    assert states == [{"from": "pending", "to": "normal", "held": None, "reason": "activated", "ref": "MIG-1"}]
    assert store.last_seq() > 0 and store.verify_balances() == []


def test_activation_without_an_amount_opens_at_zero_so_the_policy_sees_it(store):
    store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)})], actor="billing", now=T0)
    seq = store.last_seq()
    store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}, activate=True)], actor="billing", now=T0)
    assert store.account("A1").state == "normal" and store.opening_balances() == {"A1": Decimal("0.00")}
    rows = store.policy_rows(changed_since=seq, quiet_above=Decimal(50), now=T0)
    assert [r[0] for r in rows] == ["A1"]  # the ledger moved: the next pass decides it


@pytest.mark.parametrize("account, ref, actor, message", [
    ("A9", "R", "wang", "unknown account"),
    ("A1", " ", "wang", "reference id"),
    ("A1", "R", "", "operator"),
])
def test_activation_refusals(store, account, ref, actor, message):
    store.upsert_accounts([AccountSpec("A1", "res", {})], actor="billing", now=T0)
    with pytest.raises(LedgerError, match=message):
        store.activate(account, Decimal(1), ref, actor=actor, now=T0)
    assert store.account("A1").state == "pending"


def test_the_alarm_episode_is_stored_and_survives_a_restart(state_where):
    with ControlStore(state_where) as store:
        store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}, opening_balance=Decimal(0))],
                              actor="t", now=T0)
        store.record_decisions([("A1", "alarmed", "notice period: ...", T0)], [], now=T0, ttl=timedelta(hours=2))
    with ControlStore(state_where) as store:
        a = store.account("A1")
        assert (a.state, a.alarmed_at) == ("alarmed", T0)
        [row] = store.policy_rows(changed_since=None, quiet_above=None, now=T0)
        assert row[8] == int(T0.timestamp() * 1000)
        audit = [r.detail for r in store.audit_log(subject="A1") if r.action == "control-state"]
        assert audit[-1]["alarmed_at"] == T0.isoformat(sep=" ")
        store.set_control_state([("A1", "normal", None)], now=T0, actor="t")  # no episode given: cleared
        assert store.account("A1").alarmed_at is None


def _old_database(where) -> None:
    """A state database as meterd wrote it before alarm episodes were kept (schema version 0), with
    a command queued then."""
    with _Raw(where) as raw:
        raw.script(_SCHEMA)
        ms = int(T0.timestamp() * 1000)
        for name, state in (("A1", "normal"), ("A2", "alarmed"), ("A3", "tripped"), ("A4", "reminded")):
            raw.execute("INSERT INTO accounts (account, tariff, opened_ts, state, balance_fen) "
                        "VALUES (?, 'res', ?, ?, 0)", (name, ms, state))
        raw.execute("INSERT INTO commands (meter, account, kind, state, reason, requested_by, created_ts, expires_ts, "
                    "next_try_ts) VALUES (?, 'A3', 'trip', 'queued', 'balance', 'policy', ?, ?, ?)",
                    (M3, ms, ms + 3_600_000, ms))


def test_the_migration_keeps_live_accounts_live(state_where):
    _old_database(state_where)
    with ControlStore(state_where) as store:
        assert {a.account: (a.state, a.alarmed_at) for a in store.accounts()} == {
            "A1": ("normal", None), "A2": ("alarmed", None), "A3": ("tripped", None), "A4": ("reminded", None)}
        # only accounts created from now on without an opening balance are pending
        store.upsert_accounts([AccountSpec("A1", "res", {}), AccountSpec("B1", "res", {})], actor="config", now=T0)
        assert store.account("A1").state == "normal" and store.account("B1").state == "pending"
        [old] = store.due_commands(T0)  # the commands table has its node column: unclaimed so far
        assert (old.meter, old.node) == (M3, None)
        assert store.mark_sent(old.id, now=T0, node="n1").node == "n1"
        # 3: the operators' 保电 overrides have their table
        assert store.set_protection("A1", True, reason="event", actor="li", now=T0).changed
    with _Raw(state_where) as raw:
        version = raw.execute("SELECT version FROM schema_versions WHERE store = 'control'").fetchone()
        assert tuple(version) == (len(_MIGRATIONS),) == (3,)
    with ControlStore(state_where) as store:  # opened again: nothing left to do
        assert store.account("A2").state == "alarmed"


def test_a_database_newer_than_the_code_is_refused(state_where):
    ControlStore(state_where).close()
    with _Raw(state_where) as raw:
        raw.execute("UPDATE schema_versions SET version = 7 WHERE store = 'control'")
    with pytest.raises(ConfigError, match="schema version 7, newer than this meterd knows"):
        ControlStore(state_where)
