"""Writes to a serial port go through its descriptor without waiting in the loop (issue 21).

A pty's buffer is a few kilobytes: a write larger than what the other side has read is taken in
part, and the rest waits until the port is writable again -- or, if nobody reads, until the write
timeout, which is a link failure naming the port.  Real ptys, no mocks.
"""

from __future__ import annotations

import asyncio
import os
import pty
from collections.abc import Iterator

import pytest

from meterd.collector.transports import SerialTransport
from meterd.errors import LinkClosedError

BIG = bytes(range(256)) * 256  # 64 KiB: more than a pty buffers


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    os.set_blocking(master, False)
    yield master, name
    os.close(master)


async def test_a_write_larger_than_the_port_buffer_is_all_delivered(pty_pair: tuple[int, str]) -> None:
    master, name = pty_pair
    transport = SerialTransport("bus1", name, baud=9600, parity="N")
    await transport.open()
    loop = asyncio.get_running_loop()
    got = bytearray()
    done = asyncio.Event()

    def drain() -> None:  # the other end of the line reads as bytes come
        try:
            got.extend(os.read(master, 65536))
        except BlockingIOError:
            return
        if len(got) >= len(BIG):
            done.set()

    loop.add_reader(master, drain)
    try:
        await transport.write(BIG)
        await asyncio.wait_for(done.wait(), 10)
    finally:
        loop.remove_reader(master)
        await transport.close()
    assert bytes(got) == BIG


async def test_a_write_nobody_reads_fails_after_the_write_timeout(pty_pair: tuple[int, str]) -> None:
    _, name = pty_pair
    transport = SerialTransport("bus1", name, baud=9600, parity="N", write_timeout=0.2)
    await transport.open()
    try:
        with pytest.raises(LinkClosedError) as caught:
            await transport.write(BIG)
        assert str(caught.value) == f"bus1: serial port {name}: write failed: the port took nothing for 0.2 s"
    finally:
        await transport.close()
