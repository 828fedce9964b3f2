"""Relay commands confirmed by read-back, against simulated DL/T 645 meters over real TCP."""

from __future__ import annotations

from datetime import datetime

import pytest

from meterd.collector.channel import Channel, Timing
from meterd.collector.control import Credentials, read_relay_state, send_relay_command
from meterd.clock import CST
from meterd.collector.poll import MeterTarget
from meterd.collector.transports import TcpTransport
from meterd.errors import ControlError
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_tcp

START = datetime(2025, 6, 1, 8, 0)
NOW = START.replace(tzinfo=CST)
OK, STUCK, OLD = "000000000001", "000000000002", "000000000003"
CREDS = Credentials("02123456", "12345678")


@pytest.fixture
async def bus():
    models = [
        MeterModel(OK, start=START),
        MeterModel(STUCK, start=START, stuck_relay=True),
        MeterModel(OLD, start=START),
    ]
    b = Dlt645Bus(models, protocols={OLD: "dlt645-1997"})
    running = await serve_tcp(b, clock=SimClock.starting(START, speed=1.0))
    host, port = running.endpoint.rsplit(":", 1)
    channel = Channel("t", TcpTransport("t", host, int(port)), timing=Timing(1.0, 0.3), retries=0)
    yield b, channel
    await channel.close()
    await running.close()


async def test_trip_and_reclose_are_confirmed_by_status_word_3(bus):
    b, channel = bus
    meter = MeterTarget(OK)
    out = await send_relay_command(channel, meter, RelayCommand.TRIP, NOW, credentials=CREDS)
    assert out.acknowledged and out.confirmed and out.read_back["relay.open"] is True
    assert b.meter(OK).relay_open is True
    out = await send_relay_command(channel, meter, RelayCommand.RECLOSE, NOW, credentials=CREDS)
    assert out.confirmed and out.read_back["relay.open"] is False
    assert (await read_relay_state(channel, meter))["relay.open"] is False


async def test_alarm_is_confirmed_by_its_flag(bus):
    _, channel = bus
    out = await send_relay_command(channel, MeterTarget(OK), RelayCommand.ALARM, NOW, credentials=CREDS)
    assert out.confirmed and out.read_back["alarm.pre_trip"] is True


async def test_a_relay_that_does_not_move_is_a_control_anomaly(bus):
    b, channel = bus
    with pytest.raises(ControlError) as info:
        await send_relay_command(channel, MeterTarget(STUCK), RelayCommand.TRIP, NOW, credentials=CREDS)
    outcome = info.value.outcome
    assert outcome.acknowledged and not outcome.confirmed
    assert outcome.read_back["relay.open"] is False
    assert "control anomaly" in str(info.value) and STUCK in str(info.value)


async def test_a_wrong_password_is_refused_and_nothing_moves(bus):
    b, channel = bus
    with pytest.raises(ControlError) as info:
        await send_relay_command(channel, MeterTarget(OK), RelayCommand.TRIP, NOW,
                                 credentials=Credentials("02999999", "12345678"))
    assert "refused" in str(info.value) and not info.value.outcome.acknowledged
    assert b.meter(OK).relay_open is False


async def test_a_1997_meter_has_no_relay_command(bus):
    _, channel = bus
    with pytest.raises(ControlError, match="1997"):
        await send_relay_command(channel, MeterTarget(OLD, protocol="dlt645-1997"), RelayCommand.TRIP, NOW,
                                 credentials=CREDS)


async def test_credentials_never_show_the_password():
    assert "02123456" not in repr(CREDS)
