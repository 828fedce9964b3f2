"""The command executor against simulated DL/T 645 meters over real TCP: write-then-verify, stuck
relays, offline meters, orphans left by a crash (settled by read-back, never resent), priority."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from meterd.collector.channel import Channel, Timing
from meterd.collector.control import Credentials, MeterRelay, send_relay_command
from meterd.collector.poll import MeterTarget, read_item
from meterd.collector.transports import TcpTransport
from meterd.control.commands import CommandExecutor
from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.state import AccountSpec, ControlStore
from meterd.errors import StorageError
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.simulators.dlt645 import Dlt645Bus, FaultPlan
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_tcp

START = datetime(2026, 11, 23, 8, 0)
OK, STUCK, OFFLINE, OLD = "000000000001", "000000000002", "000000000003", "000000000004"
CREDS = Credentials("02123456", "12345678")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def rig(tmp_path):
    models = [MeterModel(OK, start=START), MeterModel(STUCK, start=START, stuck_relay=True),
              MeterModel(OFFLINE, start=START), MeterModel(OLD, start=START)]
    bus = Dlt645Bus(models, protocols={OLD: "dlt645-1997"}, faults={OFFLINE: FaultPlan.of("no_answer")})
    running = await serve_tcp(bus, clock=SimClock.starting(START, speed=1.0))
    host, port = running.endpoint.rsplit(":", 1)
    channel = Channel("t", TcpTransport("t", host, int(port)), timing=Timing(0.3, 0.1), retries=0)
    store = ControlStore(tmp_path)
    store.upsert_accounts([AccountSpec("A1", "flat", {OK: Decimal(1), STUCK: Decimal(1), OFFLINE: Decimal(1)},
                                       area="TA1")], actor="test", now=Clock()())
    routes = {a: MeterRelay(channel, MeterTarget(a, protocol="dlt645-1997" if a == OLD else "dlt645-2007"),
                            credentials=CREDS) for a in (OK, STUCK, OFFLINE, OLD)}
    clock = Clock()
    notices: list = []

    async def publish(items):
        notices.extend(items)

    executor = CommandExecutor(store, routes.get, clock=clock, retry_every=timedelta(minutes=5),
                               valid_for=timedelta(days=3650), publish=publish)
    yield bus, store, executor, clock, notices, channel
    store.close()
    await channel.close()
    await running.close()


def queue(store, clock, meter, kind, ttl=timedelta(minutes=30)):
    [cmd] = store.queue_commands([CommandRequest(meter, kind, "test", "policy", account="A1")], now=clock(), ttl=ttl)
    return cmd


async def test_a_trip_is_sent_once_and_confirmed_by_reading_the_relay_back(rig):
    bus, store, executor, clock, notices, _ = rig
    cmd = queue(store, clock, OK, CommandKind.TRIP)
    [done] = await executor.run_once()
    assert done.id == cmd.id and done.state is CommandState.CONFIRMED
    assert done.read_back["relay.open"] is True and bus.meter(OK).relay_open
    assert [c for _, c in bus.meter(OK).control_log] == [RelayCommand.TRIP]
    assert store.relay_state(OK)[1]["relay.open"] is True
    assert await executor.run_once() == []  # nothing left: never sent again
    assert notices == []


async def test_a_stuck_relay_is_a_control_anomaly_reported_and_not_retried(rig):
    bus, store, executor, clock, notices, _ = rig
    queue(store, clock, STUCK, CommandKind.TRIP)
    [done] = await executor.run_once()
    assert done.state is CommandState.FAILED and "control anomaly" in done.detail
    assert done.read_back["relay.open"] is False
    assert [n.kind for n in notices] == ["anomaly"] and STUCK in notices[0].message
    clock.now += timedelta(hours=1)
    assert await executor.run_once() == []
    assert len(bus.meter(STUCK).control_log) == 1


async def test_an_offline_meter_keeps_its_command_queued_until_it_expires(rig):
    bus, store, executor, clock, notices, _ = rig
    cmd = queue(store, clock, OFFLINE, CommandKind.TRIP, ttl=timedelta(minutes=12))
    [first] = await executor.run_once()
    assert first.state is CommandState.QUEUED and first.tries == 1 and "try 1" in first.detail
    assert first.next_try == clock.now + timedelta(minutes=5)
    assert await executor.run_once() == []  # not due yet
    clock.now += timedelta(minutes=5)
    [second] = await executor.run_once()  # read-back first (fails: offline), then back to the queue
    assert second.state is CommandState.QUEUED and second.tries == 2
    clock.now += timedelta(minutes=5)
    [third] = await executor.run_once()
    assert third.state is CommandState.EXPIRED and third.id == cmd.id
    assert [n.kind for n in notices] == ["anomaly"]
    assert bus.meter(OFFLINE).control_log == []  # no_answer: the meter never acted


async def test_a_retry_reads_first_and_does_not_resend_what_already_happened(rig):
    bus, store, executor, clock, _, _ = rig
    cmd = queue(store, clock, OK, CommandKind.TRIP)
    store.mark_sent(cmd.id, now=clock())
    store.retry_later(cmd.id, now=clock(), next_try=clock(), detail="ack lost")
    bus.meter(OK).relay_open = True  # the first try reached the meter; only its acknowledgement was lost
    [done] = await executor.run_once()
    assert done.state is CommandState.CONFIRMED and "not sent again" in done.detail
    assert bus.meter(OK).control_log == []


@pytest.mark.parametrize("moved, state", [(True, CommandState.CONFIRMED), (False, CommandState.FAILED)])
async def test_an_orphan_left_sent_by_a_crash_is_settled_by_read_back_never_resent(rig, moved, state):
    bus, store, executor, clock, _, _ = rig
    cmd = queue(store, clock, OK, CommandKind.TRIP)
    store.mark_sent(cmd.id, now=clock())  # ... and the daemon was killed here
    bus.meter(OK).relay_open = moved
    [settled] = await executor.recover()
    assert settled.state is state and "interrupted by a restart" in settled.detail and "not resent" in settled.detail
    assert bus.meter(OK).control_log == []
    assert await executor.run_once() == []


async def test_refusals_fail_without_retry(rig):
    bus, store, executor, clock, _, _ = rig
    queue(store, clock, OLD, CommandKind.TRIP)
    queue(store, clock, "000000000099", CommandKind.TRIP)
    done = {c.meter: c for c in await executor.run_once()}
    assert done[OLD].state is CommandState.FAILED and "1997" in done[OLD].detail
    assert done["000000000099"].state is CommandState.FAILED and "not in the configuration" in done["000000000099"].detail


async def test_commands_go_ahead_of_routine_reads_waiting_for_the_bus(rig):
    bus, _, _, _, _, channel = rig
    order: list[str] = []

    async def routine(i):
        await read_item(channel, OK, 0x00010000)
        order.append(f"read{i}")

    reads = [asyncio.create_task(routine(i)) for i in range(6)]
    await asyncio.sleep(0)  # a round's reads are waiting for the bus
    outcome = await send_relay_command(channel, MeterTarget(OK), RelayCommand.ALARM, datetime.now(timezone.utc),
                                       credentials=CREDS, valid_for=timedelta(days=3650))
    order.append("command")
    await asyncio.gather(*reads)
    assert outcome.confirmed
    # the 1C frame goes next; its read-back is one more urgent transaction (one queued read may slip in between)
    assert order.index("command") <= 2, order


async def test_a_slow_bus_does_not_hold_the_commands_of_another(tmp_path):
    """The executor sent a round's commands bus by bus in parallel but waited for every bus before
    looking again: a reclose queued for a customer who had just paid waited for a bus busy with a
    batch of commands to meters that did not answer.  Now each bus's lane goes on by itself."""
    dead = [f"0000000001{i:02d}" for i in range(8)]
    slow = Dlt645Bus([MeterModel(a, start=START) for a in dead], faults={a: FaultPlan.of("no_answer") for a in dead})
    fast = Dlt645Bus([MeterModel(OK, start=START)])
    servers = [await serve_tcp(b, clock=SimClock.starting(START, speed=1.0)) for b in (slow, fast)]
    channels = []
    for name, running in zip(("slow", "fast"), servers, strict=True):
        host, port = running.endpoint.rsplit(":", 1)
        channels.append(Channel(name, TcpTransport(name, host, int(port)), timing=Timing(0.3, 0.1), retries=0))
    routes = {a: MeterRelay(channels[0], MeterTarget(a), credentials=CREDS) for a in dead}
    routes[OK] = MeterRelay(channels[1], MeterTarget(OK), credentials=CREDS)
    clock = Clock()
    store = ControlStore(tmp_path)
    store.upsert_accounts([AccountSpec("A1", "flat", {a: Decimal(1) for a in [*dead, OK]}, area="TA1")],
                          actor="test", now=clock())
    ended: list[tuple[str, str]] = []
    executor = CommandExecutor(store, routes.get, clock=clock, retry_every=timedelta(minutes=5),
                               valid_for=timedelta(days=3650), outcome=lambda c, what: ended.append((c.meter, what)))
    for a in dead:
        queue(store, clock, a, CommandKind.ALARM)
    stop = asyncio.Event()
    running = asyncio.create_task(executor.run(stop, idle=0.05))
    try:
        while not ended:  # the slow bus has begun its batch
            await asyncio.sleep(0.01)
        queue(store, clock, OK, CommandKind.RECLOSE)  # the customer paid
        executor.wake.set()
        while len(ended) < len(dead) + 1:
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
        store.close()
        for c in channels:
            await c.close()
        for s in servers:
            await s.close()
    assert (OK, "confirmed") in ended and fast.meter(OK).control_log != []
    # confirmed while the slow bus still had most of its batch to go, not after it
    assert ended.index((OK, "confirmed")) < len(dead) // 2, ended
    assert sorted(m for m, what in ended if what == "retry") == dead  # each dead meter tried once, queued again


class _Scope:
    """The executor's view of a collector node: every meter here, channels taken over at will."""

    name = "n1"

    def __init__(self, meters: set[str]) -> None:
        self.generation = 1
        self._meters = frozenset(meters)

    def meters(self) -> frozenset[str]:
        return self._meters

    def fence_for(self, meter: str):
        return None  # claims are not this test's business: nothing new is sent


async def test_orphans_of_channels_taken_over_are_settled_even_when_the_first_look_fails(rig, monkeypatch):
    """recover() noted the channels as looked at before reading their orphans: when that read failed
    (the database away a moment), the orphans stayed 'sent' until the channels changed again."""
    bus, store, _, clock, _, channel = rig
    routes = {OK: MeterRelay(channel, MeterTarget(OK), credentials=CREDS)}
    scope = _Scope({OK})
    executor = CommandExecutor(store, routes.get, clock=clock, scope=scope)
    stop = asyncio.Event()
    running = asyncio.create_task(executor.run(stop, idle=0.05))
    try:
        await asyncio.sleep(0.1)  # started, nothing to settle yet
        cmd = queue(store, clock, OK, CommandKind.TRIP)
        store.mark_sent(cmd.id, now=clock(), node="n0")  # n0 died mid-command; its channel is ours now
        bus.meter(OK).relay_open = True
        real, calls = store.in_flight, []

        def in_flight(**kwargs):
            calls.append(kwargs)
            if len(calls) == 1:
                raise StorageError("the state database is not reachable")
            return real(**kwargs)

        monkeypatch.setattr(store, "in_flight", in_flight)
        scope.generation = 2
        for _ in range(200):
            if store.command(cmd.id).state is not CommandState.SENT:
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await running
    assert len(calls) >= 2
    done = store.command(cmd.id)
    assert done.state is CommandState.CONFIRMED and "not resent" in done.detail
    assert bus.meter(OK).control_log == []
