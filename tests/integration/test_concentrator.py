"""Simulated Q/GDW 1376.1 concentrators over real TCP, against a master written here with the codec
alone (not meterd's collector): login confirmed, heart-beats, F129 by pn from the last collection,
F161/F177 with their dates, AFN 10 relays of DL/T 645 reads and of a 1C trip read back, AFN 05
with a wrong password denied, ERC14 with ACD/EC read by pointer, and every injectable fault seen
from the master's side.

Time: most tests drive the simulated clock by hand (``ManualClock``) and run the terminal's schedule
themselves (``tick=None``), so each value can be compared with the meter model at the collection;
``test_the_terminal_collects_on_its_own_schedule`` runs a fast SimClock with the simulator's own
ticker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Self

import pytest

from meterd.errors import ChecksumError
from meterd.protocols.dlt645 import catalogue as dlt
from meterd.protocols.dlt645.frame import decode_frame as decode_645
from meterd.protocols.dlt645.frame import encode_frame as encode_645
from meterd.protocols.dlt645.messages import (
    AckResponse,
    ReadRequest,
    ReadResponse,
    RelayCommand,
    RelayControlRequest,
    decode_response,
)
from meterd.protocols.dlt645.messages import encode_request as encode_645_request
from meterd.protocols.gdw1376.catalogue import (
    ArchiveQuery,
    EnergyReading,
    EventPointers,
    ForwardReply,
    ForwardRequest,
    FrozenEnergy,
    MeterArchive,
    MeterEntry,
    ProtectOn,
    RemoteTrip,
)
from meterd.protocols.gdw1376.events import PowerOnOff
from meterd.protocols.gdw1376.frame import (
    Afn,
    Frame,
    SecondaryFunction,
    StreamDecoder,
    TerminalAddress,
    decode_frame,
    encode_frame,
)
from meterd.protocols.gdw1376.messages import (
    DataUnit,
    Message,
    Reassembler,
    decode_message,
    encode_request,
    link_confirm,
    unit,
)
from meterd.protocols.gdw1376.units import ALL_POINTS
from meterd.simulators.concentrator import ConcentratorFaults, ConcentratorSimulator, run_concentrator_fleet
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.gdw_terminal import Gdw1376Terminal, parse_control_state
from meterd.simulators.model import MeterModel

ADDRESS = TerminalAddress("4401", 1)
PW = bytes(range(16))
START = datetime(2025, 6, 30, 23, 40)
METERS = ("000000000001", "000000000002", "000000000003")
IMPORT = tuple(f"energy.active.import.{r}" for r in ("total", "rate1", "rate2", "rate3", "rate4"))


class ManualClock:
    """Simulated time the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def forward(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


class Master:
    """A master station's listener in a few lines of the codec: confirms logins and heartbeats
    (unless ``confirm_links`` is False), asks and reassembles answers."""

    def __init__(self, *, confirm_links: bool = True) -> None:
        self.confirm_links = confirm_links
        self.links: list[Message] = []  # logins and heartbeats, as received
        self.connections = 0
        self.closed = asyncio.Event()  # the terminal's last connection ended
        self.decoder = StreamDecoder()
        self.received = bytearray()  # every byte from the terminal, link frames included
        self._frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._seq = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        if self._writer is not None:
            self._writer.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def logins(self) -> list[Message]:
        return [m for m in self.links if m.units[0].fns == (1,)]

    def heartbeats(self) -> list[Message]:
        return [m for m in self.links if m.units[0].fns == (3,)]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writer = writer
        self.closed.clear()
        self.decoder = StreamDecoder()
        try:
            while data := await reader.read(4096):
                self.received += data
                self.decoder.feed(data)
                for frame in self.decoder.frames():
                    if frame.afn == Afn.LINK and frame.prm:
                        msg = decode_message(frame)
                        self.links.append(msg)
                        if self.confirm_links:
                            writer.write(link_confirm(msg))
                    else:
                        self._frames.put_nowait(frame)
        except ConnectionError:
            pass
        finally:
            if self._writer is writer:
                self.closed.set()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x0F
        return self._seq

    async def send(self, afn: int, units: list[DataUnit], **kw: Any) -> int:
        seq = kw.pop("seq", None)
        seq = self.next_seq() if seq is None else seq
        assert self._writer is not None, "no terminal connected"
        self._writer.write(encode_request(ADDRESS, afn, units, seq=seq, **kw))
        await self._writer.drain()
        return seq

    async def frames(self, timeout: float = 2.0) -> list[Frame]:
        """The frames of one answer (until FIN)."""
        out: list[Frame] = []
        while True:
            frame = await asyncio.wait_for(self._frames.get(), timeout)
            out.append(frame)
            if frame.fin:
                return out

    async def ask(self, afn: int, units: list[DataUnit], timeout: float = 2.0, **kw: Any) -> Message:
        """Send a request and return the whole answer, reassembled (its RSEQ checked)."""
        seq = await self.send(afn, units, **kw)
        frames = await self.frames(timeout)
        assert frames[0].seq_number == seq, f"RSEQ {frames[0].seq_number} answers PSEQ {seq}"
        assembler = Reassembler()
        for frame in frames:
            whole = assembler.add(decode_message(frame))
        assert whole is not None
        return whole

    async def silence(self, within: float) -> bool:
        """True if nothing but link frames arrives within ``within`` seconds."""
        try:
            await asyncio.wait_for(self._frames.get(), within)
        except TimeoutError:
            return True
        return False


def is_deny(msg: Message) -> bool:
    return msg.afn == Afn.CONFIRM and msg.units[0].fns == (2,)


def make_terminal(start: datetime = START, *, kind: str = "concentrator", **kw: Any) -> Gdw1376Terminal:
    models = [MeterModel(a, start=start, seed=i) for i, a in enumerate(METERS)]
    return Gdw1376Terminal(ADDRESS, Dlt645Bus(models), start=start, kind=kind, password=PW, **kw)


@contextlib.asynccontextmanager
async def concentrator(master: Master, clock: Any, *, login: bool = True, **kw: Any
                       ) -> AsyncIterator[ConcentratorSimulator]:
    terminal = kw.pop("terminal", None) or make_terminal(clock(), kind=kw.pop("kind", "concentrator"))
    kw.setdefault("heartbeat", 0.2)
    kw.setdefault("tick", None)
    kw.setdefault("reconnect_delay", 0.05)
    kw.setdefault("response_timeout", 0.5)
    sim = ConcentratorSimulator(terminal, "127.0.0.1", master.port, clock=clock, **kw)
    await sim.start()
    try:
        if login:
            assert await sim.wait_logged_in(3.0)
        yield sim
    finally:
        await sim.close()


def meter(sim: ConcentratorSimulator, pn: int) -> MeterModel:
    return sim.terminal.bus.meter(METERS[pn - 1])


def registers(model: MeterModel, now: datetime) -> tuple[Decimal, ...]:
    values = model.values(now, IMPORT)
    return tuple(values[q] for q in IMPORT)


def frozen_registers(model: MeterModel, n: int = 1) -> tuple[Decimal, ...]:
    snap = model.frozen("daily", n)
    assert snap is not None
    return tuple(snap[f"frozen.daily.{q}"] for q in IMPORT)


async def until(predicate: Any, timeout: float = 3.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def relay(master: Master, frame: bytes, *, pw: bytes = PW) -> bytes:
    reply = await master.ask(Afn.FORWARD, [unit(0, 1, ForwardRequest(2, frame))], pw=pw)
    value = reply.value(1, 0)
    assert isinstance(value, ForwardReply)
    return value.payload


# --- the link -------------------------------------------------------------------------------------


async def test_login_is_confirmed_then_it_heart_beats_with_its_clock():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        await until(lambda: len(master.heartbeats()) >= 2)
        (login,) = master.logins()
        assert login.address.key == "4401-0001" and login.con and login.frame.function == 9
        beat = master.heartbeats()[-1]
        assert beat.con and beat.seq_number != login.seq_number
        assert beat.value(3).clock == START
        await until(lambda: sim.stats.heartbeats_confirmed >= 2)
        assert sim.stats.logins_confirmed == 1 and sim.stats.connections == 1


async def test_an_unconfirmed_login_is_retried_then_the_terminal_redials_with_backoff():
    clock = ManualClock(START)
    async with Master(confirm_links=False) as master, concentrator(master, clock, login=False,
                                                                   response_timeout=0.1) as sim:
        await until(lambda: master.connections >= 2)
        assert len(master.logins()) >= 3  # login_attempts on the first connection
        assert sim.stats.login_failures >= 1 and not sim.logged_in
        master.confirm_links = True
        assert await sim.wait_logged_in(3.0)


async def test_a_master_that_stops_confirming_heartbeats_loses_the_terminal_which_comes_back():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock, heartbeat=0.05, response_timeout=0.2,
                                                heartbeat_misses=2) as sim:
        master.confirm_links = False
        await until(lambda: sim.stats.heartbeat_drops >= 1)
        master.confirm_links = True
        await until(lambda: sim.stats.logins_confirmed >= 2 and sim.logged_in)
        assert master.connections >= 2


# --- present data: as old as the last collection --------------------------------------------------


async def test_f129_by_pn_is_the_meter_register_at_the_last_collection():
    clock = ManualClock(datetime(2025, 6, 30, 23, 30))
    async with Master() as master, concentrator(master, clock) as sim:
        t0 = clock()
        sim.terminal.advance(t0)  # the first collection
        at_t0 = {pn: registers(meter(sim, pn), t0) for pn in (1, 2, 3)}
        clock.forward(minutes=14)  # 23:44: no collection due yet, the meters move on
        reply = await master.ask(Afn.CLASS1_DATA, [unit(2, 129)])
        reading = reply.value(129, 2)
        assert isinstance(reading, EnergyReading)
        assert reading.read_at == t0 and reading.values == at_t0[2]
        assert registers(meter(sim, 2), clock()) != at_t0[2]  # the live meter is ahead of the terminal
        # several points in one DA, and all points (FF 00)
        reply = await master.ask(Afn.CLASS1_DATA, [DataUnit((1, 2, 3), (129,))])
        assert {pn: v.values for pn, fn, v in reply.items()} == at_t0
        reply = await master.ask(Afn.CLASS1_DATA, [unit(ALL_POINTS, 129)])
        assert {pn: v.values for pn, fn, v in reply.items()} == at_t0
        # 23:45: the next quarter's collection
        t1 = clock.forward(minutes=1)
        sim.terminal.advance(t1)
        reply = await master.ask(Afn.CLASS1_DATA, [unit(1, 129), unit(0, 2)])
        assert reply.value(129, 1) == EnergyReading(t1, registers(meter(sim, 1), t1))
        assert reply.value(2, 0) == t1


async def test_present_power_and_energy_by_rate_come_from_the_collection():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        sim.terminal.advance(clock())
        m = meter(sim, 3)
        live = m.values(clock(), ("voltage.a", "current.b", "power.active.total", "pf.total",
                                  "energy.reactive.q1.total"))
        reply = await master.ask(Afn.CLASS1_DATA, [unit(3, 25), unit(3, 33)])
        power, forward = reply.value(25, 3), reply.value(33, 3)
        assert power.voltage[0] == live["voltage.a"] and power.current[1] == live["current.b"]
        assert power.active[0] == live["power.active.total"] and power.power_factor[0] == live["pf.total"] * 100
        assert forward.quadrant1[0] == live["energy.reactive.q1.total"]


async def test_a_silent_meter_keeps_its_old_reading_and_an_unknown_point_has_no_data():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        t0 = clock()
        sim.terminal.advance(t0)
        meter(sim, 1).power_down(t0)
        sim.terminal.advance(clock.forward(minutes=15))
        reading = (await master.ask(Afn.CLASS1_DATA, [unit(1, 129)])).value(129, 1)
        assert reading.read_at == t0  # not read at 23:55: as old as its last good collection
        denied = await master.ask(Afn.CLASS1_DATA, [unit(9, 129)])
        assert is_deny(denied) and denied.frame.function == SecondaryFunction.DENY  # 无所召唤的数据


# --- frozen data with its date --------------------------------------------------------------------


async def test_f161_and_f177_hold_the_freeze_of_the_day_and_month_that_ended():
    clock = ManualClock(START)  # 2025-06-30 23:40
    async with Master() as master, concentrator(master, clock) as sim:
        sim.terminal.advance(clock())
        none_yet = await master.ask(Afn.CLASS2_DATA, [unit(1, 161, date(2025, 6, 30))])
        assert is_deny(none_yet)
        t = clock.forward(minutes=25)  # 2025-07-01 00:05
        sim.terminal.advance(t)
        frozen = frozen_registers(meter(sim, 1))
        assert meter(sim, 1).frozen("daily", 1)["frozen.daily.time"] == datetime(2025, 7, 1)
        reply = await master.ask(Afn.CLASS2_DATA, [unit(1, 161, date(2025, 6, 30)),
                                                   unit(1, 177, date(2025, 6, 1))])
        assert reply.value(161, 1) == FrozenEnergy(date(2025, 6, 30), t, frozen)
        assert reply.value(177, 1) == FrozenEnergy(date(2025, 6, 1), t, frozen)
        # a day it has not collected: no data
        assert is_deny(await master.ask(Afn.CLASS2_DATA, [unit(1, 161, date(2025, 6, 29))]))
        partial = await master.ask(Afn.CLASS2_DATA, [unit(2, 161, date(2025, 6, 30)),
                                                    unit(2, 161, date(2025, 6, 28))])
        assert [(pn, v.period) for pn, fn, v in partial.items()] == [(2, date(2025, 6, 30))]


async def test_a_freeze_missed_while_the_meter_was_down_is_collected_when_it_answers_again():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        sim.terminal.advance(clock())
        meter(sim, 2).power_down(clock())
        sim.terminal.advance(clock.forward(minutes=25))  # 00:05: meter 2 silent
        assert is_deny(await master.ask(Afn.CLASS2_DATA, [unit(2, 161, date(2025, 6, 30))]))
        meter(sim, 2).power_up(clock.forward(minutes=5))
        t = clock.forward(minutes=5)  # 00:15
        sim.terminal.advance(t)
        reply = await master.ask(Afn.CLASS2_DATA, [unit(2, 161, date(2025, 6, 30))])
        assert reply.value(161, 2) == FrozenEnergy(date(2025, 6, 30), t, frozen_registers(meter(sim, 2)))


# --- relays through AFN 10 ------------------------------------------------------------------------


async def test_an_afn10_relay_returns_the_meters_own_dlt645_reply():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        clock.forward(minutes=7)
        payload = await relay(master, encode_645(encode_645_request(ReadRequest(METERS[1], 0x00010000))))
        assert payload.startswith(b"\xfe\xfe\xfe\xfe")
        answer = decode_response(decode_645(payload))
        assert isinstance(answer, ReadResponse) and answer.address == METERS[1]
        (value,) = dlt.decode(0x00010000, answer.data)
        assert value.value == meter(sim, 2).values(clock(), IMPORT)["energy.active.import.total"]  # live, not collected
        # a meter not behind it: nothing comes back
        assert await relay(master, encode_645(encode_645_request(ReadRequest("000000000099", 0x00010000)))) == b""


async def test_a_1c_trip_relayed_through_the_terminal_opens_the_meter_and_reads_back():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        trip = RelayControlRequest(METERS[0], RelayCommand.TRIP, "02123456", "00000001", START + timedelta(hours=1))
        answer = decode_response(decode_645(await relay(master, encode_645(encode_645_request(trip)))))
        assert isinstance(answer, AckResponse) and meter(sim, 1).relay_open
        status = decode_response(decode_645(await relay(
            master, encode_645(encode_645_request(ReadRequest(METERS[0], 0x04000503))))))
        flags = {v.quantity: v.value for v in dlt.decode(0x04000503, status.data)}
        assert flags["relay.open"] is True and flags["relay.command_open"] is True
        # a relay with the wrong PW is denied and never reaches the meter
        reclose = RelayControlRequest(METERS[0], RelayCommand.RECLOSE, "02123456", "00000001", START + timedelta(hours=1))
        frame = encode_645(encode_645_request(reclose))
        denied = await master.ask(Afn.FORWARD, [unit(0, 1, ForwardRequest(2, frame))], pw=bytes(16))
        assert is_deny(denied) and meter(sim, 1).relay_open


# --- AFN 05 turns ---------------------------------------------------------------------------------


async def control_state(master: Master) -> dict[int, dict[str, Any]]:
    await master.send(Afn.CLASS1_DATA, [DataUnit((0,), (5, 6))])
    (frame,) = await master.frames()
    return parse_control_state(frame.data)


async def test_afn05_trip_with_a_wrong_password_is_denied_and_the_right_one_trips_the_turn():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock, kind="special") as sim:
        sim.terminal.advance(clock.forward(minutes=3))  # 23:43: collected with its load
        wrong = await master.ask(Afn.CONTROL, [unit(1, 1, RemoteTrip())], pw=bytes(16))
        assert is_deny(wrong)
        assert (await control_state(master))[6]["tripped"] == set()
        assert sim.terminal.stats.bad_password == 1
        ok = await master.ask(Afn.CONTROL, [unit(1, 1, RemoteTrip())], pw=PW)
        assert ok.afn == Afn.CONFIRM and ok.units[0].fns == (1,)
        assert await control_state(master) == {5: {"protected": False, "reminder": False}, 6: {"tripped": {1}, "reminder": False}}
        # the turn's breaker cut the customer's load, and the terminal read it again at once
        power = (await master.ask(Afn.CLASS1_DATA, [unit(2, 25)])).value(25, 2)
        assert power.active[0] == 0 and power.read_at == clock() and meter(sim, 2).relay_open
        ok = await master.ask(Afn.CONTROL, [unit(1, 2)], pw=PW)  # permit reclose
        assert ok.units[0].fns == (1,) and (await control_state(master))[6]["tripped"] == set()
        assert not meter(sim, 2).relay_open


async def test_a_concentrator_has_no_turns_to_trip():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as _:
        assert is_deny(await master.ask(Afn.CONTROL, [unit(1, 1, RemoteTrip())], pw=PW))


# --- ERC14 ----------------------------------------------------------------------------------------


async def test_a_power_cut_is_reported_with_acd_and_ec_and_read_by_pointer():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        before = await master.ask(Afn.CLASS1_DATA, [unit(0, 2)])
        assert before.ec is None
        off = clock.forward(minutes=3)
        await sim.power_down()
        await asyncio.wait_for(master.closed.wait(), 2.0)
        assert all(not meter(sim, pn).powered for pn in (1, 2, 3))  # the area went down with it
        on = clock.forward(minutes=40)
        await sim.power_up()
        await until(lambda: len(master.logins()) == 2)
        assert master.logins()[-1].ec is not None  # ACD on its login too
        reply = await master.ask(Afn.CLASS1_DATA, [unit(0, 2)])
        assert reply.frame.acd and reply.ec is not None and reply.ec.important == 1
        log = (await master.ask(Afn.CLASS3_DATA, [unit(0, 1, EventPointers(0, reply.ec.important))])).value(1)
        assert (log.start, log.end) == (0, 1)
        assert log.records == (PowerOnOff(off, on, 0x03),)
        after = await master.ask(Afn.CLASS1_DATA, [unit(0, 2)])
        assert after.ec is None and not after.frame.acd  # read: nothing waits any more
        assert is_deny(await master.ask(Afn.CLASS3_DATA, [unit(0, 1, EventPointers(1, 2))]))


# --- archive --------------------------------------------------------------------------------------


async def test_the_meter_archive_is_queried_and_set_and_the_points_follow_it():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        archive = (await master.ask(Afn.QUERY_PARAMETERS, [unit(0, 10, ArchiveQuery((1, 2, 3)))])).value(10)
        assert [(e.seq, e.pn, e.address, e.protocol, e.port) for e in archive.entries] == [
            (1, 1, METERS[0], 30, 2), (2, 2, METERS[1], 30, 2), (3, 3, METERS[2], 30, 2)]
        sim.terminal.advance(clock())
        # meter 3 becomes pn 7, seq 2 is deleted (pn 0)
        entries = (MeterEntry(3, 7, 2, 0, 30, METERS[2]), MeterEntry(2, 0, 2, 0, 30, METERS[1]))
        done = await master.ask(Afn.SET_PARAMETERS, [unit(0, 10, MeterArchive(entries))], pw=PW)
        assert done.units[0].fns == (1,)
        archive = (await master.ask(Afn.QUERY_PARAMETERS, [unit(0, 10, ArchiveQuery(()))])).value(10)
        assert [(e.seq, e.pn) for e in archive.entries] == [(1, 1), (3, 7)]
        assert is_deny(await master.ask(Afn.CLASS1_DATA, [unit(7, 129)]))  # not collected yet
        sim.terminal.advance(clock.forward(minutes=15))
        assert (await master.ask(Afn.CLASS1_DATA, [unit(7, 129)])).value(129, 7).read_at == clock()
        assert is_deny(await master.ask(Afn.CLASS1_DATA, [unit(2, 129)]))


# --- faults ---------------------------------------------------------------------------------------


async def test_fault_deny_answers_everything_with_afn00_f2():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock, faults=ConcentratorFaults.of("deny")) as sim:
        sim.terminal.advance(clock())
        assert is_deny(await master.ask(Afn.CLASS1_DATA, [unit(1, 129)]))
        assert is_deny(await master.ask(Afn.CONTROL, [unit(0, 25, ProtectOn(0))], pw=PW)) and not sim.terminal.protected
        assert sim.stats.faults["deny"] == 2


async def test_fault_wrong_seq_answers_with_the_next_rseq():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock, faults=ConcentratorFaults.of("wrong_seq")) as sim:
        sim.terminal.advance(clock())
        seq = await master.send(Afn.CLASS1_DATA, [unit(1, 129)], seq=15)
        (frame,) = await master.frames()
        assert frame.seq_number == (seq + 1) & 0x0F == 0
        assert isinstance(decode_message(frame).value(129, 1), EnergyReading)


async def test_fault_garble_spoils_the_checksum_and_the_master_drops_the_frame():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock, faults=ConcentratorFaults.of("garble"), heartbeat=None) as sim:
        master.received.clear()
        await master.send(Afn.CLASS1_DATA, [unit(0, 2)])
        assert await master.silence(0.3)
        assert master.decoder.dropped >= 1
        with pytest.raises(ChecksumError):
            decode_frame(bytes(master.received))  # framed right, its checksum spoilt
        assert sim.stats.faults["garble"] == 1


async def test_fault_late_delays_the_reply():
    clock = ManualClock(START)
    faults = ConcentratorFaults.of("late", late_by=0.3)
    async with Master() as master, concentrator(master, clock, faults=faults) as sim:
        t0 = time.monotonic()
        reply = await master.ask(Afn.CLASS1_DATA, [unit(0, 2)])
        assert time.monotonic() - t0 >= 0.3 and reply.value(2) == START
        assert sim.stats.faults["late"] == 1


async def test_fault_silent_sends_nothing():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock, faults=ConcentratorFaults.of("silent")) as sim:
        await master.send(Afn.CLASS1_DATA, [unit(0, 2)])
        assert await master.silence(0.3)
        assert sim.stats.faults["silent"] == 1 and master.decoder.dropped == 0 and sim.logged_in


async def test_fault_drop_aborts_the_connection_and_the_terminal_logs_in_again():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock, faults=ConcentratorFaults.of("drop")) as sim:
        await master.send(Afn.CLASS1_DATA, [unit(0, 2)])
        await asyncio.wait_for(master.closed.wait(), 2.0)
        sim.faults = ConcentratorFaults()
        await until(lambda: len(master.logins()) == 2)
        assert sim.stats.faults["drop"] == 1 and sim.stats.drops == 1
        assert (await master.ask(Afn.CLASS1_DATA, [unit(0, 2)])).value(2) == START


async def test_drop_on_command_and_the_terminal_redials():
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        await sim.drop()
        await asyncio.wait_for(master.closed.wait(), 2.0)
        await until(lambda: sim.logged_in and master.connections == 2)


# --- schedule, fleets -----------------------------------------------------------------------------


async def test_the_terminal_collects_on_its_own_schedule():
    from meterd.simulators.serve import SimClock

    clock = SimClock(datetime(2025, 6, 30, 23, 58), speed=900.0)  # a quarter hour a second
    terminal = make_terminal(clock.start)
    async with Master() as master, concentrator(master, clock, terminal=terminal, tick=0.05) as sim:
        await until(lambda: sim.terminal.stats.collections >= 3, timeout=6.0)
        reply = await master.ask(Afn.CLASS2_DATA, [unit(1, 161, date(2025, 6, 30))])
        frozen = reply.value(161, 1)
        assert frozen.values == frozen_registers(meter(sim, 1), (clock().date() - date(2025, 7, 1)).days + 1)
        reading = (await master.ask(Afn.CLASS1_DATA, [unit(1, 129)])).value(129, 1)
        assert reading.read_at.minute % 15 == 0 and reading.read_at > datetime(2025, 7, 1)


async def test_a_fleet_dials_in_and_every_terminal_logs_in():
    async with Master() as master:
        fleet = await run_concentrator_fleet(3, 2, "127.0.0.1", master.port, start=START, heartbeat=None,
                                             reconnect_delay=0.05, tick=None)
        async with fleet:
            assert await fleet.wait_logged_in(5.0)
            assert {m.address.key for m in master.logins()} == {"4401-0001", "4401-0002", "4401-0003"}
            assert fleet.meters["4401-0002"] == [("000000000003", 1), ("000000000004", 2)]


async def test_multi_frame_replies_count_rseq_up_and_reassemble():
    clock = ManualClock(START)
    terminal = make_terminal(max_frame_data=64)
    async with Master() as master, concentrator(master, clock, terminal=terminal) as sim:
        sim.terminal.advance(clock())
        seq = await master.send(Afn.CLASS1_DATA, [DataUnit((1, 2, 3), (129,)), unit(0, 2)])
        frames = await master.frames()
        assert len(frames) >= 2 and [f.seq_number for f in frames] == [(seq + i) & 0x0F for i in range(len(frames))]
        assert frames[0].fir and not frames[0].fin and frames[-1].fin
        assembler = Reassembler()
        whole = [assembler.add(decode_message(f)) for f in frames][-1]
        assert whole is not None and sorted((pn, fn) for pn, fn, _ in whole.items()) == [(0, 2), (1, 129), (2, 129),
                                                                                         (3, 129)]


@pytest.mark.parametrize("data", [b"\x68\x00\x00\x68", encode_frame(Frame(0x4B, ADDRESS, 0x0C, 0x61, b"\x01\x01"))])
async def test_noise_and_undecodable_requests_do_not_take_the_terminal_down(data):
    clock = ManualClock(START)
    async with Master() as master, concentrator(master, clock) as sim:
        assert master._writer is not None
        master._writer.write(data)
        if data[0] == 0x68 and len(data) > 4:
            (frame,) = await master.frames()
            assert is_deny(decode_message(frame)) and sim.stats.undecodable == 1
        assert (await master.ask(Afn.CLASS1_DATA, [unit(0, 2)])).value(2) == START
