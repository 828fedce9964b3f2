"""The prepaid state database: exactly-once ledger, balances kept equal to the ledger, command lifecycle.

Every store test runs on SQLite and on PostgreSQL (``state_where``); the tests of SQLite's own
machinery (WAL checkpoints, ``synchronous``) say so in their names and fixtures."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from meterd.control.model import CommandKind, CommandRequest, CommandState, EntryKind, LedgerEntry, Rate
from meterd.control import state
from meterd.control.state import AccountSpec, ControlStore, LedgerError, to_fen
from meterd.storage.database import Database

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
M1, M2 = "000000000001", "000000000002"


TABLES = "accounts, account_meters, ledger, cursors, tier_usage, charge_flags, commands, relay_states, replacements, audit"


def _open(where) -> ControlStore:
    s = ControlStore(where)
    s.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}, customer="Li", area="TA1"),
                       AccountSpec("A2", "res", {M2: Decimal(30)}, area="TA1", protected=True)],
                      actor="test", now=T0)
    return s


@pytest.fixture
def store(state_where):
    s = _open(state_where)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    """For the tests of SQLite's own machinery (WAL, ``synchronous``, checkpoints)."""
    s = _open(tmp_path)
    yield s
    s.close()


@contextlib.contextmanager
def empty_store(where):
    """A store with no rows, once per hypothesis example: a new SQLite file, or the test's
    PostgreSQL database emptied (a database per example would cost a CREATE DATABASE each)."""
    if isinstance(where, Database):
        s = ControlStore(where)
        s._conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
        try:
            yield s
        finally:
            s.close()
        return
    with tempfile.TemporaryDirectory() as tmp, ControlStore(tmp) as s:
        yield s


def _integrity_error(store):
    import psycopg

    return psycopg.IntegrityError if store.postgres else sqlite3.IntegrityError


def test_payment_applies_once_per_reference(store):
    first = store.pay("A1", "100.50", "R1", actor="counter", now=T0)
    again = store.pay("A1", "100.50", "R1", actor="counter", now=T0 + timedelta(minutes=1))
    assert first.applied and first.balance == Decimal("100.50")
    assert not again.applied and "already applied" in again.reason and again.balance == Decimal("100.50")
    assert [r.kind for r in store.ledger("A1")] == [EntryKind.PAYMENT]
    actions = [a.action for a in store.audit_log(subject="A1")]
    assert "payment" in actions and "payment-duplicate" in actions


def test_a_duplicate_id_with_a_different_amount_is_ignored_and_says_so(store):
    store.pay("A1", "50", "R1", actor="counter", now=T0)
    again = store.pay("A1", "80", "R1", actor="counter", now=T0)
    assert not again.applied and "differing duplicate" in again.reason
    assert store.balance("A1") == Decimal("50.00")


@pytest.mark.parametrize("amount, message", [
    ("abc", "not an amount"), ("-5", "takes no sign"), ("0", "must be positive"), ("1.234", "two decimals"),
    ("NaN", "NaN"), ("Infinity", "infinity"), ("1e3", "exponent"), ("1E+2", "exponent"), ("1_000", "separators"),
    ("１０", "ASCII"), ("١٠", "ASCII"), ("+10", "takes no sign"), ("-0", "takes no sign"), (" 10", "whitespace"),
    ("10 ", "whitespace"), (".5", "before the point"), ("10.", "after the point"), ("", "empty"),
    ("92233720368547758.07", "more than the limit of 10000000000 yuan"), ("9" * 100, "longer than"),
    (10.5, "not an amount"), (True, "not an amount"), (Decimal("1E+999999"), "beyond any real ledger entry"),
])
def test_bad_payments_are_refused_and_change_nothing(store, amount, message):
    with pytest.raises(LedgerError, match=message):
        store.pay("A1", amount, "R9", actor="counter", now=T0)
    assert store.ledger("A1") == [] and store.balance("A1") == 0


def test_unknown_account_and_missing_reference_are_refused(store):
    with pytest.raises(LedgerError, match="unknown account NOPE"):
        store.pay("NOPE", "10", "R1", actor="counter", now=T0)
    with pytest.raises(LedgerError, match="reference id is required"):
        store.pay("A1", "10", " ", actor="counter", now=T0)
    with pytest.raises(LedgerError, match="reason is required"):
        store.adjust("A1", "-1", "ADJ1", actor="op", now=T0, reason="")


def test_adjustments_are_signed(store):
    store.pay("A1", "20", "R1", actor="counter", now=T0)
    assert store.adjust("A1", "-2.50", "ADJ1", actor="op", now=T0, reason="meter test").balance == Decimal("17.50")
    assert store.adjust("A1", "1", "ADJ2", actor="op", now=T0, reason="goodwill").balance == Decimal("18.50")


def test_apply_skips_known_keys_and_rolls_back_on_unknown_account(store):
    charge = LedgerEntry("charge:M1:total:a/b:0", "A1", EntryKind.CHARGE, Decimal("-1.23"), T0, meter=M1,
                         rate=Rate.TOTAL, kwh=Decimal("2.5"), price=Decimal("0.4920"))
    assert store.apply([charge], actor="charging", now=T0) == [charge]
    assert store.apply([charge], actor="charging", now=T0) == []
    bad = LedgerEntry("charge:X", "NOPE", EntryKind.CHARGE, Decimal("-1"), T0)
    other = LedgerEntry("charge:Y", "A1", EntryKind.CHARGE, Decimal("-1"), T0)
    with pytest.raises(LedgerError, match="unknown account NOPE"):
        store.apply([other, bad], actor="charging", now=T0)
    assert store.balance("A1") == Decimal("-1.23")  # `other` was rolled back with the batch
    row = store.ledger("A1")[0]
    assert (row.meter, row.rate, row.kwh, row.price) == (M1, "total", Decimal("2.5"), Decimal("0.4920"))


def _pay(key, account, amount, detail=""):
    return LedgerEntry(key, account, EntryKind.PAYMENT, Decimal(amount), T0, detail=detail)


def test_apply_in_one_call_takes_each_new_key_once_in_the_order_given_and_audits_each(store):
    """One call of many entries (on PostgreSQL: one statement for all of them): a key already in
    the ledger is skipped, a key given twice keeps its first entry, the balances move by what went
    in, seq follows the order given, and each entry applied has its audit line, in order."""
    store.apply([_pay("payment:old", "A1", "1.00")], actor="billing", now=T0)
    audits = len(store.audit_log(limit=1000))
    given = [_pay("payment:z", "A2", "5.00", "z"), _pay("payment:old", "A1", "9.00"),  # known: skipped
             _pay("payment:a", "A1", "2.00", "a"), _pay("payment:z", "A1", "7.00", "z again"),  # twice: the first
             LedgerEntry("adjustment:j", "A1", EntryKind.ADJUSTMENT, Decimal("-0.50"), T0, detail="j")]
    applied = store.apply(given, actor="billing", now=T0 + timedelta(minutes=1))
    assert applied == [given[0], given[2], given[4]]
    assert store.balance("A1") == Decimal("2.50") and store.balance("A2") == Decimal("5.00")
    assert store.verify_balances() == []
    rows = store.ledger("A1") + store.ledger("A2")
    assert [(r.key, r.account, r.amount, r.detail) for r in sorted(rows, key=lambda r: r.seq)] == [
        ("payment:old", "A1", Decimal("1.00"), ""), ("payment:z", "A2", Decimal("5.00"), "z"),
        ("payment:a", "A1", Decimal("2.00"), "a"), ("adjustment:j", "A1", Decimal("-0.50"), "j")]
    new = store.audit_log(limit=1000)[audits:]
    assert [(a.action, a.subject, a.actor, a.detail) for a in new] == [
        ("payment", "A2", "billing", {"key": "payment:z", "amount": "5.00", "detail": "z"}),
        ("payment", "A1", "billing", {"key": "payment:a", "amount": "2.00", "detail": "a"}),
        ("adjustment", "A1", "billing", {"key": "adjustment:j", "amount": "-0.50", "detail": "j"})]
    assert {a.at for a in new} == {T0 + timedelta(minutes=1)}
    assert store.apply(given, actor="billing", now=T0) == []  # all known now: nothing, no audit line
    assert store.apply([], actor="billing", now=T0) == []
    assert len(store.audit_log(limit=1000)) == audits + 3 and store.balance("A1") == Decimal("2.50")
    assert store.apply([_pay("payment:q", "A1", "1.00")], actor="bench", now=T0, audit_each=False)
    assert len(store.audit_log(limit=1000)) == audits + 3 and store.balance("A1") == Decimal("3.50")


def test_apply_keeps_every_field_and_the_last_seq_of_each_account(store):
    charge = LedgerEntry("charge:M1:total:a/b:0", "A1", EntryKind.CHARGE, Decimal("-1.23"), T0 - timedelta(days=1),
                         detail="d", meter=M1, rate=Rate.TOTAL, kwh=Decimal("2.50"), price=Decimal("0.4920"),
                         period_start=T0 - timedelta(days=2), period_end=T0 - timedelta(days=1))
    store.apply([charge, _pay("payment:1", "A2", "3")], actor="charging", now=T0)
    [row] = store.ledger("A1")
    assert (row.key, row.kind, row.amount, row.at, row.recorded, row.actor, row.detail, row.meter, row.rate, row.kwh,
            row.price) == (charge.key, EntryKind.CHARGE, Decimal("-1.23"), charge.at, T0, "charging", "d", M1, "total",
                           Decimal("2.50"), Decimal("0.4920"))
    seq = store.last_seq()
    assert store.accounts_changed_since(seq - 2) == {"A1", "A2"} and store.accounts_changed_since(seq - 1) == {"A2"}
    # each account's last_seq is its last entry's (what the range checks of later writes rely on)
    assert {tuple(r) for r in store._read("SELECT account, last_seq FROM accounts")} == {("A1", seq - 1), ("A2", seq)}
    assert store.pay("A1", "1", "R1", actor="t", now=T0).seq == seq + 1


def test_apply_with_an_unknown_account_anywhere_refuses_the_whole_call(store):
    store.apply([_pay("payment:old", "A1", "1.00")], actor="billing", now=T0)
    audits = len(store.audit_log(limit=1000))
    given = [_pay("payment:a", "A1", "2.00"), _pay("payment:old", "NOPE", "1.00"),  # known key, unknown account
             _pay("payment:b", "GONE", "1.00")]
    with pytest.raises(LedgerError, match="ledger entry payment:old: unknown account NOPE"):
        store.apply(given, actor="billing", now=T0)
    with pytest.raises(LedgerError, match="ledger entry payment:b: unknown account GONE"):
        store.apply([given[0], given[2], given[0]], actor="billing", now=T0)
    assert [r.key for r in store.ledger("A1")] == ["payment:old"] and store.balance("A1") == Decimal("1.00")
    assert len(store.audit_log(limit=1000)) == audits and store.verify_balances() == []
    with pytest.raises(LedgerError, match="two decimal"):  # an amount finer than a fen: refused before anything
        store.apply([given[0], _pay("payment:c", "A1", "0.001")], actor="billing", now=T0)
    assert store.balance("A1") == Decimal("1.00")
    assert store.apply([given[0]], actor="billing", now=T0) == [given[0]]  # usable afterwards


def test_commit_charging_is_all_or_nothing(store, monkeypatch):
    entry = LedgerEntry("charge:1", "A1", EntryKind.CHARGE, Decimal("-3.00"), T0)
    fraction = LedgerEntry("charge:2", "A1", EntryKind.CHARGE, Decimal("-0.001"), T0)  # finer than a fen
    with pytest.raises(LedgerError, match="two decimal"):
        store.commit_charging([entry, fraction], [(M1, Rate.TOTAL, T0, Decimal("10"))], [], [], {}, now=T0)
    assert store.balance("A1") == 0 and store.cursors() == {}
    n = store.commit_charging([entry], [(M1, Rate.TOTAL, T0, Decimal("10"))], [("A1", "2026", Decimal("6"))],
                              [(M1, Rate.TOTAL, T0, "negative_delta", "x")], {"A1": T0}, now=T0)
    assert n == 1 and store.balance("A1") == Decimal("-3.00")
    assert store.cursors() == {(M1, Rate.TOTAL): (T0, Decimal("10"))}
    assert store.tier_usage() == {("A1", "2026"): Decimal("6")}
    assert store.account("A1").fixed_through == T0
    assert store.charge_flags()[0][3] == "negative_delta"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["pay", "adjust", "charge"]), st.integers(0, 30),
                          st.integers(-5000, 5000)), max_size=30))
def test_balance_always_equals_the_ledger_whatever_is_replayed(state_where, events):
    with empty_store(state_where) as store:
        _replay_twice(store, events)


def _replay_twice(store, events):
    store.upsert_accounts([AccountSpec("A", "res", {M1: Decimal(1)})], actor="t", now=T0)
    expected: dict[str, int] = {}
    for _ in range(2):  # everything delivered twice
        for kind, ref, fen in events:
            amount = Decimal(fen).scaleb(-2)
            key = f"{kind}{ref}"
            try:
                if kind == "pay":
                    store.pay("A", abs(amount) or Decimal("0.01"), key, actor="t", now=T0)
                    expected.setdefault(f"payment:{key}", to_fen(abs(amount) or Decimal("0.01")))
                elif kind == "adjust":
                    if fen:
                        store.adjust("A", amount, key, actor="t", now=T0, reason="r")
                        expected.setdefault(f"adjustment:{key}", fen)
                else:
                    store.apply([LedgerEntry(key, "A", EntryKind.CHARGE, -abs(amount), T0)], actor="t", now=T0)
                    expected.setdefault(key, -abs(fen))
            except LedgerError:
                pytest.fail("valid entry refused")
    assert store.verify_balances() == []
    assert store.balance("A") == Decimal(sum(expected.values())).scaleb(-2)


def _req(kind, meter=M1, by="policy"):
    return CommandRequest(meter, kind, "balance low", by, account="A1")


def test_command_lifecycle_is_stored_and_audited(store):
    [cmd] = store.queue_commands([_req(CommandKind.TRIP)], now=T0, ttl=timedelta(hours=1))
    assert cmd.state is CommandState.QUEUED and store.due_commands(T0) == [cmd]
    sent = store.mark_sent(cmd.id, now=T0)
    assert sent.state is CommandState.SENT and sent.tries == 1 and store.in_flight() == [sent]
    with pytest.raises(LedgerError, match="is sent, not queued"):
        store.mark_sent(cmd.id, now=T0)  # a second claim is refused: never sent twice
    done = store.finish(cmd.id, CommandState.CONFIRMED, now=T0, detail="ok", read_back={"relay.open": True})
    assert done.state is CommandState.CONFIRMED and done.read_back == {"relay.open": True} and done.finished == T0
    actions = [a.action for a in store.audit_log(subject=M1)]
    assert actions == ["command-queued", "command-sent", "command-confirmed"]


def test_same_command_is_not_queued_twice_and_an_opposite_one_supersedes(store):
    store.queue_commands([_req(CommandKind.TRIP)], now=T0, ttl=timedelta(hours=1))
    assert store.queue_commands([_req(CommandKind.TRIP)], now=T0, ttl=timedelta(hours=1)) == []
    [reclose] = store.queue_commands([_req(CommandKind.RECLOSE_ALLOWED)], now=T0, ttl=timedelta(hours=1))
    states = {c.kind: c.state for c in store.commands(meter=M1)}
    assert states == {CommandKind.TRIP: CommandState.CANCELLED, CommandKind.RECLOSE_ALLOWED: CommandState.QUEUED}
    assert "superseded" in store.commands(state="cancelled")[0].detail


def test_requests_in_one_batch_are_queued_as_if_one_by_one(store):
    """The rules apply within one call too (on PostgreSQL the batch is planned in memory and written
    at once): a duplicate is skipped, a later opposite request supersedes the command queued
    earlier in the same batch, a sent command is in the way like a queued one, dry runs never are."""
    [sent] = store.queue_commands([_req(CommandKind.ALARM, M2)], now=T0, ttl=timedelta(hours=1))
    store.mark_sent(sent.id, now=T0)
    queued = store.queue_commands([_req(CommandKind.TRIP), _req(CommandKind.TRIP), _req(CommandKind.RECLOSE_ALLOWED),
                                   _req(CommandKind.ALARM, M2), _req(CommandKind.TRIP, M2)],
                                  now=T0, ttl=timedelta(hours=1))
    assert [(c.meter, c.kind, c.state) for c in queued] == [  # as they are after the call
        (M1, CommandKind.TRIP, CommandState.CANCELLED), (M1, CommandKind.RECLOSE_ALLOWED, CommandState.QUEUED),
        (M2, CommandKind.TRIP, CommandState.QUEUED)]
    assert [c.id for c in queued] == sorted(c.id for c in queued)
    assert [(c.kind, c.state) for c in reversed(store.commands(meter=M1))] == [
        (CommandKind.TRIP, CommandState.CANCELLED), (CommandKind.RECLOSE_ALLOWED, CommandState.QUEUED)]
    assert [a.action for a in store.audit_log(subject=M1)] == ["command-queued", "command-cancelled",
                                                              "command-queued"]
    cancelled = store.audit_log(subject=M1)[1].detail
    assert cancelled == {"id": queued[0].id, "reason": "superseded by reclose-allowed"}
    dry = store.queue_commands([_req(CommandKind.TRIP, M2), _req(CommandKind.TRIP, M2)], now=T0,
                               ttl=timedelta(hours=1), dry_run=True)  # M2's queued trip is in the way
    assert dry == []
    dry = store.queue_commands([_req(CommandKind.ALARM_RELEASE), _req(CommandKind.ALARM_RELEASE)], now=T0,
                               ttl=timedelta(hours=1), dry_run=True)
    assert [c.state for c in dry] == [CommandState.DRY_RUN] * 2


def test_expiry_retry_cancel_and_dry_run(store):
    [a] = store.queue_commands([_req(CommandKind.ALARM)], now=T0, ttl=timedelta(minutes=10))
    store.mark_sent(a.id, now=T0)
    store.retry_later(a.id, now=T0, next_try=T0 + timedelta(minutes=5), detail="offline")
    assert store.due_commands(T0 + timedelta(minutes=4)) == []
    assert [c.id for c in store.due_commands(T0 + timedelta(minutes=5))] == [a.id]
    assert [c.state for c in store.expire(T0 + timedelta(minutes=10))] == [CommandState.EXPIRED]
    [b] = store.queue_commands([_req(CommandKind.TRIP, M2)], now=T0, ttl=timedelta(minutes=10))
    with pytest.raises(LedgerError, match="needs a reason"):
        store.cancel(b.id, now=T0, actor="op", reason=" ")
    assert store.cancel(b.id, now=T0, actor="op", reason="wrong meter").state is CommandState.CANCELLED
    [c] = store.queue_commands([_req(CommandKind.TRIP, M2)], now=T0, ttl=timedelta(hours=1), dry_run=True)
    assert c.state is CommandState.DRY_RUN and store.due_commands(T0 + timedelta(hours=2)) == []


def test_area_trip_count_only_counts_automatic_trips(store):
    store.queue_commands([_req(CommandKind.TRIP), CommandRequest(M2, CommandKind.TRIP, "x", "op", account="A2",
                                                                manual=True)], now=T0, ttl=timedelta(hours=1))
    assert store.area_trips_since(T0 - timedelta(hours=1)) == {"TA1": 1}


def test_account_upsert_reports_changes_and_moves_meters(store):
    changes = store.upsert_accounts([AccountSpec("A1", "tou", {M1: Decimal(1), M2: Decimal(30)}, area="TA2")],
                                    actor="billing", now=T0)
    assert any("tariff 'res' -> 'tou'" in c for c in changes)
    assert any(f"meter {M2} moved from A2" in c for c in changes)
    assert store.meter_accounts()[M2] == ("A1", Decimal(30))
    assert store.upsert_accounts([AccountSpec("A1", "tou", {M1: Decimal(1), M2: Decimal(30)}, area="TA2")],
                                 actor="billing", now=T0) == []


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_charging_batch_in_parts_applies_each_key_once_and_moves_balances_by_what_went_in(store, pipelined):
    def entry(key, account, amount):
        return (key, account, EntryKind.CHARGE, Decimal(amount), T0, "", M1, Rate.TOTAL, Decimal("1"),
                Decimal("0.5"), T0, T0 + timedelta(days=1))

    store.commit_charging([LedgerEntry(*entry("charge:old", "A1", "-1.00"))], [], [], [], {}, now=T0)
    with store.charging_batch(now=T0, pipelined=pipelined) as batch:
        batch.add([entry("charge:a", "A1", "-2.00"), entry("charge:old", "A1", "-1.00")],  # a replay
                  [(M1, Rate.TOTAL, T0, Decimal("10"))])
        batch.add([entry("charge:a", "A1", "-2.00"), entry("charge:b", "A2", "-0.50"),  # a key twice
                   entry("charge:c", "A2", "-0.25")], [(M2, Rate.TOTAL, T0, Decimal("3"))])
    assert batch.applied == 3 and batch.summary["accounts"] == 2 and batch.summary["amount"] == "-2.75"
    assert store.balance("A1") == Decimal("-3.00") and store.balance("A2") == Decimal("-0.75")
    assert store.verify_balances() == []
    assert store.cursors() == {(M1, Rate.TOTAL): (T0, Decimal("10")), (M2, Rate.TOTAL): (T0, Decimal("3"))}
    assert store.audit_log(subject="*")[-1].detail["entries"] == 3


def test_a_charging_batch_keeps_the_order_given_and_the_first_of_a_key_repeated_in_a_part(store):
    def entry(key, amount):
        return (key, "A1", EntryKind.CHARGE, Decimal(amount), T0, "", None, None, None, None, None, None)

    with store.charging_batch(now=T0, pipelined=True) as batch:
        batch.add([entry("charge:z", "-1.00"), entry("charge:a", "-2.00"), entry("charge:z", "-9.00"),
                   entry("charge:m", "-3.00")])
        batch.add([entry("fixed:b", "-0.50"), entry("charge:a", "-9.00")])
    assert [(r.key, r.amount) for r in store.ledger("A1")] == [
        ("charge:z", Decimal("-1.00")), ("charge:a", Decimal("-2.00")), ("charge:m", Decimal("-3.00")),
        ("fixed:b", Decimal("-0.50"))]
    assert batch.applied == 4 and store.balance("A1") == Decimal("-6.50") and store.verify_balances() == []


def test_the_last_cursor_and_usage_of_a_key_in_a_part_stay(store):
    store.commit_charging([], [(M1, Rate.TOTAL, T0, Decimal("1")), (M1, Rate.TOTAL, T0 + timedelta(days=1),
                                                                     Decimal("2"))],
                          [("A1", "2026", Decimal("5")), ("A1", "2026", Decimal("6"))], [], {}, now=T0)
    assert store.cursors() == {(M1, Rate.TOTAL): (T0 + timedelta(days=1), Decimal("2"))}
    assert store.tier_usage() == {("A1", "2026"): Decimal("6")}


@pytest.mark.parametrize("savepoints", [0, 1, 48])
def test_a_charging_pass_is_the_same_whichever_way_its_parts_go_in(store, monkeypatch, savepoints):
    """On PostgreSQL a part's entries are copied straight into the ledger in a savepoint, or, when
    a key is there already (or the pass has used its savepoints), staged and taken by an anti-join:
    the same rows, balances, counts and refusals either way (SQLite: one way, the same results)."""
    monkeypatch.setattr(state, "_PG_SAVEPOINTS", savepoints)

    def entry(key, account, amount):
        return (key, account, EntryKind.CHARGE, Decimal(amount), T0, "", M1, Rate.TOTAL, None, None, None, None)

    store.commit_charging([LedgerEntry(*entry("charge:old", "A2", "-1.00"))], [], [], [], {}, now=T0)
    with store.charging_batch(now=T0, pipelined=True) as batch:
        batch.add([entry("charge:a", "A1", "-2.00"), entry("charge:b", "A2", "-0.50")],
                  [(M1, Rate.TOTAL, T0, Decimal("1"))])  # all new
        batch.add([entry("charge:c", "A1", "-0.25"), entry("charge:old", "A2", "-9.00")],  # one known
                  [(M1, Rate.TOTAL, T0, Decimal("2"))], [("A1", "2026", Decimal("7"))])
        batch.add([entry("charge:old", "A2", "-9.00")])  # only known keys: nothing
        batch.add([], [(M2, Rate.TOTAL, T0, Decimal("3"))])  # no entries
        batch.add([entry("charge:d", "A2", "-0.10"), entry("charge:d", "A2", "-5.00")])  # a key twice
    assert batch.applied == 4 and batch.summary["accounts"] == 2 and batch.summary["amount"] == "-2.85"
    first, last = batch.summary["ledger_seq"]  # seq in the order given (PostgreSQL: maybe with gaps)
    rows = sorted(store.ledger("A1") + store.ledger("A2"), key=lambda r: r.seq)[1:]
    assert [r.key for r in rows] == ["charge:a", "charge:b", "charge:c", "charge:d"]
    assert rows[0].seq == first and rows[-1].seq == last
    assert store.balance("A1") == Decimal("-2.25") and store.balance("A2") == Decimal("-1.60")
    assert store.cursors() == {(M1, Rate.TOTAL): (T0, Decimal("2")), (M2, Rate.TOTAL): (T0, Decimal("3"))}
    assert store.tier_usage() == {("A1", "2026"): Decimal("7")} and store.verify_balances() == []


def test_copy_text_is_copys_text_format_or_nothing():
    assert state._copy_text([("a", 1, None), ("", -2, "x y")]) == "a\t1\t\\N\n\t-2\tx y\n"
    assert state._copy_text([]) is None
    for odd in ("tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "x\\"):
        assert state._copy_text([("a", None), (odd, None)]) is None, odd  # psycopg escapes those rows
        assert state._copy_text([("a", odd)]) is None, odd


def test_text_that_copy_would_escape_is_stored_as_given(store):
    """Tabs, newlines, carriage returns and backslashes (``\\N`` is NULL in COPY's text format)
    in keys, details, meters, periods: stored exactly, on the pass's fast path as on any other."""
    odd = ["tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "ends\\", "N", ""]
    entries = [(f"charge:{i}:{text}", "A1", EntryKind.CHARGE, Decimal("-1.00"), T0, text, M1, None, None, None,
                None, None) for i, text in enumerate(odd)]
    with store.charging_batch(now=T0, pipelined=True) as batch:
        batch.add(entries, [(text or "m", Rate.TOTAL, T0, Decimal(1)) for text in odd],
                  [("A1", text, Decimal(2)) for text in odd])
    rows = store.ledger("A1")
    assert [(r.key, r.detail, r.meter) for r in rows] == [(e[0], e[5], M1) for e in entries]
    assert {m for m, _ in store.cursors()} == {text or "m" for text in odd}
    assert {p for _, p in store.tier_usage()} == set(odd)
    assert store.balance("A1") == Decimal(-len(odd)) and store.verify_balances() == []
    applied = store.apply([LedgerEntry(f"payment:{text}", "A1", EntryKind.PAYMENT, Decimal(1), T0, detail=text)
                           for text in odd], actor="billing", now=T0)
    assert len(applied) == len(odd) and [r.detail for r in store.ledger("A1")[len(odd):]] == odd
    specs = [AccountSpec(f"X{i}", "res", {f"M{i}{text}": Decimal(1)}, customer=text, area=text.upper())
             for i, text in enumerate(odd)]
    assert len(store.upsert_accounts(specs, actor="billing", now=T0)) == 2 * len(odd)
    assert [(a.customer, a.area, a.meters) for a in store.accounts(names=[s.account for s in specs])] == [
        (s.customer, s.area, dict(s.meters)) for s in specs]
    assert [r.detail["change"] for r in store.audit_log(subject="X1")] == [
        "account X1: created (tariff res, area 'LINE\\nBREAK'), pending: no opening balance",
        "account X1: meter M1line\nbreak assigned (×1)"]


def test_a_pipelined_pass_on_postgresql_shortens_the_switch_interval_while_it_writes(store):
    """The writer waits on the server and takes the GIL back many times a part; while the caller
    computes, a shorter switch interval hands the GIL over sooner.  Put back when the pass ends,
    however it ends; nothing changes on SQLite."""
    before = sys.getswitchinterval()
    during = state._PG_SWITCH_INTERVAL if store.postgres else before
    good = ("charge:a", "A1", EntryKind.CHARGE, Decimal("-2.00"), T0, "", None, None, None, None, None, None)
    with store.charging_batch(now=T0, pipelined=True) as batch:
        assert sys.getswitchinterval() == pytest.approx(during)
        batch.add([good])
    assert sys.getswitchinterval() == before
    with pytest.raises(LedgerError, match="two decimal"):
        with store.charging_batch(now=T0, pipelined=True) as batch:
            assert sys.getswitchinterval() == pytest.approx(during)
            batch.add([(*good[:3], Decimal("-0.001"), *good[4:])])
    assert sys.getswitchinterval() == before and store.balance("A1") == Decimal("-2.00")


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_charging_batch_that_fails_part_way_leaves_nothing(store, pipelined):
    good = ("charge:a", "A1", EntryKind.CHARGE, Decimal("-2.00"), T0, "", None, None, None, None, None, None)
    sub_fen = ("charge:b", "A1", EntryKind.CHARGE, Decimal("-0.001"), T0, "", None, None, None, None, None, None)
    with pytest.raises(LedgerError, match="two decimal"):
        with store.charging_batch(now=T0, pipelined=pipelined) as batch:
            for i in range(3):
                batch.add([(f"charge:{i}", *good[1:])], [(M1, Rate.TOTAL, T0, Decimal(i))])
            batch.add([sub_fen])
    assert store.balance("A1") == 0 and store.cursors() == {} and store.ledger("A1") == []
    store.pay("A1", "5", "after", actor="t", now=T0)  # the store is usable: no writer left, no open transaction
    assert store.balance("A1") == Decimal("5.00")


@pytest.mark.parametrize("fails", [False, True])
def test_sqlite_a_charging_pass_commits_without_waiting_for_the_disk_and_checkpoints_in_the_background(
        sqlite_store, fails):
    """The pass's COMMIT runs with synchronous=NORMAL and no automatic checkpoint; both settings
    come back for the store's other writes (a payment waits for the disk), and a thread of its own
    copies the WAL back into the database file."""
    store = sqlite_store
    conn = store._conn
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: SQLite's default
    seen = []
    entry = ("charge:a", "A1", EntryKind.CHARGE, Decimal("-2.00"), T0, "", None, None, None, None, None, None)
    with pytest.raises(LedgerError) if fails else contextlib.nullcontext(), store.charging_batch(now=T0) as batch:
        seen.append((conn.execute("PRAGMA synchronous").fetchone()[0],
                     conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
        batch.add([entry], [(M1, Rate.TOTAL, T0, Decimal(10))])
        if fails:
            batch.add([("charge:b", *entry[1:3], Decimal("-0.001"), *entry[4:])])
    assert seen == [(1, 0)]
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert store.balance("A1") == (0 if fails else Decimal("-2.00")) and store.verify_balances() == []
    if not fails:
        assert store._checkpointer is not None
        store._checkpointer.join()
        file_only = sqlite3.connect(f"file:{store.path}?immutable=1", uri=True)  # the file, not the WAL
        assert file_only.execute("SELECT key FROM ledger").fetchall() == [("charge:a",)]
        file_only.close()


def test_postgresql_a_charging_pass_commits_without_waiting_for_the_disk(pg_url):
    """The same bargain on PostgreSQL: ``synchronous_commit`` off for the pass's transaction only."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as raw:  # the tests' server runs with it off: on here
        raw.execute(f'ALTER DATABASE "{raw.info.dbname}" SET synchronous_commit = on')
    with _open(Database(pg_url)) as store:
        conn = store._conn
        entry = ("charge:a", "A1", EntryKind.CHARGE, Decimal("-2.00"), T0, "", None, None, None, None, None, None)
        with store.charging_batch(now=T0) as batch:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
            batch.add([entry], [(M1, Rate.TOTAL, T0, Decimal(10))])
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        store.pay("A1", "5", "P1", actor="t", now=T0)
        assert store.balance("A1") == Decimal("3.00") and store.verify_balances() == []


def test_an_error_in_the_charging_writer_reaches_the_caller_and_rolls_back(store):
    entry = ("charge:a", "A1", EntryKind.CHARGE, Decimal("-2.00"), T0, "", None, None, None, None, None, None)
    with pytest.raises(_integrity_error(store)):
        with store.charging_batch(now=T0, pipelined=True) as batch:
            batch.add([entry], usage=[(None, "2026", Decimal("1"))])  # NOT NULL: fails in the writer thread
            for i in range(50):
                batch.add([(f"charge:{i}", *entry[1:])])
    assert store.balance("A1") == 0 and store.ledger("A1") == [] and store.tier_usage() == {}



def test_cursor_rows_and_the_cursor_map_are_the_stored_cursors(store):
    from meterd.control.charging import Cursor

    store.commit_charging([], [(M1, Rate.TOTAL, T0, Decimal("10.50")), (M1, Rate.PEAK, T0, Decimal("4")),
                               (M2, Rate.TOTAL, T0, Decimal("3"))], [], [], {}, now=T0)
    expected = {(M1, Rate.TOTAL): Cursor(M1, Rate.TOTAL, T0, Decimal("10.50")),
                (M1, Rate.PEAK): Cursor(M1, Rate.PEAK, T0, Decimal("4")),
                (M2, Rate.TOTAL): Cursor(M2, Rate.TOTAL, T0, Decimal("3"))}
    assert store.cursor_map() == expected and store.cursor_map([M1]) == {
        k: v for k, v in expected.items() if k[0] == M1}
    rows = store.cursor_rows([M2, "000000000099"])
    assert rows == [expected[(M2, Rate.TOTAL)]] and type(rows[0]) is Cursor and rows[0].value == Decimal("3")
    assert all(type(c.rate) is Rate and str(c.value) == str(expected[k].value) for k, c in store.cursor_map().items())


def test_decisions_are_stored_with_their_commands_in_one_transaction(store, monkeypatch):
    trip = CommandRequest(meter=M1, kind=CommandKind.TRIP, reason="balance -1.00", requested_by="policy", account="A1")
    queued = store.record_decisions([("A1", "tripped", None), ("A2", "normal", None)], [trip], now=T0,
                                    ttl=timedelta(hours=2))
    assert [(c.meter, c.kind, c.state) for c in queued] == [(M1, CommandKind.TRIP, CommandState.QUEUED)]
    assert store.account("A1").state == "tripped" and store.account("A2").state == "normal"  # unchanged: no audit
    assert [a.action for a in store.audit_log(subject="A1")][-1] == "control-state"
    assert [a.action for a in store.audit_log(subject=M1)][-1] == "command-queued"
    assert store.record_decisions([("A1", "tripped", None)], [], now=T0, ttl=timedelta(hours=2)) == []

    def fails(*args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_queue", fails)  # all or nothing: the state does not move without its command
    reclose = CommandRequest(meter=M1, kind=CommandKind.RECLOSE, reason="paid", requested_by="policy", account="A1")
    with pytest.raises(sqlite3.OperationalError):
        store.record_decisions([("A1", "normal", None)], [reclose], now=T0, ttl=timedelta(hours=2))
    assert store.account("A1").state == "tripped" and len(store.commands()) == 1


def test_postgresql_update_heavy_tables_leave_room_for_hot_updates(pg_url):
    with _open(Database(pg_url)) as store:
        rows = store._read("SELECT relname, reloptions FROM pg_class WHERE relname IN ('cursors', 'accounts')")
        assert {r[0]: r[1] for r in rows} == {"cursors": ["fillfactor=50"], "accounts": ["fillfactor=70"]}
        store._conn.execute("ALTER TABLE cursors RESET (fillfactor)")
    with ControlStore(Database(pg_url)) as store:  # set again where it is missing
        assert store._read("SELECT reloptions FROM pg_class WHERE relname = 'cursors'")[0][0] == ["fillfactor=50"]
