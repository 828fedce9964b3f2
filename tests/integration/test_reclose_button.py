"""Reclose-allowed (合闸允许) against a simulated DL/T 645 meter over real TCP: the command is confirmed
by its read-back (the command state cleared) and reported as waiting for the customer while the relay
stays open -- not a failure, no anomaly; reading the relay back shows "permitted, still open" until the
customer presses the button, then "closed"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from meterd.collector.channel import Channel, Timing
from meterd.collector.control import Credentials, MeterRelay
from meterd.collector.poll import MeterTarget
from meterd.collector.transports import TcpTransport
from meterd.control.commands import CommandExecutor
from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.state import AccountSpec, ControlStore
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_tcp

START = datetime(2026, 11, 23, 8, 0)
METER = "000000000001"


async def test_reclose_allowed_waits_for_the_customers_button_and_is_not_a_failure(tmp_path):
    bus = Dlt645Bus([MeterModel(METER, start=START)])
    sim_clock = SimClock.starting(START, speed=1.0)
    running = await serve_tcp(bus, clock=sim_clock)
    host, port = running.endpoint.rsplit(":", 1)
    channel = Channel("t", TcpTransport("t", host, int(port)), timing=Timing(0.5, 0.2), retries=0)
    store = ControlStore(tmp_path)
    now = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    store.upsert_accounts([AccountSpec("A1", "flat", {METER: Decimal(1)}, area="TA1")], actor="test", now=now)
    relay = MeterRelay(channel, MeterTarget(METER), credentials=Credentials("02123456", "12345678"))
    notices: list = []

    async def publish(items):
        notices.extend(items)

    executor = CommandExecutor(store, {METER: relay}.get, clock=lambda: now, valid_for=timedelta(days=3650),
                               publish=publish)
    try:
        for kind in (CommandKind.TRIP, CommandKind.RECLOSE_ALLOWED):
            store.queue_commands([CommandRequest(METER, kind, "test", "operator", account="A1")], now=now,
                                 ttl=timedelta(minutes=30))
            [done] = await executor.run_once()
            assert done.state is CommandState.CONFIRMED, done
        assert done.kind is CommandKind.RECLOSE_ALLOWED
        assert done.read_back["relay.open"] is True and done.read_back["relay.command_open"] is False
        assert "waiting for the customer to press the button" in done.detail, done.detail
        assert notices == []  # confirmed: no control anomaly
        assert store.relay_state(METER)[1] == done.read_back
        assert (await relay.read_state())["relay.open"] is True  # still waiting
        assert bus.press_button(METER, sim_clock())
        state = await relay.read_state()
        assert state["relay.open"] is False and state["relay.command_open"] is False
        assert await executor.run_once() == []  # nothing resent
    finally:
        store.close()
        await channel.close()
        await running.close()
