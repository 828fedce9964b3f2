"""DTUs dialling in: the master's DTU listener and a Channel over a DtuTransport, against simulated
DTUs with simulated meters behind them, on real TCP sockets.

Every failure of the link must turn into a quick ``link`` failure (retried next round), never a
hang: an offline DTU, one that stops heart-beating, one that drops mid-reply, one replaced by a
new connection.  Rejected connections (unknown ids, broken registrations, data before
registering) are counted and leave the other DTUs alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta, timezone

import pytest

from meterd.collector.channel import Channel, FailureKind, Timing, TransactionError
from meterd.collector.dtu import DtuListener
from meterd.collector.modbus import ModbusLink
from meterd.collector.poll import MeterTarget, poll_meter
from meterd.errors import ConfigError, LinkError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.frame import PREAMBLE, StreamDecoder, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, decode_response, encode_request
from meterd.protocols.modbus import compile_plan, get_map
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.dtu import DtuSimulator, run_dtu_fleet
from meterd.simulators.model import MeterModel
from meterd.simulators.modbus import ModbusBus

START = datetime(2025, 6, 1, 8, 0)
A1, A2 = "000000000001", "000000000002"
ENERGY = 0x00010000
T1, T2 = "DTU00000001", "DTU00000002"
BOTH = ("usr-ascii", "hex-frame")


def sim_clock() -> datetime:
    return START


def dlt645_bus() -> Dlt645Bus:
    return Dlt645Bus([MeterModel(a, start=START, seed=i) for i, a in enumerate((A1, A2))])


@contextlib.asynccontextmanager
async def listening(known=None, **kw):
    kw.setdefault("formats", BOTH)
    kw.setdefault("heartbeat_timeout", 5.0)
    listener = DtuListener("127.0.0.1", 0, known=known or {T1: "ch1", T2: "ch2"}, **kw)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.close()


@contextlib.asynccontextmanager
async def dtu(listener: DtuListener, terminal_id: str = T1, fmt: str = "usr-ascii", *, online: bool = True, **kw):
    kw.setdefault("heartbeat", 0.2)
    kw.setdefault("clock", sim_clock)
    sim = DtuSimulator(terminal_id, kw.pop("bus", None) or dlt645_bus(), "127.0.0.1", listener.bound_port, fmt, **kw)
    await sim.start()
    try:
        if online:
            assert await listener.wait_online(terminal_id, 2.0), listener.status()["terminals"].get(terminal_id)
        yield sim
    finally:
        await sim.close()


def channel(listener: DtuListener, terminal_id: str = T1, *, response: float = 1.0, retries: int = 0,
            connect_wait: float = 0.0) -> Channel:
    transport = listener.transport(terminal_id, connect_wait=connect_wait)
    return Channel(listener.channel_of(terminal_id), transport, timing=Timing(response, 0.3), retries=retries)


async def read_energy(ch: Channel, address: str = A1):
    """(outcome, reading value or None, seconds taken)."""
    t0 = time.monotonic()
    readings, attempts = await poll_meter(ch, MeterTarget(address), [ENERGY], datetime.now(timezone.utc))
    return attempts[0].outcome, (readings[0].value if readings else None), time.monotonic() - t0


def expected_energy(address: str):
    """What a fresh, identical bus answers for the meter's energy at START (the DTU's clock)."""
    (reply,) = dlt645_bus().handle(encode_frame(encode_request(ReadRequest(address, ENERGY))), START)
    decoder = StreamDecoder()
    decoder.feed(reply.data)
    message = decode_response(decoder.next_frame())
    (value,) = catalogue.decode(ENERGY, message.data)
    return value.value


async def raw_connect(listener: DtuListener, data: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def closed_by_master(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(100), within):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def until(predicate, timeout: float = 2.0) -> float:
    """Wait for ``predicate()``; the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


def term(listener: DtuListener, terminal_id: str = T1) -> dict:
    return listener.status()["terminals"][terminal_id]


# --- the happy path -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", BOTH)
async def test_a_meter_behind_a_dtu_is_read(fmt):
    async with listening() as listener, dtu(listener, T1, fmt) as sim:
        ch = channel(listener)
        outcome, value, _ = await read_energy(ch, A1)
        outcome2, value2, _ = await read_energy(ch, A2)
        await asyncio.sleep(0.45)  # two heartbeats
        await ch.close()
        s = listener.status()
    assert (outcome, outcome2) == ("ok", "ok")
    assert (value, value2) == (expected_energy(A1), expected_energy(A2)) and value != value2
    t = s["terminals"][T1]
    assert t["state"] == "online" and t["format"] == fmt and t["channel"] == "ch1"
    assert t["registrations"] == 1 and t["heartbeats"] >= 2 and t["last_heartbeat"] is not None
    assert t["unsolicited_bytes"] == 0 and t["tx_bytes"] == 2 * 20 and t["rx_bytes"] > 2 * 20
    assert s["online"] == 1 and s["terminals"][T2]["state"] == "offline"
    assert not any(s["rejected"].values())
    assert sim.stats.requests == 2 and sim.stats.replies == 2


def test_a_meter_behind_a_dtu_is_read_under_uvloop():
    # uvloop's transports are no subclasses of asyncio.Transport: the listener took them for an
    # error (an assert in connection_made) and no DTU could ever register
    uvloop = pytest.importorskip("uvloop")

    async def read():
        async with listening() as listener, dtu(listener, T1):
            ch = channel(listener)
            outcome, value, _ = await read_energy(ch, A1)
            await ch.close()
            return outcome, value, term(listener)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        outcome, value, t = runner.run(read())
    assert (outcome, value) == ("ok", expected_energy(A1))
    assert t["state"] == "online" and t["registrations"] == 1 and t["peer"].startswith("127.0.0.1:")


async def test_modbus_rtu_meters_behind_a_dtu_are_read():
    regmap = get_map("generic")
    bus = ModbusBus({1: MeterModel(A1, start=START, seed=1), 2: MeterModel(A2, start=START, seed=2)}, regmap)
    plan = compile_plan(regmap, ["energy.active.import.total", "voltage.a"])
    async with listening() as listener, dtu(listener, T1, "hex-frame", bus=bus, heartbeat=0.05):
        ch = channel(listener)
        link = ModbusLink(ch, "rtu")
        results = []
        for unit, address in ((1, A1), (2, A2)):
            for _ in range(5):  # heartbeats every 50 ms land between and around the replies
                target = MeterTarget(address, protocol="modbus", unit=unit, regmap=regmap)
                readings, attempts = await poll_meter(ch, target, plan, datetime.now(timezone.utc), link=link)
                results.append(({a.outcome for a in attempts}, {r.quantity for r in readings}))
                await asyncio.sleep(0.02)
        t = term(listener)
    assert all(outcomes == {"ok"} for outcomes, _ in results), results
    assert results[0][1] == {"energy.active.import.total", "voltage.a"}
    assert t["heartbeats"] >= 2 and t["unsolicited_bytes"] == 0


async def test_heartbeats_never_reach_the_channel():
    async with listening() as listener, dtu(listener, heartbeat=0.005) as sim:
        ch = channel(listener)
        outcomes = []
        for _ in range(40):
            outcomes.append((await read_energy(ch))[0])
            await asyncio.sleep(0.005)  # heartbeats land before, after and between replies
        t = term(listener)
    assert set(outcomes) == {"ok"}
    assert t["heartbeats"] >= 5 and sim.stats.heartbeats >= t["heartbeats"]
    assert ch.stats.failures == {}


# --- offline, replaced, timed out, dropped -----------------------------------------------------------


async def test_an_offline_dtu_fails_at_once_and_connect_wait_waits_for_it():
    async with listening() as listener:
        ch = channel(listener, T1, response=5.0)
        outcome, _, took = await read_energy(ch)
        assert outcome == "link" and took < 0.1
        with pytest.raises(LinkError, match="terminal DTU00000001 offline \\(never registered\\)"):
            await listener.transport(T1).open()
        waiting = channel(listener, T2, connect_wait=2.0)
        pending = asyncio.create_task(read_energy(waiting))
        await asyncio.sleep(0.2)
        assert not pending.done()
        async with dtu(listener, T2, online=False):
            outcome, value, took = await pending
    assert outcome == "ok" and value is not None and 0.2 <= took < 1.5


async def test_an_unknown_terminal_is_refused():
    async with listening() as listener:
        stranger = DtuSimulator("DTU99999999", dlt645_bus(), "127.0.0.1", listener.bound_port, heartbeat=None)
        await stranger.start()
        assert await stranger.wait_disconnected(1.0)
        again = DtuSimulator("DTU99999999", dlt645_bus(), "127.0.0.1", listener.bound_port, "hex-frame", heartbeat=None)
        await again.start()
        assert await again.wait_disconnected(1.0)
        await stranger.close()
        await again.close()
        s = listener.status()
    assert s["rejected"]["unknown_id"] == 2 and s["unknown_ids"] == {"DTU99999999": 2}
    assert s["online"] == 0 and stranger.stats.closed_by_master == 1


async def test_a_second_connection_with_the_same_id_replaces_the_first():
    async with listening() as listener, dtu(listener) as old:
        old.answering = False  # the request below is in flight on the old connection when it is replaced
        ch = channel(listener, response=5.0)
        pending = asyncio.create_task(read_energy(ch))
        await until(lambda: old.stats.requests == 1)
        async with dtu(listener, online=False) as new:
            outcome, _, took = await pending
            assert await old.wait_disconnected(1.0)
            after, value, _ = await read_energy(ch)
            t = term(listener)
    assert outcome == "link" and took < 1.0
    assert after == "ok" and value is not None and new.stats.replies == 1
    assert t["registrations"] == 2 and t["replaced"] == 1 and t["disconnects"] == 0
    assert t["state"] == "online"


async def test_a_dtu_that_stops_heartbeating_goes_offline_and_the_channel_fails_fast():
    async with listening(heartbeat_timeout=0.5) as listener, dtu(listener, heartbeat=0.1) as sim:
        ch = channel(listener, response=5.0)
        await asyncio.sleep(0.8)  # longer than the timeout: heartbeats keep it online
        assert term(listener)["state"] == "online"
        assert (await read_energy(ch))[0] == "ok"
        sim.stop_heartbeat()
        took = await until(lambda: not listener.is_online(T1), timeout=2.0)
        outcome, _, failed_in = await read_energy(ch)
        assert await sim.wait_disconnected(1.0)
        t = term(listener)
    assert 0.3 <= took < 1.5
    assert outcome == "link" and failed_in < 0.1
    assert t["heartbeat_timeouts"] == 1 and "no heartbeat for 0.5 s" in t["offline_reason"]
    assert t["heartbeats"] >= 5 and t["state"] == "offline"


async def test_a_drop_mid_reply_fails_promptly_and_the_next_round_after_reconnect_succeeds():
    async with listening() as listener, dtu(listener) as sim:
        ch = channel(listener, response=3.0, retries=1)
        assert (await read_energy(ch))[0] == "ok"
        sim.cut_next_reply(7)  # preamble and the first 68 ... then the line goes dead
        outcome, _, took = await read_energy(ch)
        failures = dict(ch.stats.failures)
        assert not listener.is_online(T1)
        await sim.reconnect()
        assert await listener.wait_online(T1, 2.0)
        after, value, _ = await read_energy(ch)
        t = term(listener)
    assert outcome == "link" and took < 0.5
    assert set(failures) <= {FailureKind.LINK, FailureKind.INCOMPLETE} and sum(failures.values()) == 2
    assert after == "ok" and value is not None
    assert t["registrations"] == 2 and t["disconnects"] == 1 and t["replaced"] == 0


async def test_a_drop_while_waiting_for_the_first_byte_fails_at_once():
    async with listening() as listener, dtu(listener) as sim:
        sim.answering = False
        ch = channel(listener, response=5.0)
        request = encode_frame(encode_request(ReadRequest(A1, ENERGY)), preamble=PREAMBLE)
        pending = asyncio.create_task(ch.exchange(A1, request, lambda: _NeverMatches()))
        await until(lambda: sim.stats.requests == 1)
        t0 = time.monotonic()
        await sim.drop()
        with pytest.raises(TransactionError) as info:
            await pending
    assert info.value.kind is FailureKind.LINK and time.monotonic() - t0 < 0.5


class _NeverMatches:
    dropped = 0
    pending = False

    def feed(self, data):
        return None


# --- rejected connections ----------------------------------------------------------------------------


async def test_broken_registrations_are_rejected_and_counted_other_dtus_undisturbed():
    bad_sum = bytes.fromhex("AA 55 01 04 44 54 55 31 00")
    async with listening() as listener, dtu(listener, T1, "hex-frame") as good:
        ch = channel(listener)
        closed = []
        for data in (b"GET / HTTP/1.1\r\nHost: meterd\r\n\r\n",  # malformed
                     b"D" * 300,  # oversized
                     bytes.fromhex("AA 55 01 C8") + b"x" * 200,  # oversized (length byte)
                     bad_sum):  # bad checksum
            reader, writer = await raw_connect(listener, data)
            closed.append(await closed_by_master(reader, 1.0))
            writer.close()
        garbage = DtuSimulator(T2, dlt645_bus(), "127.0.0.1", listener.bound_port, registration=b"DTU 0000 0002",
                               heartbeat=None)
        await garbage.start()
        closed.append(await garbage.wait_disconnected(1.0))
        await garbage.close()
        outcome, _, _ = await read_energy(ch)
        still_up = good.connected and good.stats.connections == 1
        s = listener.status()
    assert closed == [True] * 5
    assert s["rejected"] == {"unknown_id": 0, "malformed": 2, "oversized": 2, "bad_checksum": 1,
                             "unregistered_data": 0, "registration_timeout": 0, "too_many_waiting": 0}
    assert outcome == "ok" and still_up
    assert s["terminals"][T1]["registrations"] == 1 and s["terminals"][T1]["state"] == "online"
    assert s["terminals"][T2]["registrations"] == 0 and s["online"] == 1


async def test_data_before_registration_is_dropped_and_closed_at_the_deadline():
    meter_frame = encode_frame(encode_request(ReadRequest(A1, ENERGY)), preamble=PREAMBLE)
    async with listening(registration_timeout=0.4) as listener, dtu(listener, T1) as good:
        t0 = time.monotonic()
        reader, writer = await raw_connect(listener, meter_frame)
        assert not await closed_by_master(reader, 0.2)  # not at once: it may still register
        assert await closed_by_master(reader, 1.0)
        took = time.monotonic() - t0
        writer.close()
        # junk first, then the registration within the deadline: accepted
        late = DtuSimulator(T2, dlt645_bus(), "127.0.0.1", listener.bound_port, register=False, heartbeat=None,
                            clock=sim_clock)
        await late.start()
        await late.send(b"\x00\x01\x02\xff")
        await asyncio.sleep(0.1)
        await late.send(late.registration)
        assert await listener.wait_online(T2, 1.0)
        outcome2, _, _ = await read_energy(channel(listener, T2))
        outcome1, _, _ = await read_energy(channel(listener, T1))
        await late.close()
        s = listener.status()
    assert 0.35 <= took < 1.0
    assert s["rejected"]["unregistered_data"] == 2 and s["rejected"]["registration_timeout"] == 1
    assert (outcome1, outcome2) == ("ok", "ok") and good.stats.connections == 1


async def test_connections_past_max_waiting_are_reset_and_registered_dtus_are_not_held_back():
    # a flood of connections that never register must not use up the daemon's file descriptors: at
    # most max_waiting wait for their registration at a time, a new one past that is reset at once
    async with listening(registration_timeout=5.0, max_waiting=2) as listener:
        waiting = [await raw_connect(listener, b"") for _ in range(2)]
        await until(lambda: listener.accepted == 2)
        flood = [await raw_connect(listener, b"") for _ in range(3)]
        for reader, _ in flood:
            assert await closed_by_master(reader, 1.0)
        assert listener.status()["rejected"]["too_many_waiting"] == 3 and listener.accepted == 2
        for reader, _ in waiting:  # the two waiting are untouched
            assert not await closed_by_master(reader, 0.1)
        for _, writer in waiting:
            writer.close()
        await until(lambda: not listener._pending)
        async with dtu(listener, T1) as good:  # room again: a DTU registers and is read
            outcome, _, _ = await read_energy(channel(listener))
            assert outcome == "ok" and good.stats.connections == 1
        for _, writer in flood:
            writer.close()


async def test_max_waiting_must_be_at_least_one():
    with pytest.raises(ConfigError, match="listener dtu: max_waiting 0 must be at least 1"):
        DtuListener("127.0.0.1", 0, known={T1: "ch1"}, max_waiting=0)


# --- statistics from the clock -----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def test_online_seconds_and_rate_come_from_the_clock():
    clock = FakeClock()
    async with listening(clock=clock) as listener:
        async with dtu(listener) as sim:
            clock.advance(30)
            async with dtu(listener):  # replaced: the terminal stays online, time runs on
                clock.advance(10)
                assert term(listener)["online_seconds"] == 40
            await until(lambda: not listener.is_online(T1))
            clock.advance(20)
            t = term(listener)
            assert t["online_seconds"] == 40 and t["online_rate"] == pytest.approx(40 / 60, abs=1e-4)
            assert t["last_offline"] == "2025-06-01T00:00:40+00:00"
            await sim.reconnect()
            assert await listener.wait_online(T1, 2.0)
            clock.advance(20)
            t = term(listener)
    assert t["online_seconds"] == 60 and t["online_rate"] == pytest.approx(60 / 80, abs=1e-4)
    assert t["connected_since"] == "2025-06-01T00:01:00+00:00"
    assert t["registrations"] == 3 and t["replaced"] == 1


# --- many ----------------------------------------------------------------------------------------------


async def test_fifty_dtus_at_once():
    known = {f"DTU{i:08d}": f"dtu{i}" for i in range(1, 51)}
    async with listening(known) as listener:
        t0 = time.monotonic()
        fleet = await run_dtu_fleet(50, 3, "127.0.0.1", listener.bound_port, heartbeat=0.5, start=START)
        async with fleet:
            for tid in fleet.terminal_ids:
                assert await listener.wait_online(tid, 3.0), tid
            channels = {tid: channel(listener, tid) for tid in fleet.terminal_ids}

            async def round_of(tid):
                return [(await read_energy(channels[tid], a))[:2] for a in fleet.meters[tid]]

            results = await asyncio.gather(*(round_of(tid) for tid in fleet.terminal_ids))
            s = listener.status()
        took = time.monotonic() - t0
    outcomes = [o for per_dtu in results for o, _ in per_dtu]
    assert len(outcomes) == 150 and set(outcomes) == {"ok"}
    assert len({v for per_dtu in results for _, v in per_dtu}) > 100  # different meters, different readings
    assert s["online"] == 50 and s["accepted"] == 50 and not any(s["rejected"].values())
    assert took < 10
