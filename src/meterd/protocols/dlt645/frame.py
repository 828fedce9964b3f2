"""DL/T 645 link frames: layout, control word, addresses, checksum, and a resyncing stream decoder.

Frame layout (DL/T 645-2007 clause 4.1; DL/T 645-1997 uses the same envelope)::

    +----+----+----+----+----+----+----+----+----+----+-----------------+----+----+
    | 68 | A0 | A1 | A2 | A3 | A4 | A5 | 68 | C  | L  | DATA (L bytes)  | CS | 16 |
    +----+----+----+----+----+----+----+----+----+----+-----------------+----+----+
          address: 6 bytes BCD, low byte first        each data byte is sent +0x33 (mod 256)
                                                       CS = sum(68 .. last DATA byte) mod 256

    Control word C:  D7 direction (0 master->meter, 1 meter->master)
                     D6 abnormal reply flag (meter side only)
                     D5 follow-up frame flag
                     D4..D0 function code

One to four ``FE`` wake-up bytes usually precede a frame on RS-485; they and any other noise before
``68`` are skipped.  The address ``999999999999`` is broadcast; ``AA`` bytes are wildcards (the
read-address request uses ``AAAAAAAAAAAA``, and short addresses are padded with ``AA`` in the high
bytes).

Two decoders give the same result: :data:`FRAME` laid out with construct (the reference) and
:func:`decode_frame`, a hand-written path for the polling hot loop.  The golden tests run both.

:class:`StreamDecoder` is fed bytes as they arrive and hands out whole frames.  It never raises on
noise: a frame with a bad checksum or end byte is dropped (counted in ``dropped`` and kept in
``last_error``) and hunting restarts at the next ``68``.  The buffer is bounded.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from construct import (
    Bytes,
    Checksum,
    Const,
    ConstructError,
    Int8ub,
    RawCopy,
    Struct,
    this,
)
from construct import (
    ChecksumError as ConstructChecksumError,
)

from meterd.errors import ChecksumError, FrameLengthError, ProtocolError

START: Final = 0x68
END: Final = 0x16
PREAMBLE: Final = b"\xfe\xfe\xfe\xfe"
DATA_OFFSET: Final = 0x33
MAX_DATA: Final = 255
HEADER_LEN: Final = 10  # 68 A0..A5 68 C L
MIN_FRAME: Final = 12  # header + CS + 16
MAX_FRAME: Final = MIN_FRAME + MAX_DATA
BROADCAST: Final = "999999999999"
WILDCARD: Final = "AAAAAAAAAAAA"

DIR_UP: Final = 0x80
ABNORMAL: Final = 0x40
FOLLOW_UP: Final = 0x20
FUNCTION_MASK: Final = 0x1F


class Function(enum.IntEnum):
    """Function codes (C & 0x1F) of DL/T 645-2007, table 2 / clause 4.1.3."""

    BROADCAST_TIME = 0x08
    READ_DATA = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE_DATA = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    CLEAR_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B
    RELAY_CONTROL = 0x1C
    OUTPUT_CONTROL = 0x1D


def _sum8(data: bytes) -> int:
    return sum(data) & 0xFF


_BODY = Struct(
    "start1" / Const(b"\x68"),
    "address" / Bytes(6),
    "start2" / Const(b"\x68"),
    "control" / Int8ub,
    "length" / Int8ub,
    "data" / Bytes(this.length),
)

FRAME = Struct(
    "body" / RawCopy(_BODY),
    "cs" / Checksum(Int8ub, _sum8, this.body.data),
    "end" / Const(b"\x16"),
)
"""The reference construct layout of one frame (no preamble); data bytes still carry +0x33."""


# --- addresses -------------------------------------------------------------------------------

_ADDR_OK = frozenset(b"0123456789A")


# Both directions are remembered (bounded): a master talks to the same meters all day long, and
# checking six BCD bytes in Python costs more than the rest of encoding or decoding a frame.
_TO_WIRE: dict[str, bytes] = {}
_FROM_WIRE: dict[bytes, str] = {}
ADDRESSES_KEPT: Final = 65536


def address_to_wire(address: str) -> bytes:
    """``"000000001234"`` -> ``34 12 00 00 00 00`` (BCD, low byte first); ``AA`` bytes are kept."""
    wire = _TO_WIRE.get(address)
    if wire is None:
        wire = _address_to_wire(address)
        if len(_TO_WIRE) >= ADDRESSES_KEPT:
            _TO_WIRE.clear()
        _TO_WIRE[address] = wire
    return wire


def _address_to_wire(address: str) -> bytes:
    if len(address) != 12:
        raise ProtocolError(f"address {address!r} must have 12 digits")
    try:
        raw = bytes.fromhex(address)
    except ValueError:
        raise ProtocolError(f"address {address!r} is not 12 BCD digits") from None
    if len(raw) != 6:  # fromhex skips spaces: "1234 5678 90" is 12 characters but 5 bytes
        raise ProtocolError(f"address {address!r} is not 12 BCD digits")
    for b in raw:
        if b != 0xAA and ((b >> 4) > 9 or (b & 0x0F) > 9):
            raise ProtocolError(f"address {address!r} is not 12 BCD digits")
    return raw[::-1]


def address_from_wire(raw: bytes) -> str:
    """The inverse of :func:`address_to_wire`; rejects bytes that are neither BCD nor ``AA``."""
    key = bytes(raw)
    address = _FROM_WIRE.get(key)
    if address is None:
        address = _address_from_wire(key)
        if len(_FROM_WIRE) >= ADDRESSES_KEPT:
            _FROM_WIRE.clear()
        _FROM_WIRE[key] = address
    return address


def _address_from_wire(raw: bytes) -> str:
    for b in raw:
        if b != 0xAA and ((b >> 4) > 9 or (b & 0x0F) > 9):
            raise ProtocolError("address is not BCD", bytes(raw))
    return raw[::-1].hex().upper()


def need_data(frame: Frame, size: int, what: str, exact: bool = True) -> None:
    """FrameLengthError unless ``frame`` carries ``size`` data bytes (at least ``size``, not ``exact``)."""
    n = len(frame.data)
    if (exact and n != size) or (not exact and n < size):
        raise FrameLengthError(f"{what}: data field of {n} bytes, expected {'' if exact else 'at least '}{size}")


def identifier_to_wire(di: int, size: int) -> bytes:
    """A data identifier of ``size`` bytes (4 in 2007, 2 in 1997), low byte first."""
    if not 0 <= di < 1 << (8 * size):
        raise ProtocolError(f"data identifier {di!r} is not {size} bytes")
    return di.to_bytes(size, "little")


def identifier_from_wire(raw: bytes, size: int) -> int:
    if len(raw) < size:
        raise FrameLengthError(f"data field shorter than the {size}-byte identifier", bytes(raw))
    return int.from_bytes(raw[:size], "little")


def parse_identifier(text: str | int, size: int, example: str) -> int:
    """``"00010000"`` / ``"9010"`` (spaces and 0x allowed) -> the identifier; ``size`` bytes exactly."""
    if isinstance(text, int):
        return text
    digits = 2 * size
    t = text.strip().replace(" ", "").removeprefix("0x").removeprefix("0X")
    if len(t) != digits:
        raise ProtocolError(f"data identifier {text!r} must be {digits} hex digits, e.g. {example}")
    try:
        return int(t, 16)
    except ValueError:
        raise ProtocolError(f"data identifier {text!r} must be {digits} hex digits") from None


def normalize_address(address: str | int) -> str:
    """Accept ``1234``, ``"1234"`` or ``"000000001234"`` and return the 12-digit form."""
    text = str(address).strip().upper()
    if not text or len(text) > 12 or not set(text.encode()) <= _ADDR_OK:
        raise ProtocolError(f"{address!r} is not a meter address (up to 12 decimal digits)")
    text = text.zfill(12)
    address_to_wire(text)
    return text


def address_matches(pattern: str, address: str) -> bool:
    """Whether a request sent to ``pattern`` (broadcast or with ``AA`` wildcards) reaches ``address``."""
    if pattern == BROADCAST:
        return True
    for i in range(0, 12, 2):
        p = pattern[i : i + 2]
        if p != "AA" and p != address[i : i + 2]:
            return False
    return True


# --- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One link frame.  ``data`` is the plain payload (the +0x33 already removed)."""

    address: str
    control: int
    data: bytes = b""

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIR_UP)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def has_follow_up(self) -> bool:
        return bool(self.control & FOLLOW_UP)

    def describe_control(self) -> str:
        try:
            name = Function(self.function).name
        except ValueError:
            name = f"function 0x{self.function:02X}"
        parts = ["reply" if self.is_reply else "request", name]
        if self.is_abnormal:
            parts.append("ABNORMAL")
        if self.has_follow_up:
            parts.append("follow-up")
        return " ".join(parts)


_PLUS33 = bytes((i + DATA_OFFSET) & 0xFF for i in range(256))
_MINUS33 = bytes((i - DATA_OFFSET) & 0xFF for i in range(256))


def scramble(data: bytes) -> bytes:
    """Add 0x33 to every data byte (master and meter both do this before sending)."""
    return data.translate(_PLUS33)


def unscramble(data: bytes) -> bytes:
    return data.translate(_MINUS33)


def encode_frame(frame: Frame, *, preamble: bytes = b"") -> bytes:
    """Frame -> wire bytes (hand-written; :func:`build_frame` is the construct reference)."""
    if len(frame.data) > MAX_DATA:
        raise FrameLengthError(f"data of {len(frame.data)} bytes does not fit one frame")
    if not 0 <= frame.control <= 0xFF:
        raise ProtocolError(f"control word {frame.control!r} out of range")
    body = (
        b"\x68"
        + address_to_wire(frame.address)
        + bytes((START, frame.control, len(frame.data)))
        + frame.data.translate(_PLUS33)
    )
    return preamble + body + bytes((sum(body) & 0xFF, END))


def build_frame(frame: Frame) -> bytes:
    """Frame -> wire bytes through the construct layout (reference path)."""
    body = {
        "address": address_to_wire(frame.address),
        "control": frame.control,
        "length": len(frame.data),
        "data": scramble(frame.data),
    }
    try:
        wire: bytes = FRAME.build({"body": {"value": body}})
        return wire
    except ConstructError as exc:
        raise ProtocolError(f"cannot build frame: {exc}") from exc


def parse_frame(raw: bytes) -> Frame:
    """Exactly one frame (no preamble) -> Frame, through the construct layout (reference path)."""
    if len(raw) < MIN_FRAME:
        raise FrameLengthError("frame shorter than 12 bytes", raw)
    try:
        parsed = FRAME.parse(raw)
    except ConstructChecksumError as exc:
        raise ChecksumError("checksum mismatch", raw) from exc
    except ConstructError as exc:
        raise FrameLengthError(f"malformed frame ({type(exc).__name__})", raw) from exc
    body = parsed.body.value
    if len(raw) != MIN_FRAME + body.length:
        raise FrameLengthError("bytes after the end of the frame", raw)
    return Frame(address_from_wire(body.address), body.control, unscramble(body.data))


def decode_frame(raw: bytes | bytearray | memoryview) -> Frame:
    """Exactly one frame (leading ``FE`` allowed) -> Frame.  The hand-written fast path."""
    raw = bytes(raw)
    start = 0
    n = len(raw)
    while start < n and raw[start] == 0xFE:
        start += 1
    if n - start < MIN_FRAME:
        raise FrameLengthError("frame shorter than 12 bytes", raw)
    if raw[start] != START or raw[start + 7] != START:
        raise ProtocolError("frame does not start with 68 .. 68", raw)
    length = raw[start + 9]
    end = start + HEADER_LEN + length
    if n != end + 2:
        raise FrameLengthError(f"length field {length} does not match {n - start} frame bytes", raw)
    if raw[end + 1] != END:
        raise ProtocolError("frame does not end with 16", raw)
    if (sum(raw[start:end]) & 0xFF) != raw[end]:
        raise ChecksumError("checksum mismatch", raw)
    return Frame(
        address_from_wire(raw[start + 1 : start + 7]),
        raw[start + 8],
        raw[start + HEADER_LEN : end].translate(_MINUS33),
    )


def scan_frames(data: bytes | bytearray | memoryview) -> list[tuple[int, int, Frame]]:
    """Every valid frame in ``data`` with where it lies: ``(start, end, frame)``, ``data[start:end]``
    being ``68 .. 16`` (wake-up ``FE`` bytes before it are not included).

    Strategy: the :class:`StreamDecoder`'s hunt over a whole buffer at once, unbounded (a paste or a
    capture file, not a live link): try each ``68`` whose header fits; a frame that decodes is taken
    and the hunt goes on after it; anything else drops that ``68`` only.  Bytes not covered by a
    result are noise the caller can report.  Linear but for ``68`` bytes whose ``L`` looks valid.
    """
    data = bytes(data)
    n = len(data)
    out: list[tuple[int, int, Frame]] = []
    pos = data.find(b"\x68")
    while 0 <= pos and n - pos >= MIN_FRAME:
        if data[pos + 7] == START:
            end = pos + MIN_FRAME + data[pos + 9]
            if end <= n and data[end - 1] == END:
                try:
                    frame = decode_frame(data[pos:end])
                except ProtocolError:
                    pass
                else:
                    out.append((pos, end, frame))
                    pos = data.find(b"\x68", end)
                    continue
        pos = data.find(b"\x68", pos + 1)
    return out


# --- stream decoding -------------------------------------------------------------------------


class StreamDecoder:
    """Feed bytes, take frames.  ``next_frame()`` returns ``None`` while more bytes are needed.

    Strategy: find a ``68``; once ten header bytes are in, check the second ``68`` and read L;
    once the whole frame is in, check the end byte and the checksum.  Any failure drops only the
    first ``68`` and hunts again, so a valid frame hidden after a corrupt one is still found.
    Noise can also look like a header whose L asks for more bytes than will ever come (a
    half-duplex meter sends nothing after its reply): while such a header waits, a complete valid
    frame already buffered behind it wins and the header is dropped.
    The buffer never holds more than ``max_buffer`` bytes: older bytes are discarded first.
    """

    __slots__ = ("_buf", "discarded", "dropped", "last_error", "max_buffer")

    def __init__(self, max_buffer: int = 4 * MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_buffer = max_buffer
        self.dropped = 0  # frames (or frame-looking starts) rejected
        self.discarded = 0  # noise bytes skipped
        self.last_error: ProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        excess = len(self._buf) - self.max_buffer
        if excess > 0:
            del self._buf[:excess]
            self.discarded += excess

    def clear(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> bytes:
        return bytes(self._buf)

    def next_frame(self) -> Frame | None:
        buf = self._buf
        while True:
            start = buf.find(b"\x68")
            if start < 0:
                self.discarded += len(buf)
                buf.clear()
                return None
            if start:
                self.discarded += start
                del buf[:start]
            if len(buf) < HEADER_LEN:
                return None
            if buf[7] != START:
                self._reject(ProtocolError("no second 68 at offset 7", bytes(buf[:HEADER_LEN])))
                continue
            total = MIN_FRAME + buf[9]
            if len(buf) < total:
                if not self._complete_frame_behind():
                    return None
                self._reject(FrameLengthError(f"L={buf[9]} runs past a complete frame", bytes(buf[:HEADER_LEN])))
                continue
            raw = bytes(buf[:total])
            try:
                frame = decode_frame(raw)
            except ProtocolError as exc:
                self._reject(exc)
                continue
            del buf[:total]
            return frame

    def frames(self) -> list[Frame]:
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def _complete_frame_behind(self) -> bool:
        """Whether a whole, valid frame starts at a later ``68`` of the buffer."""
        buf = self._buf
        start = buf.find(b"\x68", 1)
        while 0 < start and len(buf) - start >= MIN_FRAME:
            if buf[start + 7] == START:
                end = start + MIN_FRAME + buf[start + 9]
                if end <= len(buf):
                    try:
                        decode_frame(buf[start:end])
                        return True
                    except ProtocolError:
                        pass
            start = buf.find(b"\x68", start + 1)
        return False

    def _reject(self, exc: ProtocolError) -> None:
        self.dropped += 1
        self.last_error = exc
        del self._buf[:1]
