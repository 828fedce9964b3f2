"""The pty simulator's pacing and guards, with many buses in one loop (issue 21).

Replies are written from timer callbacks in pieces of about 16 ms of wire time, never before
their last bit would have left a UART; a reply nobody reads is abandoned after
WRITE_STALL_LIMIT (counted, the bus keeps serving); one termios guard task serves every pty of
the loop and each pty can still be reopened at 8E1 (the pyserial/pyserial#196 quirk).  Real ptys.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime

import pytest
import serial

from meterd.protocols.dlt645.frame import PREAMBLE, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, encode_request
from meterd.simulators import serve
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import LineSettings, SimClock, serve_pty

START = datetime(2025, 6, 1, 8, 0)
A1 = "000000000001"


def bus() -> Dlt645Bus:
    return Dlt645Bus([MeterModel(A1, start=START, seed=1)])


def request() -> bytes:
    return encode_frame(encode_request(ReadRequest(A1, 0x00010000)), preamble=PREAMBLE)


def read_pieces(path: str, raw: bytes) -> list[tuple[float, int]]:
    """Send ``raw``; (seconds since the write, bytes) of every read until a whole reply is in."""
    pieces = []
    with serial.Serial(path, 2400, parity=serial.PARITY_EVEN, timeout=2) as port:
        t0 = time.monotonic()
        port.write(raw)
        total = 0
        while total < 22:  # FE FE FE FE + an 18-byte reply frame to 00010000
            data = port.read(port.in_waiting or 1)
            if not data:
                break
            total += len(data)
            pieces.append((time.monotonic() - t0, len(data)))
    return pieces


async def test_a_reply_arrives_in_wire_timed_pieces_never_early() -> None:
    async with await serve_pty(bus(), clock=SimClock.starting(START)) as running:
        raw = request()
        pieces = await asyncio.to_thread(read_pieces, running.endpoint, raw)
    line = LineSettings(2400, 8, "E", 1)
    got = 0
    for at, n in pieces:
        got += n
        # the piece's last byte left the meter's UART no earlier than this
        assert at >= line.wire_time(len(raw)) + 0.020 + line.wire_time(got) - 0.002, (at, got)
    assert got == 22
    assert running.stats.replies == 1 and running.stats.tx_abandoned == 0


async def test_one_termios_guard_for_every_pty_of_a_loop_and_each_reopens_at_8e1() -> None:
    clock = SimClock.starting(START)
    buses = [await serve_pty(bus(), clock=clock, wire_time=False, turnaround=0.0) for _ in range(3)]
    try:
        guards = [t for t in asyncio.all_tasks() if t.get_name() == "sim-termios"]
        assert len(guards) == 1
        await asyncio.sleep(2 * serve.TERMIOS_GUARD_PERIOD)

        def reopen_twice(path: str) -> None:
            for _ in range(2):  # the second open at the same 8E1 is the one the kernel refused
                serial.Serial(path, 2400, parity=serial.PARITY_EVEN, timeout=0).close()
                time.sleep(3 * serve.TERMIOS_GUARD_PERIOD)  # the guard parks the slave again

        for running in buses:
            await asyncio.to_thread(reopen_twice, running.endpoint)
    finally:
        for running in buses:
            await running.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "sim-termios"]  # gone with the last pty


async def test_a_reply_nobody_reads_is_abandoned_and_the_bus_serves_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "WRITE_STALL_LIMIT", 0.2)
    # a fast line, so that replies nobody reads fill the pty's buffers (~70 KB) within a second
    async with await serve_pty(bus(), baud=2_000_000, clock=SimClock.starting(START), turnaround=0.0) as running:
        slave = os.open(running.endpoint, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            raw = request() * 50
            for _ in range(2000):  # a bound, not a timing
                if running.stats.tx_abandoned:
                    break
                try:
                    os.write(slave, raw)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0.005)
            assert running.stats.tx_abandoned > 0
            # whoever reads again gets replies again
            while True:
                try:
                    os.read(slave, 65536)
                except BlockingIOError:
                    break
            replies = running.stats.replies
            os.write(slave, request())
            for _ in range(400):
                if running.stats.replies > replies:
                    break
                await asyncio.sleep(0.01)
            assert running.stats.replies > replies
        finally:
            os.close(slave)
