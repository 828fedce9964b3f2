"""Leases on a real PostgreSQL (the tests' own server): acquire, renew, expire, steal, fence; two
nodes never both hold a resource; balancing with hysteresis converges and does not flap; the
leadership of a job passes on when its leader dies.

Expiry is judged by PostgreSQL's clock.  Where a test needs a lease to have expired it ages the
rows in PostgreSQL (``age``) instead of sleeping; the overlap test runs on short real leases
because it checks the local deadline against PostgreSQL's own expiry.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import psycopg
import pytest

from meterd.cluster.balance import Plan, fair_share, plan, slack_for
from meterd.cluster.leases import LeaseBook, LeaseError, channel_resource, fence, leader_resource
from meterd.cluster.node import ClusterNode
from meterd.errors import ConfigError
from meterd.storage.database import Database


def book(url: str, node: str, lease_time: float = 15.0) -> LeaseBook:
    b = LeaseBook(Database(url), node, lease_time=lease_time, timeout=5.0)
    b.migrate()
    b.join("test")
    return b


def age(url: str, node: str, seconds: float = 60.0) -> None:
    """Make ``node`` look dead: its heartbeat and leases ``seconds`` in the past, by PostgreSQL's clock."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE cluster_nodes SET heartbeat = clock_timestamp() - make_interval(secs => %s) "
                     "WHERE node = %s", (seconds, node))
        conn.execute("UPDATE leases SET expires = clock_timestamp() - make_interval(secs => %s) WHERE holder = %s",
                     (seconds, node))


def holders(url: str) -> dict[str, str | None]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {r[0]: r[1] for r in conn.execute(
            "SELECT resource, CASE WHEN expires > clock_timestamp() THEN holder END FROM leases")}


# --- the balance arithmetic (pure) ----------------------------------------------------------------


def test_fair_share_and_slack() -> None:
    assert fair_share(30, 3) == 10 and fair_share(31, 3) == 11 and fair_share(5, 0) == 5 and fair_share(0, 3) == 0
    assert slack_for(10) == 1 and slack_for(25) == 3 and slack_for(0) == 1 and slack_for(25, 0) == 0


def test_plan_takes_below_the_share_and_gives_only_above_share_plus_slack() -> None:
    assert plan(held=0, pinned=0, channels=30, live_nodes=3) == Plan(10, 10, 0)
    assert plan(held=11, pinned=0, channels=30, live_nodes=3) == Plan(10, 0, 0)  # inside the band: keep
    assert plan(held=15, pinned=0, channels=30, live_nodes=3) == Plan(10, 0, 4)  # down to share + slack
    assert plan(held=15, pinned=14, channels=30, live_nodes=3) == Plan(10, 0, 1)  # pinned DTUs are never given back
    assert plan(held=15, pinned=15, channels=30, live_nodes=3).give == 0


# --- the lease book -------------------------------------------------------------------------------


def test_acquire_renew_expire_and_tokens(pg_url: str) -> None:
    a, b = book(pg_url, "a"), book(pg_url, "b")
    try:
        resources = [channel_resource(f"c{i}") for i in range(4)]
        assert a.ensure(resources) == 4 and b.ensure(resources) == 0
        got = a.acquire(resources, 3)
        assert got == {resources[0]: 1, resources[1]: 1, resources[2]: 1}  # taken in name order
        assert b.acquire(resources, 4) == {resources[3]: 1}  # only what is free
        assert b.acquire(resources, 4) == {}
        renewal = a.renew()
        assert renewal.held == got and renewal.live_nodes == 2
        age(pg_url, "a")
        assert b.renew().live_nodes == 1  # a's heartbeat is stale: b is alone
        taken = b.acquire(resources, 4)
        assert taken == {r: 2 for r in got}  # a new holder: every token went up
        assert a.renew().held == {}  # a learns it lost them all
        # an expired lease nobody took is still ours to renew (nobody else polled it)
        age(pg_url, "b")
        assert b.renew().held == {**taken, resources[3]: 1}
        assert holders(pg_url)[resources[0]] == "b"
    finally:
        a.close()
        b.close()


def test_claim_steals_and_the_fence_refuses_the_old_holder(pg_url: str) -> None:
    a, b = book(pg_url, "a"), book(pg_url, "b")
    state = Database(pg_url).connect()
    try:
        r = channel_resource("dtu1")
        a.ensure([r])
        assert a.acquire([r], 1) == {r: 1}
        check = fence("a", r, 1)
        state.execute("BEGIN")
        assert check(state) is True
        state.execute("COMMIT")
        token, previous = b.claim(r)
        assert (token, previous) == (2, "a")
        assert b.claim(r) == (2, None)  # claiming what we hold keeps the token
        state.execute("BEGIN")
        assert check(state) is False  # a lost it: a claim fenced by a's token is refused
        assert fence("b", r, 2)(state) is True
        state.execute("COMMIT")
        assert a.renew().held == {}
        assert a.holds(r, 1) is False and b.holds(r, 2) is True
        assert b.release({r: 2}) == [r]
        assert holders(pg_url)[r] is None
        assert a.claim(channel_resource("new")) == (1, None)  # a row is made for an unknown resource
    finally:
        state.close()
        a.close()
        b.close()


def test_a_steal_waits_for_a_claim_in_flight(pg_url: str) -> None:
    """The fence locks the lease row until the claiming transaction ends: a node taking the lease
    meanwhile waits, then finds the claim committed."""
    a, b = book(pg_url, "a"), book(pg_url, "b")
    state = Database(pg_url).connect()
    try:
        r = channel_resource("c")
        a.ensure([r])
        a.acquire([r], 1)
        state.execute("BEGIN")
        assert fence("a", r, 1)(state)
        stolen: list[float] = []
        thread = threading.Thread(target=lambda: (b.claim(r), stolen.append(time.monotonic())))
        thread.start()
        time.sleep(0.3)
        assert not stolen  # blocked by the claim's FOR SHARE
        committed = time.monotonic()
        state.execute("COMMIT")
        thread.join(5)
        assert stolen and stolen[0] >= committed
    finally:
        state.close()
        a.close()
        b.close()


def test_release_needs_the_token_and_leave_releases_everything(pg_url: str) -> None:
    a, b = book(pg_url, "a"), book(pg_url, "b")
    try:
        rs = [channel_resource("x"), channel_resource("y"), leader_resource("prepaid")]
        a.ensure(rs)
        assert a.acquire(rs, 3) == dict.fromkeys(rs, 1)
        assert a.release({rs[0]: 7}) == []  # not our token: nothing
        assert b.release({rs[0]: 1}) == []  # not our lease: nothing
        assert a.leave() == sorted(rs)
        assert set(holders(pg_url).values()) == {None}
        snap = b.snapshot()
        stopped = {n.node: n for n in snap.nodes}["a"]
        assert stopped.stopped and not snap.alive(stopped)
        assert b.renew().live_nodes == 1  # a stopped node is not counted live
    finally:
        a.close()
        b.close()


def test_a_live_node_name_cannot_be_used_twice(pg_url: str) -> None:
    a = book(pg_url, "same")
    try:
        other = LeaseBook(Database(pg_url), "same", lease_time=15.0)
        other.host = "elsewhere"  # a process on another machine: whether it lives cannot be checked
        with pytest.raises(LeaseError, match="in use"):
            other.join("test")
        age(pg_url, "same")  # its heartbeat lapsed: the name is free again, its leases released
        other.join("test")
        other.close()
    finally:
        a.close()


def test_migrations_are_versioned_and_a_newer_schema_is_refused(pg_url: str) -> None:
    a = book(pg_url, "a")
    a.migrate()  # again: nothing to do
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM schema_versions WHERE store = 'cluster'").fetchone()[0] == 1
        conn.execute("UPDATE schema_versions SET version = 99 WHERE store = 'cluster'")
    with pytest.raises(ConfigError, match="newer"):
        a.migrate()
    a.close()


def test_two_nodes_in_threads_never_both_hold_a_resource(pg_url: str) -> None:
    """Each thread acquires, renews, stalls (stops renewing, so its leases expire), gives back, at
    random, on real short leases.  Every interval in which a thread believed a resource was its own
    (from the return of the call that took or renewed it to its local deadline, lease_time - 2 x
    heartbeat after that call started) must be disjoint from every other thread's for that resource."""
    lease, heartbeat = 0.6, 0.12
    resources = [channel_resource(f"r{i}") for i in range(3)]
    believed: list[tuple[str, str, float, float]] = []  # (thread, resource, from, until)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def node(name: str, seed: int) -> None:
        rng = random.Random(seed)
        b = book(pg_url, name, lease_time=lease)
        b.ensure(resources)
        mine: dict[str, int] = {}
        end = time.monotonic() + 3.0
        try:
            while time.monotonic() < end:
                began = time.monotonic()
                renewed = b.renew().held
                got = b.acquire([r for r in resources if r not in renewed], rng.randint(1, 3))
                mine = {**renewed, **got}
                known = time.monotonic()  # ours from when we learn it until the deadline the call's start sets
                with lock:
                    believed.extend((name, r, known, began + lease - 2 * heartbeat) for r in mine)
                roll = rng.random()
                if roll < 0.1 and mine:  # give one back, cleanly: stop believing first, then release
                    r = rng.choice(sorted(mine))
                    now = time.monotonic()
                    with lock:
                        believed[:] = [(n, x, f, min(u, now) if (n, x) == (name, r) else u) for n, x, f, u in believed]
                    b.release({r: mine.pop(r)})
                elif roll < 0.2:
                    time.sleep(lease * 1.2)  # stall: our leases expire and the other takes them
                else:
                    time.sleep(heartbeat)
        except BaseException as exc:  # noqa: BLE001 -- reported by the test thread
            errors.append(exc)
        finally:
            b.close()

    threads = [threading.Thread(target=node, args=(f"n{i}", i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    by_resource: dict[str, list[tuple[str, float, float]]] = {}
    for n, r, f, u in believed:
        by_resource.setdefault(r, []).append((n, f, u))
    overlaps = [(r, x, y) for r, spans in by_resource.items() for x in spans for y in spans
                if x[0] < y[0] and x[1] < y[2] and y[1] < x[2]]
    assert not overlaps, overlaps[:5]
    assert {n for _, _, n in ((0, 0, s[0]) for spans in by_resource.values() for s in spans)} == {"n0", "n1"}


# --- nodes: balancing, hand-over, leadership --------------------------------------------------------


class Collector:
    """What a node's collector is told: channels started and stopped, with the node's name."""

    def __init__(self) -> None:
        self.running: dict[str, set[str]] = {}
        self.starts = 0
        self.stops = 0

    def bind(self, node: ClusterNode) -> None:
        mine = self.running.setdefault(node.name, set())

        def start(channel: str) -> None:
            for other, chans in self.running.items():
                assert other == node.name or channel not in chans, f"{channel} runs on {other} and {node.name}"
            mine.add(channel)
            self.starts += 1

        async def stop(channel: str) -> None:
            mine.discard(channel)
            self.stops += 1

        node.bind(start, stop)


def make_node(url: str, name: str, channels: list[str], collector: Collector, **kw) -> ClusterNode:
    node = ClusterNode(LeaseBook(Database(url), name, lease_time=15.0), channels=channels, heartbeat=3.0,
                       lease_time=15.0, **kw)
    collector.bind(node)
    return node


async def settle(nodes: list[ClusterNode], rounds: int) -> None:
    for _ in range(rounds):
        for n in nodes:
            await n.tick()


async def test_nodes_share_the_channels_a_joining_node_takes_only_surplus_and_nothing_flaps(pg_url: str) -> None:
    channels = [f"c{i:02d}" for i in range(30)]
    collector = Collector()
    stop = asyncio.Event()
    a, b = make_node(pg_url, "a", channels, collector), make_node(pg_url, "b", channels, collector)
    for n in (a, b):
        assert await n.join(stop)
    await settle([a, b], 3)
    assert {len(collector.running["a"]), len(collector.running["b"])} == {15}
    c = make_node(pg_url, "c", channels, collector)
    assert await c.join(stop)
    await settle([c, a, b], 4)
    counts = {n: len(chans) for n, chans in collector.running.items()}
    # share 10, slack 1: a and b shed down to 11 and c took what they shed; nobody lost a lease
    assert counts == {"a": 11, "b": 11, "c": 8}, counts
    assert a.stats.lost == b.stats.lost == c.stats.lost == 0
    before = {n: set(chans) for n, chans in collector.running.items()}
    starts = collector.starts
    await settle([a, b, c], 5)
    assert {n: set(chans) for n, chans in collector.running.items()} == before  # converged: no flapping
    assert collector.starts == starts
    assert sorted(ch for chans in collector.running.values() for ch in chans) == channels
    for n in (a, b, c):
        await n.leave()


async def test_a_dead_nodes_channels_go_to_the_others_and_its_return_steals_nothing(pg_url: str) -> None:
    channels = [f"c{i}" for i in range(9)]
    collector = Collector()
    stop = asyncio.Event()
    nodes = [make_node(pg_url, n, channels, collector) for n in "abc"]
    for n in nodes:
        assert await n.join(stop)
    await settle(nodes, 3)
    a, b, _ = nodes
    dead = set(collector.running["c"])
    assert len(dead) == 3
    age(pg_url, "c")  # c was killed: no heartbeat, its leases ran out
    collector.running["c"].clear()
    await settle([a, b], 2)
    assert dead <= collector.running["a"] | collector.running["b"]
    assert sorted(collector.running["a"] | collector.running["b"]) == channels
    # c comes back (a new process): nothing is free, so it takes nothing and a and b, at 5 and 4
    # with share 3 + slack 1, shed only what is above 4
    c2 = make_node(pg_url, "c", channels, collector)
    assert await c2.join(stop)
    await settle([c2, a, b], 3)
    counts = {n: len(chans) for n, chans in collector.running.items()}
    assert counts["a"] <= 4 and counts["b"] <= 4 and sum(counts.values()) == 9, counts
    assert a.stats.lost == b.stats.lost == 0
    for n in (a, b, c2):
        await n.leave()


async def test_a_node_cut_off_from_postgresql_stops_before_its_lease_can_pass(pg_url: str) -> None:
    """The local deadline: the watchdog stops a channel at renewed + lease_time - 2 x heartbeat."""
    clock = [1000.0]
    collector = Collector()
    node = ClusterNode(LeaseBook(Database(pg_url), "a", lease_time=15.0), channels=["c1"], heartbeat=3.0,
                       lease_time=15.0, monotonic=lambda: clock[0])
    collector.bind(node)
    stop = asyncio.Event()
    assert await node.join(stop)
    await node.tick()
    assert collector.running["a"] == {"c1"} and node.allows("c1")
    clock[0] += 8.9  # no renewal since: still inside lease_time - 2 x heartbeat = 9 s
    assert node.allows("c1")
    clock[0] += 0.2
    assert not node.allows("c1")  # every write refused from here
    watchdog = asyncio.create_task(node._watch(stop))
    await asyncio.sleep(0.6)
    assert collector.running["a"] == set() and node.stats.lapsed == 1
    await node.tick()  # PostgreSQL answers again and nobody took the lease: polling resumes
    assert collector.running["a"] == {"c1"} and node.allows("c1")
    from meterd.api.runtime import Figures, render_metrics

    text = render_metrics(Figures(channels=list, spool=lambda: None, cluster=node.figures))
    assert 'meterd_cluster_channels_held{node="a"} 1' in text
    assert 'meterd_cluster_lease_lapses_total{node="a"} 1' in text
    assert 'meterd_cluster_live_nodes{node="a"} 1' in text
    stop.set()
    await watchdog
    await node.leave()


async def test_leadership_is_elected_once_and_passes_on_when_the_leader_dies(pg_url: str) -> None:
    collector = Collector()
    stop = asyncio.Event()
    a = make_node(pg_url, "a", [], collector, jobs=["prepaid", "sync"])
    b = make_node(pg_url, "b", [], collector, jobs=["prepaid", "sync"])
    for n in (a, b):
        assert await n.join(stop)
    await settle([a, b], 2)
    assert a.leading == {"prepaid": True, "sync": True} and b.leading == {"prepaid": False, "sync": False}
    runs: list[tuple[str, str]] = []
    cancelled: list[str] = []

    def job(who: str):
        async def service(stop: asyncio.Event) -> None:
            runs.append((who, "start"))
            try:
                await stop.wait()
            except asyncio.CancelledError:
                cancelled.append(who)
                raise

        return service

    leading_a = asyncio.create_task(a.lead("prepaid", job("a"), stop))
    leading_b = asyncio.create_task(b.lead("prepaid", job("b"), stop))
    await asyncio.sleep(0.05)
    assert runs == [("a", "start")]
    age(pg_url, "a")  # a stops heartbeating
    await b.tick()
    assert b.leading["prepaid"] is True
    await asyncio.sleep(0.05)
    assert runs == [("a", "start"), ("b", "start")]
    await a.tick()  # a learns it lost the leadership: its job is cancelled
    await asyncio.sleep(0.05)
    assert a.leading["prepaid"] is False and cancelled == ["a"]
    stop.set()
    await asyncio.gather(leading_a, leading_b)
    for n in (a, b):
        await n.leave()


# --- commands among nodes: scoped, fenced, orphans settled by the holder -----------------------------


class FakeRelay:
    """A meter's relay as control reaches it: counts sends, reads back what the last send set."""

    def __init__(self, meter: str, channel: str, sends: list[str]) -> None:
        self.meter, self.channel, self.sends = meter, channel, sends
        self.state: dict[str, bool] = {"alarm.pre_trip": True}  # already alarmed (an orphan's send got there)

    @property
    def bus(self) -> str:
        return self.channel

    def commands(self):
        from meterd.protocols.dlt645.messages import RelayCommand

        return frozenset(RelayCommand)

    def with_credentials(self, credentials):
        return self

    async def read_state(self) -> dict[str, bool]:
        return dict(self.state)

    async def send(self, command, now, *, valid_for, settle):
        from meterd.protocols.relay import EXPECTED, ControlOutcome

        self.sends.append(self.meter)
        flag, expected = EXPECTED[command]
        self.state[flag] = expected
        return ControlOutcome(self.meter, command, now, acknowledged=True, confirmed=True, read_back=dict(self.state),
                              detail=f"read back: {flag} = {expected}")


async def test_commands_go_out_only_for_held_channels_fenced_and_orphans_are_settled_by_the_new_holder(pg_url):
    from datetime import UTC, datetime, timedelta

    from meterd.control.commands import CommandExecutor
    from meterd.control.model import CommandKind, CommandRequest
    from meterd.control.state import ControlStore

    collector = Collector()
    stop = asyncio.Event()
    a = make_node(pg_url, "a", ["c1", "c2", "c3"], collector)
    a.set_meters({"m1": "c1", "m2": "c2", "m3": "c3"})
    assert await a.join(stop)
    other = book(pg_url, "b")
    other.ensure([channel_resource(c) for c in ("c1", "c2", "c3")])
    assert other.acquire([channel_resource("c2"), channel_resource("c3")], 2)  # b holds c2 and c3
    await a.tick()
    assert a.holding() == ["c1"]
    store = ControlStore(Database(pg_url))
    sends: list[str] = []
    relays = {m: FakeRelay(m, c, sends) for m, c in (("m1", "c1"), ("m2", "c2"), ("m3", "c3"))}
    now = datetime.now(UTC)
    executor = CommandExecutor(store, relays.get, clock=lambda: datetime.now(UTC), scope=a)
    queued = {c.meter: c for c in store.queue_commands(
        [CommandRequest(m, CommandKind.ALARM, "test", "tester", manual=True) for m in ("m1", "m2", "m3")],
        now=now, ttl=timedelta(hours=1))}
    # b claimed m3's command and died before finishing it: an orphan
    store.mark_sent(queued["m3"].id, now=now, node="b")
    await executor.run_once()
    assert sends == ["m1"]  # only the meter on a's channel
    assert store.command(queued["m1"].id).state.value == "confirmed"
    assert store.command(queued["m1"].id).node == "a"
    assert store.command(queued["m2"].id).state.value == "queued"
    # b's node dies; a takes c2 and c3, and settles m3's orphan by read-back: not sent again
    age(pg_url, "b")
    await a.tick()
    assert a.holding() == ["c1", "c2", "c3"]
    settled = await executor.recover()
    assert [c.meter for c in settled] == ["m3"] and settled[0].state.value == "confirmed"
    assert "not resent" in settled[0].detail and sends == ["m1"]
    # a DTU claims c2 for b just before a sends m2's command: a's claim is fenced off
    other2 = LeaseBook(Database(pg_url), "b", lease_time=15.0)
    other2.join("test")
    other2.claim(channel_resource("c2"))
    assert a.allows("c2")  # a has not renewed since: locally it still looks held
    await executor.run_once()
    assert sends == ["m1"] and store.command(queued["m2"].id).state.value == "queued"
    await a.tick()  # a learns it lost c2
    assert not a.allows("c2")
    store.close()
    other.close()
    other2.close()
    await a.leave()


async def test_scheduled_tasks_run_only_where_the_channel_is_held() -> None:
    from datetime import UTC, datetime

    from meterd.collector.poll import RoundResult
    from meterd.collector.scheduler import TaskScheduler
    from meterd.config.model import MeterConfig
    from meterd.config.tasks import TaskSpec

    ran: list[str] = []

    def run_round(task, meters_by_channel, reads, now):
        ran.extend(meters_by_channel)
        return RoundResult(next(iter(meters_by_channel)), now)

    spec = TaskSpec("rt", "realtime", quantities=("voltage.a",), every=3600)
    meters = [MeterConfig(address="000000000001", channel="c1"), MeterConfig(address="000000000002", channel="c2")]
    held = {"c1"}
    sched = TaskScheduler([spec], meters, run_round, owns=held.__contains__)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert await sched.run_task("rt", "c1", now) is not None
    assert await sched.run_task("rt", "c2", now) is None
    assert ran == ["c1"] and sched.stats["rt@c2"].elsewhere == 1 and sched.stats["rt@c1"].runs == 1


# --- readings forwarded to a job's leader -----------------------------------------------------------


async def test_forwarded_readings_reach_the_leader_once_with_their_values(pg_url) -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from meterd.cluster.forward import Forwarder, ReadingQueue
    from meterd.readings import Quality, Reading

    db = Database(pg_url)
    queue = ReadingQueue(db, "prepaid", "a")
    queue.migrate()
    queue.migrate()
    at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    kept = [Reading("m1", "energy.active.import.total", at, Decimal("123.45"), "kWh"),
            Reading("m1", "frozen.daily.energy.active.import.total", at, Decimal("120.00"), "kWh")]
    dropped = [Reading("m1", "voltage.a", at, Decimal("220.1"), "V"),
               Reading("m2", "energy.active.import.total", at, Decimal("1"), "kWh", Quality.IMPLAUSIBLE)]
    forwarder = Forwarder(queue, {"energy.active.import.total", "frozen.daily.energy.active.import.total"})
    forwarder.observe(kept + dropped)
    await forwarder.flush()
    assert forwarder.pushed == 2 and queue.size() == 2
    everything = Forwarder(ReadingQueue(db, "analytics", "a"), prefixes=("",),
                           qualities=(Quality.GOOD, Quality.SUSPECT))
    odd = [Reading("m3", "clock.datetime", at, at), Reading("m3", "status.word1", at, 0x1234),
           Reading("m3", "relay.open", at, False), Reading("m3", "meter.model", at, "DDS-1", "", Quality.SUSPECT)]
    everything.observe(odd)
    await everything.flush()
    # two leaders taking at once (an old one not yet stopped, a new one): each reading once
    other = ReadingQueue(db, "prepaid", "b")
    got = queue.take(1) + other.take() + queue.take()
    assert sorted(got, key=lambda r: r.quantity) == sorted(kept, key=lambda r: r.quantity)
    assert ReadingQueue(db, "analytics", "b").take() == odd



# --- the [cluster] section --------------------------------------------------------------------------


def _parse(store: str, cluster: str = ""):
    import tomllib

    from meterd.config.loader import parse_config

    return parse_config(tomllib.loads(f"[store]\ndata_dir = 'd'\n{store}\n{cluster}"), "site.toml")


def test_the_cluster_section() -> None:
    from meterd.config.cluster import ClusterConfig

    pg = "database = 'postgresql://meterd@db:5432/meterd'"
    assert _parse("").cluster is None  # SQLite: one node
    assert _parse(pg).cluster == ClusterConfig()  # PostgreSQL: a node among others, with the defaults
    got = _parse(pg, "[cluster]\nnode = 'a'\nlease_time = '30s'\nheartbeat = '5s'\nslack = 2").cluster
    assert got == ClusterConfig(node="a", lease_time=30.0, heartbeat=5.0, slack=2)
    assert _parse(pg, "[cluster]\nenabled = false").cluster is None
    for store, cluster, says in [
        ("", "[cluster]\nenabled = true", "cluster: collector nodes share their leases through PostgreSQL"),
        ("", "[cluster]\nnode = 'a'", "through PostgreSQL"),
        (pg, "[cluster]\nheartbeat = '6s'", "cluster.heartbeat: must be at most a third of lease_time (15 s)"),
        (pg, "[cluster]\nnodes = 'a'", 'cluster.nodes: unknown key (did you mean "node"?)'),
        (pg, "[cluster]\nnode = ' a'", "cluster.node: must be printable"),
        (pg, "[cluster]\nlease_time = 'soon'", "cluster.lease_time: must be a positive duration"),
    ]:
        with pytest.raises(ConfigError) as err:
            _parse(store, cluster)
        assert says in str(err.value), str(err.value)


async def test_a_node_whose_row_vanished_stops_everything_and_joins_again(pg_url) -> None:
    collector = Collector()
    stop = asyncio.Event()
    a = make_node(pg_url, "a", ["c1", "c2"], collector)
    assert await a.join(stop)
    await a.tick()
    assert collector.running["a"] == {"c1", "c2"}
    with psycopg.connect(pg_url, autocommit=True) as conn:  # e.g. the database was restored from a backup
        conn.execute("DELETE FROM cluster_nodes WHERE node = 'a'")
    stops = collector.stops
    await a.tick()
    assert collector.stops == stops + 2 and a.joined  # stopped, released, registered again
    await a.tick()
    assert collector.running["a"] == {"c1", "c2"}
    assert {r: h for r, h in holders(pg_url).items()} == {"channel:c1": "a", "channel:c2": "a"}
    await a.leave()
