"""Among collector nodes the executor settles orphans (``recover``) when the channels it holds
change, while its lanes go on sending: a command a lane has just claimed is no orphan.  A real
DL/T 645 meter simulator over TCP, the real stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

from meterd.collector.channel import Channel, Timing
from meterd.collector.control import Credentials, MeterRelay
from meterd.collector.poll import MeterTarget
from meterd.collector.transports import TcpTransport
from meterd.control.commands import CommandExecutor
from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.state import ControlStore
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_tcp

START = datetime(2026, 11, 23, 8, 0)
NOW = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
METER = "000000000001"


class Store(ControlStore):
    """The real store; a claim, once committed, waits (up to 2 s) until an orphan read-back of the
    same command was recorded: the moment between the claim's commit and the lane going on."""

    claimed = threading.Event()
    release = threading.Event()

    def mark_sent(self, *args, **kwargs):
        cmd = super().mark_sent(*args, **kwargs)
        self.claimed.set()
        self.release.wait(2.0)
        return cmd

    def record_relay(self, *args, **kwargs):
        result = super().record_relay(*args, **kwargs)
        self.release.set()
        return result


class Scope:
    """This node's hold on channel t (what meterd.cluster.node.ClusterNode answers)."""

    name = "a"
    generation = 0

    def meters(self) -> frozenset[str]:
        return frozenset({METER})

    def fence_for(self, meter: str):
        return lambda conn: True


async def test_a_command_claimed_by_a_lane_is_not_settled_as_an_orphan_meanwhile(state_where):
    bus = Dlt645Bus([MeterModel(METER, start=START)])
    running = await serve_tcp(bus, clock=SimClock.starting(START, speed=1.0))
    host, port = running.endpoint.rsplit(":", 1)
    channel = Channel("t", TcpTransport("t", host, int(port)), timing=Timing(0.3, 0.1), retries=0)
    store = Store(state_where)
    Store.claimed.clear()
    Store.release.clear()
    routes = {METER: MeterRelay(channel, MeterTarget(METER), credentials=Credentials("02123456", "12345678"))}
    scope = Scope()
    executor = CommandExecutor(store, routes.get, clock=lambda: NOW, valid_for=timedelta(days=3650), scope=scope)
    (cmd,) = store.queue_commands([CommandRequest(METER, CommandKind.TRIP, "test", "tester", manual=True)],
                                  now=NOW, ttl=timedelta(hours=1))
    stop = asyncio.Event()
    run = asyncio.create_task(executor.run(stop, idle=0.05))
    try:
        assert await asyncio.to_thread(Store.claimed.wait, 10)  # the lane claimed it, not sent yet
        scope.generation += 1  # meanwhile the node takes over another channel: orphans looked for
        executor.wake.set()
        for _ in range(200):
            if store.command(cmd.id).state.final:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
        store.close()
        await channel.close()
        await running.close()
    with Store(state_where) as again:
        done = again.command(cmd.id)
    assert done.state is CommandState.CONFIRMED, done.detail
    assert "restart" not in done.detail
