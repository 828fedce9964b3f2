"""A simulated Q/GDW 1376.1 terminal -- a concentrator (集中器) or a special-transformer terminal
(专变采集终端) -- as a pure state machine: request messages in, reply frames out, time passed in.

Strategy
--------
:class:`Gdw1376Terminal` never reads a clock and owns no socket (the dial-in, login, heartbeat and
link faults are :mod:`meterd.simulators.concentrator`'s).  Every call takes ``now``, the *true*
(simulated) time; the terminal's own clock is ``now + offset`` (an AFN 05 F31 time sync changes
the offset).  Its meters are :class:`~meterd.simulators.model.MeterModel` s on its own
:class:`~meterd.simulators.dlt645.Dlt645Bus`, and the terminal only ever talks to them in
DL/T 645 frames through that bus, as a real terminal does on its RS-485 port: a meter that is
powered down, faulted or absent simply does not answer.

What it keeps (and answers from -- never from the live meters):

- the meter archive (AFN 04 F10 sets it, AFN 0A F10 queries it), by sequence number; a
  measuring point (pn) is the archive entry naming it.  Entries with pn 0 are deleted.  Changing
  the meter of a pn drops what was collected for it;
- per pn, the last *collection*: every ``collect_interval`` of the terminal clock (on the grid:
  :00, :15, ... for 15 minutes; and once at start) it reads each archived DL/T 645-2007 meter --
  forward active energy by rate (0001FF00), combined reactive 1 and quadrant I / IV (0003FF00,
  0005FF00, 0008FF00), and with ``collect_power`` voltage, current, active / reactive / apparent
  power, power factor (02xxFF00 blocks) and neutral current (02800001).  A meter that does not
  answer keeps its previous values with their older reading time.  AFN 0C F129 (F33, F25) is
  that, stamped with the reading time (A.15);
- daily freezes: after each midnight of the terminal clock, the collection reads each meter's own
  daily freeze (0506000N time, 050601NN forward active) and keeps it as AFN 0D F161 under the day
  that ended: **Td_d = D holds the registers frozen at 00:00 of D + 1** (日末冻结, the day's end).
  A freeze taken on the 1st of a month is also the month's: **F177 Td_m = M holds the registers at
  00:00 of the 1st of M + 1**.  A meter that was silent is asked again at every collection until
  it answers (补抄), ``catch_up_days`` back from the terminal's start; a day the meter has no
  freeze for is given up.  62 days and 12 months are kept;
- important events (every record goes to the important queue, EC1):

  * ERC14 (终端停/上电) when the terminal itself loses power
    (:meth:`~Gdw1376Terminal.power_down` / :meth:`~Gdw1376Terminal.power_up`; by default the area
    goes down with it: its meters lose power too).  The record (2013 layout, with the attribute
    byte) holds the outage's start and end on the terminal clock and is written at power-up.  A
    single meter losing power while the terminal stays up is no ERC14 (that record carries no pn:
    it says the terminal lost power);
  * ERC31 (终端485抄表失败) when a meter that answered the last collection does not answer this
    one (began, with its last good read and registers), and again when it answers (ended) -- as
    the firmware in gdgly/NUC97X_JS does, a meter that never answered raises none;
  * ERC21 (终端故障) code 4 (485抄表故障) when a collection finds no meter on its port answering
    (once, until one answers again);
  * ERC3 (参数变更) when the master sets parameters (AFN 04), naming the master (MSA) and the
    items set;
  * anything else put there with :meth:`~Gdw1376Terminal.record_event` (a test's ERC, known or not).

  Records of the ERCs in ``general_ercs`` go to the general queue instead (EC2, AFN 0E F2), as a
  terminal's event classes (AFN 04 F9) may say: they raise no ACD; the master finds them by reading
  the counters (AFN 0C F7).

  The counter EC1 is the next record's pointer; while the master has not read up to it (AFN 0E F1
  with Pn reaching it), every reply carries ACD = 1 and EC;
- control turns (轮次), special-transformer terminals only (``kind="special"``, ``turns`` 1..8):
  AFN 05 F1 trips a turn (after ``alarm_minutes`` of pre-trip alarm; for ``limit_half_hours``,
  then it closes by itself; 0: until released), F2 permits reclose (the customer's breaker
  closes at once), F25 / F33 protection (保电) on / off (protection closes every tripped turn and
  refuses trips), F26 / F34 the payment reminder alarm (催费告警) on / off.  A tripped turn cuts the load of its measuring points (``turn_points``; by
  default every turn cuts every point: one customer) -- their meters' relays open, so they meter
  nothing -- and the terminal reads those points again at once, so AFN 0C F25 shows the trip.
  A concentrator denies F1/F2.

Replies: a request's data units are answered unit by unit; a unit whose every (pn, Fn) has data
is answered as asked, the rest pair by pair, and pairs without data are left out.  Nothing to
answer is AFN 00 F2 with function 9 (否认: 无所召唤的数据).  A reply longer than ``max_frame_data``
bytes of data units goes out in several frames (FIR/FIN, RSEQ counting up from the request's
PSEQ).  Requests that carry a password (AFN 01, 04, 05, 0F, 10) are checked against the
terminal's 16-byte ``password`` and denied with AFN 00 F2 when it differs.  A request whose Tp
says it has expired on the terminal clock is dropped unanswered.

The control state is AFN 0C F5 (终端控制设置状态) and F6 (终端当前控制状态) of p0
(:class:`~meterd.protocols.gdw1376.catalogue.ControlSettings` / ``ControlState``): F5 ``[D0 保电,
D2 催费告警 on, 0 groups]``, F6 ``[tripped turns D0..D7, D0 催费告警 sounding, 0 groups]`` -- the
total-add-group part left empty (the simulator has no power or energy control).  A turn in its
pre-trip alarm is not yet tripped.

AFN 10 F1 relays the embedded bytes on the RS-485 port (``port``, 2 by default) to the bus and
returns what comes back -- real DL/T 645 bytes, ``FE`` preamble included; nothing (an empty
payload) when no meter answers within the request's frame timeout, or on another port.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue as dlt
from meterd.protocols.dlt645.frame import PREAMBLE, normalize_address
from meterd.protocols.dlt645.frame import decode_frame as decode_645
from meterd.protocols.dlt645.frame import encode_frame as encode_645
from meterd.protocols.dlt645.messages import AbnormalResponse, ReadRequest, ReadResponse, RelayCommand
from meterd.protocols.dlt645.messages import decode_response as decode_645_response
from meterd.protocols.dlt645.messages import encode_request as encode_645_request
from meterd.protocols.gdw1376.catalogue import (
    PROTOCOL_645_2007,
    ArchiveQuery,
    ControlSettings,
    ControlState,
    EnergyReading,
    EventLog,
    EventPointers,
    ForwardEnergy,
    ForwardReply,
    ForwardRequest,
    FrozenEnergy,
    ItemResult,
    ItemResults,
    MasterAddress,
    MeterArchive,
    MeterEntry,
    PresentPower,
    ProtectOn,
    RemoteTrip,
)
from meterd.protocols.gdw1376.events import ParameterChange, PowerOnOff, ReadFailure, TerminalEvent, TerminalFault
from meterd.protocols.gdw1376.frame import (
    PW_LEN,
    Afn,
    EventCounter,
    Frame,
    SecondaryFunction,
    TerminalAddress,
    control_byte,
    seq_byte,
)
from meterd.protocols.gdw1376.messages import DataUnit, Message, decode_units, encode_units, unit
from meterd.protocols.gdw1376.units import ALL_POINTS, P0, encode_da, encode_dt
from meterd.simulators.dlt645 import Dlt645Bus

__all__ = [
    "CONTROL_FNS",
    "DEFAULT_COLLECT",
    "KINDS",
    "Gdw1376Terminal",
    "PointData",
    "TerminalStats",
    "Turn",
    "control_state_units",
    "default_archive",
    "parse_control_state",
]  # fmt: skip

KINDS: Final = ("concentrator", "special")
DEFAULT_COLLECT: Final = timedelta(minutes=15)
RS485_PORT: Final = 2
MAX_TURNS: Final = 8
DAILY_KEPT: Final = 62
MONTHLY_KEPT: Final = 12
EVENTS_KEPT: Final = 255  # pointers are one byte: at most 255 records between Pm and Pn
CATCH_UP_DAYS: Final = 3
MAX_FRAME_DATA: Final = 1024  # bytes of data units in one reply frame
ERC14_FLAGS: Final = 0x03  # D0 normal event, D1 valid
METER_TIMEOUT_MS: Final = 2000  # the terminal's own reads: a reply later than this is lost
CONTROL_FNS: Final = (5, 6)  # AFN 0C F5 / F6: control setting state / current control state

# what a collection reads (DL/T 645-2007 identifiers)
_ENERGY_DIS: Final = (0x0001FF00, 0x0003FF00, 0x0005FF00, 0x0008FF00)
_POWER_DIS: Final = (0x0201FF00, 0x0202FF00, 0x0203FF00, 0x0204FF00, 0x0205FF00, 0x0206FF00, 0x02800001)
_RATES: Final = 4
_PHASES: Final = ("a", "b", "c")
_TOTAL_PHASES: Final = ("total", *_PHASES)
_HUNDRED: Final = Decimal(100)
_BREAKER: Final = "00000000"  # the operator code a turn's breaker uses on its meters' relays
_FOREVER: Final = datetime(2099, 12, 31, 23, 59, 59)


# --- state ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Turn:
    """One control turn (轮次) of a special-transformer terminal; times on the terminal clock."""

    tripped: bool = False
    alarm_until: datetime | None = None  # pre-trip alarm running: the trip falls due then
    release_at: datetime | None = None  # a limited trip closes by itself then


@dataclass(slots=True)
class PointData:
    """What the terminal collected for one measuring point (meter ``address``)."""

    address: str
    energy: EnergyReading | None = None  # AFN 0C F129
    forward: ForwardEnergy | None = None  # AFN 0C F33
    power: PresentPower | None = None  # AFN 0C F25
    daily: dict[date, FrozenEnergy] = field(default_factory=dict)  # AFN 0D F161 by Td_d
    monthly: dict[date, FrozenEnergy] = field(default_factory=dict)  # AFN 0D F177 by Td_m
    given_up: set[date] = field(default_factory=set)  # days the meter has no freeze for
    answered: bool = False  # at the last collection
    failing: bool = False  # an ERC31 "began" is on record and no "ended" yet


@dataclass(slots=True)
class TerminalStats:
    requests: int = 0
    replies: int = 0  # frames
    denied: int = 0  # AFN 00 F2 answers (no data, bad password, unsupported)
    events: int = 0  # event records written
    bad_password: int = 0
    expired: int = 0  # requests dropped for their Tp
    collections: int = 0
    meter_reads: int = 0
    meter_failures: int = 0  # reads without a good answer
    relays: int = 0  # AFN 10 forwards
    controls: int = 0  # AFN 05 items executed

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def default_archive(addresses: Iterable[str], port: int = RS485_PORT) -> list[MeterEntry]:
    """Meters 1..n as measuring points 1..n (sequence number = pn), DL/T 645-2007 at 2400 baud,
    4 rates, 6.2 digits."""
    return [MeterEntry(seq=pn, pn=pn, port=port, baud=2400, protocol=PROTOCOL_645_2007, address=normalize_address(a))
            for pn, a in enumerate(addresses, 1)]


# --- the hand-laid control state items (not in meterd's catalogue) ----------------------------------


def control_state_units(fn: int, protected: bool, tripped: int, reminder: bool = False) -> bytes:
    """DA DT and data of AFN 0C F5 or F6 for p0 (``tripped``: bits D0..D7 = turns 1..8)."""
    if fn == 5:
        value: Any = ControlSettings((0x01 if protected else 0) | (0x04 if reminder else 0))
    elif fn == 6:
        value = ControlState(tripped & 0xFF, 0x01 if reminder else 0)
    else:
        raise ProtocolError(f"AFN 0C F{fn} is not a control state item (F5, F6)")
    return encode_units(Afn.CLASS1_DATA, True, [unit(P0, fn, value)])


def parse_control_state(data: bytes) -> dict[int, dict[str, Any]]:
    """The F5 / F6 units of an AFN 0C reply's data area -> ``{5: {"protected": bool, "reminder":
    bool}, 6: {"tripped": set of turns, "reminder": bool}}``.  For tests and tools; ProtocolError
    if the area holds anything else."""
    out: dict[int, dict[str, Any]] = {}
    for u in decode_units(Afn.CLASS1_DATA, True, data):
        for pn, fn, value in u.pairs():
            if pn == P0 and isinstance(value, ControlSettings):
                out[5] = {"protected": value.protected, "reminder": value.reminder}
            elif pn == P0 and isinstance(value, ControlState):
                out[6] = {"tripped": {t for t in range(1, 9) if value.turn_tripped(t)},
                          "reminder": bool(value.reminder & 1)}
            else:
                raise ProtocolError(f"AFN 0C {pn=} F{fn} is not a control state item of p0")
    return out


# --- the terminal ---------------------------------------------------------------------------------


class Gdw1376Terminal:
    """A Q/GDW 1376.1 terminal with ``bus`` on its RS-485 port.  See the module doc."""

    def __init__(
        self,
        address: TerminalAddress,
        bus: Dlt645Bus,
        *,
        start: datetime,
        kind: str = "concentrator",
        turns: int | None = None,
        turn_points: Mapping[int, Iterable[int]] | None = None,
        password: bytes = bytes(PW_LEN),
        archive: Iterable[MeterEntry] | None = None,
        collect_interval: timedelta = DEFAULT_COLLECT,
        collect_power: bool = True,
        clock_offset: timedelta = timedelta(0),
        port: int = RS485_PORT,
        catch_up_days: int = CATCH_UP_DAYS,
        max_frame_data: int = MAX_FRAME_DATA,
        general_ercs: Iterable[int] = (),
    ) -> None:
        who = f"terminal {address}"
        if kind not in KINDS:
            raise ValueError(f"{who}: kind {kind!r} must be one of {', '.join(KINDS)}")
        if turns is None:
            turns = 4 if kind == "special" else 0
        if kind == "concentrator" and turns:
            raise ValueError(f"{who}: a concentrator has no control turns (kind='special' has 1..{MAX_TURNS})")
        if kind == "special" and not 1 <= turns <= MAX_TURNS:
            raise ValueError(f"{who}: turns {turns} must be 1..{MAX_TURNS}")
        if len(password) != PW_LEN:
            raise ValueError(f"{who}: the password PW is {PW_LEN} bytes, got {len(password)}")
        if collect_interval < timedelta(minutes=1) or timedelta(days=1) % collect_interval:
            raise ValueError(f"{who}: collect_interval {collect_interval} must be at least a minute and divide a day")
        if not 1 <= port <= 31:
            raise ValueError(f"{who}: port {port} must be 1..31")
        if not 0 <= catch_up_days <= DAILY_KEPT:
            raise ValueError(f"{who}: catch_up_days {catch_up_days} must be 0..{DAILY_KEPT}")
        if max_frame_data < 64:
            raise ValueError(f"{who}: max_frame_data {max_frame_data} must be >= 64 bytes")
        if start.tzinfo is not None:
            raise ValueError(f"{who}: start {start.isoformat()} must be a naive local time")
        self.address = address
        self.bus = bus
        self.kind = kind
        self.turns = {n: Turn() for n in range(1, turns + 1)}
        self.turn_points: dict[int, frozenset[int]] | None = None  # None: every turn cuts every point
        if turn_points is not None:
            unknown = sorted(set(turn_points) - set(self.turns))
            if unknown:
                raise ValueError(f"{who}: turn_points names turns {unknown} it does not have (1..{turns})")
            self.turn_points = {n: frozenset(pns) for n, pns in turn_points.items()}
        self._cut: set[int] = set()  # points whose load a tripped turn has cut
        self.password = bytes(password)
        self.collect_interval = collect_interval
        self.collect_power = collect_power
        self.port = port
        self.max_frame_data = max_frame_data
        self.general_ercs = frozenset(general_ercs)  # classed general (AFN 04 F9): EC2, read with AFN 0E F2
        self.offset = clock_offset
        self.master_address: MasterAddress | None = None
        self.protected_until: datetime | None = None  # 保电 on until then (datetime.max: until released)
        self.reminder = False  # 催费告警 on (AFN 05 F26 / F34)
        self._port_down = False  # an ERC21 485-reading fault is on record
        self.stats = TerminalStats()
        self.archive: dict[int, MeterEntry] = {}
        self.points: dict[int, PointData] = {}
        self.powered = True
        self._off_at: datetime | None = None  # terminal clock at power loss
        self._true = start
        self._started_day = (start + clock_offset).date()
        self._catch_up = catch_up_days
        self._last_slot: datetime | None = None
        self._events: deque[tuple[int, TerminalEvent]] = deque(maxlen=EVENTS_KEPT)  # (pointer, record)
        self._ec1 = 0  # next important record's pointer (EC1)
        self._general: deque[tuple[int, TerminalEvent]] = deque(maxlen=EVENTS_KEPT)
        self._ec2 = 0  # next general record's pointer (EC2); general events raise no ACD
        self._read_to = 0  # the master has read important events up to (not including) this pointer
        self._requests: dict[tuple[str, int, int], bytes] = {}  # (address, di, n) -> request bytes
        self.set_archive(default_archive(bus.addresses, port) if archive is None else archive)

    def __repr__(self) -> str:
        return f"Gdw1376Terminal({self.address}, {self.kind}, {len(self.points)} points)"

    # --- time, archive -----------------------------------------------------------------------------

    def clock(self, now: datetime) -> datetime:
        """The terminal's clock at true time ``now``."""
        return now + self.offset

    def set_archive(self, entries: Iterable[MeterEntry]) -> None:
        """Add or replace archive entries by sequence number (pn 0 deletes the entry)."""
        for e in entries:
            if e.pn == 0:
                self.archive.pop(e.seq, None)
            else:
                for seq in [s for s, old in self.archive.items() if old.pn == e.pn and s != e.seq]:
                    del self.archive[seq]  # a pn names one meter
                self.archive[e.seq] = e
        by_pn = {e.pn: e for e in self.archive.values()}
        for pn in list(self.points):
            now_there = by_pn.get(pn)
            if (now_there is None or now_there.address is None
                    or normalize_address(now_there.address) != self.points[pn].address):
                del self.points[pn]  # another meter now, or none: its data goes
        for pn, e in by_pn.items():
            if pn not in self.points and e.address is not None:
                self.points[pn] = PointData(normalize_address(e.address))

    def entry(self, pn: int) -> MeterEntry | None:
        for e in self.archive.values():
            if e.pn == pn:
                return e
        return None

    # --- power -------------------------------------------------------------------------------------

    def power_down(self, now: datetime, *, meters: bool = True) -> None:
        """The terminal loses its supply at true time ``now`` (with ``meters``: the whole area, its
        meters too).  It collects and answers nothing until :meth:`power_up`."""
        self.advance(now)
        if not self.powered:
            return
        self.powered = False
        self._off_at = self.clock(now).replace(second=0, microsecond=0)
        if meters:
            for m in self.bus.meters:
                m.power_down(now)

    def power_up(self, now: datetime, *, meters: bool = True) -> PowerOnOff | None:
        """Supply back at ``now``: the ERC14 record of the outage is written (and returned)."""
        if self.powered:
            return None
        self._true = max(self._true, now)
        self.powered = True
        if meters:
            for m in self.bus.meters:
                m.power_up(now)
        record = PowerOnOff(self._off_at, self.clock(now).replace(second=0, microsecond=0), ERC14_FLAGS)
        self._off_at = None
        self._record(record)
        self.advance(now)
        return record

    def record_event(self, record: TerminalEvent) -> None:
        """Write an event record (any ERC, decoded or raw): important -- ACD goes up until the
        master has read it -- unless its ERC is one of ``general_ercs``."""
        self._record(record)

    def events(self, *, general: bool = False) -> list[TerminalEvent]:
        """The important (or general) records kept, oldest first."""
        return [r for _, r in (self._general if general else self._events)]

    def _record(self, record: TerminalEvent) -> None:
        self.stats.events += 1
        if record.erc in self.general_ercs:
            self._general.append((self._ec2, record))
            self._ec2 = (self._ec2 + 1) % 256
            return
        self._events.append((self._ec1, record))
        self._ec1 = (self._ec1 + 1) % 256
        if (self._ec1 - self._read_to) % 256 > EVENTS_KEPT:  # the oldest unread one was overwritten
            self._read_to = (self._ec1 - EVENTS_KEPT) % 256

    @property
    def event_counter(self) -> EventCounter:
        return EventCounter(self._ec1, self._ec2)

    @property
    def events_waiting(self) -> bool:
        """Important events the master has not read (ACD)."""
        return self._read_to != self._ec1

    @property
    def pending_ec(self) -> EventCounter | None:
        """EC while important events wait to be read (ACD = 1 goes with it), else None."""
        return self.event_counter if self.events_waiting else None

    # --- the schedule ------------------------------------------------------------------------------

    def advance(self, now: datetime) -> None:
        """Run everything due up to true time ``now``: the collection of the latest grid slot not yet
        collected (missed slots are not made up; the first call collects at once), the daily freezes
        it finds, turns whose alarm or limit ran out."""
        steps = self.start_collection(now)
        if steps is not None:
            for _ in steps:
                pass

    def start_collection(self, now: datetime) -> Iterator[int] | None:
        """Like :meth:`advance`, but the collection due (its slot taken at once, so it runs only once)
        is handed back as steps -- one measuring point each, yielding its pn -- for a caller that
        must not block between meters (the simulator's event loop); None when none is due."""
        now = max(now, self._true)
        self._true = now
        if not self.powered:
            return None
        t = self.clock(now)
        self._run_turns(t, now)
        if self.protected_until is not None and t >= self.protected_until:
            self.protected_until = None
        midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
        slot = midnight + ((t - midnight) // self.collect_interval) * self.collect_interval
        if self._last_slot is not None and slot <= self._last_slot:
            return None
        self._last_slot = slot
        return self.collect_steps(now)

    def collect(self, now: datetime) -> None:
        """One collection of every measuring point at true time ``now``, whatever the schedule."""
        for _ in self.collect_steps(now):
            pass

    def collect_steps(self, now: datetime) -> Iterator[int]:
        """:meth:`collect`, one measuring point per step (each step yields the pn just read)."""
        self.stats.collections += 1
        read_at = self.clock(now).replace(second=0, microsecond=0)
        days = self._pending_days(read_at.date())
        asked = answered = 0
        for pn in sorted(self.points):
            point = self.points.get(pn)
            if point is not None:  # the archive may change between steps
                if self._collect_point(pn, point, now, read_at, days):
                    asked += 1
                    answered += point.answered
                yield pn
        if asked and not answered and not self._port_down:
            self._port_down = True  # ERC21 fault 4: no meter on the RS-485 port answers
            self._record(TerminalFault(read_at, 4))
        elif answered:
            self._port_down = False

    def _collect_point(self, pn: int, point: PointData, now: datetime, read_at: datetime, days: list[date]) -> bool:
        """One point read; False when the terminal does not read it (another port or protocol)."""
        e = self.entry(pn)
        if e is None or e.protocol != PROTOCOL_645_2007 or e.port != self.port:
            point.answered = False
            return False
        got: dict[str, Any] = {}
        answered = False
        for di in _ENERGY_DIS:
            values = self._read(point.address, di, now)
            if values is None:
                break  # a silent meter: do not ask it everything
            answered = True
            got.update(values)
        if answered and self.collect_power:
            for di in _POWER_DIS:
                values = self._read(point.address, di, now)
                if values is not None:
                    got.update(values)
        self._read_failure_event(pn, point, answered, read_at)
        point.answered = answered
        if not answered:
            return True
        if "energy.active.import.total" in got:
            point.energy = EnergyReading(read_at, _register_values(got, "active.import", 4))
            point.forward = ForwardEnergy(read_at, _register_values(got, "active.import", 4),
                                          _register_values(got, "reactive.combined1", 2),
                                          _register_values(got, "reactive.q1", 2),
                                          _register_values(got, "reactive.q4", 2))
        if self.collect_power and "voltage.a" in got:
            point.power = _present_power(got, read_at)
        self._collect_freezes(point, now, read_at, days)
        return True

    def _read_failure_event(self, pn: int, point: PointData, answered: bool, read_at: datetime) -> None:
        """ERC31 when a meter that answered stops answering (with its last good read), and when it
        answers again; a meter never read raises none (no last good read to report)."""
        if not answered and point.answered and not point.failing and point.energy is not None:
            point.failing = True
            reactive = point.forward.reactive[0] if point.forward is not None else None
            self._record(ReadFailure(read_at, pn, True, point.energy.read_at, point.energy.total, reactive))
        elif answered and point.failing:
            point.failing = False
            self._record(ReadFailure(read_at, pn, False, None, None, None))

    def _pending_days(self, today: date) -> list[date]:
        first = max(self._started_day - timedelta(days=self._catch_up), today - timedelta(days=DAILY_KEPT))
        days = []
        d = today - timedelta(days=1)
        while d >= first:
            days.append(d)
            d -= timedelta(days=1)
        return days

    def _collect_freezes(self, point: PointData, now: datetime, read_at: datetime, days: list[date]) -> None:
        today = read_at.date()
        for day in days:
            if day in point.daily or day in point.given_up:
                continue
            found = self._find_freeze(point.address, day + timedelta(days=1), today, now)
            if found is None:
                return  # the meter did not answer: again at the next collection
            if not isinstance(found, tuple):
                point.given_up.add(day)
                continue
            frozen = FrozenEnergy(day, read_at, found)
            point.daily[day] = frozen
            if (day + timedelta(days=1)).day == 1:
                month = day.replace(day=1)
                point.monthly[month] = FrozenEnergy(month, read_at, found)
        _prune(point.daily, DAILY_KEPT)
        _prune(point.monthly, MONTHLY_KEPT)
        horizon = today - timedelta(days=DAILY_KEPT + 1)
        point.given_up = {d for d in point.given_up if d > horizon}

    def _find_freeze(self, address: str, midnight: date, today: date, now: datetime
                     ) -> tuple[Decimal | None, ...] | bool | None:
        """The meter's daily freeze taken at 00:00 of ``midnight``: its forward active registers, False
        when the meter has none, None when it did not answer."""
        n = (today - midnight).days + 1
        tried: set[int] = set()
        while n not in tried:
            if n < 1:
                return None  # the meter has not frozen that day yet (its clock is behind): later
            if n > dlt.MAX_FROZEN:
                return False
            tried.add(n)
            values = self._read(address, 0x05060000 | n, now, absent=True)
            if values is None:
                return None
            when = values.get("frozen.daily.time")
            if not isinstance(when, datetime):
                return False  # the meter has no freeze that old
            if when.date() == midnight:
                energy = self._read(address, 0x05060100 | n, now, absent=True)
                if energy is None:
                    return None
                if "frozen.daily.energy.active.import.total" not in energy:
                    return False
                return _register_values(energy, "active.import", 4, prefix="frozen.daily.energy.")
            n += 1 if when.date() > midnight else -1
        return False

    def _read(self, address: str, di: int, now: datetime, *, absent: bool = False) -> dict[str, Any] | None:
        """One DL/T 645 read through the bus -> the values by quantity; None when the meter did not
        answer (or garbled, or too late).  ``absent``: a NO_DATA refusal is ``{}`` (a freeze the
        meter does not have), not a failure."""
        key = (address, di, 0)
        raw = self._requests.get(key)
        if raw is None:
            raw = encode_645(encode_645_request(ReadRequest(address, di)), preamble=PREAMBLE)
            self._requests[key] = raw
        self.stats.meter_reads += 1
        for reply in self.bus.handle(raw, now):
            if reply.delay * 1000 > METER_TIMEOUT_MS:
                continue
            try:
                response = decode_645_response(decode_645(reply.data))
            except ProtocolError:
                continue
            if response.address != address:
                continue
            if isinstance(response, ReadResponse) and response.di == di and not response.follow_up:
                try:
                    return {v.quantity: v.value for v in dlt.decode(di, response.data)}
                except ProtocolError:
                    continue
            if isinstance(response, AbnormalResponse) and absent:
                return {}
        self.stats.meter_failures += 1
        return None

    # --- control turns -----------------------------------------------------------------------------

    @property
    def protected(self) -> bool:
        return self.protected_until is not None

    def _run_turns(self, t: datetime, now: datetime) -> None:
        for turn in self.turns.values():
            if turn.alarm_until is not None and t >= turn.alarm_until:
                turn.alarm_until = None
                turn.tripped = True
            if turn.tripped and turn.release_at is not None and t >= turn.release_at:
                turn.tripped = False
                turn.release_at = None
        self._apply_turns(now)

    def _apply_turns(self, now: datetime) -> None:
        """The breakers behind the turns: a point of a tripped turn carries no load (its meter's relay
        opens), and closes when no tripped turn holds it any more.  The points just cut are read again
        at once (a real terminal records the load after a trip), so F25 shows the trip."""
        cut: set[int] = set()
        for n, turn in self.turns.items():
            if turn.tripped:
                cut |= set(self.points) if self.turn_points is None else set(self.turn_points.get(n, ()))
        opened, closed = cut - self._cut, self._cut - cut
        if not opened and not closed:
            return
        self._cut = cut
        for pn in sorted(opened | closed):
            point = self.points.get(pn)
            if point is None or point.address not in self.bus.addresses:
                continue
            command = RelayCommand.TRIP if pn in opened else RelayCommand.RECLOSE
            model = self.bus.meter(point.address)
            model.control(command, password=model.password, operator=_BREAKER, valid_until=_FOREVER, now=now)
        read_at = self.clock(now).replace(second=0, microsecond=0)
        for pn in sorted(opened):
            point = self.points.get(pn)
            if point is not None:
                self._collect_point(pn, point, now, read_at, [])

    def tripped_turns(self) -> set[int]:
        return {n for n, turn in self.turns.items() if turn.tripped}

    def _bits(self, which: str) -> int:
        bits = 0
        for n, turn in self.turns.items():
            if (turn.tripped if which == "tripped" else turn.alarm_until is not None):
                bits |= 1 << (n - 1)
        return bits

    # --- requests ----------------------------------------------------------------------------------

    def handle(self, request: Message, now: datetime) -> list[Frame]:
        """One master request (DIR=0, PRM=1) -> the frames to send back (none for an expired Tp, a
        confirmation or anything uplink, or while the terminal has no power)."""
        if request.is_uplink or not request.control & 0x40 or not self.powered:
            return []
        self.advance(now)
        t = self.clock(now)
        self.stats.requests += 1
        if request.tp is not None and request.tp.expired(t):
            self.stats.expired += 1
            return []
        if request.pw is not None and request.pw != self.password:
            self.stats.bad_password += 1
            return [self.deny(request)]
        afn = request.afn
        handler = _HANDLERS.get(afn)
        if handler is None:
            return [self.deny(request)]
        return handler(self, request, now, t)

    def deny(self, request: Message, *, no_data: bool = False) -> Frame:
        """AFN 00 F2 (all denied) answering ``request``; ``no_data``: function 9 (无所召唤的数据)."""
        self.stats.denied += 1
        self.stats.replies += 1
        function = SecondaryFunction.DENY if no_data else SecondaryFunction.CONFIRM
        return self._frame(request, Afn.CONFIRM, encode_units(Afn.CONFIRM, True, [unit(0, 2)]), function=function)

    def _confirm(self, request: Message, results: list[ItemResult]) -> list[Frame]:
        """AFN 00: F1 when every item went through, F2 when none did, else F3 item by item."""
        if results and all(r.ok for r in results):
            units = [unit(0, 1)]
        elif not any(r.ok for r in results):
            return [self.deny(request)]
        else:
            units = [unit(0, 3, ItemResults(request.afn, tuple(results)))]
        self.stats.replies += 1
        return [self._frame(request, Afn.CONFIRM, encode_units(Afn.CONFIRM, True, units),
                            function=SecondaryFunction.CONFIRM)]

    def _frame(self, request: Message, afn: int, data: bytes, *, function: int = SecondaryFunction.USER_DATA,
               seq: int | None = None, fir: bool = True, fin: bool = True) -> Frame:
        ec = self.pending_ec
        number = request.seq_number if seq is None else seq
        return Frame(control_byte(uplink=True, prm=False, function=function, fcb_acd=ec is not None),
                     request.address, afn, seq_byte(number & 0x0F, fir=fir, fin=fin), data, None, ec)

    def _data_reply(self, request: Message, parts: list[bytes]) -> list[Frame]:
        """User data answering ``request``: the encoded units, in as many frames as they need."""
        if not parts:
            return [self.deny(request, no_data=True)]
        frames: list[bytes] = []
        current = b""
        for part in parts:
            if current and len(current) + len(part) > self.max_frame_data:
                frames.append(current)
                current = b""
            current += part
        frames.append(current)
        out = []
        for i, data in enumerate(frames):
            out.append(self._frame(request, request.afn, data, seq=request.seq_number + i, fir=i == 0,
                                   fin=i == len(frames) - 1))
        self.stats.replies += len(out)
        return out

    def _points(self, pns: Iterable[int]) -> Iterator[int]:
        for pn in pns:
            if pn == ALL_POINTS:
                yield from sorted(self.points)
            else:
                yield pn

    def _answer_units(self, request: Message, value: Any) -> list[bytes]:
        """Each unit of ``request`` answered with ``value(pn, fn, request value)`` (None: no data)."""
        parts: list[bytes] = []
        afn = request.afn
        for u in request.units:
            pairs = [(pn, fn, asked) for pn_, fn, asked in u.pairs() for pn in self._points((pn_,))]
            answers = [(pn, fn, value(pn, fn, asked)) for pn, fn, asked in pairs]
            if ALL_POINTS not in u.pns and answers and all(v is not None for _, _, v in answers):
                parts.append(encode_units(afn, True, [DataUnit(u.pns, u.fns, tuple(v for _, _, v in answers))]))
            else:
                parts += [encode_units(afn, True, [unit(pn, fn, v)]) for pn, fn, v in answers if v is not None]
        return parts

    # AFN 0C: present data from the last collection
    def _class1(self, request: Message, now: datetime, t: datetime) -> list[Frame]:
        def value(pn: int, fn: int, asked: Any) -> Any:
            if pn == P0:
                if fn == 2:
                    return t.replace(microsecond=0)
                if fn == 7:
                    return self.event_counter
                if fn == 5:
                    return ControlSettings((0x01 if self.protected else 0) | (0x04 if self.reminder else 0))
                if fn == 6:
                    return ControlState(self._bits("tripped") if self.kind == "special" else 0,
                                        0x01 if self.reminder else 0)
                return None
            point = self.points.get(pn)
            if point is None:
                return None
            return {129: point.energy, 33: point.forward, 25: point.power}.get(fn)

        return self._data_reply(request, self._answer_units(request, value))

    # AFN 0D: frozen data
    def _class2(self, request: Message, now: datetime, t: datetime) -> list[Frame]:
        def value(pn: int, fn: int, asked: Any) -> Any:
            point = self.points.get(pn)
            if point is None or not isinstance(asked, date):
                return None
            if fn == 161:
                return point.daily.get(asked)
            if fn == 177:
                return point.monthly.get(asked)
            return None

        return self._data_reply(request, self._answer_units(request, value))

    # AFN 0E: events by pointer
    def _class3(self, request: Message, now: datetime, t: datetime) -> list[Frame]:
        parts: list[bytes] = []
        for pn, fn, asked in request.items():
            if pn != P0 or not isinstance(asked, EventPointers) or fn not in (1, 2):
                continue
            stored = dict(self._events if fn == 1 else self._general)
            asked_for = [p % 256 for p in range(asked.start, asked.start + (asked.end - asked.start) % 256)]
            held = [p for p in asked_for if p in stored]
            if not held:
                continue
            run = asked_for[asked_for.index(held[0]):]  # from the first record held, as far as none is missing
            run = run[:next((i for i, p in enumerate(run) if p not in stored), len(run))]
            start, end = run[0], (run[-1] + 1) % 256
            records = tuple(stored[p] for p in run)
            if fn == 1 and (end - self._read_to) % 256 <= (self._ec1 - self._read_to) % 256:
                self._read_to = end  # read up to here: ACD clears once the master has them all
            log = EventLog(self._ec1, self._ec2, start, end, records)
            parts.append(encode_units(Afn.CLASS3_DATA, True, [unit(0, fn, log)]))
        return self._data_reply(request, parts)

    # AFN 04: set parameters
    def _set(self, request: Message, now: datetime, t: datetime) -> list[Frame]:
        results = []
        changed: list[bytes] = []
        for u in request.units:
            ok = True
            for pn, fn, value in u.pairs():
                if fn == 10 and pn == P0 and isinstance(value, MeterArchive):
                    self.set_archive(value.entries)
                elif fn == 3 and pn == P0 and isinstance(value, MasterAddress):
                    self.master_address = value
                else:
                    ok = False
            results.append(ItemResult(u.pns, u.fns, 0 if ok else 1))
            if ok:
                changed.append(encode_da(u.pns) + encode_dt(u.fns))
        if changed:  # ERC3: the items set, and by whom (at most 60 items in one record: Le is one byte)
            self._record(ParameterChange(t.replace(second=0, microsecond=0), request.address.master,
                                         tuple(changed[:60])))
        return self._confirm(request, results)

    # AFN 0A: query parameters
    def _query(self, request: Message, now: datetime, t: datetime) -> list[Frame]:
        parts: list[bytes] = []
        for pn, fn, value in request.items():
            if pn != P0:
                continue
            if fn == 10 and isinstance(value, ArchiveQuery):
                seqs = value.seqs or tuple(sorted(self.archive))
                entries = tuple(self.archive[s] for s in seqs if s in self.archive)
                if entries:
                    parts.append(encode_units(Afn.QUERY_PARAMETERS, True, [unit(0, 10, MeterArchive(entries))]))
            elif fn == 3 and self.master_address is not None:
                parts.append(encode_units(Afn.QUERY_PARAMETERS, True, [unit(0, 3, self.master_address)]))
        return self._data_reply(request, parts)

    # AFN 05: control
    def _control(self, request: Message, now: datetime, t: datetime) -> list[Frame]:
        results = []
        for u in request.units:
            ok = all(self._execute(pn, fn, value, t, now) for pn, fn, value in u.pairs())
            results.append(ItemResult(u.pns, u.fns, 0 if ok else 1))
        return self._confirm(request, results)

    def _execute(self, pn: int, fn: int, value: Any, t: datetime, now: datetime) -> bool:
        if fn in (1, 2):
            turn = self.turns.get(pn)
            if turn is None:
                return False
            if fn == 1:
                if self.protected or not isinstance(value, RemoteTrip):
                    return False
                turn.release_at = None
                if value.alarm_minutes:
                    turn.alarm_until = t + timedelta(minutes=value.alarm_minutes)
                else:
                    turn.alarm_until = None
                    turn.tripped = True
                if value.limit_half_hours:
                    start = turn.alarm_until or t
                    turn.release_at = start + timedelta(minutes=30 * value.limit_half_hours)
            else:
                turn.tripped = False
                turn.alarm_until = turn.release_at = None
        elif fn == 25 and pn == P0 and isinstance(value, ProtectOn):
            self.protected_until = datetime.max if not value.half_hours else t + timedelta(minutes=30 * value.half_hours)
            for turn in self.turns.values():  # 保电: every turn closes, no trip is executed
                turn.tripped = False
                turn.alarm_until = turn.release_at = None
        elif fn == 33 and pn == P0:
            self.protected_until = None
        elif fn in (26, 34) and pn == P0 and self.kind == "special":
            self.reminder = fn == 26
        elif fn == 31 and pn == P0 and isinstance(value, datetime):
            self.offset = value - self._true
        else:
            return False
        self.stats.controls += 1
        self._apply_turns(now)
        return True

    # AFN 10: transparent forwarding
    def _forward(self, request: Message, now: datetime, t: datetime) -> list[Frame]:
        parts: list[bytes] = []
        for pn, fn, value in request.items():
            if fn != 1 or not isinstance(value, ForwardRequest):
                continue
            self.stats.relays += 1
            payload = b""
            if value.port == self.port:
                for reply in self.bus.handle(value.payload, now):
                    if reply.delay * 1000 <= value.frame_timeout_ms:
                        payload = reply.data
                        break
            parts.append(encode_units(Afn.FORWARD, True, [unit(pn, 1, ForwardReply(value.port, payload))]))
        return self._data_reply(request, parts)


_HANDLERS: Final[Mapping[int, Any]] = {
    Afn.CLASS1_DATA: Gdw1376Terminal._class1,
    Afn.CLASS2_DATA: Gdw1376Terminal._class2,
    Afn.CLASS3_DATA: Gdw1376Terminal._class3,
    Afn.SET_PARAMETERS: Gdw1376Terminal._set,
    Afn.QUERY_PARAMETERS: Gdw1376Terminal._query,
    Afn.CONTROL: Gdw1376Terminal._control,
    Afn.FORWARD: Gdw1376Terminal._forward,
}


# --- values ---------------------------------------------------------------------------------------


def _register_values(values: Mapping[str, Any], kind: str, places: int, prefix: str = "energy."
                     ) -> tuple[Decimal | None, ...]:
    """Total and rates 1..4 of an energy kind (None where the meter gave none or a negative)."""
    names = [f"{prefix}{kind}.total", *(f"{prefix}{kind}.rate{r}" for r in range(1, _RATES + 1))]
    out: list[Decimal | None] = []
    for name in names:
        v = values.get(name)
        out.append(v.quantize(Decimal(1).scaleb(-places)) if isinstance(v, Decimal) and v >= 0 else None)
    return tuple(out)


def _decimal(values: Mapping[str, Any], name: str) -> Decimal | None:
    v = values.get(name)
    return v if isinstance(v, Decimal) else None


def _present_power(values: Mapping[str, Any], read_at: datetime) -> PresentPower:
    def four(prefix: str) -> tuple[Decimal | None, ...]:
        return tuple(_decimal(values, f"{prefix}.{p}") for p in _TOTAL_PHASES)

    pf = tuple(None if v is None else (v * _HUNDRED).quantize(Decimal("0.1")) for v in four("pf"))
    return PresentPower(read_at, four("power.active"), four("power.reactive"), pf,
                        tuple(_decimal(values, f"voltage.{p}") for p in _PHASES),
                        tuple(_decimal(values, f"current.{p}") for p in _PHASES),
                        _decimal(values, "current.n"), four("power.apparent"))


def _prune(store: dict[date, FrozenEnergy], keep: int) -> None:
    if len(store) > keep:
        for d in sorted(store)[:len(store) - keep]:
            del store[d]
