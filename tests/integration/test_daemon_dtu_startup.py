"""After a (re)start the DTUs dial back in over a while: a DTU channel's first round waits for its
DTU's first registration (at most one poll interval), so the meters behind a DTU that comes after
``connect_wait`` are read when it registers, not one interval later, and nothing is recorded as a
``link`` failure for the wait.  A DTU that drops and comes back does not start extra rounds; a
DTU that never comes has its round run (and failed as ``link``) after one interval.

Real TCP sockets throughout: the daemon's DTU listener, simulated DTUs dialling in."""

from __future__ import annotations

import asyncio
import time
import tomllib
from datetime import UTC, datetime

from conftest import free_port
from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.simulators.dtu import run_dtu_fleet
from meterd.storage.sqlite import SqliteStore

METERS = ["000000000001", "000000000002"]


def config_text(port: int, data_dir, interval: str) -> str:
    meters = "".join(f'\n[[meters]]\naddress = "{a}"\nchannel = "feeder1"\n' for a in METERS)
    return f"""
[store]
data_dir = "{data_dir}"
flush_interval = "200ms"

[listeners.gprs]
host = "127.0.0.1"
port = {port}
formats = ["usr-ascii"]
heartbeat_timeout = "30s"

[channels.feeder1]
dtu = {{ listener = "gprs", terminal = "DTU00000001", connect_wait = "500ms" }}
response_timeout = "1s"
retries = 0
{meters}
[[polls]]
name = "realtime"
interval = "{interval}"
quantities = ["energy.active.import.total"]
"""


class Rounds:
    """What the daemon's rounds did: meters read (with when), outcomes, round count."""

    def __init__(self) -> None:
        self.read_at: dict[str, float] = {}
        self.outcomes: list[tuple[str, str]] = []
        self.rounds = 0

    def __call__(self, result) -> None:
        self.rounds += 1
        for r in result.readings:
            self.read_at.setdefault(r.meter, time.monotonic())
        self.outcomes.extend((a.meter, a.outcome) for a in result.attempts)


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_dtu_dialling_in_after_connect_wait_is_read_when_it_registers_not_an_interval_later(tmp_path):
    port = free_port()
    config = parse_config(tomllib.loads(config_text(port, tmp_path, "60s")), "dtu.toml")
    seen = Rounds()
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, on_round=seen, clock=lambda: datetime.now(UTC))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        fleet = None
        try:
            # the DTU dials in well after connect_wait (0.5 s) has passed: twice over, with two meters
            await asyncio.sleep(1.5)
            fleet = await run_dtu_fleet(1, 2, "127.0.0.1", port, heartbeat=5.0)
            registered = time.monotonic()
            all_read = await until(lambda: len(seen.read_at) == len(METERS), 10.0)  # the interval is 60 s
            # it drops and comes back twice: no round for a reconnect, the normal schedule holds
            dtu = fleet.dtus[0]
            for _ in range(2):
                await dtu.drop()
                await until(lambda: daemon.listener_status()["gprs"]["online"] == 0, 5.0)
                await dtu.reconnect()
                await until(lambda: daemon.listener_status()["gprs"]["online"] == 1, 5.0)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await task
            if fleet is not None:
                await fleet.close()
        terminal = daemon.listener_status()["gprs"]["terminals"]["DTU00000001"]
    assert all_read, f"meters read: {sorted(seen.read_at)}; attempts: {seen.outcomes}"
    assert max(seen.read_at.values()) - registered < 10.0
    assert seen.outcomes and all(outcome == "ok" for _, outcome in seen.outcomes)  # nothing failed for the wait
    assert terminal["registrations"] == 3
    assert seen.rounds == 1  # one round: the reconnects started none


async def test_a_dtu_that_never_comes_has_its_round_failed_as_link_after_one_interval(tmp_path):
    port = free_port()
    config = parse_config(tomllib.loads(config_text(port, tmp_path, "1s")), "dtu.toml")
    seen = Rounds()
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, on_round=seen, clock=lambda: datetime.now(UTC))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            held = await until(lambda: seen.rounds > 0, 0.3)  # no round yet: it waits for the DTU
            failed = await until(lambda: len(seen.outcomes) >= len(METERS), 10.0)
        finally:
            stop.set()
            await task
    assert not held
    assert failed and {m for m, _ in seen.outcomes} == set(METERS)
    assert all(outcome == "link" for _, outcome in seen.outcomes)
