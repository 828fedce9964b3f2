"""Three ``meterd run`` processes on one PostgreSQL split the channels of a simulated site; one is
killed with SIGKILL and its channels are polled again by the others within the lease time;
PostgreSQL is restarted under them and collection resumes.

The simulated buses sit behind a recording relay (:class:`Recorder`): every request frame that
reaches a bus is noted with the client connection it came on and when.  A node polls a bus on one
connection at a time, so two connections whose requests interleave on one bus would be two nodes
polling it at once -- the property the leases exist to prevent.

Prepaid control runs too: the leader's passes charge what every node forwards, commands queued by
an operator go out through whichever node holds the meter's channel, and after the kill (of the
prepaid leader) no command went out twice, the balances equal the ledger, and what was charged
equals the energy the registers advanced, once.

The nodes and the commands are ``meterd`` processes forked from one that imported the package
(tests/cliserver.py): processes of their own (SIGKILL, SIGTERM and exit codes as ever), without a
second of imports each.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

import cliserver
from cliserver import Spawned
from meterd.control.model import CommandKind, CommandRequest
from meterd.control.state import ControlStore
from meterd.protocols.dlt645.frame import Function, StreamDecoder
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.database import Database

pytestmark = pytest.mark.slow

BUSES = 6
METERS_PER_BUS = 3
LEASE, HEARTBEAT = 6.0, 1.0
PRICE = Decimal("0.50")
ENV = {"METERD_METER_PASSWORD": "02123456", "METERD_OPERATOR_CODE": "00000001"}


class Recorder:
    """A TCP relay in front of one simulated bus recording each request frame: (connection, time,
    function, meter)."""

    def __init__(self, name: str, upstream: tuple[str, int]) -> None:
        self.name = name
        self.upstream = upstream
        self.requests: list[tuple[int, float, int, str]] = []
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._next += 1
        conn = self._next
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        decoder = StreamDecoder()

        async def down() -> None:
            with _quiet():
                while data := await up_reader.read(4096):
                    writer.write(data)
                    await writer.drain()

        back = asyncio.create_task(down())
        self._tasks.add(back)
        with _quiet():
            while data := await reader.read(4096):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    self.requests.append((conn, time.monotonic(), frame.function, frame.address))
                up_writer.write(data)
                await up_writer.drain()
        back.cancel()
        for w in (writer, up_writer):
            w.close()

    def overlaps(self) -> list[tuple[int, int]]:
        """Pairs of connections whose requests interleave in time on this bus."""
        spans: dict[int, list[float]] = {}
        for conn, t, _, _ in self.requests:
            span = spans.setdefault(conn, [t, t])
            span[1] = t
        items = sorted(spans.items())
        return [(a, b) for i, (a, (a0, a1)) in enumerate(items) for b, (b0, b1) in items[i + 1:]
                if a0 <= b1 and b0 <= a1]

    def last_connection(self) -> int | None:
        return self.requests[-1][0] if self.requests else None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        return kind is not None and issubclass(kind, (ConnectionError, OSError, asyncio.CancelledError))


def site(url: str, data_dir: Path, node: str, ports: list[int], addresses: list[list[str]], lease: float = LEASE,
         heartbeat: float = HEARTBEAT) -> str:
    lines = [f"""
[store]
data_dir = "{data_dir}"
database = "{url}"
flush_interval = "200ms"

[cluster]
node = "{node}"
lease_time = "{lease:g}s"
heartbeat = "{heartbeat:g}s"
"""]
    for i, (port, meters) in enumerate(zip(ports, addresses)):
        lines.append(f'[channels.bus{i}]\ntcp = {{ host = "127.0.0.1", port = {port} }}\nresponse_timeout = "500ms"\n'
                     'retries = 0\n')
        for a in meters:
            lines.append(f'[[meters]]\naddress = "{a}"\nchannel = "bus{i}"\n')
    lines.append("""
[[polls]]
name = "rt"
interval = "1s"
quantities = ["energy.active.import.total", "voltage.a"]

[analytics]
check_every = "1s"
no_data_after = "4s"

[prepaid]
check_every = "1s"
retry_every = "2s"

[[prepaid.tariffs]]
name = "flat"
[[prepaid.tariffs.versions]]
effective = 2020-01-01
kind = "flat"
price = "0.50"
""")
    for meters in addresses:
        for a in meters:
            lines.append(f'[[prepaid.accounts]]\naccount = "A{a}"\ntariff = "flat"\nmeters = ["{a}"]\n'
                         'opening_balance = "10000.00"\n')
    return "\n".join(lines)


def query(url: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, args).fetchall()


def leases(url: str) -> dict[str, str]:
    """channel -> its live holder."""
    try:
        rows = query(url, "SELECT resource, holder FROM leases WHERE expires > clock_timestamp() AND holder IS NOT NULL")
    except psycopg.Error:
        return {}
    return {r.removeprefix("channel:"): h for r, h in rows if r.startswith("channel:")} | \
        {r: h for r, h in rows if r.startswith("leader:")}


async def until(predicate, timeout: float, what: str) -> float:
    began = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - began
        except psycopg.Error:
            pass
        assert time.monotonic() - began < timeout, f"timed out after {timeout} s: {what}"
        await asyncio.sleep(0.2)


async def test_three_nodes_share_the_buses_survive_a_kill_and_a_postgresql_restart(pg_server, pg_url, tmp_path):
    cli = cliserver.shared()
    spec = FleetSpec(pty_buses=0, tcp_buses=BUSES, meters_per_bus=METERS_PER_BUS, wire_time=False, speed=10.0,
                     seed=5)
    fleet = await run_fleet(spec)
    recorders = []
    procs: dict[str, Spawned] = {}
    logs: dict[str, Path] = {}
    try:
        ports = []
        for i, bus in enumerate(fleet.buses):
            host, _, port = bus.endpoint.rpartition(":")
            rec = Recorder(f"bus{i}", (host, int(port)))
            ports.append(await rec.start())
            recorders.append(rec)
        addresses = [list(b.meters) for b in fleet.buses]
        meters = [a for group in addresses for a in group]
        env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
        for name in ("n1", "n2", "n3"):
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(site(pg_url, tmp_path / name, name, ports, addresses))
            procs[name] = cli.spawn("run", "-c", str(cfg), env=env, cwd=tmp_path)
            logs[name] = procs[name].stderr_path
            if name == "n1":  # the first creates the tables; the others join a running site
                await until(lambda: len(leases(pg_url)) >= BUSES, 30, "n1 takes every channel")

        # 1. the three share the buses, every meter is collected
        await until(lambda: {leases(pg_url).get(f"bus{i}") for i in range(BUSES)} == {"n1", "n2", "n3"},
                    20, "every node holds a channel")
        await until(lambda: len(query(pg_url, "SELECT DISTINCT meter FROM readings")) == len(meters), 20,
                    "every meter collected")
        held = leases(pg_url)
        counts = {n: sum(1 for i in range(BUSES) if held[f"bus{i}"] == n) for n in procs}
        assert max(counts.values()) <= 3, counts  # fair share 2, slack 1

        # 2. operator commands go out through the node holding each meter's bus
        store = ControlStore(Database(pg_url))
        now = datetime.now(UTC)
        first = store.queue_commands([CommandRequest(m, CommandKind.ALARM, "test", "tester", manual=True)
                                      for m in meters], now=now, ttl=timedelta(minutes=10))
        await until(lambda: all(c.state.value in ("confirmed", "failed") for c in
                                (store.command(x.id) for x in first)), 20, "first commands settled")

        # 3. kill -9 the prepaid leader: its buses are polled again by the others within the lease time
        leader = held["leader:prepaid"]
        victim_buses = [i for i in range(BUSES) if held[f"bus{i}"] == leader]
        assert victim_buses
        last_seen = {i: recorders[i].last_connection() for i in victim_buses}
        second = store.queue_commands([CommandRequest(m, CommandKind.ALARM_RELEASE, "test", "tester", manual=True)
                                       for m in meters], now=datetime.now(UTC), ttl=timedelta(minutes=10))
        await asyncio.sleep(0.3)  # some of them in flight
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(10)
        killed = time.monotonic()

        def moved() -> bool:
            return all(recorders[i].requests and recorders[i].requests[-1][0] != last_seen[i]
                       and recorders[i].requests[-1][1] > killed for i in victim_buses)

        failover = await until(moved, LEASE + 10, "the dead node's buses polled again")
        assert failover < LEASE + 3 * HEARTBEAT, failover
        survivors = [n for n in procs if n != leader]
        await until(lambda: leases(pg_url).get("leader:prepaid") in survivors, 10, "a new prepaid leader")
        await until(lambda: all(c.state.value in ("confirmed", "failed") for c in
                                (store.command(x.id) for x in second)), 30, "second commands settled")

        # meterd cluster status: the dead node is dead, the survivors hold every bus and one leads
        shown = cli.run("cluster", "status", "-c", str(tmp_path / "n2.toml"), "--json", timeout=30, env=env,
                        cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        doc = json.loads(shown.stdout)
        states = {n["node"]: n["state"] for n in doc["nodes"]}
        assert states[leader] == "dead" and all(states[n] == "alive" for n in survivors), states
        assert sorted(c for n in doc["nodes"] for c in n["channels"]) == [f"bus{i}" for i in range(BUSES)]
        assert doc["leaders"]["prepaid"]["node"] in survivors and doc["channels_unheld"] == []
        text = cli.run("cluster", "status", "-c", str(tmp_path / "n2.toml"), timeout=30, env=env, cwd=tmp_path).stdout
        assert "+08:00" in text and f"prepaid: {doc['leaders']['prepaid']['node']}" in text and "dead" in text

        # 4. PostgreSQL restarts under the survivors: they carry on
        before = query(pg_url, "SELECT COUNT(*) FROM readings")[0][0]
        store.close()
        down_ms = datetime.now(UTC).timestamp() * 1000
        pg_server.restart()
        restarted = time.monotonic()
        outage = datetime.now(UTC).timestamp() * 1000 - down_ms
        await until(lambda: query(pg_url, "SELECT COUNT(*) FROM readings")[0][0] > before + 2 * len(meters), 30,
                    "collection resumes after the restart")
        for i in range(BUSES):
            await until(lambda i=i: recorders[i].requests and recorders[i].requests[-1][1] > restarted + 1, 20,
                        f"bus{i} polled after the restart")
        await asyncio.sleep(2.0)  # a prepaid pass after the restart
        # nothing collected during the restart was lost: every bus went on being read through it
        # (the outage is shorter than lease_time - 2 x heartbeat) and the writers kept what they
        # could not write until PostgreSQL was back
        gaps = {}
        for m in meters:
            ts = [r[0] for r in query(pg_url, "SELECT ts FROM readings WHERE meter = %s AND quantity = %s AND ts "
                                      "BETWEEN %s AND %s ORDER BY ts", m, "voltage.a", down_ms - 3000, down_ms + outage
                                      + 3000)]
            gaps[m] = max((b - a for a, b in itertools.pairwise(ts)), default=None)
        if outage < (LEASE - 2 * HEARTBEAT) * 1000 - 1000:
            assert all(g is not None and g < 4000 for g in gaps.values()), (outage, gaps)

        # the analytics leader saw every node's readings (forwarded): no meter is without data
        await until(lambda: leases(pg_url).get("leader:analytics") in survivors, 10, "a new analytics leader")
        await until(lambda: not query(pg_url, "SELECT meter FROM anomalies WHERE kind = 'no_data' AND closed_ts IS NULL"),
                    10, "no open no-data anomaly")
        # stop the survivors cleanly: they give their leases back
        for n in survivors:
            procs[n].send_signal(signal.SIGTERM)
        for n in survivors:
            assert procs[n].wait(30) == 0, logs[n].read_text()[-3000:]
        assert not any(h for r, h in leases(pg_url).items())

        # no bus ever saw two nodes at once
        assert {r.name: r.overlaps() for r in recorders if r.overlaps()} == {}
        # no command went out twice: one relay-control frame per command, each claimed once
        sent: dict[str, int] = defaultdict(int)
        for r in recorders:
            for _, _, function, meter in r.requests:
                if function == Function.RELAY_CONTROL:
                    sent[meter] += 1
        store = ControlStore(Database(pg_url))
        commands = [store.command(c.id) for c in first + second]
        claims = defaultdict(int)
        for c in commands:
            claims[c.meter] += c.tries
        assert dict(sent) == dict(claims), (sent, claims)
        assert all(c.tries <= 1 for c in commands if c.state.value == "confirmed")
        assert sum(1 for c in commands if c.state.value == "confirmed") >= len(commands) - BUSES  # orphans at most
        # balances equal the ledger; charged = the registers' advance x price, once
        assert store.verify_balances() == []
        for m in meters:
            cursor = store.cursors([m])
            charged = -sum((e.amount for e in store.ledger(f"A{m}") if e.kind.value == "charge"), Decimal(0))
            energy = query(pg_url, "SELECT value FROM readings WHERE meter = %s AND quantity = %s ORDER BY ts",
                           m, "energy.active.import.total")
            assert cursor, m
            first_kwh, last_kwh = Decimal(energy[0][0]), next(iter(cursor.values()))[1]
            expected = (last_kwh - first_kwh) * PRICE
            assert abs(charged - expected) <= Decimal("0.01") * (1 + len(energy)), (m, charged, expected)
        store.close()
        print(json.dumps({"failover_s": round(failover, 2), "counts": counts, "pg_outage_ms": round(outage),
                          "largest_gap_ms": max(g for g in gaps.values() if g is not None)}))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for r in recorders:
            await r.close()
        await fleet.close()
        for name, path in logs.items():
            if path.exists():
                sys.stderr.write(f"--- {name} (tail) ---\n{path.read_text()[-4000:]}\n")


class Balancer:
    """The TCP load balancer DTUs dial: each new connection goes to the first backend that accepts
    it, starting after the one the previous connection went to (round robin over live nodes)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.sessions: list[int] = []  # the backend port of each connection, in order
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first, n = self._turn, len(self.backends)
        self._turn = (first + 1) % n
        for k in range(n):
            port = self.backends[(first + k) % n]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.sessions.append(port)
            break
        else:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with _quiet():
                while data := await src.read(4096):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))]
        self._tasks.update(tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_writer):
            w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()


def dtu_site(url: str, data_dir: Path, node: str, listen: int, known: dict[str, str]) -> str:
    lines = [f"""
[store]
data_dir = "{data_dir}"
database = "{url}"
flush_interval = "200ms"

[cluster]
node = "{node}"
lease_time = "{LEASE:g}s"
heartbeat = "{HEARTBEAT:g}s"

[listeners.gprs]
host = "127.0.0.1"
port = {listen}
heartbeat_timeout = "30s"
"""]
    for n, (tid, channel) in enumerate(known.items()):
        lines.append(f'[channels.{channel}]\ndtu = {{ listener = "gprs", terminal = "{tid}" }}\n'
                     'response_timeout = "500ms"\nretries = 0\n')
        for i in range(2):
            lines.append(f'[[meters]]\naddress = "{n * 2 + i + 1:012d}"\nchannel = "{channel}"\n')
    lines.append('[[polls]]\nname = "rt"\ninterval = "500ms"\nquantities = ["energy.active.import.total"]\n')
    return "\n".join(lines)


async def test_the_node_holding_a_dtus_connection_polls_it_and_takes_it_over_before_the_lease_runs_out(
        pg_url, tmp_path):
    cli = cliserver.shared()
    from conftest import free_port
    from meterd.simulators.dtu import run_dtu_fleet

    listen = {"n1": free_port(), "n2": free_port()}
    balancer = Balancer([listen["n1"], listen["n2"]])
    lb_port = await balancer.start()
    procs: dict[str, Spawned] = {}
    logs: dict[str, Path] = {}
    fleet = None
    try:
        known = {"DTU00000001": "feeder1", "DTU00000002": "feeder2"}
        for name in ("n1", "n2"):
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(dtu_site(pg_url, tmp_path / name, name, listen[name], known))
            procs[name] = cli.spawn("run", "-c", str(cfg), env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path)
            logs[name] = procs[name].stderr_path
        await until(lambda: len(query(pg_url, "SELECT node FROM cluster_nodes")) == 2, 30, "both nodes joined")
        await asyncio.sleep(1.0)  # both listening
        fleet = await run_dtu_fleet(2, 2, "127.0.0.1", lb_port, heartbeat=5.0, reconnect_delay=0.5)
        port_node = {v: k for k, v in listen.items()}

        def holders_match() -> bool:
            held = leases(pg_url)
            where = [port_node[p] for p in balancer.sessions[-2:]]
            return len(balancer.sessions) >= 2 and [held.get("feeder1"), held.get("feeder2")] == where

        await until(holders_match, 20, "each DTU's channel held by the node its connection went to")
        await until(lambda: len(query(pg_url, "SELECT DISTINCT meter FROM readings")) == 4, 20, "all four meters")
        held = leases(pg_url)
        victim = held["feeder1"]
        survivor = "n2" if victim == "n1" else "n1"
        moved_meters = fleet.meters["DTU00000001"]
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        killed = datetime.now(UTC)
        began = time.monotonic()

        def read_again() -> bool:
            rows = query(pg_url, "SELECT meter, MAX(ts) FROM readings WHERE meter = ANY(%s) GROUP BY meter",
                         moved_meters)
            return len(rows) == 2 and all(ts > killed.timestamp() * 1000 for _, ts in rows)  # UTC ms

        took = await until(read_again, LEASE + 10, "the survivor reads the re-dialled DTU's meters")
        # the DTU re-dialled the survivor, which took its channel at once: well inside the lease time
        assert leases(pg_url)["feeder1"] == survivor
        assert took < LEASE - 1, took
        token = query(pg_url, "SELECT token FROM leases WHERE resource = 'channel:feeder1'")[0][0]
        assert token >= 2
        print(json.dumps({"dtu_failover_s": round(took, 2), "since_kill_s": round(time.monotonic() - began, 2)}))
        procs[survivor].send_signal(signal.SIGTERM)
        assert procs[survivor].wait(30) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if fleet is not None:
            await fleet.close()
        await balancer.close()
        for name, path in logs.items():
            if path.exists():
                sys.stderr.write(f"--- {name} (tail) ---\n{path.read_text()[-3000:]}\n")


def test_a_second_node_under_a_live_nodes_name_exits_non_zero_saying_so(pg_url, tmp_path):
    """Two processes under one node name would share leases: the second refuses to join, and its
    ``meterd run`` fails (exit 1, one line naming the live node), leaving the first undisturbed.  The
    second tries for two lease times before it gives up: a 4 s lease (heartbeat 1 s) here, not the
    other tests' 6 s, as the first node's liveness is all this is about."""
    from conftest import free_port

    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    cfg = tmp_path / "same.toml"
    cfg.write_text(site(pg_url, tmp_path / "same", "same", [free_port()], [["000000000001"]], lease=4.0))
    cli = cliserver.shared()
    first = cli.spawn("run", "-c", str(cfg), env=env, cwd=tmp_path)
    try:
        asyncio.run(until(lambda: bool(query(pg_url, "SELECT node FROM cluster_nodes WHERE node = 'same'")), 30,
                          "the first node joins"))
        second = cli.run("run", "-c", str(cfg), env=env, cwd=tmp_path, timeout=60)
        assert second.returncode == 1, second.stderr[-2000:]
        assert "in use by a live node" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first goes on
    finally:
        first.terminate()
        first.wait(20)

