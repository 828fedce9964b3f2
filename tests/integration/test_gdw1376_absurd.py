"""A terminal that sends absurd amounts, over real TCP to the listener: a multi-frame reply that never
ends, a flood of heartbeats whose connection breaks in the middle, pushed frames the master cannot
(and need not) decode.  What must hold: a clear error naming the terminal and the bytes, nothing
else lost, nothing held for ever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gdw_fake import FakeTerminal, link_frame
from meterd.clock import CST
from meterd.collector.channel import FailureKind, Timing, TransactionError
from meterd.collector.gdw1376 import GdwChannel, GdwListener, gdw_round, read_events
from meterd.collector.gdw1376.archive import MAX_POWER_RECORDS
from meterd.collector.gdw1376.channel import MAX_REPLY_FRAMES
from meterd.collector.gdw1376.listener import MAX_HEARTBEATS_PER_SECOND
from meterd.collector.poll import MeterTarget
from meterd.protocols.gdw1376 import frame as gdw_frame
from meterd.protocols.gdw1376.catalogue import EnergyReading, EventLog, EventPointers
from meterd.protocols.gdw1376.events import EventRecord, PowerOnOff
from meterd.protocols.gdw1376.frame import (
    Afn,
    EventCounter,
    Frame,
    PrimaryFunction,
    StreamDecoder,
    control_byte,
    encode_frame,
    parse_terminal_address,
    seq_byte,
)
from meterd.protocols.gdw1376.messages import DataUnit, decode_message, encode, encode_message, reply, unit

T1 = "4401-0001"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


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


async def test_a_heartbeat_flood_is_counted_and_not_confirmed_beat_by_beat(caplog):
    # Before: every heartbeat was confirmed (a terminal sending 34,000 a second got 34,000
    # answers a second, 7.8 MB in 10 s); now at most MAX_HEARTBEATS_PER_SECOND in a second.
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        reader, writer = await _logged_in(listener)
        with caplog.at_level(logging.WARNING):
            writer.write(b"".join(link_frame(T1, 3, n & 0x0F) for n in range(200)))
            await writer.drain()
            await wait_for(lambda: listener.status()["terminals"][T1]["heartbeats"] == 200)
            await asyncio.sleep(0.1)
        decoder = StreamDecoder()
        with contextlib.suppress(TimeoutError):
            while True:
                decoder.feed(await asyncio.wait_for(reader.read(65536), 0.2))
        confirmations = decoder.frames()
        assert listener.is_online(T1)
        writer.close()
    assert len(confirmations) == 1 + MAX_HEARTBEATS_PER_SECOND  # the login's, then the first beats'
    lines = [r.getMessage() for r in caplog.records if "heartbeats a second" in r.getMessage()]
    assert len(lines) == 1 and T1 in lines[0]


async def test_a_trickle_of_68_bytes_before_a_login_is_scanned_once(monkeypatch):
    # 8 KB of 68 arriving 16 bytes at a time (no frame, below MAX_PENDING): each arrival re-scanned
    # the whole buffer, 2.1 million header checks (16 KB: 3.1 s of CPU, for anyone who connects)
    calls = 0
    real = gdw_frame._header_total

    def counted(*args):
        nonlocal calls
        calls += 1
        return real(*args)

    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
        await wait_for(lambda: len(listener._connections) == 1)
        (conn,) = listener._connections
        monkeypatch.setattr(gdw_frame, "_header_total", counted)
        for _ in range(512):
            conn.data_received(b"\x68" * 16)
        monkeypatch.undo()
        writer.write(link_frame(T1, 1, 1))  # a login behind the junk still gets through
        await writer.drain()
        await wait_for(lambda: listener.is_online(T1))
        writer.close()
    assert calls <= 8192


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


# --- events (AFN 0E) ---------------------------------------------------------------------------------


class _Replaying(FakeTerminal):
    """Answers every AFN 0E read with as many records as the pointers name (255: EC moved back by
    one since the last read), and moves EC back by one again: 255 "new" events at every read."""

    records: tuple = ()

    def answer(self, msg):
        if msg.afn != Afn.CLASS3_DATA:
            return super().answer(msg)
        p = msg.units[0].values[0]
        n = (p.end - p.start) % 256
        recs = tuple(self.records[i % len(self.records)] for i in range(n))
        self.ec = EventCounter((self.ec.important - 1) & 0xFF, 0)
        return reply(msg, [unit(0, 1, EventLog(self.ec.important, 0, p.start, p.end, recs))], ec=self.ec)


async def _events_rig(listener: GdwListener, records: list, meters: int) -> tuple[GdwChannel, _Replaying]:
    channel = GdwChannel("c1", listener.transport(T1), parse_terminal_address(T1),
                         pns={f"{i:012d}": i for i in range(1, meters + 1)}, timing=Timing(2.0, 0.5), retries=0)
    channel.general_every = 0
    term = _Replaying(T1, "127.0.0.1", listener.bound_port, {}, ec=EventCounter(10, 0))
    term.records = tuple(records)
    await term.connect()
    await wait_for(lambda: listener.is_online(T1))
    await channel.request(Afn.CLASS1_DATA, [unit(0, 2)])  # EC 10 seen
    channel.event_pointer = 11  # read up to 11 before: the terminal claims 255 new ones
    return channel, term


async def test_a_terminal_claiming_255_new_power_events_every_read_is_bounded(caplog):
    # Before: 255 ERC14 records a read became 2 x 255 readings per meter (25,500 for 50 meters) and
    # 255 log lines; now the newest MAX_POWER_RECORDS distinct records are reported, logged once a minute.
    records = [PowerOnOff(datetime(2026, 1, 1, 0, i), datetime(2026, 1, 1, 1, i)) for i in range(60)]
    readings = []
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        channel, term = await _events_rig(listener, records, 50)
        with caplog.at_level(logging.INFO):
            for _ in range(3):
                assert channel.events_waiting
                readings.append(await read_events(channel, NOW))
        await term.close()
    assert [len(r) for r in readings] == [2 * MAX_POWER_RECORDS * 50] * 3
    newest = {r.timestamp for r in readings[0] if r.quantity == "event.power_down.end"}
    # the read's last MAX_POWER_RECORDS records (of 255, cycling through 60 distinct ones)
    assert {t.astimezone(CST).minute for t in newest} == {i % 60 for i in range(255 - MAX_POWER_RECORDS, 255)}
    lines = [r.getMessage() for r in caplog.records if "ERC14" in r.getMessage()]
    assert len(lines) == 2, lines  # one report, one "sent 255 power off/on records in one read"
    assert any(f"terminal {T1} sent 60 power off/on records (ERC14) in one read" in m for m in lines)


async def test_other_events_replayed_every_read_are_logged_once_a_minute(caplog):
    found: list = []
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        channel, term = await _events_rig(listener, [EventRecord(31, bytes(20))], 5)
        with caplog.at_level(logging.INFO):
            for _ in range(3):
                await read_events(channel, NOW, anomalies=lambda f, ended: found.extend(f))
        await term.close()
    assert len(found) == 3 * 255  # every record still becomes its anomaly finding
    lines = [r.getMessage() for r in caplog.records if "event ERC31" in r.getMessage()]
    assert len(lines) == 1 and T1 in lines[0]  # was 765


async def test_power_times_past_the_masters_clock_are_not_power_down_reports(caplog):
    records = [PowerOnOff(datetime(2099, 1, 1, 0, 0), datetime(2099, 1, 1, 0, 5))]
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        channel, term = await _events_rig(listener, records, 3)
        channel.event_pointer = 9  # one new record
        with caplog.at_level(logging.WARNING):
            got = await read_events(channel, NOW)
        await term.close()
    assert got == []
    assert any("after the master's clock" in r.getMessage() and "2099-01-01" in r.getMessage()
               for r in caplog.records)


async def test_an_event_record_longer_than_its_frame_is_named_in_the_log(caplog):
    # ERC31 whose Le says 200 bytes, 20 follow: the read fails (garbled) and the log says why
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        channel = GdwChannel("c1", listener.transport(T1), parse_terminal_address(T1), pns={},
                             timing=Timing(2.0, 0.3), retries=0)
        reader, writer = await _logged_in(listener)

        async def answer() -> None:
            decoder = StreamDecoder()
            while True:
                decoder.feed(await reader.read(65536))
                for frame in decoder.frames():
                    if frame.afn != Afn.CLASS3_DATA:
                        continue
                    data = bytes((0, 0, 0x01, 0x00, 12, 0, 11, 12, 31, 200)) + bytes(20)  # p0 F1, 1 record
                    writer.write(encode_frame(Frame(control_byte(uplink=True, prm=False, function=8),
                                                    frame.address, Afn.CLASS3_DATA,
                                                    seq_byte(frame.seq_number), data)))

        task = asyncio.create_task(answer())
        with caplog.at_level(logging.WARNING), pytest.raises(TransactionError) as caught:
            await channel.request(Afn.CLASS3_DATA, [unit(0, 1, EventPointers(11, 12))])
        task.cancel()
        writer.close()
    assert caught.value.kind is FailureKind.GARBLED
    lines = [r.getMessage() for r in caplog.records if "dropped: ERC31 data: needs 200 bytes, 20 left" in r.getMessage()]
    assert len(lines) == 1 and f"terminal {T1}: AFN 0EH frame" in lines[0] and "[68 " in lines[0]


# --- absurd values (AFN 0C) --------------------------------------------------------------------------


class _HexDigits(FakeTerminal):
    """Answers F129 as the fake does, but p3's total register comes in hex digits (AB ...)."""

    async def _serve(self) -> None:
        assert self.reader is not None and self.writer is not None
        decoder = StreamDecoder()
        while data := await self.reader.read(65536):
            decoder.feed(data)
            for frame in decoder.frames():
                msg = decode_message(frame)
                out = self.answer(msg) if msg.afn != Afn.CONFIRM else None
                if out is None:
                    continue
                wire = encode_message(out)
                body = bytearray(wire.data)
                pns = out.units[0].pns if out.afn == Afn.CLASS1_DATA else ()
                if 3 in pns:  # DA DT, then 31 bytes per pn: A.15 (5), M (1), total (5) ...
                    body[4 + pns.index(3) * 31 + 6] = 0xAB
                self.writer.write(encode_frame(Frame(wire.control, wire.address, wire.afn, wire.seq, bytes(body),
                                                     wire.pw, wire.ec, wire.tp)))


async def test_one_meters_register_in_hex_digits_costs_only_that_meter():
    # Before: the one reply for p1..p8 did not decode, so all eight meters lost their reading
    # ("no valid reply (corrupt frame dropped)", after waiting out the inter-byte timeout).
    meters = {f"0000000000{i:02d}": i for i in range(1, 9)}
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        channel = GdwChannel("c1", listener.transport(T1), parse_terminal_address(T1), pns=meters,
                             timing=Timing(2.0, 0.5), retries=0)
        term = _HexDigits(T1, "127.0.0.1", listener.bound_port, {})
        await term.connect()
        await wait_for(lambda: listener.is_online(T1))
        result = await gdw_round(channel, [(MeterTarget(a), [0x00010000]) for a in meters], NOW)
        await term.close()
    assert sorted(r.meter for r in result.readings) == sorted(a for a in meters if a != "000000000003")
    bad = [a for a in result.attempts if a.meter == "000000000003"]
    assert [a.outcome for a in bad] == [FailureKind.GARBLED]
    assert "not decodable: A.14 is not BCD [AB" in bad[0].detail
    assert all(a.outcome == "ok" for a in result.attempts if a.meter != "000000000003")
