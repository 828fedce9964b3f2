"""Several nodes on one state database claim commands: each queued command is claimed (marked sent)
exactly once, by the node recorded on it; a node whose channel lease is lost is refused by its
fence and the command stays queued; a node sees only the commands of the meters it serves.

Two :class:`ControlStore` instances on one database are the two nodes (two connections, as two
processes would have), racing from two threads.  On SQLite (one file) and on a real PostgreSQL of
the tests' own (``state_where``)."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.state import AccountSpec, ControlStore
from meterd.errors import LedgerError

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
N = 60


def meter(i: int) -> str:
    return f"{i:012d}"


@pytest.fixture
def nodes(state_where):
    """Two stores on one database, the first with N trips queued (one per meter)."""
    first, second = ControlStore(state_where), ControlStore(state_where)
    first.upsert_accounts([AccountSpec(f"A{i}", "res", {meter(i): Decimal(1)}) for i in range(N)], actor="t", now=T0)
    first.queue_commands([CommandRequest(meter(i), CommandKind.TRIP, "balance", "policy", account=f"A{i}")
                          for i in range(N)], now=T0, ttl=timedelta(hours=1))
    yield first, second
    first.close()
    second.close()


def _race(*jobs):
    """Run the jobs in threads started together; re-raise the first error of any."""
    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job):
        try:
            start.wait()
            job()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a claiming thread hangs"
    if errors:
        raise errors[0]


def _claimed_once(store: ControlStore, claims: dict[str, list[int]]) -> None:
    ids = [c.id for c in store.commands(limit=10 * N)]
    one, two = (set(v) for v in claims.values())
    assert len(one) + len(two) == sum(map(len, claims.values())), "a node claimed a command twice"
    assert not one & two, f"claimed by both nodes: {sorted(one & two)}"
    assert one | two == set(ids)
    for node, claimed in claims.items():
        for command_id in claimed:
            cmd = store.command(command_id)
            assert (cmd.state, cmd.node, cmd.tries) == (CommandState.SENT, node, 1)
    sent = [a for a in store.audit_log(limit=100 * N) if a.action == "command-sent"]
    assert sorted(a.detail["id"] for a in sent) == sorted(ids)  # one transition each, with its node
    assert all(a.detail["node"] == store.command(a.detail["id"]).node for a in sent)


def test_two_nodes_racing_mark_sent_claim_each_command_exactly_once(nodes):
    first, second = nodes
    ids = [c.id for c in first.due_commands(T0)]
    assert len(ids) == N
    claims: dict[str, list[int]] = {"n1": [], "n2": []}
    refused: dict[str, int] = {"n1": 0, "n2": 0}

    def node(store: ControlStore, name: str, order: list[int]):
        def claim_all():
            for command_id in order:
                try:
                    cmd = store.mark_sent(command_id, now=T0, node=name)
                except LedgerError as exc:
                    assert "is sent, not queued" in str(exc)
                    refused[name] += 1
                    continue
                assert cmd.node == name
                claims[name].append(command_id)
        return claim_all

    shuffled = random.Random(7).sample(ids, len(ids))
    _race(node(first, "n1", ids), node(second, "n2", shuffled))
    _claimed_once(first, claims)
    assert refused["n1"] + refused["n2"] == N  # every command: one claim won, one refused
    assert first.due_commands(T0) == [] and len(second.in_flight()) == N


def test_two_nodes_racing_claim_due_in_batches_claim_each_command_exactly_once(nodes):
    first, second = nodes
    claims: dict[str, list[int]] = {"n1": [], "n2": []}

    def node(store: ControlStore, name: str):
        def claim_all():
            while batch := store.claim_due(T0, node=name, limit=7):
                assert len(batch) <= 7 and all(c.node == name and c.state is CommandState.SENT for c in batch)
                assert [c.id for c in batch] == sorted(c.id for c in batch)
                claims[name].extend(c.id for c in batch)
        return claim_all

    _race(node(first, "n1"), node(second, "n2"))
    _claimed_once(first, claims)
    assert first.due_commands(T0) == []


def _lease_table(store: ControlStore, holder: str) -> None:
    """A stand-in for the nodes' channel leases: one row naming the node that holds channel bus1."""
    with store._write() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS test_leases (channel TEXT NOT NULL PRIMARY KEY, node TEXT NOT NULL)")
        conn.execute("DELETE FROM test_leases")
        conn.execute("INSERT INTO test_leases (channel, node) VALUES ('bus1', ?)", (holder,))


def _fence(name: str):
    """Read the lease in the claiming transaction, through the connection the store hands over."""
    def holds(conn) -> bool:
        row = conn.execute("SELECT node FROM test_leases WHERE channel = 'bus1'").fetchone()
        return row is not None and row[0] == name
    return holds


def test_a_node_that_lost_its_lease_is_fenced_off_and_the_command_stays_queued(nodes):
    first, second = nodes
    a, b, c = (cmd.id for cmd in first.due_commands(T0, limit=3))
    _lease_table(first, "n1")
    assert first.mark_sent(a, now=T0, node="n1", fence=_fence("n1")).node == "n1"
    _lease_table(second, "n2")  # n2 took the channel over (n1 stalled past its lease)
    with pytest.raises(LedgerError, match="node n1's lease of the meter's channel is lost"):
        first.mark_sent(b, now=T0, node="n1", fence=_fence("n1"))
    left = first.command(b)
    assert (left.state, left.node, left.tries) == (CommandState.QUEUED, None, 0)
    assert not [x for x in first.audit_log(subject=left.meter) if x.action == "command-sent"]
    with pytest.raises(LedgerError, match="node n1: the lease of its channels is lost"):
        first.claim_due(T0, node="n1", fence=_fence("n1"))
    assert len(first.due_commands(T0)) == N - 1  # nothing claimed
    # the holder claims what the fenced-off node could not
    assert second.mark_sent(b, now=T0, node="n2", fence=_fence("n2")).node == "n2"
    claimed = second.claim_due(T0, node="n2", fence=_fence("n2"), limit=5)
    assert [x.id for x in claimed][0] == c and {x.node for x in claimed} == {"n2"}


def test_a_node_sees_and_claims_only_the_commands_of_its_meters(nodes):
    first, second = nodes
    mine = [meter(i) for i in range(0, N, 3)]
    many = mine + [f"X{i:011d}" for i in range(3000)]  # a node's meters: thousands, most without commands
    due = first.due_commands(T0, meters=many)
    assert [c.meter for c in due] == mine
    assert first.due_commands(T0, meters=[]) == [] and first.in_flight(meters=[]) == []
    assert [c.meter for c in first.due_commands(T0, meters=mine[:2], limit=1)] == mine[:1]
    claimed = first.claim_due(T0, node="n1", meters=set(many), limit=N)
    assert sorted(c.meter for c in claimed) == mine
    assert first.claim_due(T0, node="n1", meters=mine) == []  # none left for these meters
    assert first.claim_due(T0, node="n1", meters=[]) == []
    other = second.claim_due(T0, node="n2", limit=2)
    assert {c.meter for c in other}.isdisjoint(mine)
    # orphans: each node settles those on its own channels
    assert {c.meter for c in second.in_flight(meters=mine)} == set(mine)
    assert {c.id for c in second.in_flight(meters=[c.meter for c in other])} == {c.id for c in other}
    assert len(first.in_flight()) == len(mine) + 2
