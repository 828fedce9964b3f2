"""Back to back over real TCP: the daemon against the concentrator simulator (meterd.simulators.
concentrator, written by another hand from the standard): logins and heartbeats, the meters read
from what the concentrators collected (AFN 0C F129/F25) and by relay (AFN 10), the archive checked,
a trip through a concentrator confirmed by read-back, a terminal's power loss reported as ERC14."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import UTC, datetime, timedelta

from conftest import free_port
from meterd.clock import CST
from meterd.collector.control import MeterRelay
from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.relay import Credentials
from meterd.simulators.concentrator import concentrator_layout, run_concentrator_fleet
from meterd.storage.sqlite import SqliteStore

PW_HEX = "0102030405060708090A0B0C0D0E0F10"
START = datetime(2026, 5, 31, 23, 59, 58)  # the terminals pass midnight and freeze their meters' day


def config_text(port: int, data_dir, layout: dict[str, list[tuple[str, int]]]) -> str:
    parts = [f"""
[store]
data_dir = "{data_dir}"
flush_interval = "100ms"

[listeners.gw]
protocol = "gdw1376"
host = "127.0.0.1"
port = {port}
heartbeat_timeout = "30s"
"""]
    for n, (key, meters) in enumerate(layout.items(), 1):
        parts.append(f'\n[channels.c{n}]\ngdw1376 = {{ listener = "gw", terminal = "{key}", password_secret = "GW_PW" }}'
                     '\nresponse_timeout = "2s"\nretries = 0\n')
        parts += [f'\n[[meters]]\naddress = "{a}"\nchannel = "c{n}"\npn = {pn}\n' for a, pn in meters]
    parts.append("""
[[polls]]
name = "realtime"
interval = "500ms"
quantities = ["energy.active.import.total", "voltage.a", "meter.address", "frozen.daily.energy.active.import.total"]
""")
    return "".join(parts)


async def test_the_daemon_against_simulated_concentrators(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_PW", PW_HEX)
    port = free_port()
    layout = concentrator_layout(2, 4)
    config = parse_config(tomllib.loads(config_text(port, tmp_path, layout)), "b2b.toml")
    got = []
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, clock=lambda: datetime.now(UTC))
        daemon.subscribe(got.extend)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.2)
        fleet = await run_concentrator_fleet(2, 4, "127.0.0.1", port, password=bytes.fromhex(PW_HEX), start=START,
                                             heartbeat=0.5, reconnect_delay=0.2)
        meters = [a for ms in layout.values() for a, _ in ms]
        try:
            assert await fleet.wait_logged_in(5.0)
            wanted = {(a, q) for a in meters for q in ("energy.active.import.total", "voltage.a", "meter.address",
                                                       "frozen.daily.energy.active.import.total")}
            for _ in range(500):
                if {(r.meter, r.quantity) for r in got} >= wanted:
                    break
                await asyncio.sleep(0.02)
            assert {(r.meter, r.quantity) for r in got} >= wanted
            # a prepaid trip through concentrator 1, confirmed by status word 3 read back through AFN 10
            route = daemon.route(meters[1])
            assert route is not None
            relay = MeterRelay(route.channel, route.target, route.link, Credentials("02123456", "12345678"))
            out = await relay.send(RelayCommand.TRIP, datetime.now(UTC), valid_for=timedelta(minutes=10), settle=0.0)
            assert out.confirmed and out.read_back["relay.open"] is True
            key1 = next(iter(layout))
            sim = fleet.concentrator(key1)
            assert sim.terminal.bus.meter(meters[1]).relay_open is True
            # the terminal loses power and comes back: its ERC14 reaches the master as power-down reports
            await sim.power_down()
            await asyncio.sleep(0.3)
            await sim.power_up()
            for _ in range(250):
                if any(r.quantity == "event.power_down.start" for r in got):
                    break
                await asyncio.sleep(0.02)
            for _ in range(250):  # heart-beating again after the power cycle
                if daemon.listener_status()["gw"]["terminals"][key1]["heartbeats"] >= 1:
                    break
                await asyncio.sleep(0.02)
            status = daemon.listener_status()["gw"]
        finally:
            stop.set()
            await task
            await fleet.close()
    by = {(r.meter, r.quantity): r for r in got}
    assert by[(meters[0], "meter.address")].value == meters[0]
    assert by[(meters[0], "voltage.a")].unit == "V"
    # F161 for the day that ended (Td_d = May 31), frozen at 00:00 on June 1, the terminal's date
    assert by[(meters[0], "frozen.daily.energy.active.import.total")].timestamp == datetime(2026, 6, 1, tzinfo=CST)
    downs = {r.meter for r in got if r.quantity == "event.power_down.start"}
    assert downs == {a for a, _ in layout[key1]}
    terminal = status["terminals"][key1]
    assert terminal["logins"] >= 2 and terminal["heartbeats"] >= 1 and status["rejected"]["unknown_id"] == 0
