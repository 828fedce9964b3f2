"""Modbus over a meterd channel: pymodbus' framers and PDUs, sans-I/O, on the channel's one bus.

Why not pymodbus' client: a channel is one half-duplex bus shared by every meter on it, with its
own timeouts, retries, failure statistics and trace, and it may carry DL/T 645 meters as well.
So the channel owns the I/O and pymodbus does everything Modbus: the request PDU classes build
the request, the framer (:class:`~pymodbus.framer.FramerRTU` for RTU on serial and RTU-over-TCP,
:class:`~pymodbus.framer.FramerSocket` for Modbus TCP) wraps and unwraps the ADU and checks the
CRC, and the client-side :class:`~pymodbus.pdu.DecodePDU` decodes the reply.  meterd only adds
what pymodbus' client hides: *how* a reply failed, so the round can count it -- a CRC error or an
undecodable frame is ``garbled``, a frame that stops short is ``incomplete``, a reply from another
unit id is ``wrong_address``, and an exception response is returned as an answer (it becomes a
failed reading with its exception code, never a retry).

Modbus TCP replies are matched by transaction id, so a late reply to an earlier request is
skipped rather than taken for the current one; RTU has no transaction id and relies on the
channel dropping stale input before each request.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from meterd.collector.channel import ROUTINE, Channel
from meterd.errors import AddressMismatchError, DeviceRejectedError, ProtocolError
from meterd.protocols.modbus import Function, ReadBlock, WriteRequest

MAX_UNIT: Final = 247

_READS: Final = {
    Function.HOLDING: ReadHoldingRegistersRequest,
    Function.INPUT: ReadInputRegistersRequest,
    Function.COIL: ReadCoilsRequest,
    Function.DISCRETE: ReadDiscreteInputsRequest,
}


class Framing(enum.StrEnum):
    RTU = "rtu"  # RTU ADU (unit, PDU, CRC): serial buses, and serial servers / DTUs passing RTU through TCP
    TCP = "tcp"  # Modbus TCP (MBAP header, no CRC)


def exception_name(code: int) -> str:
    try:
        return ExcCodes(code).name
    except ValueError:
        return "UNKNOWN"


@dataclass(frozen=True, slots=True)
class ModbusException:
    """A Modbus exception response: the device understood the request and refused it."""

    function_code: int
    code: int

    def __str__(self) -> str:
        return f"Modbus exception {self.code:02X} ({exception_name(self.code)}) to FC{self.function_code:02d}"


class ModbusRefused(DeviceRejectedError):
    """The device answered a request with an exception response."""

    def __init__(self, meter: str, error: ModbusException) -> None:
        super().__init__(meter, error)
        self.code = error.code


class ModbusReply:
    """Receive side of one Modbus attempt (see :class:`~meterd.collector.channel.ReplyMatcher`)."""

    __slots__ = ("_buf", "decoder", "dropped", "framer", "framing", "function_code", "tid", "unit")

    def __init__(self, framing: Framing, decoder: DecodePDU, unit: int, tid: int, function_code: int) -> None:
        self.framing = framing
        self.framer = FramerRTU(decoder) if framing is Framing.RTU else FramerSocket(decoder)
        self.decoder = decoder
        self.unit = unit
        self.tid = tid
        self.function_code = function_code
        self.dropped = 0
        self._buf = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> ModbusPDU | None:
        buf = self._buf
        buf += data
        while buf:
            if self.framing is Framing.TCP and len(buf) >= 4 and (buf[2] or buf[3]):
                self._drop()  # protocol id must be 0: not an MBAP header
                return None
            used, unit, tid, payload = self.framer.decode(bytes(buf))
            if not used:
                return None  # need more bytes
            del buf[:used]
            if not payload:
                self._drop()  # CRC error: the framer consumed the corrupt frame
                continue
            if self.framing is Framing.TCP and tid != self.tid:
                continue  # a late reply to an earlier request
            if unit != self.unit:
                raise AddressMismatchError(f"unit {self.unit}", f"unit {unit}")
            pdu = self.decoder.decode(payload)
            if pdu is None or (pdu.function_code & 0x7F) != self.function_code:
                self.dropped += 1
                continue
            pdu.dev_id, pdu.transaction_id = unit, tid
            return pdu
        return None

    def _drop(self) -> None:
        self.dropped += 1
        self._buf.clear()


class ModbusLink:
    """Modbus requests to the meters of one channel."""

    def __init__(self, channel: Channel, framing: Framing | str = Framing.RTU) -> None:
        self.channel = channel
        self.framing = Framing(framing)
        self._decoder = DecodePDU(is_server=False)
        self._framer = FramerRTU(self._decoder) if self.framing is Framing.RTU else FramerSocket(self._decoder)
        self._tid = 0

    async def execute(self, meter: str, unit: int, request: ModbusPDU, *, priority: int = ROUTINE) -> ModbusPDU:
        """Send ``request`` to ``unit``; the reply PDU (an :class:`ExceptionResponse` is a reply).

        Raises :class:`~meterd.collector.channel.TransactionError` when every attempt failed.
        """
        if not 0 <= unit <= MAX_UNIT:
            raise ValueError(f"meter {meter}: Modbus unit id {unit} is not 0..{MAX_UNIT}")
        if self.framing is Framing.TCP:
            self._tid = self._tid % 0xFFFF + 1
        request.dev_id = unit
        request.transaction_id = self._tid
        wire = self._framer.buildFrame(request)
        fc = request.function_code
        tid = self._tid
        decoder, framing = self._decoder, self.framing
        reply = await self.channel.exchange(
            meter, wire, lambda: ModbusReply(framing, decoder, unit, tid, fc), request=request,
            expect_reply=unit != 0,  # unit 0 is broadcast: nobody answers
            priority=priority,
        )
        return reply

    async def read_block(
        self, meter: str, unit: int, block: ReadBlock, *, priority: int = ROUTINE
    ) -> list[int] | list[bool]:
        """The registers (or bits) of one planned read.  Raises ModbusRefused on an exception reply."""
        request = _READS[block.function](address=block.address, count=block.count)
        reply = _checked(meter, await self.execute(meter, unit, request, priority=priority))
        if block.function.is_bit:
            bits = list(reply.bits)
            if len(bits) < block.count:
                raise ProtocolError(f"meter {meter}: {len(bits)} bits in the reply, asked for {block.count}")
            return bits[: block.count]
        registers = list(reply.registers)
        if len(registers) != block.count:
            raise ProtocolError(
                f"meter {meter}: {len(registers)} registers in the reply to FC{block.function.read_code:02d} "
                f"{block.address} x{block.count}"
            )
        return registers

    async def write(self, meter: str, unit: int, write: WriteRequest, *, priority: int = ROUTINE) -> None:
        """Send one write (FC05 / FC06 / FC16).  Raises ModbusRefused on an exception reply."""
        request: ModbusPDU
        if write.function is Function.COIL:
            request = WriteSingleCoilRequest(address=write.address, bits=[bool(write.values[0])])
        elif len(write.values) == 1:
            request = WriteSingleRegisterRequest(address=write.address, registers=[int(write.values[0])])
        else:
            request = WriteMultipleRegistersRequest(address=write.address, registers=[int(v) for v in write.values])
        _checked(meter, await self.execute(meter, unit, request, priority=priority))


def _checked(meter: str, reply: ModbusPDU) -> ModbusPDU:
    if isinstance(reply, ExceptionResponse) or reply.function_code & 0x80:
        code = getattr(reply, "exception_code", 0)
        raise ModbusRefused(meter, ModbusException(reply.function_code & 0x7F, int(code)))
    return reply


def registers_hex(values: Sequence[int]) -> str:
    return " ".join(f"{v:04X}" for v in values)
