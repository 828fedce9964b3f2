"""A terminal that sends absurd amounts, over real TCP to the listener: a multi-frame reply that never
ends, a flood of heartbeats whose connection breaks in the middle, pushed frames the master cannot
(and need not) decode.  What must hold: a clear error naming the terminal and the bytes, nothing
else lost, nothing held for ever."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from decimal import Decimal

import pytest

from gdw_fake import link_frame
from meterd.collector.channel import FailureKind, Timing, TransactionError
from meterd.collector.gdw1376 import GdwChannel, GdwListener
from meterd.collector.gdw1376.channel import MAX_REPLY_FRAMES
from meterd.protocols.gdw1376.catalogue import EnergyReading
from meterd.protocols.gdw1376.frame import (
    Afn,
    Frame,
    PrimaryFunction,
    StreamDecoder,
    control_byte,
    encode_frame,
    parse_terminal_address,
    seq_byte,
)
from meterd.protocols.gdw1376.messages import DataUnit, decode_message, encode, reply, unit

T1 = "4401-0001"


async def wait_for(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def _logged_in(listener: GdwListener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
    writer.write(link_frame(T1, 1, 1))
    await writer.drain()
    await wait_for(lambda: listener.is_online(T1))
    return reader, writer


async def test_a_reply_that_never_finishes_fails_the_request_and_says_so(caplog):
    # FIR, then middle frames (RSEQ counting up, wrapping) far past what one reply can be; then the
    # terminal keeps the connection open and goes quiet.  Before: the request waited as long as
    # frames came (each within the inter-byte timeout), and failed only as "reply stopped short".
    frames = 4 * MAX_REPLY_FRAMES
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        channel = GdwChannel("c1", listener.transport(T1), parse_terminal_address(T1), pns={},
                             timing=Timing(2.0, 0.5), retries=0)
        reader, writer = await _logged_in(listener)

        async def endless() -> None:
            decoder = StreamDecoder()
            while True:
                decoder.feed(await reader.read(65536))
                for frame in decoder.frames():
                    msg = decode_message(frame)
                    if msg.afn != Afn.CLASS1_DATA:
                        continue
                    value = EnergyReading(datetime(2026, 1, 1), (Decimal("1.00"),))
                    body = [DataUnit((1,), (129,), (value,))]
                    for n in range(frames):
                        writer.write(encode(reply(msg, body, fir=n == 0, fin=False, seq=msg.seq_number + n)))
                        if n % 50 == 0:
                            await writer.drain()
                    await writer.drain()

        task = asyncio.create_task(endless())
        with caplog.at_level(logging.WARNING), pytest.raises(TransactionError) as caught:
            await channel.request(Afn.CLASS1_DATA, [unit(1, 129)])
        task.cancel()
        writer.close()
    assert caught.value.kind is FailureKind.GARBLED
    assert "without finishing the reply" in str(caught.value) and T1 in str(caught.value)
    lines = [r.getMessage() for r in caplog.records if "without finishing the reply" in r.getMessage()]
    assert len(lines) == 1 and "channel c1" in lines[0] and "[68 " in lines[0]  # the frame's bytes


async def test_a_heartbeat_flood_on_a_lost_connection_is_not_answered_frame_by_frame(caplog):
    # Thousands of heartbeats arrive in one read and the connection breaks while they are handled:
    # before, each was still confirmed into the dead socket, and asyncio logged a warning per write
    # ("socket.send() raised exception.", 2995 lines for 3000 heartbeats).
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        _, writer = await _logged_in(listener)
        conn = listener._terminals[T1].session
        assert conn is not None and conn.transport is not None
        burst = b"".join(link_frame(T1, 3, n & 0x0F) for n in range(3000))
        with caplog.at_level(logging.WARNING):
            conn.transport.abort()  # the connection is lost; connection_lost runs at the next loop step
            conn.data_received(burst)
            await asyncio.sleep(0.05)
        writer.close()
    sends = [r for r in caplog.records if "socket.send() raised exception" in r.getMessage()]
    assert len(sends) == 0


async def test_a_pushed_frame_asking_confirmation_is_confirmed_without_decoding_its_units():
    # A terminal's own report (PRM = 1, CON = 1) is confirmed from its link fields: its data units
    # are not decoded (before, a 16 KB frame of 1090 units cost ~11 ms of decoding only to be
    # confirmed, and one whose units meterd does not know was never confirmed, so it came again).
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        reader, writer = await _logged_in(listener)
        await reader.read(65536)  # the login's confirmation
        pushed = Frame(control_byte(uplink=True, prm=True, function=PrimaryFunction.USER_DATA),
                       parse_terminal_address(T1), Afn.CLASS1_DATA, seq_byte(5, con=True),
                       bytes((0x01, 0x01, 0x01, 0x1F)) + bytes(40))  # p1 F249: not in the catalogue
        writer.write(encode_frame(pushed))
        await writer.drain()
        decoder = StreamDecoder()
        decoder.feed(await asyncio.wait_for(reader.read(65536), 3.0))
        answers = [decode_message(f) for f in decoder.frames()]
        writer.close()
    assert [(m.afn, m.seq_number, m.units[0].fns) for m in answers] == [(Afn.CONFIRM, 5, (1,))]
    assert listener.status()["terminals"][T1]["unsolicited_frames"] == 1
