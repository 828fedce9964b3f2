"""A poll that names its meters by address and asks for a frozen quantity reads exactly those
meters, over a real TCP bus of simulated meters, and stores the freeze stamped with its freeze time
(issue 18: ``polls[].meters``; frozen quantities in polls)."""

import asyncio
import tomllib
from datetime import datetime

from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore

FROZEN = "frozen.daily.energy.active.import.total"


async def test_a_poll_by_address_reads_the_last_daily_freeze(tmp_path):
    # the meters start half a minute after midnight CST with a day of history, so they hold the
    # freeze of that midnight whenever the first round comes (a clock started a second before
    # midnight raced the first round on a loaded machine: no record yet, nothing stored)
    spec = FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=3, wire_time=False, speed=1.0, seed=5,
                     start=datetime(2026, 11, 23, 0, 0, 30), history_days=1)
    fleet = await run_fleet(spec)
    rounds = []
    try:
        (bus,) = fleet.buses
        host, _, port = bus.endpoint.rpartition(":")
        text = (f'[store]\ndata_dir = "{tmp_path / "data"}"\nflush_interval = "100ms"\n'
                f'[channels.c0]\ntcp = {{ host = "{host}", port = {port} }}\nresponse_timeout = "300ms"\n'
                + "".join(f'[[meters]]\naddress = "{a}"\nchannel = "c0"\n' for a in bus.meters)
                + f'[[polls]]\nname = "daily"\ninterval = "1h"\nmeters = ["1", "3"]\nquantities = ["{FROZEN}"]\n')
        config = parse_config(tomllib.loads(text), source="test.toml")
        with SqliteStore(config.store.data_dir) as store:
            daemon = Daemon(config, store, on_round=rounds.append)
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            for _ in range(200):
                if rounds:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await task
            assert len(rounds) == 1
            for meter in ("000000000001", "000000000003"):
                latest = store.latest(meter)
                assert set(latest) == {FROZEN}  # the freeze block's rates are not kept: not asked for
                assert latest[FROZEN].timestamp == datetime.fromisoformat("2026-11-22T16:00:00+00:00")  # 00:00 CST
                assert latest[FROZEN].value > 0
            assert store.latest("000000000002") == {}  # not listed: not read
            assert {(a.meter, a.item, a.outcome) for a in store.attempts()} == {
                ("000000000001", "05060101", "ok"), ("000000000003", "05060101", "ok")}
    finally:
        await fleet.close()
