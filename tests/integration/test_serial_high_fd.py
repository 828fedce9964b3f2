"""A serial port whose file descriptor is above 1023 is read and written like any other (issue 21).

pyserial's ``read`` and ``write`` wait in ``select()``, which refuses a descriptor past 1023
(``ValueError: filedescriptor out of range in select()``); pyserial opens five descriptors a port,
so a daemon with 256 serial buses had 55 that never collected, each failing every attempt and
logging it with a traceback (tens of thousands of lines in seconds).  Real ptys here, served by
the simulator; 1,030 descriptors on ``/dev/null`` are opened first so the port's lands past 1023.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from meterd.collector.channel import Channel, Timing
from meterd.collector.daemon import Daemon
from meterd.collector.transports import SerialTransport
from meterd.config.loader import parse_config
from meterd.protocols.dlt645.messages import ReadRequest, ReadResponse, decode_response, encode_request
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_pty
from meterd.storage.sqlite import SqliteStore

START = datetime(2025, 6, 1, 8, 0)
A1 = "000000000001"
SELECT_LIMIT = 1024  # FD_SETSIZE


@pytest.fixture
def high_fds() -> Iterator[None]:
    """Every descriptor below 1030 taken (the soft open-file limit raised for it), so what opens next
    lands above select()'s limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard open-file limit {hard} is below {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want) if soft != resource.RLIM_INFINITY else soft, hard))
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < SELECT_LIMIT + 6:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def descriptors_of(path: str) -> list[int]:
    """This process's descriptors open on ``path``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == path:
                found.append(int(name))
        except OSError:
            continue
    return found


async def test_a_channel_reads_a_meter_on_a_port_whose_descriptor_is_past_1023(
        high_fds: None, caplog: pytest.LogCaptureFixture) -> None:
    clock = SimClock.starting(START)
    bus = Dlt645Bus([MeterModel(A1, start=START, seed=1)])
    async with await serve_pty(bus, clock=clock, turnaround=0.0, wire_time=False) as running:
        simulator_side = descriptors_of(running.endpoint)  # the simulator keeps the slave open
        transport = SerialTransport("bus1", running.endpoint, baud=2400, parity="E")
        channel = Channel("bus1", transport, timing=Timing(2.0, 0.5), retries=0)
        try:
            with caplog.at_level(logging.WARNING):
                for item in (0x00010000, 0x02010100, 0x00010000):
                    reply = await channel.transact(encode_request(ReadRequest(A1, item)))
                    assert reply is not None
                    response = decode_response(reply)
                    assert isinstance(response, ReadResponse) and response.address == A1 and response.di == item
            port_fds = [fd for fd in descriptors_of(running.endpoint) if fd not in simulator_side]
            assert port_fds and min(port_fds) >= SELECT_LIMIT, port_fds  # the master's port is past select()'s reach
            assert channel.stats.successes == 3 and not channel.stats.failures
            assert not caplog.records, [r.getMessage() for r in caplog.records]
        finally:
            await channel.close()
        assert descriptors_of(running.endpoint) == simulator_side  # closing the channel closed the port


async def test_a_daemon_polls_a_bus_past_1023_without_failures_or_log_lines(
        high_fds: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bus = Dlt645Bus([MeterModel(A1, start=START, seed=1)])
    async with await serve_pty(bus, clock=SimClock.starting(START), turnaround=0.0, wire_time=False) as running:
        text = f"""
[store]
data_dir = "{tmp_path}"
flush_interval = "100ms"
[channels.c0]
serial = {{ device = "{running.endpoint}", baud = 2400, parity = "E" }}
retries = 0
[[meters]]
address = "{A1}"
channel = "c0"
[[polls]]
name = "rt"
interval = "50ms"
items = ["00010000", "02010100"]
"""
        config = parse_config(tomllib.loads(text), source="test.toml")
        rounds = []
        with SqliteStore(config.store.data_dir) as store:
            daemon = Daemon(config, store, on_round=rounds.append)
            stop = asyncio.Event()
            with caplog.at_level(logging.INFO):
                task = asyncio.create_task(daemon.run(stop))
                for _ in range(400):  # a bound, not a timing: five rounds take ~0.3 s
                    if len(rounds) >= 5 or task.done():
                        break
                    await asyncio.sleep(0.05)
                assert max(descriptors_of(running.endpoint)) >= SELECT_LIMIT  # the daemon's port
                stop.set()
                await task
            stats = daemon.stats()["c0"]
    assert len(rounds) >= 5
    assert stats["failures"] == {} and stats["successes"] >= 10  # (a read cut short by the stop is no failure)
    assert all(a.outcome == "ok" for r in rounds for a in r.attempts)
    trouble = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not trouble, trouble[:3]  # was a "link down: unexpected ValueError" with a traceback per attempt
