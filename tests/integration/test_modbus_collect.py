"""Modbus meters through meterd's channel: every failure kind counted, the round going on, and
relay commands confirmed by reading the relay back -- against the Modbus simulator over real TCP
(Modbus TCP and RTU over TCP) and a real pseudo-terminal (RTU)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from meterd.collector.channel import Channel, FailureKind, Timing
from meterd.collector.control import send_relay_command
from meterd.collector.modbus import ModbusLink
from meterd.clock import CST
from meterd.collector.poll import MeterTarget, poll_round
from meterd.collector.transports import SerialTransport, TcpTransport
from meterd.errors import ControlError
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.modbus import compile_plan, get_map
from meterd.simulators.model import MeterModel
from meterd.simulators.modbus import ModbusBus, ModbusFaultPlan
from meterd.simulators.serve import serve_pty, serve_tcp

START = datetime(2025, 6, 1, 8, 0)
NOW = START.replace(tzinfo=CST)
GENERIC = get_map("generic")
QUANTITIES = ["energy.active.import.total", "voltage.a", "current.a", "relay.open"]

# unit -> (address, fault)
UNITS = {
    1: ("000000000101", None),
    2: ("000000000102", ModbusFaultPlan.of("exception", 1.0, exception_code=2)),
    3: ("000000000103", ModbusFaultPlan.of("wrong_unit")),
    4: ("000000000104", ModbusFaultPlan.of("garble")),
    5: ("000000000105", ModbusFaultPlan.of("partial")),
    6: ("000000000106", ModbusFaultPlan.of("no_answer")),
    7: ("000000000107", None),
}


def make_bus(framing: str, stuck: int | None = None) -> ModbusBus:
    meters = {u: MeterModel(a, start=START, seed=u, stuck_relay=(u == stuck)) for u, (a, _) in UNITS.items()}
    faults = {u: f for u, (_, f) in UNITS.items() if f is not None}
    return ModbusBus(meters, GENERIC, framing=framing, faults=faults)


def targets() -> list[MeterTarget]:
    return [MeterTarget(a, protocol="modbus", unit=u, regmap=GENERIC) for u, (a, _) in UNITS.items()]


async def open_link(kind: str):
    framing = "tcp" if kind == "tcp" else "rtu"
    running = await (serve_pty(make_bus("rtu"), clock=lambda: START) if kind == "pty"
                     else serve_tcp(make_bus(framing), clock=lambda: START))
    if kind == "pty":
        transport = SerialTransport("mb", running.endpoint, baud=9600, parity="N")
    else:
        host, port = running.endpoint.rsplit(":", 1)
        transport = TcpTransport("mb", host, int(port))
    channel = Channel("mb", transport, timing=Timing(0.4, 0.1), retries=1)
    return running, ModbusLink(channel, framing)


@pytest.mark.parametrize("kind", ["tcp", "rtu-over-tcp", "pty"])
async def test_a_round_counts_each_failure_by_kind_and_goes_on(kind):
    running, link = await open_link(kind)
    plan = compile_plan(GENERIC, QUANTITIES)
    try:
        result = await poll_round(link.channel, [(t, plan) for t in targets()], None, NOW, link=link)
    finally:
        await link.channel.close()
        await running.close()
    by_meter: dict[str, set[str]] = {}
    for a in result.attempts:
        by_meter.setdefault(a.meter, set()).add(a.outcome)
    assert by_meter["000000000101"] == {"ok"} and by_meter["000000000107"] == {"ok"}
    assert by_meter["000000000102"] == {"abnormal"}
    refused = [a for a in result.attempts if a.meter == "000000000102"]
    assert all("exception 02" in a.detail and "ILLEGAL_ADDRESS" in a.detail for a in refused)
    assert by_meter["000000000103"] == {"wrong_address"}
    assert by_meter["000000000104"] == {"garbled"}
    assert by_meter["000000000105"] == {"incomplete"}
    assert by_meter["000000000106"] == {"timeout"}
    # the silent meter costs one timeout (plus its retry), its other request is not tried
    assert len([a for a in result.attempts if a.meter == "000000000106"]) == len(plan.blocks)
    stats = link.channel.stats.failures
    for kind_ in (FailureKind.WRONG_ADDRESS, FailureKind.GARBLED, FailureKind.INCOMPLETE, FailureKind.TIMEOUT):
        assert stats[kind_] >= 1
    got = {(r.meter, r.quantity) for r in result.readings}
    assert got == {(m, q) for m in ("000000000101", "000000000107") for q in QUANTITIES}
    readings = {r.quantity: r.value for r in result.readings if r.meter == "000000000101"}
    assert readings["relay.open"] is False and readings["voltage.a"] > 150


@pytest.mark.parametrize("kind", ["tcp", "pty"])
async def test_trip_and_reclose_a_modbus_meter_confirmed_by_read_back(kind):
    running, link = await open_link(kind)
    meter = targets()[0]
    try:
        out = await send_relay_command(link.channel, meter, RelayCommand.TRIP, NOW, link=link)
        assert out.confirmed and out.read_back["relay.open"] is True
        assert running.bus.meter(1).relay_open is True
        out = await send_relay_command(link.channel, meter, RelayCommand.RECLOSE, NOW, link=link)
        assert out.confirmed and out.read_back["relay.open"] is False
        with pytest.raises(ControlError, match="TRIP and RECLOSE only"):
            await send_relay_command(link.channel, meter, RelayCommand.ALARM, NOW, link=link)
    finally:
        await link.channel.close()
        await running.close()


async def test_a_stuck_modbus_relay_is_a_control_anomaly():
    running = await serve_tcp(make_bus("tcp", stuck=7), clock=lambda: START)
    host, port = running.endpoint.rsplit(":", 1)
    link = ModbusLink(Channel("mb", TcpTransport("mb", host, int(port)), timing=Timing(0.4, 0.1)), "tcp")
    try:
        with pytest.raises(ControlError, match="control anomaly") as info:
            await send_relay_command(link.channel, targets()[-1], RelayCommand.TRIP, NOW, link=link)
        assert info.value.outcome.acknowledged and info.value.outcome.read_back["relay.open"] is False
    finally:
        await link.channel.close()
        await running.close()


async def test_a_refused_write_is_reported_with_its_exception_code():
    running = await serve_tcp(make_bus("tcp"), clock=lambda: START)
    host, port = running.endpoint.rsplit(":", 1)
    link = ModbusLink(Channel("mb", TcpTransport("mb", host, int(port)), timing=Timing(0.4, 0.1)), "tcp")
    try:
        with pytest.raises(ControlError, match="refused: Modbus exception 02"):
            await send_relay_command(link.channel, targets()[1], RelayCommand.TRIP, NOW, link=link)
    finally:
        await link.channel.close()
        await running.close()
