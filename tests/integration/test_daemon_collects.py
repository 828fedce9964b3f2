"""The daemon polls simulated meters over real pseudo-terminals and real TCP sockets.

Meters 000000000002 (no answer), 000000000006 (garbled replies) and 000000000007 (answers as
another meter) are fault-injected: they must be recorded with their failure kind while every other
meter of their bus is still read, and readings must reach the SQLite store with CT x PT applied.
"""

import asyncio
import tomllib
from datetime import datetime
from decimal import Decimal

from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore

ITEMS = '["0001FF00", "0201FF00", "02030000", "04000503", "05060101"]'


def config_for(fleet, data_dir):
    lines = [f'[store]\ndata_dir = "{data_dir}"\nflush_interval = "100ms"\n']
    for i, bus in enumerate(fleet.buses):
        name = f"c{i}"
        if bus.kind == "pty":
            link = f'serial = {{ device = "{bus.endpoint}", baud = 2400, parity = "E" }}'
        else:
            host, _, port = bus.endpoint.rpartition(":")
            link = f'tcp = {{ host = "{host}", port = {port} }}'
        lines.append(f'[channels.{name}]\n{link}\nresponse_timeout = "300ms"\ninter_byte_timeout = "100ms"\n'
                     f"retries = 1\n")
        for a in bus.meters:
            lines.append(f'[[meters]]\naddress = "{a}"\nchannel = "{name}"\nct = {50 if bus.kind == "tcp" else 1}\n')
    lines.append(f'[[polls]]\nname = "rt"\ninterval = "30s"\nitems = {ITEMS}\n')
    text = "\n".join(lines)
    return parse_config(tomllib.loads(text), source="test.toml")


async def test_daemon_reads_pty_and_tcp_buses_and_records_failures(tmp_path):
    spec = FleetSpec(pty_buses=1, tcp_buses=1, meters_per_bus=4, wire_time=False, speed=60.0, seed=3, start=datetime(2026, 11, 22, 23, 59, 59),
                     faults={"000000000002": "no_answer", "000000000006": "garble",
                             "000000000007": "wrong_address"})
    fleet = await run_fleet(spec)
    rounds = []
    try:
        config = config_for(fleet, tmp_path / "data")
        with SqliteStore(config.store.data_dir) as store:
            daemon = Daemon(config, store, on_round=rounds.append)
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            for _ in range(200):
                if len(rounds) >= 2:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await task
            assert len(rounds) == 2  # one round per channel; rounds never pile up
            good = {"000000000001", "000000000003", "000000000004", "000000000005", "000000000008"}
            for meter in good:
                latest = store.latest(meter)
                assert latest["energy.active.import.total"].value > 0, meter
                assert "voltage.a" in latest and "relay.open" in latest
                assert latest["relay.open"].value is False
                total = latest["energy.active.import.total"].value
                rates = sum(latest[f"energy.active.import.rate{r}"].value for r in range(1, 5))
                assert abs(total - rates) <= Decimal("0.04")
            # CT 50 on the TCP bus: the stored energy is primary side
            tcp_meter = fleet.models["000000000005"]
            raw = Decimal(str(tcp_meter.values(fleet.clock())["energy.active.import.total"]))
            stored = store.latest("000000000005")["energy.active.import.total"].value
            assert stored >= 40 * raw / Decimal(1)  # x50, allowing the register to move meanwhile
            # frozen values carry the meter's freeze time, not the collection time
            # (the simulated clock starts a second before midnight, so a daily freeze exists)
            frozen = store.latest("000000000001")["frozen.daily.energy.active.import.total"]
            assert frozen.timestamp == datetime.fromisoformat("2026-11-22T16:00:00+00:00")  # 00:00 CST
            outcomes = {(a.meter, a.outcome) for a in store.attempts()}
            assert ("000000000002", "timeout") in outcomes
            assert ("000000000006", "garbled") in outcomes
            assert ("000000000007", "wrong_address") in outcomes
            assert not any(m in good and o not in ("ok", "abnormal", "no_record") for m, o in outcomes)
            stats = daemon.stats()
            assert stats["c0"]["failures"].get("timeout", 0) >= 2  # the attempt and its retry
    finally:
        await fleet.close()
