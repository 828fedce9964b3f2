"""The control store's reads for the operator's console (``CommandStore.search_accounts``,
``meter_owners``, ``audit_page`` and ``commands`` with an account and a page cursor), on both
backends: a search's ``%`` and ``_`` are characters, not LIKE's wildcards, with the same ESCAPE on
SQLite and PostgreSQL; pages by id follow each other with every row once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.control.command_store import AccountHit
from meterd.control.model import CommandKind, CommandRequest
from meterd.control.state import AccountSpec, ControlStore

NOW = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


@pytest.fixture
def store(state_where):
    s = ControlStore(state_where)
    s.upsert_accounts([
        AccountSpec("A1", "flat", {"000000000001": Decimal(1), "000000000002": Decimal(1)}, customer="Li Wei",
                    area="TA-1"),
        AccountSpec("A2", "flat", {"000000000003": Decimal(1)}, customer="王_芳 100%", area="TA-2"),
        AccountSpec("b3", "flat", {}, customer="Zhang San"),
    ], actor="test", now=NOW)
    yield s
    s.close()


def test_accounts_are_searched_by_number_and_customer_with_no_wildcards(store):
    assert [a.account for a in store.search_accounts("a", limit=10)] == ["A1", "A2", "b3"]  # either case, by number
    assert store.search_accounts("li wei", limit=10) == [AccountHit("A1", "Li Wei", "TA-1", "pending")]
    assert [a.account for a in store.search_accounts("B", limit=10)] == ["b3"]
    assert [a.account for a in store.search_accounts("a", limit=2)] == ["A1", "A2"]
    # % and _ are what they are: only the customer whose name holds them
    assert [a.account for a in store.search_accounts("_", limit=10)] == ["A2"]
    assert [a.account for a in store.search_accounts("%", limit=10)] == ["A2"]
    assert [a.account for a in store.search_accounts("0%", limit=10)] == ["A2"]
    assert store.search_accounts("a%1", limit=10) == [] and store.search_accounts("a_", limit=10) == []
    assert store.search_accounts("\\", limit=10) == []


def test_the_accounts_of_a_page_of_meters(store):
    assert store.meter_owners(["000000000001", "000000000003", "000000000009"]) == {
        "000000000001": "A1", "000000000003": "A2"}  # a meter with no account is left out
    assert store.meter_owners([]) == {}


def test_a_meters_audit_trail_page_by_page(store):
    for n in range(5):
        store.audit("operator", "call", "000000000001" if n % 2 else "meter:000000000001", {"n": n},
                    now=NOW + timedelta(minutes=n))
    store.audit("operator", "call", "000000000002", {"n": 9}, now=NOW)
    with store._write() as conn:  # a line whose detail is not JSON
        conn.execute("INSERT INTO audit (ts, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                     (int((NOW + timedelta(minutes=9)).timestamp() * 1000), "tech", "note", "000000000001", "by hand"))
    subjects = ["000000000001", "meter:000000000001"]
    first = store.audit_page(subjects, limit=3)
    assert [r.detail for r in first] == [{"text": "by hand"}, {"n": 4}, {"n": 3}]  # newest first
    assert first[0].at == NOW + timedelta(minutes=9) and first[1].subject == "meter:000000000001"
    rest = store.audit_page(subjects, before=first[-1].id, limit=3)
    assert [r.detail["n"] for r in rest] == [2, 1, 0]
    assert store.audit_page(subjects, before=rest[-1].id, limit=3) == []
    assert store.audit_page([], limit=3) == []


def test_commands_of_an_account_page_by_page(store):
    store.queue_commands([CommandRequest(m, CommandKind.ALARM, "test", "operator", account=a)
                          for m, a in (("000000000001", "A1"), ("000000000003", "A2"), ("000000000002", "A1"))],
                         now=NOW, ttl=timedelta(hours=1))
    mine = store.commands(account="A1", limit=1)
    assert [c.meter for c in mine] == ["000000000002"]  # newest first
    assert [c.meter for c in store.commands(account="A1", before=mine[0].id, limit=5)] == ["000000000001"]
    assert [c.meter for c in store.commands(account="A2", meter="000000000003", state="queued")] == ["000000000003"]
    assert store.commands(account="A2", state="sent") == []


def test_a_ledger_page_carries_the_balance_after_each_entry_from_the_whole_ledger(store):
    store.activate("A1", "10.00", "OPEN-1", actor="test", now=NOW)
    moves = [("pay", "5.50"), ("adjust", "-1.25"), ("pay", "0.01"), ("adjust", "3.00"), ("pay", "20.00"),
             ("adjust", "-0.99"), ("pay", "7.77")]
    for n, (what, amount) in enumerate(moves):
        at = NOW + timedelta(hours=n + 1)
        if what == "pay":
            store.pay("A1", amount, f"P{n}", actor="counter", now=at)
        else:
            store.adjust("A1", amount, f"J{n}", actor="li", now=at, reason="test")
    whole = store.ledger("A1")
    running, after = Decimal("0.00"), {}
    for row in whole:  # the balance after each entry, worked out here from the whole ledger
        running += row.amount
        after[row.seq] = running
    assert running == store.balance("A1") == Decimal("44.04")
    pages, before = [], None
    while page := store.ledger_page("A1", before=before, limit=3):
        pages.append(page)
        before = page[-1][0].seq
    assert [len(p) for p in pages] == [3, 3, 2]
    listed = [pair for p in pages for pair in p]
    assert [r.seq for r, _ in listed] == [r.seq for r in reversed(whole)]  # newest first, each once
    assert all(balance == after[r.seq] for r, balance in listed)
    payments = store.ledger_page("A1", kind="payment", limit=10)
    assert [r.key for r, _ in payments] == ["payment:P6", "payment:P4", "payment:P2", "payment:P0"]
    assert [b for _, b in payments] == [after[r.seq] for r, _ in payments] == [
        Decimal("44.04"), Decimal("37.26"), Decimal("14.26"), Decimal("15.50")]  # not the payments' own sums
    assert store.ledger_page("A1", kind="payment", before=payments[-1][0].seq) == []
    assert store.ledger_page("A2") == []


def test_the_balance_over_a_period_and_the_latest_price(store):
    store.activate("A1", "10.00", "OPEN-1", actor="test", now=NOW)
    store.pay("A1", "5.00", "P1", actor="counter", now=NOW + timedelta(hours=1))
    store.adjust("A1", "-2.50", "J1", actor="li", now=NOW + timedelta(hours=3), reason="test")
    opening, moves = store.balance_movements("A1", NOW + timedelta(hours=1))
    assert opening == Decimal("10.00")
    assert moves == [(NOW + timedelta(hours=1), Decimal("5.00")), (NOW + timedelta(hours=3), Decimal("-2.50"))]
    assert store.balance_movements("A1", NOW + timedelta(days=1)) == (Decimal("12.50"), [])
    assert store.latest_price("A1") is None  # no energy charged yet
