"""Line loss of a simulated transformer area, end to end: the area's supply meter (台区总表) measures
its customers plus a 6 % loss; the daemon reads everyone's daily freezes through a real TCP bus,
keeps them as daily registers, and ``meterd lineloss`` computes the day's loss from them -- 6 %,
within what the registers' 0.01 kWh resolution allows.

Time: the fleet runs 28800x (a simulated day in 3 real seconds; the meters integrate minute by
minute whatever the speed, so the day's registers are those of any speed); the freezes carry the
meters' own time, so the daemon keeps its own clock.  ``meterd lineloss`` runs as a process forked
from one that imported the package (tests/cliserver.py).
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

import cliserver
from meterd.analytics.energy import DailyRegisterStore
from meterd.app import build_node
from meterd.config.loader import parse_config
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore

SUPPLY = "000000000001"
CUSTOMERS = ["000000000002", "000000000003", "000000000005", "000000000006", "000000000007"]  # 4 has PV: left out
LOSS = 0.06
DAY = date(2026, 11, 23)


def config_text(data_dir, endpoint: str) -> str:
    host, port = endpoint.rsplit(":", 1)
    lines = [f'[store]\ndata_dir = "{data_dir}"\nflush_interval = "200ms"\n',
             f'[channels.bus1]\ntcp = {{ host = "{host}", port = {port} }}\nresponse_timeout = "300ms"\n']
    for m in (SUPPLY, *CUSTOMERS):
        lines.append(f'[[meters]]\naddress = "{m}"\nchannel = "bus1"\n')
    lines.append('[[polls]]\nname = "frozen"\ninterval = 0.5\nitems = ["05060101"]\n')  # the latest daily freeze
    lines.append('[[topology.units]]\nname = "TA1"\nloss_threshold = "8"\n')
    lines.append(f'[[topology.points]]\nmeter = "{SUPPLY}"\nunit = "TA1"\nrole = "supply"\n')
    for m in CUSTOMERS:
        lines.append(f'[[topology.points]]\nmeter = "{m}"\nunit = "TA1"\nrole = "sales"\n')
    lines.append('[analytics]\ncheck_every = "500ms"\n')
    return "\n".join(lines)


@pytest.fixture
def run_meterd(tmp_path):
    """As conftest's: ``meterd`` with ``args`` in the test's folder; a forked process."""
    server = cliserver.shared()

    def run(*args: str, timeout: float = 60, input: str | None = None):
        return server.run(*args, timeout=timeout, input=input, cwd=tmp_path)

    return run


async def test_meterd_lineloss_of_a_simulated_area_is_its_configured_loss(tmp_path, run_meterd):
    spec = FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=7, wire_time=False, seed=11, speed=28800.0,
                     start=datetime(2026, 11, 22, 23, 59), areas=[{"name": "TA1", "supply": SUPPLY,
                                                                    "customers": CUSTOMERS, "loss": LOSS}])
    fleet = await run_fleet(spec)
    try:
        [bus] = fleet.buses
        text = config_text(tmp_path / "data", bus.endpoint)
        (tmp_path / "site.toml").write_text(text)
        config = parse_config(tomllib.loads(text), source="site.toml")
        (tmp_path / "data").mkdir()
        registers = DailyRegisterStore(tmp_path / "data")
        with SqliteStore(tmp_path / "data") as store:
            node = build_node(config, store)
            stop = asyncio.Event()
            task = asyncio.create_task(node.run(stop))
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while loop.time() < deadline:  # both freezes bracketing the day, of every meter
                    await asyncio.sleep(0.2)
                    have = registers.registers([DAY, DAY + timedelta(days=1)])
                    if len(have) == 2 * (1 + len(CUSTOMERS)):
                        break
            finally:
                stop.set()
                await task
        registers.close()
    finally:
        await fleet.close()
    p = run_meterd("lineloss", "-c", "site.toml", "--period", DAY.isoformat(), "--json")
    assert p.returncode == 0, p.stderr
    [report] = json.loads(p.stdout)
    assert report["unit"] == "TA1" and report["completeness"] == "100.00" and report["flags"] == [], report
    supply = Decimal(report["supply"])
    tolerance = Decimal("0.04") * (1 + len(CUSTOMERS)) / supply * 100 + Decimal("0.01")  # 0.01 kWh x 4 rates
    assert abs(Decimal(report["rate"]) - Decimal(LOSS * 100).quantize(Decimal("0.01"))) <= tolerance, report
    table = run_meterd("lineloss", "-c", "site.toml", "--period", DAY.isoformat()).stdout
    assert "TA1" in table and report["rate"] in table
