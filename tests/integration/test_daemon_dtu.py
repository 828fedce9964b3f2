"""The daemon with a DTU listener from config: simulated GPRS DTUs connect in, register, and the
meters behind them are read through their channels; DTUs that are not there yet fail as link
failures and are read once they arrive."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import datetime, timezone

import pytest

from meterd.collector.daemon import Daemon, compile_plan, describe_plan
from meterd.config.loader import parse_config
from meterd.errors import ConfigError
from meterd.simulators.dtu import run_dtu_fleet
from meterd.storage.sqlite import SqliteStore
from conftest import free_port


def config_text(port: int, data_dir, fmt: str = "hex-frame") -> str:
    channels = []
    for n in (1, 2, 3):
        tid = f"DTU{n:08d}"
        channels.append(f"""
[channels.feeder{n}]
dtu = {{ listener = "gprs", terminal = "{tid}" }}
response_timeout = "1s"
retries = 0
""")
        for i in range(2):
            channels.append(f"""
[[meters]]
address = "{(n - 1) * 2 + i + 1}"
channel = "feeder{n}"
""")
    return f"""
[store]
data_dir = "{data_dir}"
flush_interval = "200ms"

[listeners.gprs]
host = "127.0.0.1"
port = {port}
formats = ["usr-ascii", "{fmt}"]
heartbeat_timeout = "30s"
{"".join(channels)}
[[polls]]
name = "realtime"
interval = "300ms"
quantities = ["energy.active.import.total", "voltage.a"]
"""


async def test_meters_behind_dtus_are_collected_once_the_dtus_register(tmp_path):
    port = free_port()
    config = parse_config(tomllib.loads(config_text(port, tmp_path)), "dtu.toml")
    assert "channel feeder1 (dtu DTU00000001 via listener gprs)" in describe_plan(compile_plan(config))
    seen: dict[str, set[str]] = {}
    outcomes: list[str] = []

    def on_round(result):
        for r in result.readings:
            seen.setdefault(r.meter, set()).add(r.quantity)
        outcomes.extend(a.outcome for a in result.attempts)

    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, on_round=on_round, clock=lambda: datetime.now(timezone.utc))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.5)  # first rounds: no DTU yet -> link failures
        fleet = await run_dtu_fleet(3, 2, "127.0.0.1", port, fmt="hex-frame", heartbeat=5.0)
        try:
            for _ in range(100):
                if len(seen) == 6:
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task
            await fleet.close()
        status = daemon.listener_status()["gprs"]
    assert sorted(seen) == [f"{n:012d}" for n in range(1, 7)]
    assert all(q == {"energy.active.import.total", "voltage.a"} for q in seen.values())
    assert "link" in outcomes and "ok" in outcomes  # before and after the DTUs came
    assert status["terminals"]["DTU00000001"]["registrations"] == 1
    assert status["rejected"].get("unknown_id", 0) == 0


def test_dtu_channel_config_problems(tmp_path):
    text = config_text(9000, tmp_path).replace('listener = "gprs", terminal = "DTU00000002"',
                                               'listener = "gprs", terminal = "DTU00000001"')
    text = text.replace('listener = "gprs", terminal = "DTU00000003"', 'listener = "gsm", terminal = "DTU00000003"')
    text = text.replace('formats = ["usr-ascii", "hex-frame"]', 'formats = ["usr-asci"]')
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), "dtu.toml")
    problems = "\n".join(info.value.problems)
    assert 'channels.feeder2.dtu.terminal: terminal "DTU00000001" is already channel "feeder1"' in problems
    assert 'channels.feeder3.dtu.listener: no listener named "gsm"' in problems
    assert 'listeners.gprs.formats[0]: unknown DTU format "usr-asci"' in problems
