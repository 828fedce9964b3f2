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
