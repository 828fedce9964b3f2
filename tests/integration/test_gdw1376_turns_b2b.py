"""Back to back over real TCP: prepaid control of the customer behind a simulated special-transformer
terminal (meterd.simulators.concentrator, kind "special") through the daemon's route, the way
prepaid control sends it: trip and permit-reclose of the control turn (AFN 05 F1 / F2), the payment
reminder alarm (催费告警, F26 / F34) and 保电 (F25 / F33), each confirmed by the terminal's control
state read back (AFN 0C F5 / F6) and -- for the trip -- by the meter's load."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import UTC, datetime, timedelta

import pytest

from conftest import free_port
from meterd.collector.control import MeterRelay
from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.errors import ControlError
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.simulators.concentrator import concentrator_layout, run_concentrator_fleet
from meterd.storage.sqlite import SqliteStore

PW_HEX = "A0A1A2A3A4A5A6A7A8A9AAABACADAEAF"
START = datetime(2026, 6, 2, 10, 0, 30)


async def test_special_terminal_turn_alarm_and_protection_through_the_simulator(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECIAL_PW", PW_HEX)
    port = free_port()
    (key, meters), = concentrator_layout(1, 2).items()
    text = f"""
[store]
data_dir = "{tmp_path}"

[listeners.gw]
protocol = "gdw1376"
host = "127.0.0.1"
port = {port}

[channels.s1]
gdw1376 = {{ listener = "gw", terminal = "{key}", kind = "special", password_secret = "SPECIAL_PW", archive = false }}
response_timeout = "2s"

[[meters]]
address = "{meters[0][0]}"
channel = "s1"
pn = 1

# an old meter: DL/T 645-1997 has no relay command, the terminal's turn does it all the same (the
# simulated terminal collects 2007 meters only: its archive is left as it is, archive = false)
[[meters]]
address = "{meters[1][0]}"
channel = "s1"
pn = 2
protocol = "dlt645-1997"

[[polls]]
name = "realtime"
interval = "1s"
quantities = ["energy.active.import.total"]
"""
    config = parse_config(tomllib.loads(text), "special.toml")
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, clock=lambda: datetime.now(UTC))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        fleet = await run_concentrator_fleet(1, 2, "127.0.0.1", port, kind="special", password=bytes.fromhex(PW_HEX),
                                             start=START, tick=0.1, heartbeat=5.0, reconnect_delay=0.2)
        sim = fleet.concentrator(key).terminal
        try:
            assert await fleet.wait_logged_in(5.0)
            route = daemon.route(meters[0][0])
            assert route is not None
            relay = MeterRelay(route.channel, route.target, route.link)
            now = datetime.now(UTC)

            async def send(command: RelayCommand):
                return await relay.send(command, now, valid_for=timedelta(minutes=10), settle=0.0)

            out = await send(RelayCommand.ALARM)
            assert out.confirmed and out.read_back["alarm.pre_trip"] is True and sim.reminder is True
            out = await send(RelayCommand.TRIP)
            assert out.confirmed and out.read_back["relay.open"] is True and sim.tripped_turns() == {1}
            assert "turn output (AFN 0C F6)" in out.detail
            assert sim.bus.meter(meters[0][0]).relay_open is True  # the breaker behind the turn opened
            out = await send(RelayCommand.RECLOSE_ALLOWED)
            assert out.confirmed and out.read_back["relay.open"] is False and sim.tripped_turns() == set()
            out = await send(RelayCommand.ALARM_RELEASE)
            assert out.confirmed and out.read_back["alarm.pre_trip"] is False and sim.reminder is False
            out = await send(RelayCommand.PROTECT)
            assert out.confirmed and out.read_back["relay.protected"] is True
            with pytest.raises(ControlError) as err:  # 保电: the terminal refuses the trip itself
                await send(RelayCommand.TRIP)
            assert err.value.outcome.failure == "refused"  # type: ignore[attr-defined]
            out = await send(RelayCommand.PROTECT_RELEASE)
            assert out.confirmed and out.read_back["relay.protected"] is False
            # the 1997 meter: every command is offered (the turn's), and its trip goes through the turn
            old = daemon.route(meters[1][0])
            assert old is not None
            old_relay = MeterRelay(old.channel, old.target, old.link)
            assert old_relay.commands() == frozenset(RelayCommand)
            out = await old_relay.send(RelayCommand.TRIP, now, valid_for=timedelta(minutes=10), settle=0.0)
            assert out.confirmed and sim.tripped_turns() == {1}
        finally:
            stop.set()
            await task
            await fleet.close()
