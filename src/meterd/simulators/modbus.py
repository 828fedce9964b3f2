"""A sans-I/O bus of simulated Modbus meters: request ADU in, reply bytes out.

Strategy
--------
Each meter is a :class:`~meterd.simulators.model.MeterModel` -- the same moving meter the DL/T 645
simulator serves -- seen through a :class:`~meterd.protocols.modbus.RegisterMap`, under one unit id
(1..247).  Everything Modbus is pymodbus' server core:

* framing: :class:`~pymodbus.framer.FramerRTU` (``framing="rtu"``: serial lines, and RTU passed
  through TCP by a serial server / DTU) or :class:`~pymodbus.framer.FramerSocket` (``"tcp"``:
  Modbus TCP, MBAP header) unwraps the request ADU, checks the CRC and wraps the reply;
* the request PDU is decoded by the server-side :class:`~pymodbus.pdu.DecodePDU` and *executed* by
  its own ``datastore_update(context, device_id)`` -- pymodbus' request classes decide what a read
  or write answers and build the response (or the exception response);
* the datastore those requests run against (:class:`MeterDatastore`) answers pymodbus' two
  datastore coroutines, ``async_getValues``/``async_setValues``, from the live model: registers
  are :func:`~meterd.protocols.modbus.encode_values` of ``model.values(now)`` for the map's
  quantities, at the moment of the request.  Values are served as the model has them -- a map
  whose entries are secondary-side (``primary = false``) gets the model's numbers unchanged, as a
  real meter publishes what its terminals see.

Why not pymodbus' own ``ModbusSerialServer``/``ModbusTcpServer``: they own the transport, so the
wire timing of a pty (:mod:`.serve` paces every byte at the line's baud rate) and the link faults
(a late reply, a truncated one) cannot be injected between the request and the bytes on the wire.
Why not ``ModbusServerContext``/``ModbusDeviceContext``: in pymodbus 3.16 they are deprecated
shells whose ``async_getValues`` answers ``DEVICE_BUSY`` (the server converts them into its
internal ``SimCore``), and ``SimCore``'s flat register lists span the lowest to the highest
address of a device (42 000 registers per Schneider unit) and cannot tell how many bits a coil
read asked for.  :class:`MeterDatastore` is an object with the same two coroutines the request PDUs
call, so the execution stays pymodbus'.

The register space of a meter (per data table) is every register of the map's entries and the
relay command -- and, for the shipped vendor maps, every register of the vendor's whole table
(:mod:`.vendor_tables`: phase angles, THD, demands, per-phase energies, settings, worked out from
the same model, with the vendor's signs: an Eastron or Schneider meter publishes current and VA as
magnitudes, and so do the map's registers) -- plus the holes between them up to the map's
``max_gap`` workaround (a meter that rejects reads over undefined registers) or, when the map sets
none, up to one request's worth: holes read as zero.  A read touching anything else is
``ILLEGAL_ADDRESS`` (02); a read longer than the map's ``max_registers``/``max_bits`` (or than
Modbus allows) is ``ILLEGAL_VALUE`` (03).  The mapped registers come from a per-second image of the
map's quantities only; the vendor table's image is made only when a read reaches past them, so a
master polling the map pays nothing for the rest.  Quantities the model has no register for are
derived as a meter would: line voltages from the phase voltages (120 degrees apart), reactive
import/export energy as Q1+Q2 / Q3+Q4 (IEC 62053-23).

Writes: only the map's ``[relay]`` command register (or coil) is writable.  Writing ``open`` trips
the relay and ``close`` recloses it, through ``MeterModel.control`` with the meter's own password
and a validity in the future (so ``stuck_relay`` and the protect state behave as on DL/T 645: a
protected meter refuses a trip with ``SLAVE_DEVICE_FAILURE``); any other value is
``ILLEGAL_VALUE``.  The command register reads back the last command (``open`` while the meter's
command state is open), the map's ``relay.open`` entry reads the relay itself.  Unsupported
functions (anything but 01-06, 15, 16) get ``ILLEGAL_FUNCTION`` -- on RTU only when pymodbus can
frame them.

Who answers: the meter with the request's unit id; nobody for an unknown unit (as on RS-485);
unit 0 is broadcast: writes act on every meter, nobody answers.

Faults (:class:`ModbusFaultPlan`, per unit) are drawn as :class:`~.dlt645.FaultPlan`'s are: one
seeded ``random.Random`` per bus, in a fixed order, only for probabilities strictly between 0 and
1, so a run is reproducible and probability 1.0 always fires.  ``no_answer`` drops the request
before the meter sees it; ``exception`` answers an exception response (``exception_code``,
default 04 SLAVE_DEVICE_FAILURE) without executing; ``wrong_unit`` (the reply carries another
unit id, correctly framed), ``late`` (``late_by`` seconds), ``garble`` (RTU: one byte after the
byte count flipped, so the CRC fails; TCP: the MBAP protocol identifier made non-zero, so no
master accepts the frame) and ``partial`` (only the first 1..n-1 bytes go out) let the meter act
and spoil only the reply.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Final

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU

from meterd.protocols.dlt645.catalogue import Value
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.modbus import Function, RegisterMap, WriteRequest, encode_values, relay_command
from meterd.simulators.dlt645 import BusStats, FaultPlan, Reply, fires
from meterd.simulators.faults import FaultProbabilities
from meterd.simulators.model import MeterModel
from meterd.simulators.vendor_tables import VENDOR_TABLES, LazyImage, MeterState, ShareMemo, VendorTable

log = logging.getLogger(__name__)

MAX_UNIT: Final = 247
FRAMINGS: Final = ("rtu", "tcp")
MODBUS_FAULT_KINDS: Final = ("no_answer", "exception", "wrong_unit", "late", "garble", "partial")
SUPPORTED_FUNCTIONS: Final = frozenset({1, 2, 3, 4, 5, 6, 15, 16})
DEFAULT_BAUD: Final = 9600  # a Modbus RTU line: 9600 8N1
DEFAULT_PARITY: Final = "N"
RELAY_VALIDITY: Final = timedelta(minutes=10)  # valid_until of the relay command a write becomes
_MAX_RTU_ADU: Final = 256
_MAX_MBAP_LENGTH: Final = 254  # unit id + PDU (253 bytes at most)

_TABLE_OF_CODE: Final = {
    1: Function.COIL, 5: Function.COIL, 15: Function.COIL,
    2: Function.DISCRETE,
    3: Function.HOLDING, 6: Function.HOLDING, 16: Function.HOLDING,
    4: Function.INPUT,
}  # fmt: skip
_READ_RESPONSES: Final = frozenset({1, 2, 3, 4})  # their byte 2 (RTU) is the byte count

LINE_VOLTAGES: Final = {"voltage.ab": ("a", "b"), "voltage.bc": ("b", "c"), "voltage.ca": ("c", "a")}
REACTIVE_IMPORT_EXPORT: Final = {
    "energy.reactive.import.total": ("energy.reactive.q1.total", "energy.reactive.q2.total"),
    "energy.reactive.export.total": ("energy.reactive.q3.total", "energy.reactive.q4.total"),
}

_NOW: contextvars.ContextVar[datetime] = contextvars.ContextVar("meterd_modbus_sim_now")


# --- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModbusFaultPlan(FaultProbabilities):
    """Probabilities (0..1) of each link fault for one unit; ``late_by`` seconds for ``late``,
    ``exception_code`` for ``exception`` (04 SLAVE_DEVICE_FAILURE unless told).  One kind:
    ``ModbusFaultPlan.of("exception", 1.0, exception_code=2)``
    (:class:`~meterd.simulators.faults.FaultProbabilities`)."""

    KINDS: ClassVar[tuple[str, ...]] = MODBUS_FAULT_KINDS
    UNKNOWN_KIND: ClassVar[str] = "unknown Modbus fault kind"

    no_answer: float = 0.0
    exception: float = 0.0
    exception_code: int = int(ExcCodes.DEVICE_FAILURE)
    wrong_unit: float = 0.0
    late: float = 0.0
    late_by: float = 2.0
    garble: float = 0.0
    partial: float = 0.0

    def __post_init__(self) -> None:
        FaultProbabilities.__post_init__(self)  # by name: super() fails in a slotted dataclass
        if int(self.exception_code) != self.exception_code or not 1 <= self.exception_code <= 255:
            raise ValueError(f"exception_code={self.exception_code} must be an integer 1..255")

    @classmethod
    def _extra(cls, extra: dict[str, float]) -> dict[str, float]:
        """``exception_code`` as a whole number (checked before the plan is made)."""
        if "exception_code" in extra:
            code = extra["exception_code"]
            if code != int(code):
                raise ValueError(f"exception_code={code} must be an integer 1..255")
            extra = {**extra, "exception_code": int(code)}
        return extra

    @classmethod
    def coerce(cls, plan: ModbusFaultPlanLike) -> ModbusFaultPlan:
        """A plan from a ModbusFaultPlan, a DL/T 645 :class:`FaultPlan` (``wrong_address`` becomes
        ``wrong_unit``, ``abnormal`` becomes ``exception``) or a mapping ``{kind: probability}``
        (``late_by`` and ``exception_code`` allowed)."""
        if isinstance(plan, ModbusFaultPlan):
            return plan
        if isinstance(plan, FaultPlan):
            return cls(no_answer=plan.no_answer, exception=plan.abnormal, wrong_unit=plan.wrong_address,
                       late=plan.late, late_by=plan.late_by, garble=plan.garble)  # fmt: skip
        if isinstance(plan, Mapping):
            known = {*MODBUS_FAULT_KINDS, "late_by", "exception_code"}
            unknown = sorted(set(plan) - known)
            if unknown:
                raise ValueError(f"unknown Modbus fault kind(s) {', '.join(unknown)}; known: {', '.join(MODBUS_FAULT_KINDS)}")
            kw = {k: float(v) for k, v in plan.items()}
            if "exception_code" in kw:
                kw["exception_code"] = int(kw["exception_code"])
            return cls(**kw)  # type: ignore[arg-type]
        raise TypeError(f"{plan!r} is not a Modbus fault plan")

    def merged(self, other: ModbusFaultPlan) -> ModbusFaultPlan:
        """Both plans' faults (the larger probability of each kind)."""
        kw: dict[str, float | int] = {k: max(getattr(self, k), getattr(other, k)) for k in MODBUS_FAULT_KINDS}
        kw["late_by"] = other.late_by if other.late else self.late_by
        kw["exception_code"] = other.exception_code if other.exception else self.exception_code
        return ModbusFaultPlan(**kw)  # type: ignore[arg-type]

    def describe(self) -> dict[str, float | int]:
        """``active`` plus ``late_by`` / ``exception_code`` when those faults are on."""
        out: dict[str, float | int] = dict(self.active)
        if self.late:
            out["late_by"] = self.late_by
        if self.exception:
            out["exception_code"] = self.exception_code
        return out


ModbusFaultPlanLike = ModbusFaultPlan | FaultPlan | Mapping[str, float]


# --- live values -------------------------------------------------------------------------------


def _sources(quantities: Sequence[str]) -> set[str]:
    """The model quantities needed to serve ``quantities`` (derived ones need their sources)."""
    need = set(quantities)
    for q in quantities:
        if q in LINE_VOLTAGES:
            need.update(f"voltage.{p}" for p in LINE_VOLTAGES[q])
        elif q in REACTIVE_IMPORT_EXPORT:
            need.update(REACTIVE_IMPORT_EXPORT[q])
    return need


def line_voltage(va: Decimal, vb: Decimal) -> Decimal:
    """|Va - Vb| of two phase voltages 120 degrees apart, to 0.1 V."""
    a, b = float(va), float(vb)
    return Decimal(round(math.sqrt(a * a + a * b + b * b) * 10)).scaleb(-1)


def live_values(model: MeterModel, quantities: Sequence[str], now: datetime) -> dict[str, Value]:
    """The values a meter publishes for ``quantities`` at ``now``: the model's own, plus the
    derived ones (line voltages, reactive import/export).  Quantities the model lacks (phase B of
    a single-phase meter) are left out."""
    have = model.values(now, _sources(quantities))
    out: dict[str, Value] = {}
    for q in quantities:
        if q in have:
            out[q] = have[q]
        elif q in LINE_VOLTAGES:
            p1, p2 = LINE_VOLTAGES[q]
            va, vb = have.get(f"voltage.{p1}"), have.get(f"voltage.{p2}")
            if isinstance(va, Decimal) and isinstance(vb, Decimal):
                out[q] = line_voltage(va, vb)
        elif q in REACTIVE_IMPORT_EXPORT:
            parts = [have.get(s) for s in REACTIVE_IMPORT_EXPORT[q]]
            decimals = [p for p in parts if isinstance(p, Decimal)]
            if len(decimals) == len(parts):
                out[q] = sum(decimals, Decimal(0))
    return out


# --- the datastore -----------------------------------------------------------------------------


def vendor_table(regmap: RegisterMap) -> VendorTable | None:
    """The vendor's whole table behind ``regmap`` (None: the map is all the meter has).

    Only when every entry of the map is a parameter of the table at the same wire address: a map
    that only borrows a shipped map's name (or shifts it with ``address_offset``) gets no overlay.
    """
    table = VENDOR_TABLES.get(regmap.name)
    if table is None:
        return None
    offset = regmap.workarounds.address_offset
    for e in regmap.entries:
        if not table.covers(e.function, e.address + offset, e.end - e.address):
            log.debug("register map %s: %s is not in the %s vendor table; serving the map only",
                      regmap.name, e.quantity, table.model)  # fmt: skip
            return None
    return table


@dataclass(frozen=True, slots=True)
class _Layout:
    """What one register map looks like on the wire (shared by every unit of that model)."""

    regmap: RegisterMap
    readable: Mapping[Function, frozenset[int]]  # wire addresses
    writable: Mapping[Function, frozenset[int]]
    quantities: Mapping[Function, tuple[str, ...]]
    limits: Mapping[Function, int]
    open_cmd: WriteRequest | None
    close_cmd: WriteRequest | None
    vendor: VendorTable | None = None
    # the vendor table's registers the map does not cover: read from the table's image
    extra: Mapping[Function, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, regmap: RegisterMap) -> _Layout:
        wa = regmap.workarounds
        offset = wa.address_offset
        used: dict[Function, set[int]] = {f: set() for f in Function}
        quantities: dict[Function, list[str]] = {f: [] for f in Function}
        for e in regmap.entries:
            used[e.function].update(range(e.address + offset, e.end + offset))
            quantities[e.function].append(e.quantity)
        vendor = vendor_table(regmap)
        extra: dict[Function, frozenset[int]] = {}
        if vendor is not None:
            for f in Function:
                extra[f] = vendor.addresses(f) - used[f]
                used[f] |= extra[f]
        writable: dict[Function, frozenset[int]] = {f: frozenset() for f in Function}
        open_cmd = close_cmd = None
        if regmap.relay is not None:
            open_cmd, close_cmd = relay_command(regmap, True), relay_command(regmap, False)
            span = frozenset(range(open_cmd.address, open_cmd.address + len(open_cmd.values)))
            used[open_cmd.function].update(span)
            writable[open_cmd.function] = span
        readable: dict[Function, frozenset[int]] = {}
        for f, addresses in used.items():
            gap = wa.limit(f) if wa.max_gap is None else wa.max_gap
            filled = set(addresses)
            ordered = sorted(addresses)
            for a, b in itertools.pairwise(ordered):
                if 1 < b - a <= gap + 1:
                    filled.update(range(a + 1, b))
            readable[f] = frozenset(filled)
        return cls(
            regmap,
            readable,
            writable,
            {f: tuple(q) for f, q in quantities.items()},
            {f: wa.limit(f) for f in Function},
            open_cmd,
            close_cmd,
            vendor,
            {f: a - writable[f] for f, a in extra.items() if a - writable[f]},
        )

    def image(self, model: MeterModel, function: Function, now: datetime) -> dict[int, int | bool]:
        """Wire address -> register (or bit) of ``function``'s table right now."""
        out: dict[int, int | bool] = {}
        if self.open_cmd is not None and self.close_cmd is not None and self.open_cmd.function is function:
            cmd = self.open_cmd if model.command_open else self.close_cmd
            for i, v in enumerate(cmd.values):
                out[cmd.address + i] = v
        quantities = self.quantities[function]
        if quantities:
            values = live_values(model, quantities, now)
            if self.vendor is not None and self.vendor.magnitudes:
                for q in self.vendor.magnitudes.intersection(values):
                    signed = values[q]
                    if isinstance(signed, Decimal):
                        values[q] = abs(signed)
            for (_, address), raw in encode_values(self.regmap, values).items():
                for i, v in enumerate(raw):
                    out[address + i] = v
        return out


class MeterDatastore:
    """The datastore pymodbus' request PDUs run against (``datastore_update(context, device_id)``):
    one :class:`MeterModel` per unit id, read live at the time :meth:`ModbusBus.handle_async` set.

    Same coroutines as pymodbus' ``ModbusServerContext``: ``async_getValues`` returns the values or
    an :class:`~pymodbus.constants.ExcCodes`, ``async_setValues`` None or an ExcCodes.
    """

    # A meter refreshes its measurement registers about once a second; so does the simulator, which
    # keeps each unit's register image for that long (relay and alarm changes show at once).
    REFRESH_SECONDS = 1

    def __init__(self, units: Mapping[int, MeterModel], regmap: RegisterMap) -> None:
        self.units = dict(units)
        self.layout = _Layout.of(regmap)
        self._images: dict[tuple[int, Function], tuple[tuple[object, ...], dict[int, int | bool]]] = {}
        self._vendor_images: dict[tuple[int, Function], tuple[tuple[object, ...], LazyImage]] = {}
        self._shares = ShareMemo()

    def _key(self, model: MeterModel, now: datetime) -> tuple[object, ...]:
        return (
            int(now.timestamp()) // self.REFRESH_SECONDS if now.tzinfo else now.replace(microsecond=0),
            model.relay_open, model.command_open, model.pre_trip_alarm, model.protected,
        )  # fmt: skip

    def _image(self, device_id: int, model: MeterModel, function: Function, now: datetime) -> dict[int, int | bool]:
        key = self._key(model, now)
        cached = self._images.get((device_id, function))
        if cached is not None and cached[0] == key:
            return cached[1]
        image = self.layout.image(model, function, now)
        self._images[(device_id, function)] = (key, image)
        return image

    def _vendor_image(self, device_id: int, model: MeterModel, function: Function, now: datetime) -> LazyImage:
        """The vendor table's registers (made only when a read reaches past the map's)."""
        key = self._key(model, now)
        cached = self._vendor_images.get((device_id, function))
        if cached is not None and cached[0] == key:
            return cached[1]
        vendor = self.layout.vendor
        assert vendor is not None  # only asked for when the layout has extra registers
        image = vendor.lazy_image(MeterState.of(model, device_id, now, self._shares), function)
        self._vendor_images[(device_id, function)] = (key, image)
        return image

    def device_ids(self) -> list[int]:
        return list(self.units)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        model = self.units.get(device_id)
        function = _TABLE_OF_CODE.get(func_code)
        if model is None or function is None:
            return ExcCodes.ILLEGAL_FUNCTION if model is not None else ExcCodes.GATEWAY_NO_RESPONSE
        if not 1 <= count <= self.layout.limits[function]:
            return ExcCodes.ILLEGAL_VALUE
        readable = self.layout.readable[function]
        if any(a not in readable for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        now = _NOW.get()
        image = self._image(device_id, model, function, now)
        if function.is_bit:
            return [bool(image.get(a, False)) for a in range(address, address + count)]
        span = range(address, address + count)
        extra = self.layout.extra.get(function)
        if extra and not extra.isdisjoint(span):
            table = self._vendor_image(device_id, model, function, now)
            return [int(image[a]) if a in image else table.get(a, 0) for a in span]
        return [int(image.get(a, 0)) for a in span]

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        model = self.units.get(device_id)
        function = _TABLE_OF_CODE.get(func_code)
        if model is None or function is None:
            return ExcCodes.ILLEGAL_FUNCTION if model is not None else ExcCodes.GATEWAY_NO_RESPONSE
        span = range(address, address + len(values))
        if not values or any(a not in self.layout.writable[function] for a in span):
            return ExcCodes.ILLEGAL_ADDRESS
        open_cmd, close_cmd = self.layout.open_cmd, self.layout.close_cmd
        assert open_cmd is not None and close_cmd is not None  # something is writable: the relay
        got = tuple(bool(v) for v in values) if function.is_bit else tuple(int(v) for v in values)
        if address == open_cmd.address and got == tuple(open_cmd.values):
            return self._relay(model, True)
        if address == close_cmd.address and got == tuple(close_cmd.values):
            return self._relay(model, False)
        return ExcCodes.ILLEGAL_VALUE

    @staticmethod
    def _relay(model: MeterModel, open_relay: bool) -> ExcCodes | None:
        now = _NOW.get()
        operator = min(model.operators) if model.operators else "00000000"
        refused = model.control(
            RelayCommand.TRIP if open_relay else RelayCommand.RECLOSE,
            password=model.password,
            operator=operator,
            valid_until=model.meter_clock(now).replace(microsecond=0) + RELAY_VALIDITY,
            now=now,
        )
        if refused:
            log.info("modbus simulator: %s", refused.reason)
            return ExcCodes.DEVICE_FAILURE
        return None


# --- stream decoders (what the links feed) -----------------------------------------------------


class RtuStreamDecoder:
    """Feed bytes from a serial line (or an RTU-over-TCP stream), take whole request ADUs.

    Frame sizes come from pymodbus' server-side request classes (``lookupPduClass``,
    ``calculateRtuFrameSize``) and the CRC check from :class:`~pymodbus.framer.FramerRTU`.  Unlike
    ``FramerRTU.decode`` (which throws the whole buffer away on a bad CRC) the hunt moves on one
    byte at a time, so a good frame behind noise or a corrupt frame is still found; a frame start
    still waiting for bytes is given up when a complete valid frame is buffered behind it, or when
    the line goes idle (:meth:`idle`: RTU's inter-frame silence ends every frame).
    """

    def __init__(self, max_buffer: int = 2 * _MAX_RTU_ADU) -> None:
        self._buf = bytearray()
        self._pdus = DecodePDU(True)
        self.max_buffer = max_buffer
        self.dropped = 0  # corrupt frames / noise bursts thrown away
        self.discarded = 0  # bytes thrown away

    @property
    def pending(self) -> bytes:
        return bytes(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        excess = len(self._buf) - self.max_buffer
        if excess > 0:
            self._throw(excess)

    def idle(self) -> None:
        """The line was silent: whatever is buffered will never complete a frame."""
        if self._buf:
            self._throw(len(self._buf))

    def frames(self) -> Iterator[bytes]:
        while (adu := self._next()) is not None:
            yield adu

    def _throw(self, n: int) -> None:
        del self._buf[:n]
        self.dropped += 1
        self.discarded += n

    def _size_at(self, buf: bytes, pos: int) -> int | None:
        """Frame size of the request starting at ``pos``: 0 when more bytes are needed to tell,
        None when no request starts there."""
        view = buf[pos:]
        try:
            cls = self._pdus.lookupPduClass(view)
            if cls is None or cls is ExceptionResponse:
                return None
            return int(cls.calculateRtuFrameSize(view))
        except Exception:  # noqa: BLE001 - a class pymodbus cannot size: not framable on RTU
            return None

    def _next(self) -> bytes | None:
        buf = bytes(self._buf)
        n = len(buf)
        waiting = False
        for pos in range(max(n - FramerRTU.MIN_SIZE + 1, 0)):
            size = self._size_at(buf, pos)
            if size is None:
                continue
            if not size or pos + size > n:
                waiting = True  # may still complete; look for a whole frame behind it
                continue
            frame = buf[pos : pos + size]
            if FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")):
                if pos:
                    self._throw(pos)
                del self._buf[:size]
                return frame
        if not waiting and n >= FramerRTU.MIN_SIZE:
            self._throw(n - FramerRTU.MIN_SIZE + 1)  # nothing here can start a frame any more
        return None


class MbapStreamDecoder:
    """Feed bytes from a Modbus TCP connection, take whole request ADUs (MBAP header + PDU).

    :class:`~pymodbus.framer.FramerSocket` cuts the frames; a header that cannot be Modbus (protocol
    identifier not 0, a length outside 2..254) makes everything buffered garbage -- a real server
    would drop the connection -- instead of a wait that never ends.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._framer = FramerSocket(DecodePDU(True))
        self.dropped = 0
        self.discarded = 0

    @property
    def pending(self) -> bytes:
        return bytes(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def frames(self) -> Iterator[bytes]:
        buf = self._buf
        while len(buf) >= 6:
            length = int.from_bytes(buf[4:6], "big")
            if buf[2] or buf[3] or not 2 <= length <= _MAX_MBAP_LENGTH:
                self.dropped += 1
                self.discarded += len(buf)
                buf.clear()
                return
            used, _, _, _ = self._framer.decode(bytes(buf[: 6 + length]))
            if not used:
                return  # need more bytes
            adu = bytes(buf[:used])
            del buf[:used]
            yield adu


# --- the bus -----------------------------------------------------------------------------------


class ModbusBus:
    """Modbus meters sharing one RS-485 bus (or one Modbus TCP gateway): unit id -> meter.

    ``framing`` is ``"rtu"`` (RTU ADUs; serial lines and RTU over TCP) or ``"tcp"`` (MBAP).
    ``faults`` maps a unit id to a :class:`ModbusFaultPlan` (or anything
    :meth:`ModbusFaultPlan.coerce` takes).
    """

    protocol = "modbus"

    def __init__(
        self,
        meters: Mapping[int, MeterModel],
        regmap: RegisterMap,
        *,
        framing: str = "rtu",
        faults: Mapping[int, ModbusFaultPlanLike] | None = None,
        seed: int = 0,
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"framing {framing!r} must be one of {', '.join(FRAMINGS)}")
        if not meters:
            raise ValueError("a Modbus bus needs at least one meter")
        seen: dict[str, int] = {}
        for unit, model in meters.items():
            if isinstance(unit, bool) or not isinstance(unit, int) or not 1 <= unit <= MAX_UNIT:
                raise ValueError(f"unit id {unit!r} must be an integer 1..{MAX_UNIT}")
            if model.address in seen:
                raise ValueError(f"meter {model.address} is on the bus twice (units {seen[model.address]} and {unit})")
            seen[model.address] = unit
        self.framing = framing
        self.regmap = regmap
        self._units: dict[int, MeterModel] = dict(sorted(meters.items()))
        self.datastore = MeterDatastore(self._units, regmap)
        unknown = sorted(set(faults or {}) - set(self._units))
        if unknown:
            raise ValueError(f"faults given for units not on the bus: {', '.join(map(str, unknown))}")
        self.faults: dict[int, ModbusFaultPlan] = {u: ModbusFaultPlan.coerce(p) for u, p in (faults or {}).items()}
        self._pdus = DecodePDU(True)
        self._framer: FramerRTU | FramerSocket = FramerRTU(self._pdus) if framing == "rtu" else FramerSocket(self._pdus)
        self._rng = random.Random(seed)
        self.stats = BusStats()

    # --- what the serving layer and the fleet use -------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """The meters' addresses (their DL/T 645 style 12-digit numbers), in unit order."""
        return [m.address for m in self._units.values()]

    @property
    def units(self) -> dict[int, str]:
        """Unit id -> meter address."""
        return {u: m.address for u, m in self._units.items()}

    @property
    def meters(self) -> list[MeterModel]:
        return list(self._units.values())

    def meter(self, unit: int) -> MeterModel:
        try:
            return self._units[unit]
        except KeyError:
            raise KeyError(f"unit {unit} is not on this bus") from None

    def decoder(self) -> RtuStreamDecoder | MbapStreamDecoder:
        """A fresh stream decoder for one link (a pty, or one TCP connection)."""
        return RtuStreamDecoder() if self.framing == "rtu" else MbapStreamDecoder()

    def advance(self, now: datetime) -> None:
        for m in self._units.values():
            m.advance(now)

    # --- the request path ---------------------------------------------------------------------

    def handle(self, adu: bytes | bytearray, now: datetime) -> list[Reply]:
        """:meth:`handle_async` for callers without an event loop (tests, tools).

        The bus never really waits (its datastore is in memory), so the coroutine runs to the end
        in one step; if it ever suspends, this raises instead of blocking.
        """
        coro = self.handle_async(adu, now)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        coro.close()
        raise RuntimeError("ModbusBus.handle: the request suspended; await handle_async instead")

    async def handle_async(self, adu: bytes | bytearray, now: datetime) -> list[Reply]:
        """One request ADU -> the replies to send (none, or one)."""
        used, unit, tid, pdu_bytes = self._framer.decode(bytes(adu))
        if not used or not pdu_bytes:
            self.stats.ignored += 1  # bad CRC, a cut frame: a real meter stays silent
            return []
        if unit == 0:
            return await self._broadcast(pdu_bytes, now)
        model = self._units.get(unit)
        if model is None:
            self.stats.ignored += 1
            return []
        self.stats.requests += 1
        plan = self.faults.get(unit)
        if plan is not None and self._fires(plan.no_answer):
            self.stats.faults["no_answer"] += 1
            return []
        fc = pdu_bytes[0]
        applied: list[str] = []
        response: ModbusPDU
        if plan is not None and self._fires(plan.exception):
            self.stats.faults["exception"] += 1
            applied.append("exception")
            response = ExceptionResponse(fc, plan.exception_code)
        else:
            response = await self._execute(unit, fc, pdu_bytes, now)
            if isinstance(response, ExceptionResponse):
                self.stats.refusals += 1
        response.dev_id, response.transaction_id = unit, tid
        return [self._reply(model, unit, response, plan, applied)]

    async def _execute(self, unit: int, fc: int, pdu_bytes: bytes, now: datetime) -> ModbusPDU:
        if fc not in SUPPORTED_FUNCTIONS:
            return ExceptionResponse(fc, ExcCodes.ILLEGAL_FUNCTION)
        request = self._pdus.decode(pdu_bytes)
        if request is None:  # a known function pymodbus refused to decode: count out of range
            return ExceptionResponse(fc, ExcCodes.ILLEGAL_VALUE)
        request.dev_id = unit
        token = _NOW.set(now)
        try:
            return await request.datastore_update(self.datastore, unit)  # type: ignore[arg-type]
        except Exception:
            log.exception("simulated Modbus unit %d failed on PDU %s", unit, pdu_bytes.hex(" ").upper())
            return ExceptionResponse(fc, ExcCodes.DEVICE_FAILURE)
        finally:
            _NOW.reset(token)

    async def _broadcast(self, pdu_bytes: bytes, now: datetime) -> list[Reply]:
        fc = pdu_bytes[0]
        if fc not in (5, 6, 15, 16):
            self.stats.ignored += 1  # only writes may be broadcast
            return []
        self.stats.requests += 1
        for unit in self._units:
            await self._execute(unit, fc, pdu_bytes, now)
        return []

    def _fires(self, p: float) -> bool:
        return fires(self._rng, p)

    # --- replies and faults -----------------------------------------------------------------

    def _reply(
        self, model: MeterModel, unit: int, response: ModbusPDU, plan: ModbusFaultPlan | None, applied: list[str]
    ) -> Reply:
        delay = 0.0
        if plan is not None and self._fires(plan.wrong_unit):
            response.dev_id = self._other_unit(unit)
            applied.append("wrong_unit")
        data = self._framer.buildFrame(response)
        if plan is not None:
            if self._fires(plan.late):
                delay = plan.late_by
                applied.append("late")
            if self._fires(plan.garble):
                data = self._garble(data)
                applied.append("garble")
            if self._fires(plan.partial) and len(data) > 1:
                data = data[: self._rng.randrange(1, len(data))]
                applied.append("partial")
        for kind in applied:
            if kind != "exception":  # counted when drawn
                self.stats.faults[kind] += 1
        self.stats.replies += 1
        return Reply(data, delay, tuple(applied), model.address)

    def _other_unit(self, unit: int) -> int:
        for u in self._units:
            if u != unit:
                return u
        return unit % MAX_UNIT + 1

    def _garble(self, data: bytes) -> bytes:
        out = bytearray(data)
        if self.framing == "tcp":
            out[2:4] = self._rng.randrange(1, 0x10000).to_bytes(2, "big")  # protocol id must be 0
        else:
            first = 3 if out[1] in _READ_RESPONSES else 2  # keep unit, function and byte count
            pos = self._rng.randrange(first, len(out))
            out[pos] ^= self._rng.randrange(1, 256)
        return bytes(out)


__all__ = [
    "DEFAULT_BAUD",
    "DEFAULT_PARITY",
    "FRAMINGS",
    "MAX_UNIT",
    "MODBUS_FAULT_KINDS",
    "SUPPORTED_FUNCTIONS",
    "MbapStreamDecoder",
    "MeterDatastore",
    "ModbusBus",
    "ModbusFaultPlan",
    "ModbusFaultPlanLike",
    "RtuStreamDecoder",
    "line_voltage",
    "live_values",
    "vendor_table",
]  # fmt: skip
