"""``meterd probe``: what answers on this link?  Auto-detection for the field technician.

The technician has a link (an RS-485 adapter or a serial server / DTU reached over TCP) and a
meter address from the nameplate, and does not know the protocol, the baud rate or the parity.
``probe`` tries, in order (``--protocols``):

* **DL/T 645-2007** -- read ``04000401`` (communication address) from the address; to the wildcard
  ``AAAAAAAAAAAA`` it sends the read-address command (13) instead.  A normal 2007 reply (``91``,
  ``93``) identifies the meter; its own address is reported and its active import energy
  (``00010000``) is read as evidence.  If the meter refuses ``04000401`` (abnormal reply ``D1``),
  a normal reply to ``00010000`` still identifies it.
* **DL/T 645-1997** -- read ``9010`` (active import energy, total) with control 01.  A normal 1997
  reply (``81``) identifies the meter.  2007 meters do not know control 01.
* **Modbus** -- per framing, line setting and unit id, FC03 holding register 0, count 1.  A normal
  reply *or an exception response* identifies a Modbus device at that unit (only a Modbus device
  frames an exception, CRC and all, for the unit asked).  For an answering unit every shipped
  register map is then tried: the first read request of a plan for its voltages and frequency is
  sent and decoded, and the maps whose values are plausible (voltage 50..500 V, frequency
  45..65 Hz) are reported as *candidate models*.

A DL/T 645 abnormal reply is *not* an identification, in either edition: the two share the frame
envelope, and a meter that does not know a control code may refuse it with that code's abnormal
reply (a 2007-only meter answering 1997's read 01 with ``C1``, a 1997 meter answering 2007's 11
with ``D1``).  Such a try is reported as ``refused`` with the error bits: a DL/T 645 meter is at that
address and line setting, its edition not established by that try.

Link settings: on ``--serial`` every protocol is tried at each baud rate and parity (defaults: DL/T
645 2400, 1200, 9600 baud with even parity; Modbus 9600, 19200, 4800, 2400 with no parity, then
even), each on a freshly opened port (a new :class:`SerialTransport` and :class:`Channel`).  On
``--tcp`` the line settings belong to the serial server, so only the Modbus framing varies: Modbus
TCP (MBAP) first, then RTU passed through; each protocol gets its own TCP connection so that bytes
one protocol left in a device never spoil the next.

The probe stops at the first identification: no further unit, setting or protocol is tried.
``--all`` tries every one anyway (to see every setting a meter answers at, or every unit on a bus).

Each try is one transaction (``--retries`` adds more) with ``--timeout`` seconds for the answer.
The results are a table, streamed as the tries finish, or one JSON document (``--json``).  Exit
status: 0 when a protocol was identified, 1 when none was (nothing answered, only refusals, or the
link could not be opened at all: one line naming the port or host and why), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest

from meterd.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    MAX_RETRIES,
    MAX_TIMEOUT,
    error,
    print_json,
    seconds,
    shown,
    to_jsonable,
    whole_number,
)
from meterd.cli.frametext import local_text, trace_printer
from meterd.collector.channel import Channel, FailureKind, Timing, TraceEvent, TraceHook, TransactionError
from meterd.collector.modbus import MAX_UNIT, Framing, ModbusLink, ModbusRefused, exception_name
from meterd.collector.transports import SerialTransport, TcpTransport, Transport
from meterd.errors import LinkError, MeterdError, ProtocolError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue1997 import decode97
from meterd.protocols.dlt645.frame import WILDCARD, normalize_address
from meterd.protocols.dlt645.messages import (
    AbnormalResponse,
    ReadAddressRequest,
    ReadAddressResponse,
    ReadRequest,
    ReadResponse,
    decode_response,
    encode_request,
)
from meterd.protocols.dlt645.v1997 import (
    AbnormalResponse97,
    ReadRequest97,
    ReadResponse97,
    decode_response97,
    describe_control97,
    encode_request97,
    is_1997_frame,
)
from meterd.protocols.drivers import get_driver
from meterd.protocols.modbus import ReadBlock, RegisterMap, builtin_maps, compile_plan, decode_block

DLT2007: Final = "dlt645-2007"
DLT1997: Final = "dlt645-1997"
MODBUS: Final = "modbus"
PROTOCOL_ALIASES: Final = {
    "2007": DLT2007, "dlt645-2007": DLT2007, "645-2007": DLT2007,
    "1997": DLT1997, "dlt645-1997": DLT1997, "645-1997": DLT1997,
    "modbus": MODBUS,
}  # fmt: skip
DEFAULT_PROTOCOLS: Final = (DLT2007, DLT1997, MODBUS)
DEFAULT_BAUDS: Final = {p: get_driver(p).serial_bauds for p in DEFAULT_PROTOCOLS}
DEFAULT_PARITIES: Final = {p: get_driver(p).serial_parities for p in DEFAULT_PROTOCOLS}
DEFAULT_UNITS: Final = (1, 2, 3)


def _by_unit(protocol: str) -> bool:
    """Meters of ``protocol`` are reached by unit id and told apart by register map (Modbus):
    probed unit by unit, over a framing, with candidate models."""
    return get_driver(protocol).by_unit_and_map

DEFAULT_TCP_FRAMINGS: Final = (Framing.TCP, Framing.RTU)

DI_ADDRESS: Final = 0x04000401  # 通信地址
DI_ENERGY: Final = 0x00010000  # active import energy, total
DI97_ENERGY: Final = 0x9010  # active import energy, total (1997)

# outcomes: "answered" is a normal reply, "refused" an abnormal (DL/T 645) or exception (Modbus) reply
ANSWERED: Final = "answered"
REFUSED: Final = "refused"
LINK_ERROR: Final = "link_error"
# something came back but not an identification: a hint that a device may be there
SOMETHING_THERE: Final = frozenset({"garbled", "incomplete", "wrong_address", REFUSED})

# what a plausible reading of a live meter looks like (candidate-model check)
PLAUSIBLE_PHASE_VOLTAGE: Final = (Decimal(50), Decimal(500))
PLAUSIBLE_LINE_VOLTAGE: Final = (Decimal(50), Decimal(870))
PLAUSIBLE_FREQUENCY: Final = (Decimal(45), Decimal(65))
MODEL_PROBE_QUANTITIES: Final = ("voltage.a", "voltage.b", "voltage.c", "frequency")
MODEL_PROBE_FALLBACK: Final = ("voltage.ab", "voltage.bc", "voltage.ca", "frequency")


# --- what to try ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """The link under test: a serial device, or a TCP serial server / DTU / Modbus gateway."""

    serial: str | None = None
    host: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if (self.serial is None) == (self.host is None):
            raise ValueError("a link is either serial or TCP")

    @property
    def is_serial(self) -> bool:
        return self.serial is not None

    def __str__(self) -> str:
        if self.serial is not None:
            return f"serial {self.serial}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Setting:
    """The link settings of one try: serial line settings and/or Modbus framing."""

    baud: int | None = None
    parity: str | None = None
    framing: Framing | None = None  # Modbus only
    bytesize: int = 8
    stopbits: int = 1

    def __str__(self) -> str:
        line = f"{self.baud} {self.bytesize}{self.parity}{self.stopbits}" if self.baud is not None else ""
        if self.framing is None:
            return line or "tcp"
        if line:
            return f"{self.framing} {line}"
        return "modbus-tcp" if self.framing is Framing.TCP else "rtu-over-tcp"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.baud is not None:
            out.update(baud=self.baud, bytesize=self.bytesize, parity=self.parity, stopbits=self.stopbits)
        if self.framing is not None:
            out["framing"] = str(self.framing)
        return out


@dataclass(slots=True)
class ProbeOptions:
    link: LinkSpec
    address: str  # DL/T 645 address, normalized to 12 digits (may hold AA wildcards)
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    bauds: tuple[int, ...] | None = None  # None: the per-protocol defaults
    parities: tuple[str, ...] | None = None
    units: tuple[int, ...] = DEFAULT_UNITS
    framings: tuple[Framing, ...] | None = None  # TCP only; None: MBAP, then RTU
    timeout: float = 1.0
    retries: int = 0
    exhaustive: bool = False  # try every setting even after a protocol answered
    trace: TraceHook | None = None

    def __post_init__(self) -> None:
        self.address = normalize_address(self.address)  # ProtocolError names a bad one


def default_units(address: str) -> tuple[int, ...]:
    """Units 1..3, plus the address's value when it is a plain number 1..247."""
    units = list(DEFAULT_UNITS)
    if address.isdigit() and 1 <= int(address) <= MAX_UNIT and int(address) not in units:
        units.append(int(address))
    return tuple(units)


def plan_settings(options: ProbeOptions) -> list[tuple[str, Setting]]:
    """Every (protocol, link setting) group to try, in order."""
    groups: list[tuple[str, Setting]] = []
    for protocol in options.protocols:
        if options.link.is_serial:
            framing = Framing.RTU if _by_unit(protocol) else None
            for baud in options.bauds or DEFAULT_BAUDS[protocol]:
                for parity in options.parities or DEFAULT_PARITIES[protocol]:
                    groups.append((protocol, Setting(baud, parity, framing)))
        elif _by_unit(protocol):
            groups += [(protocol, Setting(framing=f)) for f in options.framings or DEFAULT_TCP_FRAMINGS]
        else:
            groups.append((protocol, Setting()))
    return groups


# --- results -------------------------------------------------------------------------------------


@dataclass(slots=True)
class ModelCheck:
    """One shipped register map tried against an answering Modbus unit."""

    model: str
    status: str  # "candidate", "implausible", "refused", "undecodable", or a FailureKind
    detail: str
    values: dict[str, str] = field(default_factory=dict)

    @property
    def is_candidate(self) -> bool:
        return self.status == "candidate"

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "status": self.status, "detail": self.detail, "values": self.values}


@dataclass(slots=True)
class TryResult:
    protocol: str
    setting: Setting
    target: str  # the DL/T 645 address or "unit N"
    outcome: str  # answered, refused, timeout, garbled, incomplete, wrong_address, link_error
    detail: str = ""
    evidence: dict[str, str] = field(default_factory=dict)
    models: list[ModelCheck] = field(default_factory=list)

    @property
    def detected(self) -> bool:
        """A positive identification of the protocol: a normal reply, or a Modbus exception response.
        A DL/T 645 abnormal reply is not one (see the module docstring)."""
        return self.outcome == ANSWERED or (self.outcome == REFUSED and _by_unit(self.protocol))

    @property
    def candidates(self) -> list[str]:
        return [m.model for m in self.models if m.is_candidate]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "link": str(self.setting),
            "settings": self.setting.as_dict(),
            "target": self.target,
            "outcome": self.outcome,
            "detected": self.detected,
            "detail": self.detail,
            "evidence": self.evidence,
        }
        if _by_unit(self.protocol) and self.detected:
            out["models"] = [m.as_dict() for m in self.models]
            out["candidate_models"] = self.candidates
        return out


@dataclass(slots=True)
class ProbeReport:
    link: LinkSpec
    address: str
    tries: list[TryResult] = field(default_factory=list)
    aborted: str | None = None  # the link could not be opened at all

    @property
    def detected(self) -> list[TryResult]:
        return [t for t in self.tries if t.detected]

    def hints(self) -> list[str]:
        """When nothing was identified: the settings where *something* came back."""
        if self.detected:
            return []
        seen: list[str] = []
        for t in self.tries:
            if t.outcome in SOMETHING_THERE:
                hint = f"{t.protocol} at {t.setting} ({t.target}): {t.outcome}: {t.detail}"
                if t.outcome == REFUSED and "address" in t.evidence:
                    hint += (f" -- a DL/T 645 meter {t.evidence['address']} is there; "
                             "an abnormal reply does not tell its edition")
                if hint not in seen:
                    seen.append(hint)
        return seen

    def as_dict(self) -> dict[str, Any]:
        return {
            "link": str(self.link),
            "address": self.address,
            "detected": [
                {"protocol": t.protocol, "link": str(t.setting), "target": t.target, "outcome": t.outcome,
                 "evidence": t.evidence, **({"candidate_models": t.candidates} if _by_unit(t.protocol) else {})}
                for t in self.detected
            ],
            "tries": [t.as_dict() for t in self.tries],
            "aborted": self.aborted,
            "hints": self.hints(),
        }


# --- the probe -----------------------------------------------------------------------------------


def _failure(exc: TransactionError) -> tuple[str, str]:
    """A channel failure -> (outcome, detail without the "meter X: " prefix)."""
    outcome = LINK_ERROR if exc.kind is FailureKind.LINK else str(exc.kind)
    detail = str(exc).removeprefix(f"meter {exc.meter}: ")
    if exc.received and exc.kind is not FailureKind.WRONG_ADDRESS:
        shown = exc.received[:24].hex(" ").upper() + (" ..." if len(exc.received) > 24 else "")
        detail += f" (received {len(exc.received)} bytes: {shown})"
    return outcome, detail


def _value_text(value: Any, unit: str = "") -> str:
    text = local_text(value) if isinstance(value, datetime) else str(to_jsonable(value))
    return f"{text} {unit}".rstrip()


def _make_transport(link: LinkSpec, setting: Setting, timeout: float) -> Transport:
    if link.serial is not None:
        assert setting.baud is not None and setting.parity is not None
        return SerialTransport("probe", link.serial, baud=setting.baud, bytesize=setting.bytesize,
                               parity=setting.parity, stopbits=setting.stopbits)  # fmt: skip
    assert link.host is not None and link.port is not None
    return TcpTransport("probe", link.host, link.port, connect_timeout=max(2.0, timeout))


async def probe(options: ProbeOptions, on_result: Callable[[TryResult], None] | None = None) -> ProbeReport:
    """Run the tries of ``options`` up to the first identification (every one with ``exhaustive``);
    ``on_result`` sees each result as it is made."""
    report = ProbeReport(options.link, options.address)
    opened_once = False

    def record(result: TryResult) -> None:
        report.tries.append(result)
        _note(options, f"=> {result.outcome}: {result.detail}")
        if on_result is not None:
            on_result(result)

    for protocol, setting in plan_settings(options):
        if report.detected and not options.exhaustive:
            break
        transport = _make_transport(options.link, setting, options.timeout)
        channel = Channel("probe", transport, timing=Timing(options.timeout, min(0.5, options.timeout)),
                          retries=options.retries, trace=options.trace)  # fmt: skip
        try:
            try:
                await transport.open()
            except LinkError as exc:
                if not opened_once:
                    report.aborted = str(exc).removeprefix("probe: ")
                    return report
                target = "-" if _by_unit(protocol) else options.address
                record(TryResult(protocol, setting, target, LINK_ERROR, str(exc).removeprefix("probe: ")))
                continue
            opened_once = True
            if protocol in FRAME_PROBES:
                results = [await FRAME_PROBES[protocol](channel, options, setting, report)]
            else:
                results = []
                assert setting.framing is not None
                link = ModbusLink(channel, setting.framing)
                for unit in options.units:
                    results.append(await _try_modbus(link, unit, options, setting))
                    record(results[-1])  # as it comes: a Modbus group can take a while
                    if results[-1].detected and not options.exhaustive:
                        break
            for result in results:
                if not _by_unit(protocol):  # Modbus results were recorded as they came
                    record(result)
        finally:
            await channel.close()
    return report


def _note(options: ProbeOptions, text: str) -> None:
    if options.trace is not None:
        options.trace(TraceEvent("probe", "note", b"", note=text))


# --- DL/T 645-2007 -------------------------------------------------------------------------------


async def _try_2007(channel: Channel, options: ProbeOptions, setting: Setting) -> TryResult:
    address = options.address
    if address == WILDCARD:
        request: ReadAddressRequest | ReadRequest = ReadAddressRequest(WILDCARD)
        asked = "read address (13)"
    else:
        request = ReadRequest(address, DI_ADDRESS)
        asked = f"read {DI_ADDRESS:08X}"
    _note(options, f"{DLT2007} at {setting}: {asked} to {address}")
    result = TryResult(DLT2007, setting, address, "timeout")
    try:
        frame = await channel.transact(encode_request(request))
    except TransactionError as exc:
        result.outcome, result.detail = _failure(exc)
        return result
    assert frame is not None
    try:
        reply = decode_response(frame)
    except ProtocolError as exc:
        result.outcome, result.detail = "garbled", f"{frame.describe_control()} does not decode: {exc}"
        return result
    result.evidence["address"] = frame.address
    if isinstance(reply, AbnormalResponse):
        result.outcome = REFUSED
        result.detail = (f"abnormal reply ({frame.control:02X}) to {asked}: ERR {int(reply.error):02X} "
                         f"({reply.error.describe()}); an abnormal reply does not identify the edition")
        result.evidence["error"] = f"{int(reply.error):02X}"
    else:
        result.outcome = ANSWERED
        result.detail = f"{asked}: meter {frame.address} replied ({frame.control:02X})"
        if isinstance(reply, ReadResponse):
            try:
                for v in catalogue.decode(reply.di, reply.data):
                    result.evidence[v.quantity] = _value_text(v.value, v.unit)
            except ProtocolError as exc:
                result.evidence["decode_error"] = str(exc)
        elif isinstance(reply, ReadAddressResponse):
            result.evidence["meter.address"] = reply.address
    if "A" not in frame.address and await _read_2007_energy(channel, frame.address, result) \
            and result.outcome == REFUSED:
        result.outcome = ANSWERED  # refused 04000401, but a normal 2007 reply to 00010000
        result.detail += f"; read {DI_ENERGY:08X}: meter {frame.address} replied (91)"
    return result


async def _read_2007_energy(channel: Channel, address: str, result: TryResult) -> bool:
    """Read 00010000 as evidence; whether a normal 2007 reply came (91 with that identifier)."""
    try:
        frame = await channel.transact(encode_request(ReadRequest(address, DI_ENERGY)))
        assert frame is not None
        reply = decode_response(frame)
    except TransactionError as exc:
        result.evidence[f"{DI_ENERGY:08X}"] = "{}: {}".format(*_failure(exc))
        return False
    except ProtocolError as exc:
        result.evidence[f"{DI_ENERGY:08X}"] = f"garbled: {exc}"
        return False
    if isinstance(reply, AbnormalResponse):
        result.evidence[f"{DI_ENERGY:08X}"] = f"refused: {reply.error.describe()}"
        return False
    if not isinstance(reply, ReadResponse) or reply.di != DI_ENERGY:
        result.evidence[f"{DI_ENERGY:08X}"] = f"unexpected reply: {frame.describe_control()}"
        return False
    try:
        for v in catalogue.decode(reply.di, reply.data):
            result.evidence[v.quantity] = _value_text(v.value, v.unit)
    except ProtocolError as exc:
        result.evidence[f"{DI_ENERGY:08X}"] = f"undecodable: {exc}"
    return True


# --- DL/T 645-1997 -------------------------------------------------------------------------------


async def _try_1997(channel: Channel, options: ProbeOptions, setting: Setting) -> TryResult:
    address = options.address
    asked = f"read {DI97_ENERGY:04X}"
    _note(options, f"{DLT1997} at {setting}: {asked} (control 01) to {address}")
    result = TryResult(DLT1997, setting, address, "timeout")
    try:
        frame = await channel.transact(encode_request97(ReadRequest97(address, DI97_ENERGY)))
    except TransactionError as exc:
        result.outcome, result.detail = _failure(exc)
        return result
    assert frame is not None
    if not is_1997_frame(frame):
        result.outcome = "garbled"
        shape = f"{frame.control:02X}, {len(frame.data)} data bytes"
        result.detail = f"{describe_control97(frame)} ({shape}) is no DL/T 645-1997 reply"
        return result
    try:
        reply = decode_response97(frame)
    except ProtocolError as exc:
        result.outcome, result.detail = "garbled", f"{describe_control97(frame)} does not decode: {exc}"
        return result
    result.evidence["address"] = frame.address
    if isinstance(reply, AbnormalResponse97):
        result.outcome = REFUSED
        err = f"ERR {int(reply.error):02X} ({reply.error.describe()})"
        result.detail = (f"abnormal reply ({frame.control:02X}) to {asked}: {err}; an abnormal reply does not "
                         "identify the edition (a 2007-only meter refuses control 01 so)")
        result.evidence["error"] = f"{int(reply.error):02X}"
        return result
    result.outcome = ANSWERED
    result.detail = f"{asked}: meter {frame.address} replied ({frame.control:02X})"
    if isinstance(reply, ReadResponse97):
        if reply.di != DI97_ENERGY:
            result.evidence["di"] = f"{reply.di:04X} (asked {DI97_ENERGY:04X})"
        else:
            try:
                for v in decode97(reply.di, reply.data):
                    result.evidence[v.quantity] = _value_text(v.value, v.unit)
            except ProtocolError as exc:
                result.evidence["decode_error"] = str(exc)
    return result


async def _probe_2007(channel: Channel, options: ProbeOptions, setting: Setting, report: ProbeReport) -> TryResult:
    return await _try_2007(channel, options, setting)


async def _probe_1997(channel: Channel, options: ProbeOptions, setting: Setting, report: ProbeReport) -> TryResult:
    return await _try_1997(channel, options, setting)


# protocol -> how one link setting is probed for a meter of it (a unit-addressed protocol is probed
# unit by unit, see probe()); each edition has its own way of telling its replies apart
FRAME_PROBES: Final = {DLT2007: _probe_2007, DLT1997: _probe_1997}


# --- Modbus --------------------------------------------------------------------------------------


def _is_exception(pdu: ModbusPDU) -> bool:
    return isinstance(pdu, ExceptionResponse) or bool(pdu.function_code & 0x80)


async def _try_modbus(link: ModbusLink, unit: int, options: ProbeOptions, setting: Setting) -> TryResult:
    target = f"unit {unit}"
    _note(options, f"{MODBUS} at {setting}: FC03 holding 0 x1 to unit {unit}")
    result = TryResult(MODBUS, setting, target, "timeout")
    try:
        reply = await link.execute(target, unit, ReadHoldingRegistersRequest(address=0, count=1))
    except TransactionError as exc:
        result.outcome, result.detail = _failure(exc)
        return result
    if _is_exception(reply):
        code = int(getattr(reply, "exception_code", 0))
        result.outcome = REFUSED
        result.detail = f"exception {code:02X} ({exception_name(code)}) to FC03 holding 0"
        result.evidence["exception"] = f"{code:02X} {exception_name(code)}"
    else:
        result.outcome = ANSWERED
        registers = list(getattr(reply, "registers", []) or [])
        shown = ", ".join(f"{v} (0x{v:04X})" for v in registers[:1]) or "no registers"
        result.detail = f"FC03 holding 0 = {shown}"
        result.evidence["holding.0"] = shown
    result.models = await _check_models(link, unit, options, setting)
    if result.candidates:
        result.evidence["candidate_models"] = ", ".join(result.candidates)
    return result


def _probe_plan(regmap: RegisterMap) -> ReadBlock | None:
    """The first read request of a plan for the map's voltages and frequency."""
    wanted = [q for q in MODEL_PROBE_QUANTITIES if q in regmap]
    if not any(q.startswith("voltage.") for q in wanted):
        wanted = [q for q in MODEL_PROBE_FALLBACK if q in regmap]
    if not wanted:
        wanted = list(regmap.quantities[:3])
    if not wanted:
        return None
    plan = compile_plan(regmap, wanted)
    return plan.blocks[0] if plan.blocks else None


def judge(values: dict[str, Any]) -> tuple[bool, str]:
    """Whether decoded values look like a live meter: (plausible, why not)."""
    voltages = 0
    for quantity, value in values.items():
        if not isinstance(value, Decimal):
            continue
        if not value.is_finite():  # a float register holding NaN or an infinity (decode_block keeps it)
            if quantity.startswith(("voltage.", "frequency")):
                return False, f"{quantity} = {value}"
            continue
        if quantity.startswith("voltage."):
            if value == 0:
                continue  # an unused phase
            line = len(quantity) == len("voltage.ab") and quantity[-2:] in ("ab", "bc", "ca")
            lo, hi = PLAUSIBLE_LINE_VOLTAGE if line else PLAUSIBLE_PHASE_VOLTAGE
            if not lo <= value <= hi:
                return False, f"{quantity} = {value} is not {lo}..{hi} V"
            voltages += 1
        elif quantity == "frequency" and not PLAUSIBLE_FREQUENCY[0] <= value <= PLAUSIBLE_FREQUENCY[1]:
            lo, hi = PLAUSIBLE_FREQUENCY
            return False, f"frequency = {value} is not {lo}..{hi} Hz"
    if not voltages and any(q.startswith("voltage.") for q in values):
        return False, "every voltage reads 0"
    return True, ""


async def _check_models(link: ModbusLink, unit: int, options: ProbeOptions, setting: Setting) -> list[ModelCheck]:
    checks: list[ModelCheck] = []
    target = f"unit {unit}"
    for name, regmap in builtin_maps().items():
        try:
            block = _probe_plan(regmap)
        except MeterdError as exc:  # a map that cannot plan its own quantities: not for the probe
            checks.append(ModelCheck(name, "undecodable", f"no probe plan: {exc}"))
            continue
        if block is None:
            continue
        what = f"FC{block.function.read_code:02d} {block.address} x{block.count}"
        _note(options, f"{MODBUS} at {setting}: unit {unit}, model {name}: {what} ({', '.join(block.quantities)})")
        if regmap.workarounds.pause_between_requests:
            await asyncio.sleep(regmap.workarounds.pause_between_requests)
        try:
            data = await link.read_block(target, unit, block)
            decoded = decode_block(block, data)
        except ModbusRefused as exc:
            checks.append(ModelCheck(name, REFUSED, f"{what}: {exc.error}"))
            continue
        except TransactionError as exc:
            outcome, detail = _failure(exc)
            checks.append(ModelCheck(name, outcome, f"{what}: {detail}"))
            continue
        except ProtocolError as exc:
            checks.append(ModelCheck(name, "undecodable", f"{what}: {exc}"))
            continue
        values = {v.quantity: v.value for v in decoded}
        shown = {q: _value_text(v, regmap.entry(q).unit) for q, v in values.items()}
        plausible, why = judge(values)
        listing = ", ".join(f"{q} = {t}" for q, t in shown.items())
        if plausible:
            checks.append(ModelCheck(name, "candidate", f"{what}: {listing}", shown))
        else:
            checks.append(ModelCheck(name, "implausible", f"{what}: {why}", shown))
    return checks


# --- command line --------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="find out which protocol, line settings and address a meter answers on",
        description="Try DL/T 645-2007, DL/T 645-1997 and Modbus on a link and report what answered; stop at "
                    "the first identification (a normal reply; for Modbus an exception response too) unless "
                    "--all. A DL/T 645 abnormal reply does not identify an edition.",
    )
    link = p.add_mutually_exclusive_group(required=True)
    link.add_argument("--serial", metavar="DEVICE", help="serial device, e.g. /dev/ttyUSB0")
    link.add_argument("--tcp", metavar="HOST:PORT", help="serial server, DTU or Modbus gateway reached over TCP")
    p.add_argument("--address", required=True,
                   help="DL/T 645 meter address (up to 12 digits), or AAAAAAAAAAAA for whoever is there")
    p.add_argument("--protocols", default="2007,1997,modbus", metavar="LIST",
                   help="protocols to try, in order (default 2007,1997,modbus)")
    p.add_argument("--baud", action="append", metavar="RATE[,RATE...]",
                   help="serial baud rates to try (repeatable; default 2400,1200,9600 for DL/T 645, "
                        "9600,19200,4800,2400 for Modbus)")
    p.add_argument("--parity", action="append", metavar="N|E|O[,...]",
                   help="serial parities to try (default E for DL/T 645, N then E for Modbus)")
    p.add_argument("--unit", action="append", metavar="ID[,ID...]",
                   help="Modbus unit ids to try, e.g. 1,2 or 1-5 (default 1-3 and the address if it is 1..247)")
    p.add_argument("--modbus-framing", choices=["rtu", "tcp"],
                   help="Modbus framing on --tcp links (default: Modbus TCP, then RTU over TCP)")
    p.add_argument("--timeout", type=seconds(MAX_TIMEOUT), default=1.0, help="seconds to wait for each answer (default 1.0)")
    p.add_argument("--retries", type=whole_number(0, MAX_RETRIES), default=0, help="extra attempts per try (default 0)")
    p.add_argument("--all", action="store_true", dest="exhaustive",
                   help="go on after the first identification: try every protocol, setting and unit")
    p.add_argument("--trace", action="store_true",
                   help="print every frame sent and received to stderr, decoded, with the site time")
    p.add_argument("--json", action="store_true")  # fmt: skip
    p.set_defaults(func=run)


class BadInput(MeterdError, ValueError):
    pass


def _split(values: Iterable[str] | None) -> list[str]:
    return [part.strip() for v in values or () for part in v.split(",") if part.strip()]


def parse_tcp(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadInput(f"--tcp {shown(text)}: expected HOST:PORT with a port 1..65535")
    return host, int(port)


def parse_bauds(values: Sequence[str] | None) -> tuple[int, ...] | None:
    if not values:
        return None
    out: list[int] = []
    for part in _split(values):
        if not part.isdigit() or len(part) > 7 or not 50 <= int(part) <= 4_000_000:  # int() of 5,000 digits raises
            raise BadInput(f"--baud {shown(part)} is not a baud rate (e.g. 2400)")
        out.append(int(part))
    if not out:
        raise BadInput("--baud given without a rate")
    return tuple(dict.fromkeys(out))


def parse_parities(values: Sequence[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    out = []
    for part in _split(values):
        if part.upper() not in ("N", "E", "O"):
            raise BadInput(f"--parity {shown(part)} is not N, E or O")
        out.append(part.upper())
    if not out:
        raise BadInput("--parity given without a value")
    return tuple(dict.fromkeys(out))


def parse_units(values: Sequence[str] | None, address: str) -> tuple[int, ...]:
    if not values:
        return default_units(address)
    out: list[int] = []
    for part in _split(values):
        lo_text, dash, hi_text = part.partition("-")
        if not lo_text.isdigit() or (dash and not hi_text.isdigit()) or len(lo_text) > 3 or len(hi_text) > 3:
            raise BadInput(f"--unit {shown(part)} is not a Modbus unit id (1..{MAX_UNIT}) or range (1-5)")
        lo, hi = int(lo_text), int(hi_text or lo_text)
        if not 1 <= lo <= hi <= MAX_UNIT:
            raise BadInput(f"--unit {shown(part)}: unit ids are 1..{MAX_UNIT}")
        out.extend(range(lo, hi + 1))
    if not out:
        raise BadInput("--unit given without a unit id")
    return tuple(dict.fromkeys(out))


def parse_protocols(text: str) -> tuple[str, ...]:
    out = []
    for part in _split([text]):
        name = PROTOCOL_ALIASES.get(part.lower())
        if name is None:
            raise BadInput(f"--protocols: {shown(part)} is not one of 2007, 1997, modbus")
        out.append(name)
    if not out:
        raise BadInput("--protocols is empty (use 2007, 1997, modbus)")
    return tuple(dict.fromkeys(out))


def options_from_args(args: argparse.Namespace, trace: TraceHook | None = None) -> ProbeOptions:
    """The command line -> ProbeOptions; BadInput names the offending value."""
    try:
        address = normalize_address(args.address)
    except ProtocolError:
        why = "is not a meter address (up to 12 digits, or AAAAAAAAAAAA)"
        raise BadInput(f"--address {shown(args.address)} {why}") from None
    protocols = parse_protocols(args.protocols)
    if args.timeout <= 0:
        raise BadInput(f"--timeout {args.timeout} must be more than 0 seconds")
    if args.retries < 0:
        raise BadInput(f"--retries {args.retries} must be 0 or more")
    if args.serial is not None:
        if not args.serial.strip():
            raise BadInput("--serial needs a device, e.g. /dev/ttyUSB0")
        if args.modbus_framing == "tcp":
            raise BadInput("--modbus-framing tcp needs a --tcp link; a serial line carries Modbus RTU")
        link = LinkSpec(serial=args.serial)
        framings = None
    else:
        host, port = parse_tcp(args.tcp)
        if args.baud or args.parity:
            raise BadInput("--baud and --parity apply to --serial links; over --tcp the serial server sets them")
        link = LinkSpec(host=host, port=port)
        framings = (Framing(args.modbus_framing),) if args.modbus_framing else None
    return ProbeOptions(
        link=link,
        address=address,
        protocols=protocols,
        bauds=parse_bauds(args.baud),
        parities=parse_parities(args.parity),
        units=parse_units(args.unit, address),
        framings=framings,
        timeout=args.timeout,
        retries=args.retries,
        exhaustive=args.exhaustive,
        trace=trace,
    )


_COLUMNS: Final = "{:<12} {:<18} {:<14} {:<14} {}"


def _print_row(result: TryResult) -> None:
    detail = result.detail
    shown_elsewhere = ("address", "candidate_models", "holding.0", "exception", "error")  # in the detail
    extras = {k: v for k, v in result.evidence.items() if k not in shown_elsewhere}
    if result.detected and extras:
        detail += "; " + ", ".join(f"{k} = {v}" for k, v in extras.items())
    print(_COLUMNS.format(result.protocol, str(result.setting), result.target, result.outcome, detail).rstrip())
    for m in result.models:
        label = f"candidate model {m.model}" if m.is_candidate else f"not {m.model} ({m.status})"
        print(_COLUMNS.format("", "", "", "", f"{label}: {m.detail}").rstrip())
    sys.stdout.flush()


def _summary(report: ProbeReport) -> list[str]:
    lines = []
    for t in report.detected:
        line = f"found: {t.protocol} at {t.setting}, {t.target}"
        if not _by_unit(t.protocol) and "address" in t.evidence:
            line = f"found: {t.protocol} at {t.setting}, address {t.evidence['address']}"
        if t.outcome == REFUSED:  # a Modbus exception response: the unit is there
            line += f" (refused: {t.detail})"
        if _by_unit(t.protocol):
            line += f"; candidate models: {', '.join(t.candidates) or 'none of the shipped maps'}"
        lines.append(line)
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args, trace_printer() if args.trace else None)
    except BadInput as exc:
        error(str(exc))
        return EXIT_BAD_INPUT

    header = [_COLUMNS.format("PROTOCOL", "LINK", "TARGET", "OUTCOME", "DETAIL")]

    def show(result: TryResult) -> None:
        if header:
            print(header.pop(), flush=True)
        _print_row(result)

    if not args.json:
        print(f"probing {options.link}, address {options.address}, "
              f"timeout {options.timeout:g} s per try", flush=True)  # fmt: skip
    report = asyncio.run(probe(options, on_result=None if args.json else show))

    if report.aborted:
        error(report.aborted)  # the transport's words name the port or host and say why
    if args.json:
        print_json(report.as_dict())
    else:
        for line in _summary(report):
            print(line)
        if not report.detected and not report.aborted:
            refused = any(t.outcome == REFUSED for t in report.tries)
            print(f"{'no protocol identified' if refused else 'nothing answered'} ({len(report.tries)} tries)")
            for hint in report.hints():
                print(f"hint: something came back from {hint}")
    return EXIT_OK if report.detected else EXIT_FAILED
