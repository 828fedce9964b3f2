"""A serial port the kernel refuses to configure is a link failure, not a dead channel (issue #14).

A pseudo-terminal keeps no parity: reopening one at the 8E1 it was left at makes ``tcsetattr``
answer EINVAL (pyserial/pyserial#196), and pyserial lets that through as ``termios.error``, which
is not an ``OSError``.  Before the fix the channel task died on it with nothing logged, and the bus
was never polled again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pty
import tomllib
from pathlib import Path

import pytest
import serial

from meterd.collector.daemon import Daemon
from meterd.collector.transports import SerialTransport
from meterd.config.loader import parse_config
from meterd.errors import LinkError
from meterd.storage.sqlite import SqliteStore


@pytest.fixture
def refused_pty():
    """A pty slave that an earlier program left at 2400 8E1: the next open at 8E1 fails in termios."""
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    serial.Serial(name, baudrate=2400, parity=serial.PARITY_EVEN, timeout=0).close()
    yield name
    os.close(slave)
    os.close(master)


async def test_the_serial_transport_says_the_port_cannot_be_configured(refused_pty: str) -> None:
    transport = SerialTransport("bus1", refused_pty, baud=2400, parity="E")
    with pytest.raises(LinkError, match="cannot configure the port: Invalid argument"):
        await transport.open()
    assert not transport.is_open


async def test_a_channel_whose_port_cannot_be_configured_keeps_polling_and_counts_link_failures(
        refused_pty: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = f"""
[store]
data_dir = "{tmp_path}"
flush_interval = "100ms"
[channels.c0]
serial = {{ device = "{refused_pty}", baud = 2400, parity = "E" }}
retries = 0
[[meters]]
address = "000000000001"
channel = "c0"
[[polls]]
name = "rt"
interval = "200ms"
items = ["0001FF00"]
"""
    config = parse_config(tomllib.loads(text), source="test.toml")
    rounds = []
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, on_round=rounds.append)
        stop = asyncio.Event()
        with caplog.at_level(logging.WARNING):
            task = asyncio.create_task(daemon.run(stop))
            for _ in range(200):  # a bound, not a timing: three rounds take ~0.4 s
                if len(rounds) >= 3 or task.done():
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await task
        assert len(rounds) >= 3, "the channel stopped polling"
        assert daemon.stats()["c0"]["failures"] == {"link": daemon.stats()["c0"]["attempts"]}
        outcomes = {(a.meter, a.outcome) for a in store.attempts()}
        assert outcomes == {("000000000001", "link")}
        down = [r.getMessage() for r in caplog.records if "link down" in r.getMessage()]
        assert len(down) == 1 and "cannot configure the port: Invalid argument" in down[0]
