"""Every way a serial port can fail to open or configure is a ``link`` failure (issue 17).

Real devices, no mocks: a path that does not exist, ``/dev/null`` and a regular file (not ttys:
``tcgetattr`` answers ENOTTY, a ``termios.error`` that pyserial wraps), a directory, the slave of a
pseudo-terminal whose master has been closed (the device is gone), line settings pyserial refuses
(``ValueError``) or that overflow the kernel's C int (``OverflowError``, which used to escape as
an "unexpected" error with a traceback), and a pty whose master goes away while the port is open.

Each gives one :class:`LinkError` naming the device and the reason in words; a daemon channel on
such a port keeps polling, counts every attempt as ``link`` and logs the trouble once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pty
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterd.collector.channel import Channel, FailureKind, Timing, TransactionError
from meterd.collector.daemon import Daemon
from meterd.collector.transports import SerialTransport
from meterd.config.loader import parse_config
from meterd.errors import LinkClosedError, LinkError
from meterd.protocols.dlt645.messages import ReadRequest, encode_request
from meterd.storage.sqlite import SqliteStore


@pytest.fixture
def gone_pty() -> Iterator[str]:
    """The path a pty slave had: its master is closed, so the device is gone."""
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    os.close(master)
    os.close(slave)
    yield name


@pytest.fixture
def live_pty() -> Iterator[tuple[int, str]]:
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    yield master, name
    try:
        os.close(master)
    except OSError:
        pass


def plain_file(tmp_path: Path) -> str:
    path = tmp_path / "not-a-port.txt"
    path.write_text("hello\n")
    return str(path)


BAD_PORTS = {
    "missing": (lambda tmp: "/dev/meterd-no-such-tty", "no such device (nothing at that path"),
    "dev-null": (lambda tmp: "/dev/null", "not a serial port (it takes no line settings)"),
    "regular-file": (plain_file, "not a serial port (it takes no line settings)"),
    "directory": (lambda tmp: str(tmp), "a directory, not a serial port"),
}


@pytest.mark.parametrize("kind", sorted(BAD_PORTS))
async def test_a_port_that_cannot_be_opened_is_a_link_error_naming_it(kind: str, tmp_path: Path) -> None:
    make, reason = BAD_PORTS[kind]
    device = make(tmp_path)
    transport = SerialTransport("bus1", device, baud=2400, parity="E")
    with pytest.raises(LinkError) as caught:
        await transport.open()
    assert str(caught.value).startswith(f"bus1: cannot open serial port {device} at 2400 8E1: {reason}")
    assert "Errno" not in str(caught.value) and "(25, " not in str(caught.value)  # no raw tuples
    assert not transport.is_open


async def test_a_pty_whose_master_is_closed_is_a_link_error(gone_pty: str) -> None:
    transport = SerialTransport("bus1", gone_pty)
    with pytest.raises(LinkError, match=f"cannot open serial port {gone_pty} at 2400 8E1: no such device"):
        await transport.open()


@pytest.mark.parametrize(("baud", "reason"), [
    (-5, "bad line settings: Not a valid baudrate: -5"),
    (2**40, "bad line settings: signed integer is greater than maximum"),  # was an escaping OverflowError
])  # fmt: skip
async def test_line_settings_the_port_refuses_are_a_link_error(live_pty: tuple[int, str], baud: int,
                                                               reason: str) -> None:
    _, name = live_pty
    transport = SerialTransport("bus1", name, baud=baud, parity="N")
    with pytest.raises(LinkError) as caught:
        await transport.open()
    assert str(caught.value) == f"bus1: cannot open serial port {name} at {baud} 8N1: {reason}"
    assert not transport.is_open


async def test_a_port_that_goes_away_while_open_fails_the_read_as_link_and_is_tried_again(
        live_pty: tuple[int, str]) -> None:
    master, name = live_pty
    transport = SerialTransport("bus1", name, baud=9600, parity="N")
    channel = Channel("bus1", transport, timing=Timing(1.0, 0.5), retries=1)
    await transport.open()
    os.close(master)  # the adapter is unplugged: the open port reads EIO, the path is gone
    with pytest.raises(TransactionError) as caught:
        await channel.transact(encode_request(ReadRequest("000000000001", 0x00010000)))
    assert caught.value.kind is FailureKind.LINK
    # the first attempt lost the port, the retry could not open it again: both counted as link
    assert channel.stats.failures == {FailureKind.LINK: 2}
    assert f"cannot open serial port {name}" in str(caught.value)
    await channel.close()


async def test_reading_a_port_whose_device_went_away_says_so(live_pty: tuple[int, str]) -> None:
    master, name = live_pty
    transport = SerialTransport("bus1", name, baud=9600, parity="N")
    await transport.open()
    os.close(master)
    with pytest.raises(LinkClosedError) as caught:
        await transport.read(1.0)
    assert str(caught.value) == f"bus1: serial port {name}: the device went away (unplugged, or another program reads the port)"
    await transport.close()


@pytest.mark.parametrize("kind", ["missing", "dev-null", "regular-file"])
async def test_a_daemon_channel_on_a_bad_port_keeps_polling_and_counts_link_failures(
        kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make, reason = BAD_PORTS[kind]
    device = make(tmp_path)
    text = f"""
[store]
data_dir = "{tmp_path / 'data'}"
flush_interval = "100ms"
[channels.c0]
serial = {{ device = "{device}", baud = 2400, parity = "E" }}
retries = 0
[[meters]]
address = "000000000001"
channel = "c0"
[[polls]]
name = "rt"
interval = "200ms"
items = ["00010000"]
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
        stats = daemon.stats()["c0"]
        assert stats["attempts"] >= 3 and stats["failures"] == {"link": stats["attempts"]}
        assert {(a.meter, a.outcome) for a in store.attempts()} == {("000000000001", "link")}
    down = [r.getMessage() for r in caplog.records if "link down" in r.getMessage()]
    assert len(down) == 1 and reason in down[0] and device in down[0]  # logged once, not per round
    assert not [r for r in caplog.records if r.exc_info]  # no traceback: the error was translated
