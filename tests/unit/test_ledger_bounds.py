"""Balances and ledger sums never overflow SQLite's int64 nor turn into floats (issue #14).

Before: ``meterd pay A1 92233720368547758.07`` put int64's largest fen into the balance, the next
payment turned it into a REAL (9.22e18, SQLite's ``+`` on overflow), later payments vanished in
float rounding and ``verify_balances()`` died of "integer overflow".  Now every text amount goes
through the one grammar, no entry exceeds ENTRY_LIMIT, no write leaves a balance outside
±BALANCE_LIMIT_FEN, and the property test below drives random sequences of accepted and refused
operations through the real store.

On PostgreSQL (every test here that is about the store runs on both, ``state_where``) a BIGINT
never turns REAL -- it raises -- and ``SUM(bigint)`` is an exact NUMERIC; the same amounts are
refused with the same errors.  SQLite's REAL balances and its overflowing ``SUM`` are SQLite-only."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.control.amounts import BALANCE_LIMIT_FEN, ENTRY_LIMIT, AmountError, AmountLimits, parse_adjustment, \
    parse_payment
from meterd.control import state
from meterd.control.model import EntryKind, LedgerEntry
from meterd.control.state import AccountSpec, ControlStore, LedgerError, to_fen
from meterd.storage.database import Database
from meterd.storage.sqlite import STATE_FILE

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
M1, M2 = "000000000001", "000000000002"


def _open(where) -> ControlStore:
    store = ControlStore(where)
    store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}), AccountSpec("A2", "res", {M2: Decimal(1)})],
                          actor="test", now=T0)
    return store


@pytest.fixture
def store(state_where):
    s = _open(state_where)
    yield s
    s.close()


@contextlib.contextmanager
def _raw(where):
    """A connection of the test's own, past the store: what is committed (sqlite3 or psycopg)."""
    if isinstance(where, Database):
        import psycopg

        with psycopg.connect(where.url, autocommit=True) as conn:
            yield lambda sql, params=(): conn.execute(sql.replace("?", "%s"), params)
        return
    conn = sqlite3.connect(where / STATE_FILE, isolation_level=None)
    try:
        yield conn.execute
    finally:
        conn.close()


def _snapshot(where) -> tuple:
    with _raw(where) as sql:
        # the type of each balance as well: SQLite's `+` turns an overflowing INTEGER into a REAL
        kind = "pg_typeof(balance_fen)::text" if isinstance(where, Database) else "typeof(balance_fen)"
        return (tuple(sql("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM ledger").fetchone()),
                [tuple(r) for r in sql(f"SELECT account, balance_fen, {kind} FROM accounts ORDER BY account")])


def _charge(key: str, account: str, amount: Decimal) -> tuple:
    return (key, account, EntryKind.CHARGE, amount, T0, "", None, None, None, None, None, None)


def _seed_balance(where, account: str, fen: int) -> None:
    """An account already holding ``fen`` (with the ledger line that explains it), written past the
    store: reaching 10^18 fen through the store would take a million of its largest entries."""
    with _raw(where) as sql:
        sql("INSERT INTO ledger (key, account, kind, amount_fen, ts, recorded_ts, actor) "
            "VALUES (?, ?, 'adjustment', ?, 0, 0, 'test')", (f"seed:{account}", account, fen))
        sql("UPDATE accounts SET balance_fen = balance_fen + ? WHERE account = ?", (fen, account))


def test_the_reported_overflow_is_refused_and_nothing_moves(store, state_where):
    before = _snapshot(state_where)
    for amount in ("92233720368547758.07", Decimal("92233720368547758.07"), 9223372036854775807):
        with pytest.raises(LedgerError, match="10000000000"):
            store.pay("A1", amount, f"P{amount!s:.5}", actor="counter", now=T0)
    assert _snapshot(state_where) == before and store.verify_balances() == []


@pytest.mark.parametrize("amount", [10.5, float("nan"), True, None, [1]])
def test_to_fen_takes_no_floats_or_other_types(amount):
    with pytest.raises(LedgerError, match="not an amount"):
        to_fen(amount)


@pytest.mark.parametrize("amount", [Decimal("1E+999999"), Decimal("-1E+999999"), ENTRY_LIMIT + Decimal("0.01")])
def test_to_fen_refuses_beyond_the_entry_limit_before_any_arithmetic(amount):
    with pytest.raises(LedgerError, match="beyond any real ledger entry"):
        to_fen(amount)
    assert to_fen(ENTRY_LIMIT) == 10**12 and to_fen(-ENTRY_LIMIT) == -(10**12)


def test_a_payment_that_would_leave_the_balance_range_is_refused_whole(store, state_where):
    _seed_balance(state_where, "A1", BALANCE_LIMIT_FEN - 50)
    before = _snapshot(state_where)
    with pytest.raises(LedgerError, match=r"would take account A1 .* beyond"):
        store.pay("A1", "1", "P1", actor="counter", now=T0)
    with pytest.raises(LedgerError, match="beyond"):
        store.apply([LedgerEntry("payment:P2", "A1", EntryKind.PAYMENT, Decimal(1), T0)], actor="billing", now=T0)
    assert _snapshot(state_where) == before and store.verify_balances() == []
    assert store.pay("A1", "0.50", "P3", actor="counter", now=T0).applied  # up to the limit: fine


def _pay(key: str, account: str, amount: str) -> LedgerEntry:
    return LedgerEntry(key, account, EntryKind.PAYMENT, Decimal(amount), T0)


LIMIT = Decimal(BALANCE_LIMIT_FEN).scaleb(-2)


@pytest.mark.parametrize("given, message", [
    # the entry that crosses the limit is named, with the balance before it (the entries before it in the call)
    ([_pay("payment:a", "A1", "0.30"), _pay("payment:b", "A1", "0.30")],
     rf"ledger entry payment:b: 0.30 would take account A1 \(balance {LIMIT - Decimal('0.20')}\) beyond"),
    # beyond and back within one call: refused at the entry that goes beyond, as one by one
    ([_pay("payment:a", "A1", "1.00"), LedgerEntry("adjustment:b", "A1", EntryKind.ADJUSTMENT, Decimal(-1), T0)],
     rf"ledger entry payment:a: 1.00 would take account A1 \(balance {LIMIT - Decimal('0.50')}\) beyond"),
    # the first refusal in the order given wins: the range before an unknown account, and the other way round
    ([_pay("payment:a", "A2", "1.00"), _pay("payment:b", "A1", "1.00"), _pay("payment:c", "NOPE", "1.00")],
     r"ledger entry payment:b: 1.00 would take account A1 .* beyond"),
    ([_pay("payment:a", "A2", "1.00"), _pay("payment:c", "NOPE", "1.00"), _pay("payment:b", "A1", "1.00")],
     "ledger entry payment:c: unknown account NOPE"),
])
def test_apply_refuses_the_whole_call_at_the_first_entry_beyond_the_range(store, state_where, given, message):
    _seed_balance(state_where, "A1", BALANCE_LIMIT_FEN - 50)
    before = _snapshot(state_where)
    with pytest.raises(LedgerError, match=message):
        store.apply(given, actor="billing", now=T0)
    assert _snapshot(state_where) == before and store.verify_balances() == []


def test_an_opening_balance_that_would_leave_the_range_refuses_the_whole_upsert(store, state_where):
    _seed_balance(state_where, "A1", BALANCE_LIMIT_FEN - 50)  # pending, charged and paid meanwhile
    before = _snapshot(state_where)
    with pytest.raises(LedgerError, match=rf"ledger entry opening:A1: 1.00 would take account A1 \(balance "
                                          rf"{LIMIT - Decimal('0.50')}\) beyond"):
        store.upsert_accounts([AccountSpec("A3", "res", {}, opening_balance=Decimal(1)),
                               AccountSpec("A1", "res", {M1: Decimal(1)}, opening_balance=Decimal(1))],
                              actor="billing", now=T0)
    assert _snapshot(state_where) == before and store.account("A1").state == "pending"
    assert store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}, opening_balance=Decimal("0.50"))],
                                 actor="billing", now=T0)[0] == "account A1: opening balance 0.50 applied"
    assert store.balance("A1") == LIMIT and store.verify_balances() == []


def test_apply_checks_only_the_entries_that_go_in(store, state_where):
    """A known key, or a key's second entry in the call, moves nothing, so it cannot be refused."""
    _seed_balance(state_where, "A1", BALANCE_LIMIT_FEN - 50)
    assert store.apply([_pay("payment:a", "A1", "0.10")], actor="billing", now=T0)
    given = [_pay("payment:a", "A1", "9.00"), _pay("payment:b", "A1", "0.40"), _pay("payment:b", "A1", "5.00"),
             _pay("payment:c", "A2", "-1.00")]
    assert store.apply(given, actor="billing", now=T0) == [given[1], given[3]]
    assert store.balance("A1") == LIMIT and store.balance("A2") == Decimal("-1.00") and store.verify_balances() == []
    assert store.apply([_pay("payment:d", "A2", str(-ENTRY_LIMIT))], actor="billing", now=T0)  # the largest entry


def test_a_balance_past_the_range_already_refuses_every_entry_without_overflowing(store, state_where):
    """A balance written past the store near int64's end: adding to it would overflow BIGINT on
    PostgreSQL (an error) and turn REAL on SQLite; both refuse with the same LedgerError."""
    _seed_balance(state_where, "A1", 2**63 - 100)
    before = _snapshot(state_where)
    with pytest.raises(LedgerError, match=r"would take account A1 .* beyond"):
        store.pay("A1", "1", "P1", actor="counter", now=T0)
    with pytest.raises(LedgerError, match=r"charging refused: account A1: balance .* would leave the range"):
        with store.charging_batch(now=T0) as batch:
            batch.add([_charge("charge:a", "A1", Decimal("10.00"))])
    with pytest.raises(LedgerError, match=rf"ledger entry payment:b: -1.00 would take account A1 \(balance "
                                          rf"{Decimal(2**63 - 100).scaleb(-2)}\) beyond"):
        store.apply([_pay("payment:a", "A2", "1.00"), _pay("payment:b", "A1", "-1.00")], actor="billing", now=T0)
    assert _snapshot(state_where) == before
    assert store.verify_balances() == [f"account A1: balance {Decimal(2**63 - 100).scaleb(-2)} is out of range"]


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("savepoints", [0, 48])  # PostgreSQL: parts staged, or copied straight in
def test_a_charging_pass_that_would_leave_the_balance_range_is_refused_whole(store, state_where, pipelined,
                                                                               savepoints, monkeypatch):
    monkeypatch.setattr(state, "_PG_SAVEPOINTS", savepoints)
    _seed_balance(state_where, "A2", -BALANCE_LIMIT_FEN + 50)
    before = _snapshot(state_where)
    with pytest.raises(LedgerError, match=r"charging refused: account A2: balance .* would leave the range"):
        with store.charging_batch(now=T0, pipelined=pipelined) as batch:
            batch.add([_charge("charge:0", "A1", Decimal("-1.00"))], [("M", "total", T0, Decimal(1))])
            batch.add([_charge("charge:a", "A1", Decimal("-2.00")), _charge("charge:b", "A2", Decimal("-1.00"))])
    assert _snapshot(state_where) == before and store.verify_balances() == []
    assert store.cursors() == {}


def test_a_charge_beyond_the_entry_limit_is_refused_on_the_fast_path_too(store, state_where):
    before = _snapshot(state_where)
    with pytest.raises(LedgerError, match="beyond any real ledger entry"):
        with store.charging_batch(now=T0) as batch:
            batch.add([_charge("charge:a", "A1", Decimal("-5000000000000000.00"))])  # a 1E16 kWh reading's charge
    assert _snapshot(state_where) == before


def test_sqlite_verify_balances_reports_a_float_balance(tmp_path):
    """SQLite only: a PostgreSQL BIGINT column holds no REAL."""
    with _open(tmp_path) as store:
        with sqlite3.connect(tmp_path / STATE_FILE) as conn:
            conn.execute("UPDATE accounts SET balance_fen = 9.223372036854776e18 WHERE account = 'A1'")
        assert store.verify_balances() == ["account A1: balance 9.223372036854776e+18 (not an integer of fen) but "
                                           "ledger sums to 0.00"]


def test_verify_balances_sums_exactly_past_int64(store, state_where):
    with _raw(state_where) as sql:
        for key in ("x1", "x2"):
            sql("INSERT INTO ledger (key, account, kind, amount_fen, ts, recorded_ts, actor) "
                "VALUES (?, 'A2', 'adjustment', ?, 0, 0, 'test')", (key, 2**62))
        if not isinstance(state_where, Database):
            with pytest.raises(sqlite3.OperationalError, match="integer overflow"):  # what SQLite's SUM does
                sql("SELECT SUM(amount_fen) FROM ledger").fetchone()
    assert store.verify_balances() == [f"account A2: balance 0.00 but ledger sums to {Decimal(2**63).scaleb(-2)}"]


# --- the property --------------------------------------------------------------------------------

LIMITS = AmountLimits(max_payment=Decimal(1_000_000), max_adjustment=Decimal(50_000))
_fen = st.integers(min_value=1, max_value=100_000_000)
_good = _fen.map(lambda f: f"{f // 100}.{f % 100:02d}" if f % 3 else str(f // 100 or 1))
_bad = st.sampled_from(["92233720368547758.07", "1e3", "1E+2", "1_000", "１０", "١٠", "+10", " 10", "10 ", ".5",
                        "10.", "NaN", "Infinity", "-0", "0", "", "1.234", "1" * 40, "1000000.01", "-1"])
_amount = st.one_of(_good, _bad, _good.map(lambda t: "-" + t), st.text(max_size=12))
_account = st.sampled_from(["A1", "A2"])
_op = st.one_of(
    st.tuples(st.just("pay"), _account, _amount, st.sampled_from(["P1", "P2", "P3"])),
    st.tuples(st.just("adjust"), _account, _amount, st.sampled_from(["J1", "J2"])),
    st.tuples(st.just("store-pay"), _account, _amount, st.sampled_from(["P1", "P4"])),  # text straight to the store
    st.tuples(st.just("charge"), _account, _fen, st.sampled_from(["c1", "c2", "c3"])),
    st.tuples(st.just("import"), _account, _fen, st.sampled_from(["P1", "B1"])),  # billing: store.apply
)


TABLES = "accounts, account_meters, ledger, cursors, tier_usage, charge_flags, commands, relay_states, replacements, audit"


@contextlib.contextmanager
def _fresh(state_where):
    """Where a new store lives, once per hypothesis example: a new SQLite directory, or the test's
    PostgreSQL database emptied (a CREATE DATABASE per example would cost more than the example)."""
    if isinstance(state_where, Database):
        with _raw(state_where) as sql:
            for table in TABLES.split(", "):
                if sql("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None:
                    sql(f"TRUNCATE {table} RESTART IDENTITY")
        yield state_where
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=20))
def test_any_sequence_of_operations_keeps_balances_equal_to_the_ledger(state_where, ops):
    with _fresh(state_where) as path:
        store = _open(path)
        try:
            model: dict[str, tuple[str, int]] = {}  # ledger key -> (account, fen): what must be there
            for i, (kind, account, amount, ref) in enumerate(ops):
                before = _snapshot(path)
                now = T0 + timedelta(minutes=i)
                try:
                    if kind == "pay":
                        value = parse_payment(amount, LIMITS)
                        key = f"payment:{ref}"
                        store.pay(account, value, ref, actor="counter", now=now)
                    elif kind == "adjust":
                        value = parse_adjustment(amount, LIMITS)
                        key = f"adjustment:{ref}"
                        store.adjust(account, value, ref, actor="op", now=now, reason="r")
                    elif kind == "store-pay":  # the store applies the grammar itself, up to ENTRY_LIMIT
                        key = f"payment:{ref}"
                        try:
                            value = parse_payment(amount, AmountLimits(ENTRY_LIMIT, ENTRY_LIMIT))
                        except AmountError:
                            value = None
                        try:
                            store.pay(account, amount, ref, actor="counter", now=now)
                        except LedgerError:
                            assert value is None
                            raise
                        assert value is not None, f"the store took {amount!r}"
                    elif kind == "charge":
                        key, value = f"charge:{ref}", -Decimal(amount).scaleb(-2)
                        with store.charging_batch(now=now) as batch:
                            batch.add([_charge(key, account, value)])
                    else:
                        key, value = f"payment:{ref}", Decimal(amount).scaleb(-2)
                        store.apply([LedgerEntry(key, account, EntryKind.PAYMENT, value, now)], actor="billing",
                                    now=now)
                except (AmountError, LedgerError):
                    assert _snapshot(path) == before  # a refused amount changes nothing
                    continue
                model.setdefault(key, (account, int(value * 100)))  # a replayed key applies nothing
            assert store.verify_balances() == []
            for account in ("A1", "A2"):
                balance = store.balance(account)
                assert isinstance(balance, Decimal) and balance.as_tuple().exponent == -2
                assert balance == sum((Decimal(f).scaleb(-2) for a, f in model.values() if a == account), Decimal(0))
            ledger = store.ledger("A1") + store.ledger("A2")
            assert {r.key: (r.account, int(r.amount * 100)) for r in ledger} == model
            if not isinstance(path, Database):  # PostgreSQL's BIGINT columns hold nothing else
                with sqlite3.connect(path / STATE_FILE) as conn:
                    assert {t for (t,) in conn.execute("SELECT DISTINCT typeof(balance_fen) FROM accounts")} == {
                        "integer"}
                    assert {t for (t,) in conn.execute("SELECT DISTINCT typeof(amount_fen) FROM ledger")} <= {
                        "integer"}
        finally:
            store.close()
