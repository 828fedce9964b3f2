"""DTU registration formats from the field (issue #17), end to end: the master's DTU listener and a
Channel over its DtuTransport, against the DTU emulator (:class:`meterd.simulators.dtu.DtuSimulator`)
set up the way the vendors' configuration pages allow, on real TCP sockets.

* MAC registrations (six raw bytes; USR-N580 manual 5.6, USR-TCP232-T2 manual 4.6.2);
* the registration in front of every data packet ("Data with" / "Prefix of DATA": USR-N580 5.6,
  USR-M100 7.3), also cut by TCP inside the registration, for DL/T 645 and Modbus RTU meters;
* a DTU whose registration is its heartbeat (the same text in both), and one that only sends
  the registration with data and beats with it;
* registration and heartbeat, or registration and data, in one write; a registration split over
  two reads; garbage before the registration;
* bad input: a MAC of the wrong length, an unknown MAC, a registration longer than any format
  allows, megabytes before registering -- each refused with a log line naming the peer and bytes,
  the other DTUs undisturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone

import pytest

from meterd.collector.channel import Channel, Timing
from meterd.collector.dtu import MAX_UNREGISTERED, DtuListener
from meterd.collector.modbus import ModbusLink
from meterd.collector.poll import MeterTarget, poll_meter
from meterd.protocols.dlt645.frame import PREAMBLE, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, encode_request
from meterd.protocols.modbus import compile_plan, get_map
from meterd.protocols.terminal.dtu import DtuFormat
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.dtu import DtuSimulator
from meterd.simulators.model import MeterModel
from meterd.simulators.modbus import ModbusBus

START = datetime(2025, 6, 1, 8, 0)
A1, A2 = "000000000001", "000000000002"
ENERGY = 0x00010000
T1, T2 = "DTU00000001", "DTU00000002"
MAC = "d8:b0:4c:00:04:c9"  # the USR-N540 manual's search-reply example MAC
MAC_RAW = bytes.fromhex("D8B04C0004C9")
IMEI = "861234567890123"
WITH_DATA = DtuFormat.from_dict("usr-data", {"preset": "usr-ascii", "data_carries_registration": True})
MAC_WITH_DATA = DtuFormat.from_dict("usr-mac-data", {"preset": "usr-mac", "data_carries_registration": True})
REQUEST = encode_frame(encode_request(ReadRequest(A1, ENERGY)), preamble=PREAMBLE)


def sim_clock() -> datetime:
    return START


def dlt645_bus() -> Dlt645Bus:
    return Dlt645Bus([MeterModel(a, start=START, seed=i) for i, a in enumerate((A1, A2))])


@contextlib.asynccontextmanager
async def listening(known, formats, **kw):
    kw.setdefault("heartbeat_timeout", 5.0)
    listener = DtuListener("127.0.0.1", 0, known=known, formats=formats, **kw)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.close()


@contextlib.asynccontextmanager
async def dtu(listener: DtuListener, terminal_id: str, fmt, *, online: str | None = "", **kw):
    """A simulated DTU; ``online``: the listener's name for it to wait for ("" = terminal_id, None = don't)."""
    kw.setdefault("heartbeat", 0.2)
    kw.setdefault("clock", sim_clock)
    sim = DtuSimulator(terminal_id, kw.pop("bus", None) or dlt645_bus(), "127.0.0.1", listener.bound_port, fmt, **kw)
    await sim.start()
    try:
        if online is not None:
            name = online or terminal_id
            assert await listener.wait_online(name, 2.0), listener.status()
        yield sim
    finally:
        await sim.close()


def channel(listener: DtuListener, terminal_id: str) -> Channel:
    transport = listener.transport(terminal_id)
    return Channel(listener.channel_of(terminal_id), transport, timing=Timing(1.0, 0.3), retries=0)


async def read_energy(ch: Channel, address: str = A1) -> tuple[str, object]:
    readings, attempts = await poll_meter(ch, MeterTarget(address), [ENERGY], datetime.now(timezone.utc))
    return attempts[0].outcome, (readings[0].value if readings else None)


async def until(predicate, timeout: float = 2.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def closed_by_master(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def term(listener: DtuListener, terminal_id: str) -> dict:
    return listener.status()["terminals"][terminal_id]


def rejected(listener: DtuListener) -> dict:
    return {k: v for k, v in listener.status()["rejected"].items() if v}


# --- MAC registrations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("configured", [MAC, "D8-B0-4C-00-04-C9", "D8B04C0004C9"])
async def test_a_mac_dtu_registers_and_its_meters_are_read(configured):
    async with listening({configured: "ch1", T2: "ch2"}, ("usr-ascii", "usr-mac")) as listener, \
            dtu(listener, MAC, "usr-mac", online=configured) as sim:
        ch = channel(listener, configured)
        results = [await read_energy(ch, a) for a in (A1, A2)]
        await until(lambda: term(listener, configured)["heartbeats"] >= 1)
        t = term(listener, configured)
    assert [o for o, _ in results] == ["ok", "ok"] and results[0][1] != results[1][1]
    assert t["format"] == "usr-mac" and t["registrations"] == 1 and t["unsolicited_bytes"] == 0
    assert sim.stats.tx_bytes >= 6 and not rejected(listener)


# --- "with data": the registration in front of every packet ----------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["whole", "cut-inside-the-registration"])
@pytest.mark.parametrize("fmt, tid", [(WITH_DATA, T1), (MAC_WITH_DATA, MAC)], ids=["ascii", "mac"])
async def test_with_data_every_reply_carries_the_registration(fmt, tid, split):
    async with listening({tid: "ch1"}, (fmt,)) as listener, \
            dtu(listener, tid, fmt, with_data=True, split_prefix=split, heartbeat=0.05) as sim:
        ch = channel(listener, tid)
        outcomes = []
        for _ in range(10):  # heartbeats every 50 ms land around the replies
            for address in (A1, A2):
                outcomes.append((await read_energy(ch, address))[0])
            await asyncio.sleep(0.02)
        t = term(listener, tid)
    assert outcomes == ["ok"] * 20, outcomes
    assert sim.stats.replies == 20
    # every reply's prefix removed (one that came alone in a read, before its data, counts as a heartbeat)
    assert 20 - t["heartbeats"] <= t["registration_prefixes"] <= 20 and t["unsolicited_bytes"] == 0
    assert ch.stats.failures == {}


@pytest.mark.parametrize("fmt, tid", [(WITH_DATA, T1), (MAC_WITH_DATA, MAC)], ids=["ascii", "mac"])
async def test_with_data_a_reply_in_several_packets_merged_into_one_read(fmt, tid):
    # the DTU cut each reply into three packets, each with the registration in front, and TCP
    # delivered them as one read: the registrations inside the read go too
    async with listening({tid: "ch1"}, (fmt,)) as listener, \
            dtu(listener, tid, fmt, with_data=True, reply_packets=3) as sim:
        ch = channel(listener, tid)
        outcomes = [(await read_energy(ch, a))[0] for a in (A1, A2, A1)]
        t = term(listener, tid)
        await sim.reconnect()  # the count is the terminal's, over its connections
        assert await listener.wait_online(tid, 2.0)
        again = (await read_energy(ch, A2))[0]
        t2 = term(listener, tid)
    assert outcomes == ["ok"] * 3 and sim.stats.replies == 4 and again == "ok"
    assert t["registration_prefixes"] == 9 and t["unsolicited_bytes"] == 0
    assert t2["registration_prefixes"] == 12 and t2["registrations"] == 2


@pytest.mark.parametrize("packets", [1, 3], ids=["one-packet", "three-packets-one-read"])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "cut-inside-the-registration"])
async def test_with_data_modbus_rtu_replies_lose_the_prefix(split, packets):
    # Modbus RTU has no start byte to hunt for: a registration left in front of a reply breaks it
    regmap = get_map("generic")
    bus = ModbusBus({1: MeterModel(A1, start=START, seed=1), 2: MeterModel(A2, start=START, seed=2)}, regmap)
    plan = compile_plan(regmap, ["energy.active.import.total", "voltage.a"])
    async with listening({T1: "ch1"}, (WITH_DATA,)) as listener, \
            dtu(listener, T1, WITH_DATA, bus=bus, with_data=True, split_prefix=split, reply_packets=packets,
                heartbeat=0.05):
        ch = channel(listener, T1)
        link = ModbusLink(ch, "rtu")
        outcomes: set[str] = set()
        quantities: set[str] = set()
        for _ in range(5):
            for unit, address in ((1, A1), (2, A2)):
                target = MeterTarget(address, protocol="modbus", unit=unit, regmap=regmap)
                readings, attempts = await poll_meter(ch, target, plan, datetime.now(timezone.utc), link=link)
                outcomes |= {a.outcome for a in attempts}
                quantities |= {r.quantity for r in readings}
        t = term(listener, T1)
    assert outcomes == {"ok"} and quantities == {"energy.active.import.total", "voltage.a"}
    assert t["registration_prefixes"] >= 5 and t["unsolicited_bytes"] == 0


async def test_with_data_only_a_dtu_registers_with_its_first_heartbeat():
    # nothing on connect; the heartbeat content is the registration content, and replies carry it
    async with listening({IMEI: "ch1"}, (WITH_DATA,)) as listener, \
            dtu(listener, IMEI, WITH_DATA, register=False, with_data=True, heartbeat_is_registration=True,
                heartbeat=0.1) as sim:
        ch = channel(listener, IMEI)
        outcome, value = await read_energy(ch)
        await until(lambda: term(listener, IMEI)["heartbeats"] >= 2)
        t = term(listener, IMEI)
    assert outcome == "ok" and value is not None
    assert sim.stats.registrations == 0 and t["registrations"] == 1 and t["registration_prefixes"] >= 1
    assert not rejected(listener)


# --- registration equal to the heartbeat -------------------------------------------------------------------


@pytest.mark.parametrize("tid", ["www.usr.cn", IMEI])
async def test_a_dtu_whose_registration_is_its_heartbeat_registers(tid):
    # "www.usr.cn" in both: the usr-ascii heartbeat text; an IMEI in both: a common site setting
    async with listening({tid: "ch1", T2: "ch2"}, ("usr-ascii", "hex-frame")) as listener, \
            dtu(listener, tid, "usr-ascii", heartbeat_is_registration=True, heartbeat=0.05) as sim:
        assert sim.heartbeat_packet == sim.registration == tid.encode()
        ch = channel(listener, tid)
        outcomes = [(await read_energy(ch))[0] for _ in range(5)]
        await until(lambda: term(listener, tid)["heartbeats"] >= 3)
        t = term(listener, tid)
    assert outcomes == ["ok"] * 5
    assert t["registrations"] == 1 and t["state"] == "online" and t["unsolicited_bytes"] == 0
    assert not rejected(listener)


# --- several packets in one read, one packet over several reads ---------------------------------------------


def formats_for(fmt: str) -> tuple[str, ...]:
    return ("usr-ascii", "usr-mac", "hex-frame") if fmt == "usr-mac" else ("usr-ascii", "hex-frame")


@pytest.mark.parametrize("fmt, tid", [("usr-ascii", T1), ("usr-mac", MAC), ("hex-frame", T1)])
async def test_registration_and_heartbeat_in_one_write(fmt, tid):
    async with listening({tid: "ch1"}, formats_for(fmt)) as listener, \
            dtu(listener, tid, fmt, heartbeat_with_registration=True, heartbeat=None):
        t = term(listener, tid)
        outcome, _ = await read_energy(channel(listener, tid))
    assert t["registrations"] == 1 and t["heartbeats"] == 1 and t["format"] == fmt
    assert outcome == "ok" and not rejected(listener)


@pytest.mark.parametrize("fmt, tid", [("usr-ascii", T1), ("usr-mac", MAC), ("hex-frame", T1)])
async def test_registration_and_data_in_one_write(fmt, tid):
    # before: a usr-ascii registration followed by binary data was "binary data", dropped unregistered
    async with listening({tid: "ch1"}, formats_for(fmt)) as listener, \
            dtu(listener, tid, fmt, after_registration=REQUEST, heartbeat=None):
        await until(lambda: term(listener, tid)["unsolicited_bytes"] == len(REQUEST))
        outcome, _ = await read_energy(channel(listener, tid))
        t = term(listener, tid)
    assert t["registrations"] == 1 and outcome == "ok" and not rejected(listener)


async def test_a_registration_split_over_two_reads_registers():
    async with listening({T1: "ch1"}, ("usr-ascii", "hex-frame")) as listener:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
        writer.write(b"DTU000")
        await writer.drain()
        await asyncio.sleep(0.1)  # the master has read "DTU000" on its own by now
        assert not listener.is_online(T1) and listener.status()["pending"] == 1
        writer.write(b"00001www.usr.cn")
        await writer.drain()
        assert await listener.wait_online(T1, 1.0)
        t = term(listener, T1)
        writer.close()
    assert t["registrations"] == 1 and t["heartbeats"] == 1 and not rejected(listener)


@pytest.mark.parametrize("fmt, garbage, shown", [
    ("usr-ascii", b"\x00\xff\x13\x88", "[00 FF 13 88]"),
    ("usr-ascii", b"\x00\xff\x13\x37", "[00 FF 13 37]"),  # ends in text ("7"): runs into the id
    ("usr-ascii", REQUEST, "[FE FE FE FE 68 01 00 00"),  # a meter frame
    ("hex-frame", b"\xaa\x00\x55\xaa", "[AA 00 55 AA]"),  # pieces of the header
])
async def test_garbage_before_the_registration_in_one_read(caplog, fmt, garbage, shown):
    async with listening({T1: "ch1", T2: "ch2"}, ("usr-ascii", "hex-frame")) as listener, \
            dtu(listener, T1, fmt, register=False, heartbeat=None, online=None) as sim:
        with caplog.at_level(logging.WARNING, logger="meterd.collector.dtu"):
            await sim.send(garbage + sim.registration + sim.fmt.encode_heartbeat(T1))
            assert await listener.wait_online(T1, 1.0)
        outcome, _ = await read_energy(channel(listener, T1))
        t = term(listener, T1)
    assert outcome == "ok" and t["heartbeats"] == 1
    assert rejected(listener) == {"unregistered_data": 1}
    assert "sent data before registering" in caplog.text and shown in caplog.text
    assert "127.0.0.1:" in caplog.text


# --- bad and absurd input ---------------------------------------------------------------------------------


async def test_a_mac_of_the_wrong_length_is_refused_naming_peer_and_bytes(caplog):
    async with listening({MAC: "ch1", "d8:b0:4c:00:04:ca": "ch2"}, ("usr-mac",),
                         registration_timeout=0.3) as listener, dtu(listener, "d8:b0:4c:00:04:ca", "usr-mac") as good:
        with caplog.at_level(logging.WARNING, logger="meterd.collector.dtu"):
            # five bytes: a MAC that never completes -> closed at the registration deadline
            short = DtuSimulator(MAC, dlt645_bus(), "127.0.0.1", listener.bound_port, "usr-mac",
                                 registration=MAC_RAW[:5], heartbeat=None)
            await short.start()
            assert await short.wait_disconnected(2.0)
            # seven bytes holding no configured MAC -> refused at once (a stray byte in front of a
            # configured MAC would be garbage before it: see test_garbage_before_...)
            long = DtuSimulator(MAC, dlt645_bus(), "127.0.0.1", listener.bound_port, "usr-mac",
                                registration=MAC_RAW[:3] + bytes(4), heartbeat=None)
            await long.start()
            assert await long.wait_disconnected(1.0)
        await short.close()
        await long.close()
        outcome, _ = await read_energy(channel(listener, "d8:b0:4c:00:04:ca"))
        s = listener.status()
    assert s["rejected"]["registration_timeout"] == 1 and s["rejected"]["unknown_id"] == 1
    assert s["unknown_ids"] == {"d8:b0:4c:00:00:00": 1} and s["online"] == 1
    assert "no registration within 0.3 s (5 bytes received) [D8 B0 4C 00 04]" in caplog.text
    assert "unknown terminal 'd8:b0:4c:00:00:00' (usr-mac)" in caplog.text and "[D8 B0 4C 00 00 00 00]" in caplog.text
    assert outcome == "ok" and good.stats.connections == 1


async def test_a_registration_longer_than_any_format_allows(caplog):
    async with listening({T1: "ch1"}, ("usr-ascii", "usr-mac", "hex-frame")) as listener:
        with caplog.at_level(logging.WARNING, logger="meterd.collector.dtu"):
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
            writer.write(b"DTU" * 100)
            await writer.drain()
            assert await closed_by_master(reader, 1.0)
            writer.close()
    assert rejected(listener) == {"oversized": 1}
    assert "rejected (oversized): usr-ascii: terminal id of 300 bytes, at most 40 allowed" in caplog.text
    assert "[44 54 55 44 54 55" in caplog.text and "(300 bytes)]" in caplog.text


@pytest.mark.parametrize("noise, why", [
    (bytes(range(0x80, 0x100)) * 512, f"bytes without a registration (at most {MAX_UNREGISTERED} are read before one)"),
    (bytes(range(256)) * 256, "usr-ascii: terminal id of 1025 bytes, at most 40 allowed"),  # text runs in it
], ids=["binary", "mixed"])
async def test_megabytes_before_registering_close_the_connection_early(caplog, noise, why):
    chunk = noise  # 64 KiB, read after read
    async with listening({T1: "ch1", T2: "ch2"}, ("usr-ascii", "hex-frame"), registration_timeout=30) as listener, \
            dtu(listener, T2, "hex-frame") as good:
        with caplog.at_level(logging.WARNING, logger="meterd.collector.dtu"):
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
            sent = 0
            with contextlib.suppress(ConnectionError):
                while sent < 64 * 2**20 and not reader.at_eof():
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                    await asyncio.sleep(0)
            closed = await closed_by_master(reader, 2.0)
            writer.close()
        outcome, _ = await read_energy(channel(listener, T2))
        s = listener.status()
    assert closed  # by the byte cap (oversized below), not the 30 s registration deadline
    assert sent < 64 * 2**20  # the master hung up; the peer could not go on sending
    assert s["rejected"]["oversized"] == 1 and s["pending"] == 0
    assert why in caplog.text
    assert outcome == "ok" and good.stats.connections == 1


async def test_a_fleet_of_mac_dtus():
    from meterd.simulators.dtu import run_dtu_fleet

    known = {f"02:00:00:00:00:{n:02x}": f"ch{n}" for n in range(1, 6)}
    async with listening(known, ("usr-mac",)) as listener:
        fleet = await run_dtu_fleet(5, 2, "127.0.0.1", listener.bound_port, fmt="usr-mac", heartbeat=0.5, start=START)
        async with fleet:
            assert fleet.terminal_ids == list(known)
            for tid in fleet.terminal_ids:
                assert await listener.wait_online(tid, 2.0), tid
            outcomes = [(await read_energy(channel(listener, tid), fleet.meters[tid][0]))[0] for tid in fleet.terminal_ids]
    assert outcomes == ["ok"] * 5 and not rejected(listener)
