"""Simulated buses over real links: a pseudo-terminal opened with pyserial, and TCP sockets.

pyserial blocks, so the master side runs in a thread while the simulator runs in the test's event
loop.  Timing is only checked from below (a reply can never beat the wire), never from above.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import pytest
import serial

from meterd.errors import ChecksumError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.frame import PREAMBLE, Frame, StreamDecoder, decode_frame, encode_frame
from meterd.protocols.dlt645.messages import (
    AbnormalResponse,
    ReadAddressRequest,
    ReadAddressResponse,
    ReadRequest,
    ReadResponse,
    Request,
    Response,
    decode_response,
    encode_request,
)
from meterd.simulators.dlt645 import Dlt645Bus, FaultPlan
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import LineSettings, SimClock, serve_pty, serve_tcp

START = datetime(2025, 6, 1, 8, 0)
A1, A2, A3 = "000000000001", "000000000002", "000000000003"


def make_bus(faults: dict[str, FaultPlan] | None = None) -> Dlt645Bus:
    return Dlt645Bus([MeterModel(a, start=START, seed=i) for i, a in enumerate((A1, A2, A3))], faults or {})


def wire(req: Request) -> bytes:
    return encode_frame(encode_request(req), preamble=PREAMBLE)


def serial_exchange(path: str, requests: list[bytes], timeout: float = 3.0) -> list[tuple[bytes, Frame | None, float]]:
    """Open the pty like a master would, send each request, read one frame back; raw bytes, frame, seconds."""
    out = []
    with serial.Serial(path, 2400, parity=serial.PARITY_EVEN, timeout=timeout) as port:
        for raw in requests:
            decoder = StreamDecoder()
            got = bytearray()
            t0 = time.monotonic()
            port.write(raw)
            frame = None
            while frame is None:
                b = port.read(1)
                if not b:
                    break
                got += b
                decoder.feed(b)
                frame = decoder.next_frame()
            out.append((bytes(got), frame, time.monotonic() - t0))
    return out


async def tcp_exchange(endpoint: str, raw: bytes, timeout: float = 3.0) -> Frame:
    host, _, port = endpoint.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        decoder = StreamDecoder()
        while True:
            data = await asyncio.wait_for(reader.read(1024), timeout)
            assert data, "simulator closed the connection"
            decoder.feed(data)
            frame = decoder.next_frame()
            if frame is not None:
                return frame
    finally:
        writer.close()
        await writer.wait_closed()


def decoded(frame: Frame | None) -> Response:
    assert frame is not None
    return decode_response(frame)


# --- pseudo-terminal -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pty_read_with_pyserial_respects_wire_time() -> None:
    clock = SimClock.starting(START)
    async with await serve_pty(make_bus(), clock=clock) as running:
        assert running.endpoint.startswith("/dev/")
        request = wire(ReadRequest(A2, 0x00010000))
        [(raw, frame, elapsed)] = await asyncio.to_thread(serial_exchange, running.endpoint, [request])
        resp = decoded(frame)
        assert isinstance(resp, ReadResponse) and resp.address == A2
        value = catalogue.decode(resp.di, resp.data)[0].value
        assert value == running.bus.meter(A2).values(clock())["energy.active.import.total"]
        assert raw.startswith(PREAMBLE)
        line = LineSettings(2400, 8, "E", 1)
        assert line.bits_per_byte == 11
        minimum = line.wire_time(len(request)) + 0.020 + line.wire_time(len(raw))
        assert elapsed >= minimum - 0.002, (elapsed, minimum)
        assert running.stats.requests == 1 and running.stats.replies == 1


@pytest.mark.asyncio
async def test_pty_reopen_read_address_and_only_addressed_meter() -> None:
    async with await serve_pty(make_bus(), wire_time=False, clock=SimClock.starting(START)) as running:
        requests = [wire(ReadAddressRequest()), wire(ReadRequest("000000000009", 0x00010000)), wire(ReadRequest(A3, 0x0201FF00))]
        results = await asyncio.to_thread(serial_exchange, running.endpoint, requests, 0.5)
        assert decoded(results[0][1]) == ReadAddressResponse(A1)
        assert results[1][1] is None and results[1][0] == b""  # nobody answers a meter not on the bus
        volts = catalogue.decode(0x0201FF00, decoded(results[2][1]).data)  # type: ignore[union-attr]
        assert [v.quantity for v in volts] == ["voltage.a", "voltage.b", "voltage.c"]
        # a second master session on the same device (pyserial reopens the pty with 8E1 again)
        [(_, frame, _)] = await asyncio.to_thread(serial_exchange, running.endpoint, [wire(ReadRequest(A1, 0x04000401))])
        assert decoded(frame).address == A1


@pytest.mark.asyncio
async def test_pty_garbled_reply_fails_its_checksum() -> None:
    bus = make_bus({A1: FaultPlan(garble=1.0)})
    async with await serve_pty(bus, wire_time=False, clock=SimClock.starting(START)) as running:
        [(raw, frame, _)] = await asyncio.to_thread(
            serial_exchange, running.endpoint, [wire(ReadRequest(A1, 0x00010000))], 0.5
        )
        assert frame is None and len(raw) == 4 + 12 + 8  # FE x4, header and tail, DI + 4 bytes
        with pytest.raises(ChecksumError):
            decode_frame(raw)
        assert running.stats.faults["garble"] == 1


# --- TCP -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tcp_read_and_several_connections() -> None:
    async with await serve_tcp(make_bus(), clock=SimClock.starting(START)) as running:
        host, _, port = running.endpoint.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        frames = await asyncio.gather(
            *(tcp_exchange(running.endpoint, wire(ReadRequest(a, 0x0400010C))) for a in (A1, A2, A3, A1))
        )
        assert [f.address for f in frames] == [A1, A2, A3, A1]
        clock = catalogue.decode(0x0400010C, decoded(frames[0]).data)[0].value  # type: ignore[union-attr]
        assert abs(clock - START) < timedelta(minutes=1)  # type: ignore[operator]
        assert running.stats.connections == 4 and running.stats.replies == 4


@pytest.mark.asyncio
async def test_tcp_noise_before_the_frame_and_unknown_identifier() -> None:
    async with await serve_tcp(make_bus(), clock=SimClock.starting(START)) as running:
        frame = await tcp_exchange(running.endpoint, b"\x00\x16\x68garbage" + wire(ReadRequest(A2, 0x0A0B0C0D)))
        resp = decoded(frame)
        assert isinstance(resp, AbnormalResponse) and resp.error.name == "NO_DATA"


@pytest.mark.asyncio
async def test_tcp_late_reply_waits() -> None:
    bus = make_bus({A3: FaultPlan(late=1.0, late_by=0.3)})
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        t0 = time.monotonic()
        frame = await tcp_exchange(running.endpoint, wire(ReadRequest(A3, 0x00010000)))
        assert time.monotonic() - t0 >= 0.3
        assert frame.address == A3


@pytest.mark.asyncio
async def test_speed_makes_energy_move() -> None:
    clock = SimClock.starting(START, speed=3600.0)  # a real second is a simulated hour
    async with await serve_tcp(make_bus(), clock=clock) as running:
        req = wire(ReadRequest(A1, 0x00010000))
        before = catalogue.decode(0x00010000, decoded(await tcp_exchange(running.endpoint, req)).data)[0].value  # type: ignore[union-attr]
        await asyncio.sleep(0.5)
        after = catalogue.decode(0x00010000, decoded(await tcp_exchange(running.endpoint, req)).data)[0].value  # type: ignore[union-attr]
        assert after > before  # type: ignore[operator]


# --- fleet ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fleet_serves_every_bus_and_its_faults() -> None:
    spec = FleetSpec(pty_buses=1, tcp_buses=1, meters_per_bus=2, faults={"000000000004": "no_answer"}, seed=3,
                     start=START, wire_time=False)  # fmt: skip
    fleet = await run_fleet(spec)
    try:
        doc = fleet.as_dict()
        assert [b["kind"] for b in doc["buses"]] == ["pty", "tcp"]
        assert [b["meters"] for b in doc["buses"]] == [[A1, A2], [A3, "000000000004"]]
        assert doc["faults"] == {"000000000004": {"no_answer": 1.0}}
        pty, tcp = fleet.buses
        [(_, frame, _)] = await asyncio.to_thread(serial_exchange, pty.endpoint, [wire(ReadRequest(A2, 0x00010000))])
        assert decoded(frame).address == A2
        assert (await tcp_exchange(tcp.endpoint, wire(ReadRequest(A3, 0x00010000)))).address == A3
        with pytest.raises(asyncio.TimeoutError):
            await tcp_exchange(tcp.endpoint, wire(ReadRequest("000000000004", 0x00010000)), timeout=0.3)
    finally:
        await fleet.close()
    assert all(b.running.closed for b in fleet.buses)
