"""The application items (AFN, Fn) meterd reads and writes, each with its typed value.

Every entry knows its layout in one direction (master->terminal or terminal->master): how to take
its data from the frame (``parse``) and how to lay a value out (``build``).  An item without data
(a login, a class-1 read request) has the value ``None``.  The layouts are those of Q/GDW
1376.1-2013 (appendix A formats in :mod:`.formats`)::

    AFN  Fn   direction  value                         layout
    00   F1   both       None                          all confirmed
    00   F2   both       None                          all denied
    00   F3   both       ItemResults                   AFN, then (DA DT ERR) per item
    01   F1-F4 down      None                          hardware / data / factory / parameter reset
    02   F1   up         None                          login
    02   F2   up         None                          logout
    02   F3   up         None | Heartbeat              heartbeat; 2013 terminals add their clock (A.1)
    04   F3   down       MasterAddress                 main/backup IP (4) + port (2 LE), APN (16 ASCII)
    0A   F3   up
    04   F10  down       MeterArchive                  n (2), then 27 bytes per meter (see MeterEntry)
    0A   F10  up
    0A   F10  down       ArchiveQuery                  n (2), then n sequence numbers (2 each)
    05   F1   down       RemoteTrip                    one byte: D7..D4 limit time (half hours), D3..D0
                                                       alarm delay (minutes); pn = control turn
    05   F2   down       None                          permit reclose (允许合闸); pn = control turn
    05   F25  down       ProtectOn                     保电 on: duration in half hours (0: until released)
    05   F26  down       None                          payment reminder alarm (催费告警) on
    05   F31  down       datetime                      time sync (A.1)
    05   F33  down       None                          保电 off
    05   F34  down       None                          payment reminder alarm off
    0C   F2   up         datetime                      terminal clock (A.1)
    0C   F5   up         ControlSettings               flags (D0 保电, D1 剔除, D2 催费告警), groups,
                                                       6 bytes per group
    0C   F6   up         ControlState                  trip outputs (D0..D7 turns), 催费告警 state,
                                                       groups, 8 bytes per group
    0C   F7   up         EventCounter                  EC1 important, EC2 general (the frame's EC)
    0C   F25  up         PresentPower                  A.15, P x4 (A.9), Q x4 (A.9), PF x4 (A.5),
                                                       U x3 (A.7), I x3 + I0 (A.25), S x4 (A.9)
    0C   F33  up         ForwardEnergy                 A.15, M, active (A.14), reactive, Q1, Q4 (A.11)
                                                       each total + M rates
    0C   F129 up         EnergyReading                 A.15, M, forward active (A.14) total + M rates
    0C   F131 up         EnergyReading                 the same for reverse active
    0D   F161 down       date (Td_d, A.20)             daily frozen forward active energy ...
    0D   F161 up         FrozenEnergy                  Td_d, A.15, M, (M+1) x A.14
    0D   F163           (the same for reverse active)
    0D   F177 down       date (Td_m, A.21: first day)  monthly frozen forward active energy ...
    0D   F177 up         FrozenEnergy                  Td_m, A.15, M, (M+1) x A.14
    0D   F179           (the same for reverse active)
    0E   F1/F2 down      EventPointers                 Pm, Pn (important / general events)
    0E   F1/F2 up        EventLog                      EC1, EC2, Pm, Pn, (Pn - Pm) mod 256 records
                                                       (ERC, Le, data): typed by .events, else EventRecord
    10   F1   down       ForwardRequest                port, serial control byte, frame timeout, byte
                                                       timeout, k (2), k bytes (a DL/T 645 frame)
    10   F1   up         ForwardReply                  port, k (2), k bytes

Requests of the 0C items carry no data (``None``).  Values the terminal does not have (``EE``)
decode to ``None``.  Times are naive, in the terminal's clock (site local time, see :mod:`.formats`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

from meterd.errors import FrameLengthError, ProtocolError
from meterd.protocols.gdw1376 import formats as fmt
from meterd.protocols.gdw1376.events import TerminalEvent, decode_record, record_data
from meterd.protocols.gdw1376.frame import EventCounter
from meterd.protocols.gdw1376.units import decode_da, decode_dt, encode_da, encode_dt


class Reader:
    """A cursor over a frame's data-unit area; running short is a FrameLengthError naming the item."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise FrameLengthError(f"{what}: needs {n} bytes, {self.remaining} left in the frame",
                                   self.data[self.pos:])
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        raw = self.take(2, what)
        return raw[0] | (raw[1] << 8)


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ProtocolError(f"{what} {value} is not 0..65535")
    return bytes((value & 0xFF, value >> 8))


def _u8(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFF:
        raise ProtocolError(f"{what} {value} is not 0..255")
    return bytes((value,))


# --- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of AFN 00 F3: the data unit it answers and its ERR byte (0 = correct)."""

    pns: tuple[int, ...]
    fns: tuple[int, ...]
    error: int = 0

    @property
    def ok(self) -> bool:
        return self.error == 0


@dataclass(frozen=True, slots=True)
class ItemResults:
    """AFN 00 F3: confirm or deny item by item the frame of ``afn`` it answers."""

    afn: int
    items: tuple[ItemResult, ...]

    @property
    def all_ok(self) -> bool:
        return all(i.ok for i in self.items)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """AFN 02 F3 with data: the terminal's clock (Q/GDW 1376.1-2013 terminals send it)."""

    clock: datetime | None


@dataclass(frozen=True, slots=True)
class MasterAddress:
    """AFN 04/0A F3: the master stations a terminal dials, and its APN."""

    primary_ip: str
    primary_port: int
    backup_ip: str = "0.0.0.0"
    backup_port: int = 0
    apn: str = ""


# F10's baud codes (通信速率, D7..D5); 0 is the terminal's default for the protocol
ARCHIVE_BAUDS: Final = {0: 0, 1: 600, 2: 1200, 3: 2400, 4: 4800, 5: 7200, 6: 9600, 7: 19200}
# F10's protocol types (通信协议类型)
METER_PROTOCOLS: Final = {0: "not read (无需抄表)", 1: "DL/T 645-1997", 2: "AC sampling device (交流采样装置)",
                          30: "DL/T 645-2007", 31: "narrow-band PLC module (串行接口连接窄带低压载波通信模块)"}
PROTOCOL_645_1997: Final = 1
PROTOCOL_645_2007: Final = 30


@dataclass(frozen=True, slots=True)
class MeterEntry:
    """One meter of the terminal's archive (AFN 04 / 0A F10, 27 bytes).

    ``baud`` is in bit/s, 0 for the terminal's default; ``protocol`` a :data:`METER_PROTOCOLS` code;
    ``password`` the 6 bytes as sent; ``integer_digits`` 4..7 and ``decimal_digits`` 1..4 the meter's
    register display; classes 0..15.
    """

    seq: int
    pn: int
    port: int
    baud: int
    protocol: int
    address: str | None
    password: bytes = bytes(6)
    rates: int = 4
    integer_digits: int = 6
    decimal_digits: int = 2
    collector: str | None = "000000000000"
    major_class: int = 0
    minor_class: int = 0


@dataclass(frozen=True, slots=True)
class MeterArchive:
    entries: tuple[MeterEntry, ...]


@dataclass(frozen=True, slots=True)
class ArchiveQuery:
    """AFN 0A F10 request: the archive's sequence numbers asked for."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RemoteTrip:
    """AFN 05 F1 (遥控跳闸) for one control turn (pn): how long to limit (half hours, 0 = until
    released) and the alarm before the trip (minutes, 0 = trip at once)."""

    limit_half_hours: int = 0
    alarm_minutes: int = 0


@dataclass(frozen=True, slots=True)
class ProtectOn:
    """AFN 05 F25 (终端保电投入): how long, in half hours (0 = until F33 releases it)."""

    half_hours: int = 0


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """AFN 0C F5 (终端控制设置状态) of p0: what is switched on -- 保电 (D0), 剔除 (D1), the payment
    reminder alarm 催费告警 (D2) -- then the total-add groups' settings (6 bytes per group whose
    bit is set in ``groups``; kept as they came)."""

    flags: int
    groups: int = 0
    group_data: bytes = b""

    @property
    def protected(self) -> bool:
        return bool(self.flags & 0x01)

    @property
    def reminder(self) -> bool:
        return bool(self.flags & 0x04)


@dataclass(frozen=True, slots=True)
class ControlState:
    """AFN 0C F6 (终端当前控制状态) of p0: the remote-trip outputs (D0..D7 = turns 1..8 tripped),
    the payment reminder alarm now sounding (催费告警状态, D0), then the total-add groups' state
    (8 bytes per group whose bit is set in ``groups``; kept as they came)."""

    tripped: int
    reminder: int = 0
    groups: int = 0
    group_data: bytes = b""

    def turn_tripped(self, turn: int) -> bool:
        return bool(self.tripped >> (turn - 1) & 1)


@dataclass(frozen=True, slots=True)
class PresentPower:
    """AFN 0C F25: the terminal's last reading of a point's power, power factor, voltage and current.

    ``active``/``reactive``/``apparent``/``power_factor`` are (total, A, B, C); ``voltage`` and
    ``current`` (A, B, C).  kW, kvar, kVA, %, V, A; None where the terminal has no value.
    """

    read_at: datetime | None
    active: tuple[Decimal | None, ...]
    reactive: tuple[Decimal | None, ...]
    power_factor: tuple[Decimal | None, ...]
    voltage: tuple[Decimal | None, ...]
    current: tuple[Decimal | None, ...]
    zero_sequence_current: Decimal | None
    apparent: tuple[Decimal | None, ...]


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """AFN 0C F129 / F131: register readings (kWh) when the terminal last read the meter.
    ``values[0]`` is the total, ``values[i]`` rate i (1 sharp, 2 peak, 3 flat, 4 valley by custom)."""

    read_at: datetime | None
    values: tuple[Decimal | None, ...]

    @property
    def total(self) -> Decimal | None:
        return self.values[0]

    @property
    def rates(self) -> int:
        return len(self.values) - 1


@dataclass(frozen=True, slots=True)
class ForwardEnergy:
    """AFN 0C F33: forward active (kWh), forward reactive and quadrant I / IV reactive (kvarh),
    each (total, rate 1..M)."""

    read_at: datetime | None
    active: tuple[Decimal | None, ...]
    reactive: tuple[Decimal | None, ...]
    quadrant1: tuple[Decimal | None, ...]
    quadrant4: tuple[Decimal | None, ...]


@dataclass(frozen=True, slots=True)
class FrozenEnergy:
    """AFN 0D F161/F163 (daily) and F177/F179 (monthly): the frozen registers (kWh) of ``period``
    (the day; for a month its first day), read by the terminal at ``read_at``."""

    period: date | None
    read_at: datetime | None
    values: tuple[Decimal | None, ...]

    @property
    def total(self) -> Decimal | None:
        return self.values[0]


@dataclass(frozen=True, slots=True)
class EventPointers:
    """AFN 0E F1/F2 request: the records from pointer ``start`` up to (not including) ``end``."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class EventLog:
    """AFN 0E F1/F2 reply: the counters now, the pointers of the records sent, the records."""

    important: int
    general: int
    start: int
    end: int
    records: tuple[TerminalEvent, ...]


PARITIES: Final = ("N", "E", "O")
FORWARD_BAUDS: Final = (300, 600, 1200, 2400, 4800, 7200, 9600, 19200)


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """The line a relayed frame goes out on (AFN 10 F1 control byte)."""

    baud: int = 2400
    parity: str = "E"
    data_bits: int = 8
    stop_bits: int = 1

    def to_byte(self) -> int:
        if self.baud not in FORWARD_BAUDS:
            raise ProtocolError(f"baud rate {self.baud} is not one of {FORWARD_BAUDS}")
        if self.parity not in PARITIES or self.data_bits not in (5, 6, 7, 8) or self.stop_bits not in (1, 2):
            raise ProtocolError(f"line settings {self.data_bits}{self.parity}{self.stop_bits} are not 5-8 data bits, "
                                "N/E/O parity, 1-2 stop bits")
        parity = {"N": 0x00, "E": 0x08, "O": 0x0C}[self.parity]
        return (FORWARD_BAUDS.index(self.baud) << 5) | ((self.stop_bits - 1) << 4) | parity | (self.data_bits - 5)

    @classmethod
    def from_byte(cls, b: int) -> SerialSettings:
        parity = "N" if not b & 0x08 else ("O" if b & 0x04 else "E")
        return cls(FORWARD_BAUDS[b >> 5], parity, (b & 0x03) + 5, ((b >> 4) & 1) + 1)

    def __str__(self) -> str:
        return f"{self.baud} {self.data_bits}{self.parity}{self.stop_bits}"


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """AFN 10 F1 down: relay ``payload`` (a DL/T 645 frame) on the terminal's ``port`` and wait
    ``frame_timeout_ms`` for the answer, ``byte_timeout_ms`` between its bytes."""

    port: int
    payload: bytes
    serial: SerialSettings = SerialSettings()
    frame_timeout_ms: int = 10_000
    byte_timeout_ms: int = 500


@dataclass(frozen=True, slots=True)
class ForwardReply:
    """AFN 10 F1 up: what came back on ``port`` (empty when the meter did not answer)."""

    port: int
    payload: bytes




# --- layouts --------------------------------------------------------------------------------------


def _none_parse(r: Reader) -> None:
    return None


def _none_build(value: Any) -> bytes:
    if value is not None:
        raise ProtocolError(f"this item carries no data, got {value!r}")
    return b""


def _item_results_parse(r: Reader) -> ItemResults:
    afn = r.byte("AFN 00 F3: the AFN answered")
    items = []
    while r.remaining:
        da = r.take(2, "AFN 00 F3 item DA")
        dt = r.take(2, "AFN 00 F3 item DT")
        err = r.byte("AFN 00 F3 item ERR")
        items.append(ItemResult(decode_da(da[0], da[1]), decode_dt(dt[0], dt[1]), err))
    return ItemResults(afn, tuple(items))


def _item_results_build(v: ItemResults) -> bytes:
    out = _u8(v.afn, "AFN")
    for item in v.items:
        out += encode_da(item.pns) + encode_dt(item.fns) + _u8(item.error, "ERR")
    return out


def _heartbeat_parse(r: Reader) -> Heartbeat | None:
    if r.remaining >= 6:
        return Heartbeat(fmt.decode_a1(r.take(6, "heartbeat clock")))
    return None


def _heartbeat_build(v: Heartbeat | None) -> bytes:
    return b"" if v is None else fmt.encode_a1(v.clock)


def _ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(bytes(raw)))


def _ip_wire(text: str, what: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise ProtocolError(f"{what} {text!r} is not an IPv4 address") from None


def _master_parse(r: Reader) -> MasterAddress:
    ip1 = _ip(r.take(4, "F3 primary IP"))
    port1 = r.u16("F3 primary port")
    ip2 = _ip(r.take(4, "F3 backup IP"))
    port2 = r.u16("F3 backup port")
    apn_raw = r.take(16, "F3 APN").rstrip(b"\x00")
    try:
        apn = apn_raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("F3 APN is not ASCII", apn_raw) from None
    return MasterAddress(ip1, port1, ip2, port2, apn)


def _master_build(v: MasterAddress) -> bytes:
    apn = v.apn.encode("ascii", errors="replace")
    if not v.apn.isascii() or len(apn) > 16:
        raise ProtocolError(f"APN {v.apn!r} is not at most 16 ASCII characters")
    return (_ip_wire(v.primary_ip, "primary IP") + _u16(v.primary_port, "primary port")
            + _ip_wire(v.backup_ip, "backup IP") + _u16(v.backup_port, "backup port") + apn.ljust(16, b"\x00"))


_BAUD_CODE: Final = {v: k for k, v in ARCHIVE_BAUDS.items()}


def _entry_parse(r: Reader) -> MeterEntry:
    seq = r.u16("F10 sequence number")
    pn = r.u16("F10 point number")
    rate_port = r.byte("F10 rate and port")
    protocol = r.byte("F10 protocol")
    address = fmt.decode_a12(r.take(6, "F10 meter address"))
    password = r.take(6, "F10 password")
    rates = r.byte("F10 rate count") & 0x3F
    digits = r.byte("F10 digits")
    collector = fmt.decode_a12(r.take(6, "F10 collector address"))
    classes = r.byte("F10 user classes")
    return MeterEntry(seq, pn, rate_port & 0x1F, ARCHIVE_BAUDS[rate_port >> 5], protocol, address, password, rates,
                      ((digits >> 2) & 0x03) + 4, (digits & 0x03) + 1, collector, classes >> 4, classes & 0x0F)


def _entry_build(e: MeterEntry) -> bytes:
    if e.baud not in _BAUD_CODE:
        raise ProtocolError(f"meter {e.seq}: baud rate {e.baud} is not one of {sorted(_BAUD_CODE)} (0: default)")
    if not 0 <= e.port <= 31:
        raise ProtocolError(f"meter {e.seq}: port {e.port} is not 0..31")
    if not (0 <= e.rates <= 63 and 4 <= e.integer_digits <= 7 and 1 <= e.decimal_digits <= 4):
        raise ProtocolError(f"meter {e.seq}: {e.rates} rates, {e.integer_digits}.{e.decimal_digits} digits out of range")
    if not (0 <= e.major_class <= 15 and 0 <= e.minor_class <= 15):
        raise ProtocolError(f"meter {e.seq}: user classes {e.major_class}/{e.minor_class} are not 0..15")
    if len(e.password) != 6:
        raise ProtocolError(f"meter {e.seq}: the password is {len(e.password)} bytes, not 6")
    return (_u16(e.seq, "sequence number") + _u16(e.pn, "point number")
            + bytes(((_BAUD_CODE[e.baud] << 5) | e.port,)) + _u8(e.protocol, "protocol")
            + fmt.encode_a12(e.address) + e.password + bytes((e.rates,))
            + bytes((((e.integer_digits - 4) << 2) | (e.decimal_digits - 1),))
            + fmt.encode_a12(e.collector) + bytes(((e.major_class << 4) | e.minor_class,)))


def _archive_parse(r: Reader) -> MeterArchive:
    n = r.u16("F10 meter count")
    if n * 27 > r.remaining:
        raise FrameLengthError(f"F10 says {n} meters ({n * 27} bytes), {r.remaining} bytes left", r.data[r.pos:])
    return MeterArchive(tuple(_entry_parse(r) for _ in range(n)))


def _archive_build(v: MeterArchive) -> bytes:
    return _u16(len(v.entries), "meter count") + b"".join(_entry_build(e) for e in v.entries)


def _archive_query_parse(r: Reader) -> ArchiveQuery:
    n = r.u16("F10 query count")
    if 2 * n > r.remaining:
        raise FrameLengthError(f"F10 query says {n} meters, {r.remaining} bytes left", r.data[r.pos:])
    return ArchiveQuery(tuple(r.u16("F10 sequence number") for _ in range(n)))


def _archive_query_build(v: ArchiveQuery) -> bytes:
    return _u16(len(v.seqs), "query count") + b"".join(_u16(s, "sequence number") for s in v.seqs)


def _trip_parse(r: Reader) -> RemoteTrip:
    b = r.byte("F1 limit time and alarm delay")
    return RemoteTrip(b >> 4, b & 0x0F)


def _trip_build(v: RemoteTrip) -> bytes:
    if not (0 <= v.limit_half_hours <= 15 and 0 <= v.alarm_minutes <= 15):
        raise ProtocolError(f"remote trip: limit {v.limit_half_hours} half hours and alarm {v.alarm_minutes} min "
                            "must each be 0..15")
    return bytes(((v.limit_half_hours << 4) | v.alarm_minutes,))


def _protect_parse(r: Reader) -> ProtectOn:
    return ProtectOn(r.byte("F25 protection duration"))


def _protect_build(v: ProtectOn) -> bytes:
    return _u8(v.half_hours, "protection duration (half hours)")


def _group_bytes(r: Reader, groups: int, size: int, what: str) -> bytes:
    return r.take(size * groups.bit_count(), what)


def _settings_parse(r: Reader) -> ControlSettings:
    flags, groups = r.byte("F5 保电/剔除/催费告警 flags"), r.byte("F5 total-add group flags")
    return ControlSettings(flags, groups, _group_bytes(r, groups, 6, "F5 total-add groups"))


def _settings_build(v: ControlSettings) -> bytes:
    if len(v.group_data) != 6 * v.groups.bit_count():
        raise ProtocolError(f"F5: {v.groups.bit_count()} groups need {6 * v.groups.bit_count()} bytes, "
                            f"{len(v.group_data)} given")
    return _u8(v.flags, "F5 flags") + _u8(v.groups, "F5 groups") + v.group_data


def _state_parse(r: Reader) -> ControlState:
    tripped, reminder = r.byte("F6 remote-trip outputs"), r.byte("F6 reminder alarm state")
    groups = r.byte("F6 total-add group flags")
    return ControlState(tripped, reminder, groups, _group_bytes(r, groups, 8, "F6 total-add groups"))


def _state_build(v: ControlState) -> bytes:
    if len(v.group_data) != 8 * v.groups.bit_count():
        raise ProtocolError(f"F6: {v.groups.bit_count()} groups need {8 * v.groups.bit_count()} bytes, "
                            f"{len(v.group_data)} given")
    return (_u8(v.tripped, "F6 trip outputs") + _u8(v.reminder, "F6 reminder") + _u8(v.groups, "F6 groups")
            + v.group_data)


def _a1_parse(r: Reader) -> datetime | None:
    return fmt.decode_a1(r.take(6, "A.1 date-time"))


def _a1_build(v: datetime | None) -> bytes:
    return fmt.encode_a1(v)


def _numbers(r: Reader, name: str, count: int, what: str) -> tuple[Decimal | None, ...]:
    size = fmt.NUMBER_FORMATS[name][0]
    return tuple(fmt.decode_format(name, r.take(size, what)) for _ in range(count))


def _numbers_wire(name: str, values: tuple[Decimal | None, ...], count: int, what: str) -> bytes:
    if len(values) != count:
        raise ProtocolError(f"{what}: {len(values)} values, {count} expected")
    return b"".join(fmt.encode_format(name, v) for v in values)


def _power_parse(r: Reader) -> PresentPower:
    read_at = fmt.decode_a15(r.take(5, "F25 reading time"))
    return PresentPower(read_at, _numbers(r, "A.9", 4, "F25 active power"), _numbers(r, "A.9", 4, "F25 reactive power"),
                        _numbers(r, "A.5", 4, "F25 power factor"), _numbers(r, "A.7", 3, "F25 voltage"),
                        _numbers(r, "A.25", 3, "F25 current"), _numbers(r, "A.25", 1, "F25 zero-sequence current")[0],
                        _numbers(r, "A.9", 4, "F25 apparent power"))


def _power_build(v: PresentPower) -> bytes:
    return (fmt.encode_a15(v.read_at) + _numbers_wire("A.9", v.active, 4, "active power")
            + _numbers_wire("A.9", v.reactive, 4, "reactive power") + _numbers_wire("A.5", v.power_factor, 4, "power factor")
            + _numbers_wire("A.7", v.voltage, 3, "voltage") + _numbers_wire("A.25", v.current, 3, "current")
            + fmt.encode_format("A.25", v.zero_sequence_current) + _numbers_wire("A.9", v.apparent, 4, "apparent power"))


MAX_RATES: Final = 63


def _rates(r: Reader, what: str) -> int:
    m = r.byte(f"{what} rate count")
    if m > MAX_RATES:
        raise ProtocolError(f"{what}: rate count {m} is above {MAX_RATES}")
    return m


def _rate_count(values: tuple[Decimal | None, ...], what: str) -> bytes:
    if not 1 <= len(values) <= MAX_RATES + 1:
        raise ProtocolError(f"{what}: {len(values)} values; give the total and 0..{MAX_RATES} rates")
    return bytes((len(values) - 1,))


def _energy_parse(r: Reader) -> EnergyReading:
    read_at = fmt.decode_a15(r.take(5, "energy reading time"))
    m = _rates(r, "energy")
    return EnergyReading(read_at, _numbers(r, "A.14", m + 1, "energy register"))


def _energy_build(v: EnergyReading) -> bytes:
    count = _rate_count(v.values, "energy")
    return fmt.encode_a15(v.read_at) + count + _numbers_wire("A.14", v.values, len(v.values), "energy")


def _forward_energy_parse(r: Reader) -> ForwardEnergy:
    read_at = fmt.decode_a15(r.take(5, "F33 reading time"))
    m = _rates(r, "F33")
    return ForwardEnergy(read_at, _numbers(r, "A.14", m + 1, "F33 active"), _numbers(r, "A.11", m + 1, "F33 reactive"),
                         _numbers(r, "A.11", m + 1, "F33 quadrant I"), _numbers(r, "A.11", m + 1, "F33 quadrant IV"))


def _forward_energy_build(v: ForwardEnergy) -> bytes:
    count = _rate_count(v.active, "F33")
    n = len(v.active)
    return (fmt.encode_a15(v.read_at) + count + _numbers_wire("A.14", v.active, n, "F33 active")
            + _numbers_wire("A.11", v.reactive, n, "F33 reactive") + _numbers_wire("A.11", v.quadrant1, n, "F33 quadrant I")
            + _numbers_wire("A.11", v.quadrant4, n, "F33 quadrant IV"))


def _day_parse(r: Reader) -> date | None:
    return fmt.decode_a20(r.take(3, "Td_d (day)"))


def _month_parse(r: Reader) -> date | None:
    return fmt.decode_a21(r.take(2, "Td_m (month)"))


def _frozen_parser(period: Callable[[Reader], date | None]) -> Callable[[Reader], FrozenEnergy]:
    def parse(r: Reader) -> FrozenEnergy:
        when = period(r)
        read_at = fmt.decode_a15(r.take(5, "frozen reading time"))
        m = _rates(r, "frozen energy")
        return FrozenEnergy(when, read_at, _numbers(r, "A.14", m + 1, "frozen energy register"))

    return parse


def _frozen_builder(period: Callable[[Any], bytes]) -> Callable[[FrozenEnergy], bytes]:
    def build(v: FrozenEnergy) -> bytes:
        count = _rate_count(v.values, "frozen energy")
        return period(v.period) + fmt.encode_a15(v.read_at) + count + _numbers_wire("A.14", v.values, len(v.values),
                                                                                     "frozen energy")

    return build


def _counters_parse(r: Reader) -> EventCounter:
    return EventCounter(r.byte("EC1 important events"), r.byte("EC2 general events"))


def _counters_build(v: EventCounter) -> bytes:
    return _u8(v.important, "EC1") + _u8(v.general, "EC2")


def _pointers_parse(r: Reader) -> EventPointers:
    return EventPointers(r.byte("event start pointer Pm"), r.byte("event end pointer Pn"))


def _pointers_build(v: EventPointers) -> bytes:
    return _u8(v.start, "event start pointer") + _u8(v.end, "event end pointer")


def _record_parse(r: Reader) -> TerminalEvent:
    erc = r.byte("event code ERC")
    length = r.byte(f"ERC{erc} length Le")
    return decode_record(erc, r.take(length, f"ERC{erc} data"))


def _record_build(v: TerminalEvent) -> bytes:
    erc, data = record_data(v)
    return _u8(erc, "ERC") + _u8(len(data), "event length Le") + data


def _event_log_parse(r: Reader) -> EventLog:
    ec1, ec2 = r.byte("EC1"), r.byte("EC2")
    start, end = r.byte("event start pointer Pm"), r.byte("event end pointer Pn")
    count = (end - start) % 256
    return EventLog(ec1, ec2, start, end, tuple(_record_parse(r) for _ in range(count)))


def _event_log_build(v: EventLog) -> bytes:
    if (v.end - v.start) % 256 != len(v.records):
        raise ProtocolError(f"event pointers {v.start}..{v.end} name {(v.end - v.start) % 256} records, "
                            f"{len(v.records)} given")
    head = b"".join(_u8(x, "event counter or pointer") for x in (v.important, v.general, v.start, v.end))
    return head + b"".join(_record_build(rec) for rec in v.records)


def _timeout_ms(b: int) -> int:
    return (b & 0x7F) * (1000 if b & 0x80 else 10)


def _timeout_byte(ms: int) -> int:
    if ms % 10 == 0 and ms // 10 <= 0x7F:
        return ms // 10
    if ms % 1000 == 0 and ms // 1000 <= 0x7F:
        return 0x80 | (ms // 1000)
    raise ProtocolError(f"frame timeout {ms} ms is neither 0..1270 ms in 10 ms steps nor 1..127 s")


def _forward_request_parse(r: Reader) -> ForwardRequest:
    port = r.byte("forward port")
    serial = SerialSettings.from_byte(r.byte("forward line settings"))
    frame_timeout = _timeout_ms(r.byte("forward frame timeout"))
    byte_timeout = r.byte("forward byte timeout") * 10
    k = r.u16("forward length")
    return ForwardRequest(port, r.take(k, "forwarded bytes"), serial, frame_timeout, byte_timeout)


def _forward_request_build(v: ForwardRequest) -> bytes:
    if v.byte_timeout_ms % 10 or not 0 <= v.byte_timeout_ms <= 2550:
        raise ProtocolError(f"byte timeout {v.byte_timeout_ms} ms is not 0..2550 ms in 10 ms steps")
    return (_u8(v.port, "port") + bytes((v.serial.to_byte(), _timeout_byte(v.frame_timeout_ms), v.byte_timeout_ms // 10))
            + _u16(len(v.payload), "forwarded length") + v.payload)


def _forward_reply_parse(r: Reader) -> ForwardReply:
    port = r.byte("forward port")
    k = r.u16("forward length")
    return ForwardReply(port, r.take(k, "forwarded bytes"))


def _forward_reply_build(v: ForwardReply) -> bytes:
    return _u8(v.port, "port") + _u16(len(v.payload), "forwarded length") + v.payload


# --- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One (AFN, Fn) in one direction: its name and layout."""

    name: str
    parse: Callable[[Reader], Any]
    build: Callable[[Any], bytes]


_NONE_LAYOUT: Final = (_none_parse, _none_build)
DOWN: Final = False
UP: Final = True

# (AFN, Fn) -> the standard's name
NAMES: Final[dict[tuple[int, int], str]] = {
    (0x00, 1): "all confirmed (全部确认)",
    (0x00, 2): "all denied (全部否认)",
    (0x00, 3): "confirmed/denied item by item (按数据单元标识确认和否认)",
    (0x01, 1): "hardware reset (硬件初始化)",
    (0x01, 2): "data area reset (数据区初始化)",
    (0x01, 3): "parameters and data reset to factory (参数及全体数据区初始化)",
    (0x01, 4): "parameters (but communication) and data reset (参数及全体数据区初始化, 除通信参数)",
    (0x02, 1): "login (登录)",
    (0x02, 2): "logout (退出登录)",
    (0x02, 3): "heartbeat (心跳)",
    (0x04, 3): "master station IP addresses, ports and APN (主站IP地址和端口)",
    (0x04, 10): "meter archive (终端电能表/交流采样装置配置参数)",
    (0x0A, 3): "master station IP addresses, ports and APN (主站IP地址和端口)",
    (0x0A, 10): "meter archive (终端电能表/交流采样装置配置参数)",
    (0x05, 1): "remote trip (遥控跳闸)",
    (0x05, 2): "permit reclose (允许合闸)",
    (0x05, 25): "protection on (终端保电投入)",
    (0x05, 26): "payment reminder alarm on (催费告警投入)",
    (0x05, 31): "time sync (对时命令)",
    (0x05, 33): "protection off (终端保电解除)",
    (0x05, 34): "payment reminder alarm off (催费告警解除)",
    (0x0C, 2): "terminal clock (终端日历时钟)",
    (0x0C, 5): "control settings (终端控制设置状态)",
    (0x0C, 6): "control state now (终端当前控制状态)",
    (0x0C, 7): "event counters (终端事件计数器当前值)",
    (0x0C, 25): "present power, power factor, voltage, current (当前三相及总有/无功功率、功率因数，三相电压、电流)",
    (0x0C, 33): "present forward active/reactive energy by rate (当前正向有/无功电能示值、一/四象限无功电能示值)",
    (0x0C, 129): "present forward active energy by rate (当前正向有功电能示值)",
    (0x0C, 131): "present reverse active energy by rate (当前反向有功电能示值)",
    (0x0D, 161): "daily frozen forward active energy by rate (日冻结正向有功电能示值)",
    (0x0D, 163): "daily frozen reverse active energy by rate (日冻结反向有功电能示值)",
    (0x0D, 177): "monthly frozen forward active energy by rate (月冻结正向有功电能示值)",
    (0x0D, 179): "monthly frozen reverse active energy by rate (月冻结反向有功电能示值)",
    (0x0E, 1): "important events (请求重要事件)",
    (0x0E, 2): "general events (请求一般事件)",
    (0x10, 1): "transparent forwarding (透明转发)",
}

_LAYOUTS: dict[tuple[int, int, bool], tuple[Callable[[Reader], Any], Callable[[Any], bytes]]] = {}


def _both(afn: int, fn: int, layout: tuple[Callable[[Reader], Any], Callable[[Any], bytes]]) -> None:
    _LAYOUTS[(afn, fn, DOWN)] = _LAYOUTS[(afn, fn, UP)] = layout


for _fn in (1, 2):
    _both(0x00, _fn, _NONE_LAYOUT)
_both(0x00, 3, (_item_results_parse, _item_results_build))
for _fn in (1, 2, 3, 4):
    _LAYOUTS[(0x01, _fn, DOWN)] = _NONE_LAYOUT
for _fn in (1, 2, 3):
    _LAYOUTS[(0x02, _fn, DOWN)] = _NONE_LAYOUT
_LAYOUTS[(0x02, 1, UP)] = _LAYOUTS[(0x02, 2, UP)] = _NONE_LAYOUT
_LAYOUTS[(0x02, 3, UP)] = (_heartbeat_parse, _heartbeat_build)
_LAYOUTS[(0x04, 3, DOWN)] = _LAYOUTS[(0x0A, 3, UP)] = (_master_parse, _master_build)
_LAYOUTS[(0x0A, 3, DOWN)] = _NONE_LAYOUT
_LAYOUTS[(0x04, 10, DOWN)] = _LAYOUTS[(0x0A, 10, UP)] = (_archive_parse, _archive_build)
_LAYOUTS[(0x0A, 10, DOWN)] = (_archive_query_parse, _archive_query_build)
_LAYOUTS[(0x05, 1, DOWN)] = (_trip_parse, _trip_build)
_LAYOUTS[(0x05, 2, DOWN)] = _LAYOUTS[(0x05, 33, DOWN)] = _NONE_LAYOUT
_LAYOUTS[(0x05, 26, DOWN)] = _LAYOUTS[(0x05, 34, DOWN)] = _NONE_LAYOUT
_LAYOUTS[(0x05, 25, DOWN)] = (_protect_parse, _protect_build)
_LAYOUTS[(0x05, 31, DOWN)] = (_a1_parse, _a1_build)
for _fn in (2, 5, 6, 7, 25, 33, 129, 131):
    _LAYOUTS[(0x0C, _fn, DOWN)] = _NONE_LAYOUT
_LAYOUTS[(0x0C, 5, UP)] = (_settings_parse, _settings_build)
_LAYOUTS[(0x0C, 6, UP)] = (_state_parse, _state_build)
_LAYOUTS[(0x0C, 7, UP)] = (_counters_parse, _counters_build)
_LAYOUTS[(0x0C, 2, UP)] = (_a1_parse, _a1_build)
_LAYOUTS[(0x0C, 25, UP)] = (_power_parse, _power_build)
_LAYOUTS[(0x0C, 33, UP)] = (_forward_energy_parse, _forward_energy_build)
_LAYOUTS[(0x0C, 129, UP)] = _LAYOUTS[(0x0C, 131, UP)] = (_energy_parse, _energy_build)
for _fn in (161, 163):
    _LAYOUTS[(0x0D, _fn, DOWN)] = (_day_parse, fmt.encode_a20)
    _LAYOUTS[(0x0D, _fn, UP)] = (_frozen_parser(_day_parse), _frozen_builder(fmt.encode_a20))
for _fn in (177, 179):
    _LAYOUTS[(0x0D, _fn, DOWN)] = (_month_parse, fmt.encode_a21)
    _LAYOUTS[(0x0D, _fn, UP)] = (_frozen_parser(_month_parse), _frozen_builder(fmt.encode_a21))
for _fn in (1, 2):
    _LAYOUTS[(0x0E, _fn, DOWN)] = (_pointers_parse, _pointers_build)
    _LAYOUTS[(0x0E, _fn, UP)] = (_event_log_parse, _event_log_build)
_LAYOUTS[(0x10, 1, DOWN)] = (_forward_request_parse, _forward_request_build)
_LAYOUTS[(0x10, 1, UP)] = (_forward_reply_parse, _forward_reply_build)

CATALOGUE: Final[dict[tuple[int, int, bool], Item]] = {
    key: Item(NAMES[key[:2]], parse, build) for key, (parse, build) in _LAYOUTS.items()
}
"""(AFN, Fn, uplink) -> :class:`Item`."""


NO_DATA_REQUESTS: Final = frozenset({0x0C})
"""AFNs whose master requests never carry data (any Fn reads as a bare DA/DT)."""


def lookup(afn: int, fn: int, uplink: bool) -> Item | None:
    item = CATALOGUE.get((afn, fn, uplink))
    if item is None and not uplink and afn in NO_DATA_REQUESTS:
        return Item(NAMES.get((afn, fn), f"F{fn} (not in meterd's catalogue; the request carries no data)"),
                    _none_parse, _none_build)
    return item


def supported() -> list[tuple[int, int, bool]]:
    """Every (AFN, Fn, uplink) meterd can read and write, sorted."""
    return sorted(CATALOGUE)


# --- shortcuts for the master side ----------------------------------------------------------------


def _parse_whole(parse: Callable[[Reader], Any], data: bytes, what: str) -> Any:
    r = Reader(bytes(data))
    value = parse(r)
    if r.remaining:
        raise FrameLengthError(f"{what}: {r.remaining} byte(s) after the item", bytes(data))
    return value


def parse_f129(data: bytes) -> EnergyReading:
    """The data of one AFN 0C F129 reply unit (after DA DT) -> :class:`EnergyReading`."""
    value: EnergyReading = _parse_whole(_energy_parse, data, "AFN 0C F129")
    return value


def parse_f25(data: bytes) -> PresentPower:
    value: PresentPower = _parse_whole(_power_parse, data, "AFN 0C F25")
    return value


def parse_f161(data: bytes) -> FrozenEnergy:
    value: FrozenEnergy = _parse_whole(_frozen_parser(_day_parse), data, "AFN 0D F161")
    return value
