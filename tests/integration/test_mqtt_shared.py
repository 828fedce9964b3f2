"""MQTT terminals among collector nodes, over a real Mosquitto: pushed readings through the shared
subscription ``$share/meterd/<root>/terminals/+/push`` (each push to exactly one node), requests
and replies per node (each reply to the node that asked).

The nodes are :class:`~meterd.collector.mqtt.MqttHub`\\ s made as a collector node makes them
(``shared=True``, a client id each), one of them in a process of its own so that it can be killed
with SIGKILL; the last test runs two whole collector nodes (``build_node`` over one PostgreSQL)
and checks what they stored.  "Exactly once" is checked on what each node *took* (its
``on_readings`` callback, or the daemon's observers): the readings table keeps one row per meter,
quantity and time whatever number of times it is written, so it cannot show a push taken twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meterd.clock import CST
from meterd.collector.channel import Channel, Timing
from meterd.collector.mqtt import MqttHub
from meterd.collector.poll import MeterTarget, poll_meter
from meterd.readings import Reading
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.mqtt_terminal import MqttTerminal, run_mqtt_fleet
from mosquitto import Mosquitto, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")

START = datetime(2025, 6, 1, 8, 0)
ENERGY = 0x00010000
QUANTITY = "current.a"  # what the terminals push (the daemon test polls energy only)

Key = tuple[str, str, datetime]  # meter, quantity, timestamp: one pushed reading


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path / "broker") as b:
        yield b


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s: {what}"
        await asyncio.sleep(0.01)


class Taken:
    """What one node took: every pushed reading, by its key."""

    def __init__(self) -> None:
        self.keys: list[Key] = []

    def __call__(self, tid: str, readings: list[Reading]) -> None:
        self.keys += [(r.meter, r.quantity, r.timestamp) for r in readings]


async def node_hub(broker, name: str, taken: Taken | None = None, **kw) -> MqttHub:
    hub = MqttHub(broker.host, broker.port, client_id=f"meterd-master.{name}", shared=True,
                  reconnect_min=0.1, reconnect_max=0.5, on_readings=taken, **kw)
    assert await hub.start(5)
    assert await hub.wait_subscribed(5)
    return hub


def push_all(terminals: list[MqttTerminal], rounds: range, base: datetime = START,
             step: timedelta = timedelta(minutes=1)) -> list[Key]:
    """Each terminal pushes ``QUANTITY`` of each meter once per round, ``step`` apart: the keys."""
    sent: list[Key] = []
    for k in rounds:
        at = base + k * step
        stamp = at.replace(tzinfo=CST).astimezone(UTC)
        for term in terminals:
            assert term.push_readings(at, [QUANTITY]) == len(term.addresses)
            sent += [(a, QUANTITY, stamp) for a in term.addresses]
    return sent


def exactly_once(sent: list[Key], *nodes: Taken) -> None:
    taken = Counter(k for node in nodes for k in node.keys)
    twice = [k for k, n in taken.items() if n > 1]
    assert not twice, f"{len(twice)} pushed readings taken more than once, e.g. {twice[:3]}"
    assert taken == Counter(sent), f"{len(set(sent) - set(taken))} pushed readings never taken"


async def settle(nodes: list[Taken], expected: int, timeout: float = 10.0) -> None:
    """Until the nodes took ``expected`` readings between them, and a while more (a duplicate would
    come now)."""
    await until(lambda: sum(len(n.keys) for n in nodes) >= expected, timeout, f"{expected} readings taken")
    await asyncio.sleep(0.3)


# --- a node in a process of its own (to be killed) -----------------------------------------------

NODE_SCRIPT = """
import asyncio, sys
from meterd.collector.mqtt import MqttHub

async def main() -> None:
    def took(tid, readings):
        for r in readings:
            print("took", r.meter, r.quantity, r.timestamp.isoformat(), flush=True)
    hub = MqttHub("127.0.0.1", int(sys.argv[1]), client_id=sys.argv[2], shared=True, on_readings=took)
    await hub.start(5)
    assert await hub.wait_subscribed(5)
    print("subscribed", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class NodeProcess:
    """A shared hub in a child process; its stdout lines (``took ...``) collected by a thread."""

    def __init__(self, broker, name: str) -> None:
        self.client_id = f"meterd-master.{name}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, str(broker.port), self.client_id],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.taken = Taken()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("took "):
                _, meter, quantity, stamp = line.split()
                self.taken.keys.append((meter, quantity, datetime.fromisoformat(stamp)))

    async def ready(self) -> None:
        await until(lambda: "subscribed" in self.lines or self.proc.poll() is not None, 10, "the node subscribed")
        assert "subscribed" in self.lines, "\n".join(self.lines)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        self._reader.join(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


# --- the tests -------------------------------------------------------------------------------------


async def test_two_nodes_take_each_push_once_between_them(broker):
    fleet = await run_mqtt_fleet(4, 2, broker.host, broker.port, start=START)
    a, b = Taken(), Taken()
    hubs = [await node_hub(broker, "n1", a), await node_hub(broker, "n2", b)]
    try:
        sent = push_all(list(fleet.terminals.values()), range(25))
        await settle([a, b], len(sent))
    finally:
        for hub in hubs:
            await hub.close()
        await fleet.close()
    exactly_once(sent, a, b)
    assert a.keys and b.keys  # shared between the two, not all to one
    assert sum(h.stats.pushed_messages for h in hubs) == len(sent)  # one meter's reading per message
    for hub in hubs:
        assert hub.stats.malformed == hub.stats.pushed_on_up == hub.stats.pushed_not_held == 0
        assert hub.push_subscription == "$share/meterd/meterd/terminals/+/push"


async def test_a_single_master_beside_the_nodes_gets_every_push(broker):
    """A plain subscription (a single master, or a tool watching) is not part of the group: it
    gets every push, and the group still gets each once."""
    fleet = await run_mqtt_fleet(2, 2, broker.host, broker.port, start=START)
    a, b, alone = Taken(), Taken(), Taken()
    single = MqttHub(broker.host, broker.port, client_id="meterd-single", on_readings=alone)
    assert await single.start(5) and await single.wait_subscribed(5)
    hubs = [await node_hub(broker, "n1", a), await node_hub(broker, "n2", b), single]
    try:
        sent = push_all(list(fleet.terminals.values()), range(10))
        await settle([a, b], len(sent))
        await until(lambda: len(alone.keys) >= len(sent))
    finally:
        for hub in hubs:
            await hub.close()
        await fleet.close()
    exactly_once(sent, a, b)
    exactly_once(sent, alone)
    assert single.push_subscription == "meterd/terminals/+/push"


async def test_a_node_stopping_cleanly_hands_its_share_over_without_losing_a_push(broker):
    """Pushes keep coming while one node closes: it leaves the group (UNSUBACK awaited) before it
    disconnects, so each push is taken once -- by it before, by the other after."""
    fleet = await run_mqtt_fleet(2, 2, broker.host, broker.port, start=START)
    terminals = list(fleet.terminals.values())
    a, b = Taken(), Taken()
    hub_a, hub_b = await node_hub(broker, "n1", a), await node_hub(broker, "n2", b)
    sent: list[Key] = []

    async def pushing() -> None:
        for k in range(200):
            sent.extend(push_all(terminals, range(k, k + 1)))
            await asyncio.sleep(0.002)

    try:
        pusher = asyncio.create_task(pushing())
        await until(lambda: len(b.keys) >= 20, what="n2 took some")
        await hub_b.close()
        closed_at = len(sent)
        await pusher
        await settle([a, b], len(sent))
    finally:
        await hub_a.close()
        await hub_b.close()
        await fleet.close()
    exactly_once(sent, a, b)
    assert closed_at < len(sent) - 40  # pushes went on well after n2 left
    assert set(sent[closed_at:]) <= set(a.keys)  # everything after n2 had gone: n1's


async def test_a_killed_node_drops_out_and_every_later_push_reaches_the_other(broker):
    """kill -9 of a node: the broker sees its socket close and deals it nothing more; every push
    published after that reaches the surviving node.  A node started again takes its share again."""
    fleet = await run_mqtt_fleet(2, 2, broker.host, broker.port, start=START)
    terminals = list(fleet.terminals.values())
    a = Taken()
    hub_a = await node_hub(broker, "n1", a)
    victim = NodeProcess(broker, "n2")
    again: NodeProcess | None = None
    try:
        await victim.ready()
        before = push_all(terminals, range(10))
        await settle([a, victim.taken], len(before))
        exactly_once(before, a, victim.taken)
        assert victim.taken.keys, "the child node took none before the kill"

        victim.kill()
        # the broker noticed (the kernel closed the dead process's socket): no guessing with sleeps
        await until(lambda: f"Client {victim.client_id} closed its connection" in broker.log(), 10,
                    "the broker saw the killed node go")
        a.keys.clear()
        while_down = push_all(terminals, range(10, 30))
        await settle([a], len(while_down))
        exactly_once(while_down, a)  # all of them, to the survivor

        again = NodeProcess(broker, "n2")
        await again.ready()
        a.keys.clear()
        after = push_all(terminals, range(30, 50))
        await settle([a, again.taken], len(after))
        exactly_once(after, a, again.taken)
        assert again.taken.keys and a.keys
    finally:
        victim.stop()
        if again is not None:
            again.stop()
        await hub_a.close()
        await fleet.close()


async def test_requests_and_replies_stay_with_the_node_that_asked(broker):
    """Two nodes send requests to one terminal at once (as around a hand-over): each gets its own
    replies; the other's are counted in other_masters and ignored, never taken for an answer."""
    models = [MeterModel(f"00000000000{i}", start=START, seed=i) for i in (1, 2)]
    term = MqttTerminal("T001", Dlt645Bus(models), broker.host, broker.port, clock=lambda: START,
                        reconnect_min=0.1, reconnect_max=0.5)
    hubs = [await node_hub(broker, "n1"), await node_hub(broker, "n2")]
    assert await term.start(5)
    now = START.replace(tzinfo=CST)

    async def read(hub: MqttHub, meter: str, n: int) -> list[str]:
        channel = Channel(f"{hub.client_id}-T001", hub.transport("T001"), timing=Timing(3.0, 0.5), retries=0)
        outcomes = []
        for _ in range(n):
            readings, attempts = await poll_meter(channel, MeterTarget(meter), [ENERGY], now)
            assert all(r.meter == meter for r in readings)  # never the other node's meter's answer
            outcomes += [a.outcome for a in attempts]
        return outcomes

    try:
        first, second = await asyncio.gather(read(hubs[0], models[0].address, 30),
                                              read(hubs[1], models[1].address, 30))
    finally:
        await term.close()
        for hub in hubs:
            await hub.close()
    assert first == second == ["ok"] * 30
    for hub in hubs:
        s = hub.stats
        assert s.published == s.replies_matched == 30
        assert s.other_masters == 30  # the other node's replies, heard and set aside
        assert s.unknown_ids == s.late == s.malformed == 0


async def test_pushes_still_sent_on_up_are_taken_by_the_channels_holder_alone(broker):
    """A terminal that still pushes on ``up``: every node hears it, so the node holding its channel
    takes it and the others count it (pushed_not_held)."""
    term = MqttTerminal("T001", Dlt645Bus([MeterModel("000001000001", start=START)]), broker.host, broker.port,
                        clock=lambda: START, push_on_up=True, reconnect_min=0.1, reconnect_max=0.5)
    holder, other = Taken(), Taken()
    hubs = [await node_hub(broker, "n1", holder, holds=lambda tid: tid == "T001"),
            await node_hub(broker, "n2", other, holds=lambda tid: False)]
    assert await term.start(5)
    try:
        sent = push_all([term], range(10))
        await settle([holder], len(sent))
        await until(lambda: hubs[1].stats.pushed_not_held == 10)
    finally:
        await term.close()
        for hub in hubs:
            await hub.close()
    exactly_once(sent, holder)
    assert other.keys == []
    assert hubs[0].stats.pushed_on_up == 10 and hubs[0].stats.pushed_not_held == 0


# --- two whole collector nodes on PostgreSQL ------------------------------------------------------


def site(url: str, data_dir: Path, node: str, broker_port: int, terminals: dict[str, list[str]]) -> str:
    lines = [f"""
[store]
data_dir = "{data_dir}"
database = "{url}"
flush_interval = "200ms"

[cluster]
node = "{node}"
lease_time = "6s"
heartbeat = "1s"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "meterd-master"
keepalive = 10

[[polls]]
name = "rt"
interval = "1s"
quantities = ["energy.active.import.total"]
"""]
    for tid, meters in terminals.items():
        lines.append(f'[channels.{tid.lower()}]\nmqtt = {{ terminal = "{tid}" }}\nresponse_timeout = "2s"\nretries = 0\n')
        lines += [f'[[meters]]\naddress = "{a}"\nchannel = "{tid.lower()}"\n' for a in meters]
    return "\n".join(lines)


async def test_two_collector_nodes_store_each_pushed_reading_once(broker, pg_url, tmp_path):
    """Two collector nodes (``build_node``, [cluster] on one PostgreSQL) with MQTT terminals: they
    poll the channels they hold (requests and replies per node) and take each push once between
    them, whichever node holds its terminal's channel; with one node stopped the other takes every
    push.  Each push is seen once by the nodes' observers (what the writer and the forwarding to
    the prepaid and analytics leader get) and is in the readings table."""
    from meterd.app import build_node
    from meterd.cli.migrate import migrate
    from meterd.config.loader import parse_config
    from meterd.storage import open_store

    fleet = await run_mqtt_fleet(4, 2, broker.host, broker.port)
    terminals = {tid: term.addresses for tid, term in fleet.terminals.items()}
    runs: dict[str, tuple[asyncio.Event, asyncio.Task]] = {}
    seen: dict[str, list[Key]] = {"n1": [], "n2": []}
    stores = []
    nodes = {}
    try:
        for name in ("n1", "n2"):
            text = site(pg_url, tmp_path / name, name, broker.port, terminals)
            config = parse_config(tomllib.loads(text), "site.toml", tmp_path)
            migrate(config.store.state)
            store = open_store(config.store.state)
            stores.append(store)
            node = build_node(config, store)
            node.collector.subscribe(lambda readings, name=name: seen[name].extend(
                (r.meter, r.quantity, r.timestamp) for r in readings if r.quantity == QUANTITY))
            stop = asyncio.Event()
            runs[name] = (stop, asyncio.create_task(node.run(stop)))
            nodes[name] = node
        hubs = {name: node.collector.hub for name, node in nodes.items()}
        for hub in hubs.values():
            assert hub is not None and hub.shared
            await until(lambda hub=hub: hub.subscribed, 10, "the node's hub subscribed")
        # both nodes poll (each holds some channels) before the pushes start
        await until(lambda: all(h.stats.replies_matched > 0 for h in hubs.values()), 20, "both nodes polling")

        base = fleet.clock().replace(microsecond=0)  # payload times carry milliseconds
        # 5 s apart: 40 rounds stay within the 5 minutes a terminal's clock may run ahead of the
        # master's (a push stamped later is taken as read when it came)
        sent = push_all(list(fleet.terminals.values()), range(20), base, timedelta(seconds=5))
        await until(lambda: len(seen["n1"]) + len(seen["n2"]) >= len(sent), 10, "pushes taken")
        await asyncio.sleep(0.3)
        assert seen["n1"] and seen["n2"]  # each node took pushes of terminals it may not hold

        stop, run = runs["n2"]  # n2 stops cleanly; pushes go on to n1
        stop.set()
        await asyncio.wait_for(run, 30)
        later = push_all(list(fleet.terminals.values()), range(20, 40), base, timedelta(seconds=5))
        await until(lambda: set(later) <= set(seen["n1"]), 10, "n1 took the rest")
        await asyncio.sleep(0.3)
        await until(lambda: nodes["n1"].collector.writer.pending == 0, 10, "n1's writer flushed")

        everything = sent + later
        taken = Counter(seen["n1"] + seen["n2"])
        assert not [k for k, n in taken.items() if n > 1], "a pushed reading was taken twice"
        assert taken == Counter(everything)
        stored = {(r.meter, r.quantity, r.timestamp) for meters in terminals.values() for a in meters
                  for r in stores[0].readings(a, quantity=QUANTITY)}
        assert stored == set(everything)
        for hub in hubs.values():
            assert hub.stats.unknown_ids == hub.stats.malformed == hub.stats.pushed_not_held == 0
        assert sum(h.stats.other_masters for h in hubs.values()) > 0  # replies fan out; each kept its own
    finally:
        for stop, run in runs.values():
            stop.set()
        await asyncio.gather(*(run for _, run in runs.values()), return_exceptions=True)
        for store in stores:
            store.close()
        await fleet.close()
