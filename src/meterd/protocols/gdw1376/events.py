"""Terminal event records (终端事件记录, AFN 0E): the ERCs meterd decodes, each with its typed value.

An event record on the wire is ``ERC (1) | Le (1) | Le bytes of data``.  The layouts are those of
Q/GDW 1376.1-2013 appendix B (事件记录数据格式); every one was checked against a public terminal's
firmware that writes them, gdgly/NUC97X_JS ``STM32F4xx/Terminal/Terminal_AFN0E_Event.c`` (the
functions ``ERCn_Event``), and the names against its menu table (``STM32F4xx/Menu/
Menu_1_RealTimeData.c``, ``LogoutList``, ``TerminalBugList``)::

    ERC  Le      data                                                    value
    1    14      A.15 time, flags (D0 data initialised, D1 software      InitVersionChange
                 version changed), old version (4 ASCII), new (4 ASCII)
    3    6+4n    A.15 time, master address (启动站地址), n x DA DT of    ParameterChange
                 the items changed
    10   28      A.15 time, pn+flag (2), fault (1: D0..D2 phases a..c,  VoltageFault
                 D6..D7 1 = 断相 phase break, 2 = 失压 voltage loss),
                 Ua Ub Uc (A.7), Ia Ib Ic (A.25), forward active (A.14)
    13   8       A.15 time, pn+flag (2), flags (D0 programming or demand MeterFault
                 reset count changed, D1 phase-break count, D2 voltage-
                 loss count, D3 power-off count, D4 battery low)
    14   10/11   A.15 off, A.15 on, [attribute byte, 2013]               PowerOnOff
    21   6       A.15 time, fault code (1 main-board memory, 2 clock,   TerminalFault
                 3 main-board communication, 4 RS-485 reading, 5
                 display board, 6 carrier channel)
    31   21      A.15 time, pn+flag (2), A.15 last good read, forward   ReadFailure
                 active (A.14) and reactive (A.11) at that read

"pn+flag" is two bytes, low first: D0..D11 the measuring point, D15 1 = the condition began (产生),
0 = it ended (恢复).

Any other ERC, and a record of a known ERC whose data does not lay out as above (another length, a
bad time), is an :class:`EventRecord`: the ERC and its raw bytes.  A record is never dropped and
never stops the decoder: a terminal's newer or vendor event is stored for a person to read.  Decoding
is canonical: a record becomes typed only when its value lays out to the same bytes again, so
``encode(decode(raw)) == raw`` for every record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Final

from meterd.errors import ProtocolError
from meterd.protocols.gdw1376 import formats as fmt
from meterd.protocols.gdw1376.units import decode_da, decode_dt, point_name

ERC_NAMES: Final[dict[int, str]] = {
    1: "data initialised / software version changed (数据初始化和版本变更)",
    2: "parameters lost (参数丢失)",
    3: "parameters changed (参数变更)",
    4: "status input changed (状态量变位)",
    5: "remote trip (遥控跳闸)",
    6: "power-control trip (功控跳闸)",
    7: "energy-control trip (电控跳闸)",
    8: "meter parameters changed (电能表参数变更)",
    9: "current circuit fault (电流回路异常)",
    10: "voltage circuit fault (电压回路异常)",
    11: "phase sequence fault (相序异常)",
    12: "meter clock error (电能表时间超差)",
    13: "meter fault (电表故障信息)",
    14: "terminal power off / on (终端停/上电)",
    15: "harmonics over limit (谐波越限)",
    16: "DC analogue over limit (直流模拟量越限)",
    17: "voltage / current unbalance over limit (电压电流不平衡度越限)",
    18: "capacitor switching locked (电容器投切自锁)",
    19: "purchase parameters set (购电参数设置)",
    20: "message authentication error (消息认证错误)",
    21: "terminal fault (终端故障)",
    22: "active energy differential over limit (有功总电能量差动越限)",
    23: "energy-control alarm (电控告警)",
    24: "voltage over limit (电压越限)",
    25: "current over limit (电流越限)",
    26: "apparent power over limit (视在功率越限)",
    27: "meter reading went down (电能表示度下降)",
    28: "energy over tolerance (电能量超差)",
    29: "meter running fast (电能表飞走)",
    30: "meter stopped (电能表停走)",
    31: "RS-485 meter reading failed (终端485抄表失败)",
    32: "traffic over the monthly limit (通信流量超门限)",
    33: "meter status word changed (电能表运行状态字变位)",
    34: "CT fault (CT异常)",
    35: "unknown meter found (发现未知电表)",
    36: "control circuit status changed (控制输出回路开关接入状态量变位)",
    37: "meter cover opened (电能表开表盖)",
    38: "meter terminal cover opened (电能表开端钮盒)",
    39: "catch-up reading failed (补抄失败)",
}

TERMINAL_FAULTS: Final[dict[int, str]] = {
    1: "main-board memory (终端主板内存故障)",
    2: "clock (时钟故障)",
    3: "main-board communication (主板通信故障)",
    4: "RS-485 meter reading (485抄表故障)",
    5: "display board (显示板故障)",
    6: "carrier channel (载波通道异常)",
}

METER_FAULT_BITS: Final = (
    "programming or demand-reset count changed",
    "phase-break count changed",
    "voltage-loss count changed",
    "power-off count changed",
    "battery low",
)

PN_MASK: Final = 0x0FFF
BEGAN: Final = 0x8000
PHASES: Final = ("a", "b", "c")
VOLTAGE_FAULT_KINDS: Final = {1: "phase break (断相)", 2: "voltage loss (失压)"}
ERC_POWER: Final = 14


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="minutes")
    return str(value)


def _pn_word(pn: int, began: bool) -> bytes:
    if not 0 <= pn <= PN_MASK:
        raise ProtocolError(f"event pn {pn} must be 0..{PN_MASK}")
    return (pn | (BEGAN if began else 0)).to_bytes(2, "little")


def _pn_read(raw: bytes) -> tuple[int, bool]:
    word = int.from_bytes(raw, "little")
    return word & PN_MASK, bool(word & BEGAN)


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not ASCII", raw) from None


@dataclass(frozen=True, slots=True)
class PowerOnOff:
    """ERC14 (终端停/上电事件): when the terminal lost power and when it came back (either may be
    None while unknown).  ``flags`` is the 2013 attribute byte (D0 normal, D1 valid) when sent."""

    off: datetime | None
    on: datetime | None
    flags: int | None = None
    ERC: ClassVar[int] = 14

    @property
    def erc(self) -> int:
        return ERC_POWER

    @property
    def at(self) -> datetime | None:
        return self.on or self.off

    @property
    def pn(self) -> int | None:
        return None

    def fields(self) -> dict[str, str]:
        return {"off": _text(self.off), "on": _text(self.on)}

    def describe(self) -> str:
        return f"terminal power off at {_text(self.off)}, on at {_text(self.on)}"

    def data(self) -> bytes:
        flags = b"" if self.flags is None else bytes((self.flags,))
        return fmt.encode_a15(self.off) + fmt.encode_a15(self.on) + flags

    @classmethod
    def parse(cls, data: bytes) -> PowerOnOff:
        if len(data) not in (10, 11):
            raise ProtocolError(f"ERC14 data is 10 or 11 bytes, got {len(data)}", data)
        return cls(fmt.decode_a15(data[:5]), fmt.decode_a15(data[5:10]), data[10] if len(data) == 11 else None)


@dataclass(frozen=True, slots=True)
class InitVersionChange:
    """ERC1: the terminal's data area was initialised and/or its software version changed."""

    at: datetime | None
    flags: int  # D0 initialised, D1 version changed
    old_version: str  # 4 ASCII characters
    new_version: str
    ERC: ClassVar[int] = 1

    @property
    def erc(self) -> int:
        return self.ERC

    @property
    def pn(self) -> int | None:
        return None

    def fields(self) -> dict[str, str]:
        return {"at": _text(self.at), "initialised": str(bool(self.flags & 1)).lower(),
                "version_changed": str(bool(self.flags & 2)).lower(), "old_version": self.old_version,
                "new_version": self.new_version}

    def describe(self) -> str:
        parts = (["data initialised"] if self.flags & 1 else []) + (
            [f"software version {self.old_version} -> {self.new_version}"] if self.flags & 2 else [])
        return "terminal " + (" and ".join(parts) or f"ERC1 flags {self.flags:02X}")

    def data(self) -> bytes:
        old, new = self.old_version.encode("ascii"), self.new_version.encode("ascii")
        if len(old) != 4 or len(new) != 4:
            raise ProtocolError(f"ERC1 versions are 4 ASCII characters: {self.old_version!r}, {self.new_version!r}")
        if not 0 <= self.flags <= 0xFF:
            raise ProtocolError(f"ERC1 flags {self.flags} must be one byte")
        return fmt.encode_a15(self.at) + bytes((self.flags,)) + old + new

    @classmethod
    def parse(cls, data: bytes) -> InitVersionChange:
        if len(data) != 14:
            raise ProtocolError(f"ERC1 data is 14 bytes, got {len(data)}", data)
        return cls(fmt.decode_a15(data[:5]), data[5], _ascii(data[6:10], "ERC1 old version"),
                   _ascii(data[10:14], "ERC1 new version"))


@dataclass(frozen=True, slots=True)
class ParameterChange:
    """ERC3: parameters were set, by master ``master`` (启动站地址), the items as DA DT (4 bytes each)."""

    at: datetime | None
    master: int
    items: tuple[bytes, ...]
    ERC: ClassVar[int] = 3

    @property
    def erc(self) -> int:
        return self.ERC

    @property
    def pn(self) -> int | None:
        return None

    def item_names(self) -> list[str]:
        out = []
        for raw in self.items:
            try:
                pns, fns = decode_da(raw[0], raw[1]), decode_dt(raw[2], raw[3])
                out.append(",".join(point_name(p) for p in pns) + " " + ",".join(f"F{f}" for f in fns))
            except ProtocolError:
                out.append(raw.hex(" ").upper())
        return out

    def fields(self) -> dict[str, str]:
        return {"at": _text(self.at), "master": str(self.master), "items": "; ".join(self.item_names())}

    def describe(self) -> str:
        return f"parameters changed by master {self.master}: {'; '.join(self.item_names()) or 'none named'}"

    def data(self) -> bytes:
        if not 0 <= self.master <= 0xFF:
            raise ProtocolError(f"ERC3 master address {self.master} must be one byte")
        if any(len(i) != 4 for i in self.items):
            raise ProtocolError("ERC3 items are DA DT, 4 bytes each")
        return fmt.encode_a15(self.at) + bytes((self.master,)) + b"".join(self.items)

    @classmethod
    def parse(cls, data: bytes) -> ParameterChange:
        if len(data) < 6 or (len(data) - 6) % 4:
            raise ProtocolError(f"ERC3 data is 6 + 4n bytes, got {len(data)}", data)
        return cls(fmt.decode_a15(data[:5]), data[5], tuple(bytes(data[i:i + 4]) for i in range(6, len(data), 4)))


@dataclass(frozen=True, slots=True)
class VoltageFault:
    """ERC10: a voltage circuit fault (电压回路异常) of measuring point ``pn``, began or ended."""

    at: datetime | None
    pn: int
    began: bool
    fault: int  # D0..D2 phases a..c, D6..D7 kind (1 phase break, 2 voltage loss)
    voltages: tuple[Decimal | None, Decimal | None, Decimal | None]
    currents: tuple[Decimal | None, Decimal | None, Decimal | None]
    energy: Decimal | None  # forward active total at the event (A.14)
    ERC: ClassVar[int] = 10

    @property
    def erc(self) -> int:
        return self.ERC

    @property
    def phases(self) -> str:
        return "".join(p for i, p in enumerate(PHASES) if self.fault >> i & 1)

    @property
    def kind(self) -> str:
        return VOLTAGE_FAULT_KINDS.get(self.fault >> 6, f"kind {self.fault >> 6}")

    def fields(self) -> dict[str, str]:
        out = {"at": _text(self.at), "pn": str(self.pn), "state": "began" if self.began else "ended",
               "kind": self.kind, "phases": self.phases or "-"}
        out |= {f"voltage.{p}": _text(v) for p, v in zip(PHASES, self.voltages, strict=True)}
        out |= {f"current.{p}": _text(v) for p, v in zip(PHASES, self.currents, strict=True)}
        return out | {"energy.active.import.total": _text(self.energy)}

    def describe(self) -> str:
        volts = "/".join(_text(v) for v in self.voltages)
        return (f"{point_name(self.pn)} voltage circuit {self.kind} on phase {self.phases or '-'} "
                f"{'began' if self.began else 'ended'} (U {volts} V)")

    def data(self) -> bytes:
        return (fmt.encode_a15(self.at) + _pn_word(self.pn, self.began) + bytes((self.fault & 0xFF,))
                + b"".join(fmt.encode_format("A.7", v) for v in self.voltages)
                + b"".join(fmt.encode_format("A.25", v) for v in self.currents)
                + fmt.encode_format("A.14", self.energy))

    @classmethod
    def parse(cls, data: bytes) -> VoltageFault:
        if len(data) != 28:
            raise ProtocolError(f"ERC10 data is 28 bytes, got {len(data)}", data)
        pn, began = _pn_read(data[5:7])
        u = tuple(fmt.decode_format("A.7", data[8 + 2 * i:10 + 2 * i]) for i in range(3))
        i_ = tuple(fmt.decode_format("A.25", data[14 + 3 * i:17 + 3 * i]) for i in range(3))
        return cls(fmt.decode_a15(data[:5]), pn, began, data[7], (u[0], u[1], u[2]), (i_[0], i_[1], i_[2]),
                   fmt.decode_format("A.14", data[23:28]))


@dataclass(frozen=True, slots=True)
class MeterFault:
    """ERC13: the terminal saw a meter's fault information change (电表故障信息)."""

    at: datetime | None
    pn: int
    began: bool
    flags: int  # METER_FAULT_BITS
    ERC: ClassVar[int] = 13

    @property
    def erc(self) -> int:
        return self.ERC

    def faults(self) -> list[str]:
        return [name for i, name in enumerate(METER_FAULT_BITS) if self.flags >> i & 1] or [f"flags {self.flags:02X}"]

    def fields(self) -> dict[str, str]:
        return {"at": _text(self.at), "pn": str(self.pn), "state": "began" if self.began else "ended",
                "faults": ", ".join(self.faults())}

    def describe(self) -> str:
        return f"{point_name(self.pn)} meter fault {'began' if self.began else 'ended'}: {', '.join(self.faults())}"

    def data(self) -> bytes:
        return fmt.encode_a15(self.at) + _pn_word(self.pn, self.began) + bytes((self.flags & 0xFF,))

    @classmethod
    def parse(cls, data: bytes) -> MeterFault:
        if len(data) != 8:
            raise ProtocolError(f"ERC13 data is 8 bytes, got {len(data)}", data)
        pn, began = _pn_read(data[5:7])
        return cls(fmt.decode_a15(data[:5]), pn, began, data[7])


@dataclass(frozen=True, slots=True)
class TerminalFault:
    """ERC21: the terminal reports a fault of its own (终端故障)."""

    at: datetime | None
    code: int  # TERMINAL_FAULTS
    ERC: ClassVar[int] = 21

    @property
    def erc(self) -> int:
        return self.ERC

    @property
    def pn(self) -> int | None:
        return None

    @property
    def fault(self) -> str:
        return TERMINAL_FAULTS.get(self.code, f"fault code {self.code}")

    def fields(self) -> dict[str, str]:
        return {"at": _text(self.at), "code": str(self.code), "fault": self.fault}

    def describe(self) -> str:
        return f"terminal fault: {self.fault}"

    def data(self) -> bytes:
        if not 0 <= self.code <= 0xFF:
            raise ProtocolError(f"ERC21 fault code {self.code} must be one byte")
        return fmt.encode_a15(self.at) + bytes((self.code,))

    @classmethod
    def parse(cls, data: bytes) -> TerminalFault:
        if len(data) != 6:
            raise ProtocolError(f"ERC21 data is 6 bytes, got {len(data)}", data)
        return cls(fmt.decode_a15(data[:5]), data[5])


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """ERC31: the terminal's RS-485 reading of measuring point ``pn`` failed (began) or works again
    (ended), with the meter's last good read and its registers then."""

    at: datetime | None
    pn: int
    began: bool
    last_read: datetime | None
    energy: Decimal | None  # forward active total (A.14) at the last good read
    reactive: Decimal | None  # forward reactive total (A.11)
    ERC: ClassVar[int] = 31

    @property
    def erc(self) -> int:
        return self.ERC

    def fields(self) -> dict[str, str]:
        return {"at": _text(self.at), "pn": str(self.pn), "state": "began" if self.began else "ended",
                "last_read": _text(self.last_read), "energy.active.import.total": _text(self.energy),
                "energy.reactive.import.total": _text(self.reactive)}

    def describe(self) -> str:
        if not self.began:
            return f"{point_name(self.pn)} answers the terminal again (RS-485 reading works)"
        return (f"{point_name(self.pn)} does not answer the terminal's RS-485 reading; last good read "
                f"{_text(self.last_read)}, {_text(self.energy)} kWh")

    def data(self) -> bytes:
        return (fmt.encode_a15(self.at) + _pn_word(self.pn, self.began) + fmt.encode_a15(self.last_read)
                + fmt.encode_format("A.14", self.energy) + fmt.encode_format("A.11", self.reactive))

    @classmethod
    def parse(cls, data: bytes) -> ReadFailure:
        if len(data) != 21:
            raise ProtocolError(f"ERC31 data is 21 bytes, got {len(data)}", data)
        pn, began = _pn_read(data[5:7])
        return cls(fmt.decode_a15(data[:5]), pn, began, fmt.decode_a15(data[7:12]),
                   fmt.decode_format("A.14", data[12:17]), fmt.decode_format("A.11", data[17:21]))


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event record meterd does not decode (or whose data does not lay out as its ERC's): its
    ERC code and data, kept as they came."""

    erc: int
    data: bytes

    @property
    def at(self) -> datetime | None:
        return None

    @property
    def pn(self) -> int | None:
        return None

    def fields(self) -> dict[str, str]:
        return {"erc": str(self.erc), "raw": self.data.hex(" ").upper()}

    def describe(self) -> str:
        name = ERC_NAMES.get(self.erc)
        what = f"{name}, not decoded" if name else "not decoded by meterd"
        return f"ERC{self.erc} ({what}): {self.data.hex(' ').upper() or 'no data'}"


TypedEvent = PowerOnOff | InitVersionChange | ParameterChange | VoltageFault | MeterFault | TerminalFault | ReadFailure
TerminalEvent = TypedEvent | EventRecord

DECODED: Final[dict[int, type[TypedEvent]]] = {
    cls.ERC: cls for cls in (PowerOnOff, InitVersionChange, ParameterChange, VoltageFault, MeterFault, TerminalFault,
                             ReadFailure)
}
"""ERC -> the class that decodes it."""


def decode_record(erc: int, data: bytes) -> TerminalEvent:
    """One record's ERC and data -> its typed value, or :class:`EventRecord` when meterd does not
    decode that ERC or the data does not lay out canonically as it (never raises)."""
    cls = DECODED.get(erc)
    if cls is not None:
        try:
            value = cls.parse(bytes(data))
            if value.data() == bytes(data):
                return value
        except ProtocolError:
            pass
    return EventRecord(erc, bytes(data))


def record_data(record: TerminalEvent) -> tuple[int, bytes]:
    """A record -> (ERC, data) for the wire; ProtocolError when a value does not fit its format."""
    if isinstance(record, EventRecord):
        return record.erc, record.data
    return record.erc, record.data()


def erc_name(erc: int) -> str:
    return ERC_NAMES.get(erc, f"ERC{erc} (not in Q/GDW 1376.1-2013's table)")
