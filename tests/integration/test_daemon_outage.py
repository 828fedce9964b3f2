"""An outage in a simulated area, found and closed by the daemon: the meters of one transformer area
stop answering together (powered down in the simulator) -> one outage with its affected accounts,
kept apart from single-meter faults; they answer again -> the outage ends.  A single silent meter in
another area is not an outage."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import datetime, timezone

from meterd.analytics.outages import OutageStore
from meterd.app import build_node
from meterd.config.loader import parse_config
from meterd.simulators.dlt645 import Dlt645Bus, FaultPlan
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_tcp
from meterd.storage.sqlite import SqliteStore

AREA1 = ["000000000001", "000000000002", "000000000003", "000000000004"]
AREA2 = ["000000000005", "000000000006", "000000000007"]


def config_text(data_dir, endpoint: str) -> str:
    host, port = endpoint.rsplit(":", 1)
    lines = [f'[store]\ndata_dir = "{data_dir}"\nflush_interval = "200ms"\n',
             f'[channels.bus1]\ntcp = {{ host = "{host}", port = {port} }}\nresponse_timeout = "100ms"\nretries = 0\n']
    for m in AREA1 + AREA2:
        lines.append(f'[[meters]]\naddress = "{m}"\nchannel = "bus1"\n')
    lines.append('[[polls]]\nname = "rt"\ninterval = 0.3\nquantities = ["voltage.a", "energy.active.import.total"]\n')
    lines.append('[[topology.units]]\nname = "TA1"\n[[topology.units]]\nname = "TA2"\n')
    for area, meters in (("TA1", AREA1), ("TA2", AREA2)):
        for i, m in enumerate(meters):
            role = "supply" if i == 0 else "sales"
            lines.append(f'[[topology.points]]\nmeter = "{m}"\nunit = "{area}"\nrole = "{role}"\n')
    lines.append('[analytics]\ncheck_every = "300ms"\noutage_silent_after = "3s"\noutage_min_share = "0.6"\n'
                 'outage_min_meters = 3\n')
    return "\n".join(lines)


async def _until(predicate, timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def test_an_area_that_goes_dark_together_is_one_outage_opened_and_closed(tmp_path):
    start = datetime(2026, 11, 23, 8, 0)
    bus = Dlt645Bus([MeterModel(m, start=start) for m in AREA1 + AREA2])
    # the meters' clock starts where their model does: a clock at today's date would first make
    # every model integrate, minute by minute in the event loop, the days since ``start`` (seconds
    # with no poll answered, and the whole district looking dark, as the calendar moved on)
    running = await serve_tcp(bus, clock=SimClock.starting(start, speed=1.0))
    config = parse_config(tomllib.loads(config_text(tmp_path, running.endpoint)), source="site.toml")
    outages = OutageStore(tmp_path)
    try:
        with SqliteStore(tmp_path) as store:
            daemon = build_node(config, store, clock=lambda: datetime.now(timezone.utc))  # analytics needs the node
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                await asyncio.sleep(1.5)
                assert outages.outages() == []
                for m in AREA1:  # the transformer of TA1 loses supply
                    bus.faults[m] = FaultPlan.of("no_answer")
                bus.faults[AREA2[1]] = FaultPlan.of("no_answer")  # one meter of TA2 fails on its own
                assert await _until(lambda: any(o.unit == "TA1" for o in outages.outages(open_only=True)), 15)
                opened = outages.outages(open_only=True)
                assert len(opened) == 1, opened
                [outage] = opened
                assert outage.unit == "TA1" and set(outage.meters) == set(AREA1)
                for m in AREA1:
                    del bus.faults[m]
                assert await _until(lambda: not outages.outages(open_only=True), 15)
                [ended] = outages.outages()
                assert ended.ended is not None and ended.ended > ended.started
                assert all(o.unit != "TA2" for o in outages.outages())
            finally:
                stop.set()
                await task
    finally:
        outages.close()
        await running.close()
