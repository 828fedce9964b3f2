"""A small Q/GDW 1376.1 terminal for the master-side tests, written with the codec from the
standard (the concentrator simulator is another helper's; the standard is the contract).

It dials the master, logs in (AFN 02 F1), heart-beats on demand, and answers: AFN 0C F2 (its
clock), F25, F33, F129 from what it "collected" (values held per pn), AFN 0D F161 for a date, AFN
0A/04 F10 (its archive), AFN 0E F1 (events by pointer), AFN 10 F1 (relayed to simulated DL/T 645
meters on a :class:`~meterd.simulators.dlt645.Dlt645Bus`).  Frames that carry PW are denied (AFN 00
F2) when the PW is not ``password``.  Its replies carry EC with ACD set while ``ec`` is given.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from meterd.protocols.gdw1376.catalogue import (
    ControlSettings,
    ControlState,
    EnergyReading,
    EventLog,
    ForwardEnergy,
    ForwardReply,
    ForwardRequest,
    FrozenEnergy,
    MeterArchive,
    MeterEntry,
    PresentPower,
)
from meterd.protocols.gdw1376.events import PowerOnOff
from meterd.protocols.gdw1376.frame import (
    Afn,
    EventCounter,
    PrimaryFunction,
    StreamDecoder,
    control_byte,
    parse_terminal_address,
    seq_byte,
)
from meterd.protocols.gdw1376.messages import DataUnit, Message, confirm, decode_message, encode, reply, unit
from meterd.simulators.dlt645 import Dlt645Bus

D = Decimal


def link_frame(address: str, fn: int, seq: int) -> bytes:
    """A terminal's login (F1), logout (F2) or heartbeat (F3)."""
    addr = parse_terminal_address(address)
    msg = Message(addr, Afn.LINK, (unit(0, fn),), control_byte(uplink=True, prm=True,
                                                                function=PrimaryFunction.LINK_TEST),
                  seq_byte(seq, con=True))
    return encode(msg)


def energy(pn: int) -> tuple[Decimal, ...]:
    base = D(1000 + pn * 10)
    return (base + D("0.00"), D(100 + pn), D(200 + pn), D(300 + pn), D(400 + pn))


@dataclass
class FakeTerminal:
    address: str
    host: str
    port: int
    pns: dict[int, str]  # pn -> meter address
    clock: datetime = datetime(2026, 1, 15, 10, 30, 0)
    password: bytes = bytes(16)
    bus: Dlt645Bus | None = None
    archive: dict[int, MeterEntry] = field(default_factory=dict)
    ec: EventCounter | None = None
    events: list[PowerOnOff] = field(default_factory=list)  # index = pointer
    requests: list[Message] = field(default_factory=list)
    confirmed: list[Message] = field(default_factory=list)  # the master's AFN 00 answers to our link frames
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task | None = None
    seq: int = 0
    tripped: bool = False  # its control turn (AFN 05 F1 / F2): the load reads 0 while tripped
    stuck: bool = False  # the turn's output trips but its breaker does not open: the load stays
    protected: bool = False  # 保电 (AFN 05 F25 / F33)
    reminder: bool = False  # 催费告警 (AFN 05 F26 / F34)
    control_state: bool = True  # answers AFN 0C F5 / F6 (else denies them, as older terminals do)
    controls: list[Message] = field(default_factory=list)
    rates: int = 4  # F129 rates sent
    split_at: int = 0  # replies longer than this are written in two pieces, 50 ms apart

    async def connect(self, login: bool = True) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.task = asyncio.create_task(self._serve())
        if login:
            await self.send_link(1)

    async def send_link(self, fn: int) -> None:
        assert self.writer is not None
        self.seq = (self.seq + 1) & 0x0F
        self.writer.write(link_frame(self.address, fn, self.seq))
        await self.writer.drain()

    async def wait_confirmed(self, n: int, timeout: float = 3.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if len(self.confirmed) >= n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"terminal {self.address}: {len(self.confirmed)} confirmations, expected {n}")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _serve(self) -> None:
        assert self.reader is not None and self.writer is not None
        decoder = StreamDecoder()
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            decoder.feed(data)
            for frame in decoder.frames():
                msg = decode_message(frame)
                if msg.afn == Afn.CONFIRM:
                    self.confirmed.append(msg)
                    continue
                self.requests.append(msg)
                out = self.answer(msg)
                if out is not None:
                    wire = encode(out)
                    if self.split_at and len(wire) > self.split_at:  # a slow GPRS link: the frame in two reads
                        self.writer.write(wire[:self.split_at])
                        await self.writer.drain()
                        await asyncio.sleep(0.05)
                        wire = wire[self.split_at:]
                    self.writer.write(wire)
            await self.writer.drain()

    def answer(self, msg: Message) -> Message | None:
        if msg.pw is not None and msg.pw != self.password:
            return confirm(msg, ok=False, ec=self.ec)
        if msg.afn == Afn.CLASS1_DATA:
            if not self.control_state and any(fn in (5, 6) for _, fn, _ in msg.items()):
                return confirm(msg, ok=False, ec=self.ec)
            units = []
            for u in msg.units:
                values = []
                for pn in u.pns:
                    for fn in u.fns:
                        values.append(self.class1(pn, fn))
                units.append(DataUnit(u.pns, u.fns, tuple(values)))
            return reply(msg, units, ec=self.ec)
        if msg.afn == Afn.CLASS2_DATA:
            units = []
            for u in msg.units:
                day = u.values[0]  # the day that ended; read by the terminal just after its midnight
                values = [FrozenEnergy(day, datetime.combine(day, datetime.min.time()) + timedelta(days=1, minutes=5),
                                       tuple(v - 5 for v in energy(pn))) for pn in u.pns for _ in u.fns]
                units.append(DataUnit(u.pns, u.fns, tuple(values)))
            return reply(msg, units, ec=self.ec)
        if msg.afn == Afn.QUERY_PARAMETERS:
            seqs = msg.units[0].values[0].seqs
            held = tuple(self.archive[s] for s in seqs if s in self.archive)
            return reply(msg, [unit(0, 10, MeterArchive(held))], ec=self.ec)
        if msg.afn == Afn.SET_PARAMETERS:
            for entry in msg.units[0].values[0].entries:
                self.archive[entry.seq] = entry
            return confirm(msg, ec=self.ec)
        if msg.afn == Afn.CLASS3_DATA:
            pointers = msg.units[0].values[0]
            records = tuple(self.events[i] for i in range(pointers.start, pointers.end) if i < len(self.events))
            ec = self.ec or EventCounter(0, 0)
            return reply(msg, [unit(0, 1, EventLog(ec.important, ec.general, pointers.start, pointers.end,
                                                   records))], ec=self.ec)
        if msg.afn == Afn.CONTROL:
            self.controls.append(msg)
            for _, fn, _ in msg.items():
                if fn in (1, 2):
                    self.tripped = fn == 1
                elif fn in (25, 33):
                    self.protected = fn == 25
                elif fn in (26, 34):
                    self.reminder = fn == 26
            return confirm(msg, ec=self.ec)
        if msg.afn == Afn.FORWARD:
            fwd: ForwardRequest = msg.units[0].values[0]
            payload = b""
            if self.bus is not None:
                replies = self.bus.handle(fwd.payload, self.clock)
                payload = b"".join(r.data for r in replies)
            return reply(msg, [unit(0, 1, ForwardReply(fwd.port, payload))], ec=self.ec)
        return confirm(msg, ok=False, ec=self.ec)

    def class1(self, pn: int, fn: int) -> object:
        if fn == 2:
            return self.clock
        if fn == 7:
            return self.ec or EventCounter(0, 0)
        if fn == 5:
            return ControlSettings((1 if self.protected else 0) | (4 if self.reminder else 0))
        if fn == 6:
            return ControlState(0xFF if self.tripped else 0, 1 if self.reminder else 0)
        if fn == 129:
            return EnergyReading(self.clock.replace(minute=0), energy(pn) + (D("1.00"),) * (self.rates - 4))
        if fn == 33:
            return ForwardEnergy(self.clock.replace(minute=0), energy(pn), (D(5),) * 5, (D(3),) * 5, (D(1),) * 5)
        if fn == 25 and self.tripped and not self.stuck:
            zero = (D("0.0000"),) * 4
            return PresentPower(self.clock, zero, zero, (D("0.0"),) * 4, (D("220.1"), D("220.2"), D("220.3")),
                                (D("0.000"),) * 3, None, zero)
        if fn == 25:
            return PresentPower(self.clock.replace(minute=0), (D("1.5"), D("0.5"), D("0.5"), D("0.5")),
                                (D("0.2"),) * 4, (D("95.0"),) * 4, (D("220.1"), D("220.2"), D("220.3")),
                                (D("2.5"), D("2.5"), D("2.5")), None, (D("1.6"),) * 4)
        raise ValueError(fn)


def archive_entry(pn: int, address: str, port: int = 2, baud: int = 2400, protocol: int = 30) -> MeterEntry:
    return MeterEntry(seq=pn, pn=pn, port=port, baud=baud, protocol=protocol, address=address)


__all__ = ["FakeTerminal", "archive_entry", "date", "energy", "link_frame"]
