"""Back-to-back: the same collection path against DL/T 645-2007, DL/T 645-1997 and Modbus simulated
meters, over a pseudo-terminal and over TCP, must produce the same readings for the same simulated
state.

Each case builds an identical meter model (same address, seed and start) frozen at one instant,
serves it in one protocol, loads a config that polls it by canonical quantities, and runs one
daemon round through the real channel, poll and writer.  The readings must equal the model's own
values times the meter's CT / PT -- for every protocol and link, so downstream code cannot tell
which one a reading came from.
"""

from __future__ import annotations

import tomllib
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from meterd.collector.daemon import Daemon
from meterd.clock import CST
from meterd.config.loader import parse_config
from meterd.protocols.modbus.quantities import known_quantities
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import serve_pty, serve_tcp
from meterd.storage.sqlite import SqliteStore

START = datetime(2025, 3, 3, 0, 0)
AT = START + timedelta(hours=30, minutes=7)  # simulated instant every case is read at (meter-local)
ADDRESS = "000000000042"
SEED = 42
CT, PT = Decimal(20), Decimal(1)

# Quantities all three protocols carry at the same resolution (energy 0.01 kWh, power 0.0001 kW,
# pf 0.001, demand 0.0001 kW).
QUANTITIES = [
    "energy.active.import.total",
    "energy.active.import.rate1",
    "energy.active.import.rate2",
    "energy.active.import.rate3",
    "energy.active.import.rate4",
    "energy.active.export.total",
    "power.active.total",
    "power.active.a",
    "pf.total",
    "demand.active.import.total",
]


def frozen_model() -> MeterModel:
    model = MeterModel(ADDRESS, start=START, seed=SEED)
    model.advance(AT)
    return model


def expected() -> dict[str, Decimal]:
    model = frozen_model()
    values = model.values(AT, QUANTITIES)
    specs = known_quantities()
    out = {}
    for q in QUANTITIES:
        factor = {"ctpt": CT * PT, "ct": CT, "pt": PT}.get(str(specs[q].scaling), Decimal(1))
        out[q] = Decimal(values[q]) * factor
    return out


async def serve(protocol: str, link: str):
    model = frozen_model()
    if protocol == "modbus":
        from meterd.protocols.modbus import get_map
        from meterd.simulators.modbus import ModbusBus

        framing = "rtu" if link == "pty" else "tcp"
        bus = ModbusBus({7: model}, get_map("generic"), framing=framing)
    else:
        bus = Dlt645Bus([model], protocols={ADDRESS: protocol})
    clock = lambda: AT  # noqa: E731 -- the state stays put while it is read
    if link == "pty":
        if protocol == "modbus":
            return await serve_pty(bus, baud=9600, parity="N", clock=clock)
        return await serve_pty(bus, clock=clock)
    return await serve_tcp(bus, clock=clock)


def config_for(protocol: str, link: str, endpoint: str, data_dir) -> str:
    if link == "pty":
        line = '{ device = "%s", baud = %d, parity = "%s" }' % (
            endpoint, 9600 if protocol == "modbus" else 2400, "N" if protocol == "modbus" else "E")
        channel = f"serial = {line}"
    else:
        host, port = endpoint.rsplit(":", 1)
        channel = f'tcp = {{ host = "{host}", port = {port} }}'
    extra = 'unit = 7\nmodel = "generic"' if protocol == "modbus" else ""
    quantities = ", ".join(f'"{q}"' for q in QUANTITIES)
    return f"""
[store]
data_dir = "{data_dir}"

[channels.bus]
{channel}
response_timeout = 1.5
retries = 1

[[meters]]
address = "{ADDRESS}"
channel = "bus"
protocol = "{protocol}"
ct = {CT}
pt = {PT}
{extra}

[[polls]]
name = "b2b"
interval = "1h"
quantities = [{quantities}]
"""


@pytest.mark.parametrize("link", ["pty", "tcp"])
@pytest.mark.parametrize("protocol", ["dlt645-2007", "dlt645-1997", "modbus"])
async def test_every_protocol_and_link_gives_the_same_readings(protocol, link, tmp_path):
    running = await serve(protocol, link)
    try:
        config = parse_config(tomllib.loads(config_for(protocol, link, running.endpoint, tmp_path)), "b2b.toml")
        now = AT.replace(tzinfo=CST)
        with SqliteStore(config.store.data_dir) as store:
            daemon = Daemon(config, store, clock=lambda: now)
            runner = daemon.runners[0]
            daemon.writer.start()
            result = await daemon.run_round(runner, runner.plan.polls[0])
            await daemon.writer.close()
            await runner.channel.close()
            stored = {q: r.value for q, r in store.latest(ADDRESS).items()}
    finally:
        await running.close()
    assert [a.outcome for a in result.attempts] == ["ok"] * len(result.attempts), result.failures
    got = {r.quantity: r.value for r in result.readings}
    assert got == expected()
    assert all(r.timestamp == now for r in result.readings)
    assert stored == got
