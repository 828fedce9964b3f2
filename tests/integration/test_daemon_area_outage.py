"""A simulated transformer area loses its supply: the daemon, polling through a real TCP bus, opens
one outage for that area (its supply meter and customers went silent together) and closes it when
power is back; then it reads every meter's power-down event record (03110000 count, 03110001 start
and end), which says when the meter lost power and got it back.  The other area stays lit."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import datetime

from meterd.analytics.outages import OutageStore
from meterd.app import build_node
from meterd.clock import CST
from meterd.config.loader import parse_config
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore

TA1 = ["000000000001", "000000000002", "000000000003", "000000000004"]  # supply meter first
TA2 = ["000000000005", "000000000006", "000000000007"]


def config_text(data_dir, endpoint: str) -> str:
    host, port = endpoint.rsplit(":", 1)
    lines = [f'[store]\ndata_dir = "{data_dir}"\nflush_interval = "200ms"\n',
             f'[channels.bus1]\ntcp = {{ host = "{host}", port = {port} }}\nresponse_timeout = "150ms"\nretries = 0\n']
    for m in TA1 + TA2:
        lines.append(f'[[meters]]\naddress = "{m}"\nchannel = "bus1"\n')
    lines.append('[[polls]]\nname = "rt"\ninterval = 0.3\nquantities = ["voltage.a"]\n')
    lines.append('[[polls]]\nname = "events"\ninterval = 0.5\nitems = ["03110000", "03110001"]\n')
    lines.append('[[topology.units]]\nname = "TA1"\n[[topology.units]]\nname = "TA2"\n')
    for area, meters in (("TA1", TA1), ("TA2", TA2)):
        for i, m in enumerate(meters):
            lines.append(f'[[topology.points]]\nmeter = "{m}"\nunit = "{area}"\nrole = "{"supply" if i == 0 else "sales"}"\n')
    lines.append('[analytics]\ncheck_every = "300ms"\noutage_silent_after = "3s"\noutage_min_share = "0.6"\n'
                 'outage_min_meters = 3\n')
    return "\n".join(lines)


async def _until(predicate, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def test_an_area_powered_down_is_one_outage_and_its_meters_record_the_power_down(tmp_path):
    spec = FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=7, wire_time=False, seed=4,
                     start=datetime(2026, 11, 23, 8, 0),  # the daemon's clock is the fleet's: no catch-up
                     areas=[{"name": "TA1", "supply": TA1[0], "customers": TA1[1:]},
                            {"name": "TA2", "supply": TA2[0], "customers": TA2[1:]}])
    fleet = await run_fleet(spec)
    outages = OutageStore(tmp_path)
    try:
        [bus] = fleet.buses
        config = parse_config(tomllib.loads(config_text(tmp_path, bus.endpoint)), source="site.toml")
        with SqliteStore(tmp_path) as store:
            node = build_node(config, store, clock=lambda: fleet.clock().replace(tzinfo=CST))
            stop = asyncio.Event()
            task = asyncio.create_task(node.run(stop))
            try:
                await asyncio.sleep(1.5)
                assert outages.outages() == []
                down = fleet.clock()
                fleet.area("TA1").power_down(down)  # the transformer loses its feed
                assert await _until(lambda: bool(outages.outages(open_only=True)), 20)
                [outage] = outages.outages(open_only=True)
                assert outage.unit == "TA1" and set(outage.meters) == set(TA1), outage
                up = fleet.clock()
                fleet.area("TA1").power_up(up)
                assert await _until(lambda: not outages.outages(open_only=True), 20)
                assert await _until(lambda: all(store.readings(m, quantity="event.power_down.end") for m in TA1), 10)
            finally:
                stop.set()
                await task
            for m in TA1:
                counts = [r.value for r in store.readings(m, quantity="event.power_down.count")]
                assert counts[0] == 0 and counts[-1] == 1, (m, counts)  # none, then the one
                start = store.readings(m, quantity="event.power_down.start")[-1].value
                end = store.readings(m, quantity="event.power_down.end")[-1].value
                # the meter's local clock (CST), stored as an instant
                assert start == down.replace(microsecond=0, tzinfo=CST), (m, start)
                assert end == up.replace(microsecond=0, tzinfo=CST), (m, end)
            for m in TA2:
                assert {r.value for r in store.readings(m, quantity="event.power_down.count")} == {0}
                assert store.readings(m, quantity="event.power_down.start") == []  # no event to read
        [ended] = outages.outages()
        assert ended.unit == "TA1" and ended.ended is not None
    finally:
        outages.close()
        await fleet.close()
