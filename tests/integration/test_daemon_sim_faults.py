"""The daemon finds the simulator's physics faults through a real TCP bus: a voltage sag and a swell,
a current imbalance, reversed wiring and a clock that runs fast open their anomaly events on the
right meters, and a clean meter beside them stays clean.

Time: the fleet's clock runs 180x (a real second is three simulated minutes) and the daemon is given
the same clock, so the detectors' 15-minute durations pass in 5 real seconds and every reading
carries the simulated time the meters live in.  A poll round of a meter's ten quantities takes a few
simulated seconds, well inside the minute within which the detectors take phase values as one
reading (was 60x: 15 real seconds).
"""

from __future__ import annotations

import asyncio
import tomllib
from datetime import datetime

from meterd.analytics.anomalies import AnomalyStore, Kind
from meterd.app import build_node
from meterd.clock import CST
from meterd.config.loader import parse_config
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore

SAG, SWELL, IMBALANCE, REVERSE, DRIFT, CLEAN = (f"{i:012d}" for i in range(1, 7))
QUANTITIES = ["voltage.a", "voltage.b", "voltage.c", "current.a", "current.b", "current.c", "power.active.total",
              "energy.active.import.total", "energy.active.export.total", "clock"]
EXPECTED = {(SAG, Kind.VOLTAGE), (SWELL, Kind.VOLTAGE), (IMBALANCE, Kind.IMBALANCE), (REVERSE, Kind.REVERSE),
            (DRIFT, Kind.CLOCK)}


def config_text(data_dir, endpoint: str) -> str:
    host, port = endpoint.rsplit(":", 1)
    lines = [f'[store]\ndata_dir = "{data_dir}"\nflush_interval = "200ms"\n',
             f'[channels.bus1]\ntcp = {{ host = "{host}", port = {port} }}\nresponse_timeout = "300ms"\n']
    for m in (SAG, SWELL, IMBALANCE, REVERSE, DRIFT, CLEAN):
        lines.append(f'[[meters]]\naddress = "{m}"\nchannel = "bus1"\n')
    lines.append('[[polls]]\nname = "rt"\ninterval = 0.5\nquantities = [' + ", ".join(f'"{q}"' for q in QUANTITIES)
                 + "]\n")
    lines.append('[analytics]\ncheck_every = "1s"\nclock_drift = "1m"\n')
    return "\n".join(lines)


async def test_the_daemon_finds_sag_swell_imbalance_reverse_and_clock_drift(tmp_path):
    spec = FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=6, wire_time=False, speed=180.0, seed=3,
                     start=datetime(2026, 11, 23, 19, 0),  # the evening peak: currents well over 1 A
                     faults={SAG: "sag:0.85", SWELL: "swell:1.12", IMBALANCE: "imbalance:0.7", REVERSE: "reverse",
                             DRIFT: "clock_drift:7200"})
    fleet = await run_fleet(spec)
    anomalies = AnomalyStore(tmp_path)
    try:
        [bus] = fleet.buses
        config = parse_config(tomllib.loads(config_text(tmp_path, bus.endpoint)), source="site.toml")
        with SqliteStore(tmp_path) as store:
            node = build_node(config, store, clock=lambda: fleet.clock().replace(tzinfo=CST))
            stop = asyncio.Event()
            task = asyncio.create_task(node.run(stop))
            try:
                deadline = asyncio.get_running_loop().time() + 60
                found: set[tuple[str, Kind]] = set()
                while asyncio.get_running_loop().time() < deadline and not EXPECTED <= found:
                    await asyncio.sleep(0.25)
                    found = {(e.meter, e.kind) for e in anomalies.events(state="open")}
            finally:
                stop.set()
                await task
        events = {(e.meter, e.kind): e for e in anomalies.events(state="open")}
        assert EXPECTED <= set(events), sorted(events)
        assert not [k for k in events if k[0] == CLEAN], sorted(events)  # the clean meter has nothing
        assert set(events) == EXPECTED, sorted(events)  # each fault shows as its own kind only
        assert "voltage outside 198.0..235.4 V" in events[(SAG, Kind.VOLTAGE)].detail
        assert " 18" in events[(SAG, Kind.VOLTAGE)].detail  # 220 V x 0.85: 18x V
        assert " 24" in events[(SWELL, Kind.VOLTAGE)].detail  # 220 V x 1.12: 24x V
        assert "ahead" in events[(DRIFT, Kind.CLOCK)].detail
        assert "reverse energy" in events[(REVERSE, Kind.REVERSE)].detail
    finally:
        anomalies.close()
        await fleet.close()
