"""DTU registration and heartbeat packets, sans-I/O: what a GPRS/4G DTU sends besides meter frames.

A DTU (data transfer unit) sits next to the meters' RS-485 bus and connects *to* the master over
the mobile network.  Once connected it first sends a *registration packet* (注册包) carrying its
terminal id, then passes bytes through transparently in both directions, and every so often sends
a *heartbeat packet* (心跳包) so the master (and the operator's NAT) know the link is alive.  What
those two packets look like is configured per DTU model: :class:`DtuFormat`, which builds them,
recognises a registration at the start of a connection's bytes (:meth:`DtuFormat.parse_registration`:
a valid one, "need more bytes", an invalid attempt with its reason, or not this format at all),
strips heartbeats from a read (:meth:`DtuFormat.strip_heartbeats`) and classifies a whole packet.
No sockets, clocks or logging here: the listener in :mod:`meterd.collector.dtu` does the I/O.

Heartbeats are recognised where a heartbeat packet can start: at the beginning of a read (several
in a row), and for self-delimiting checksummed frame formats also at its end.  A DTU writes a
heartbeat as one packet, so it arrives whole at a read boundary; heartbeat bytes in the middle of
meter data are left alone (they are meter data).

Presets (see :data:`PRESETS`)
-----------------------------
``usr-ascii``
    Modelled on USR-IOT (有人物联网) DTUs and serial servers (USR-G780/G786 4G DTUs,
    USR-TCP232, USR-DR404 ...) with a *custom registration packet* sent once when the TCP
    connection is made ("connect with" / 连接发送): the registration is the terminal id as ASCII
    text, e.g. ``DTU00000001`` (USR allows up to 40 bytes).  Heartbeat: ``www.usr.cn`` -- the
    factory default content of USR's network heartbeat (sent every 30 s by default) -- or ``HB``,
    a common site convention; both are accepted.  A read that cannot be an id as it is (too long,
    or not of the id's form) but is an id followed by heartbeats -- a registration and the
    heartbeats sent since, handed over together after a delayed accept -- is split there.
``hex-frame``
    A framed binary registration in the style of the "protocol mode" of Chinese DTUs (Hongdian's
    DDP frames ``7B type len <11-byte id> ... 7B``, Four-Faith's compatible mode, 7E-framed TcpDtu
    conventions with register/heartbeat types), reduced to a generic frame meterd defines itself --
    it is not any single vendor's wire format::

        AA 55 | type | len | id (len bytes, ASCII) | CS
        type 01 = registration, 02 = heartbeat (carries the id too)
        CS   = sum of type, len and id bytes, modulo 256

    Unlike a bare ASCII id it is self-delimiting and checksummed, so heartbeats are recognised at
    both ends of a read and a corrupt registration is told from a wrong id.

Other models are described with :class:`DtuFormat` fields (``DtuFormat.from_dict`` takes config
keys): text framing ``prefix + id + suffix`` with an ASCII or hex (raw bytes, shown as hex digits)
id of fixed or variable length and fixed heartbeat packets; or frame framing as ``hex-frame`` with
its own header, types, checksum (``sum8``, ``xor8``, ``none``) and tail.  ``data_carries_registration``
covers DTUs set to put the registration in front of every packet ("data with" / 数据携带): it is
stripped from the start of every read.

Not handled: formats that wrap every data packet (Hongdian DDP's 0x09 user-data frames, MQTT
DTUs); registration packets split over several reads for a variable-length format with neither
suffix nor fixed length (the read is taken as the whole packet).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from meterd.errors import ConfigError

FRAMINGS: Final = ("text", "frame")
ID_ENCODINGS: Final = ("ascii", "hex")
CHECKSUMS: Final = ("sum8", "xor8", "none")
DEFAULT_ID_PATTERN: Final = r"[0-9A-Za-z_.:\-]+"
MAX_ID_LENGTH: Final = 255

# why a registration attempt is invalid (Parse.reason; the listener counts rejections by it)
MALFORMED: Final = "malformed"
OVERSIZED: Final = "oversized"
BAD_CHECKSUM: Final = "bad_checksum"


# --- formats --------------------------------------------------------------------------------------


class ParseStatus(enum.StrEnum):
    OK = "ok"  # a valid registration: terminal_id, consumed
    MORE = "more"  # could become a registration: wait for more bytes
    BAD = "bad"  # a registration attempt of this format, but invalid: reason, detail
    FOREIGN = "foreign"  # not a registration of this format at all


@dataclass(frozen=True, slots=True)
class Parse:
    status: ParseStatus
    terminal_id: str | None = None
    consumed: int = 0
    reason: str = ""
    detail: str = ""


_MORE: Final = Parse(ParseStatus.MORE)


def _foreign(detail: str) -> Parse:
    return Parse(ParseStatus.FOREIGN, detail=detail)


def _bad(reason: str, detail: str) -> Parse:
    return Parse(ParseStatus.BAD, reason=reason, detail=detail)


class PacketKind(enum.StrEnum):
    REGISTRATION = "registration"
    HEARTBEAT = "heartbeat"
    PAYLOAD = "payload"  # meter data (anything that is neither)
    INVALID = "invalid"  # a broken registration (reason says how)


@dataclass(frozen=True, slots=True)
class Classified:
    kind: PacketKind
    terminal_id: str | None = None
    reason: str = ""
    detail: str = ""


def _is_text(data: bytes) -> bool:
    return all(b in (9, 10, 13) or 0x20 <= b < 0x7F for b in data)


def show_bytes(data: bytes, limit: int = 32) -> str:
    """The first ``limit`` bytes as spaced upper-case hex, and the length if there is more (for logs)."""
    text = data[:limit].hex(" ").upper()
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


@dataclass(frozen=True, slots=True)
class DtuFormat:
    """How one DTU model registers and heart-beats.  See the module doc for the two framings.

    ``text``: registration = ``prefix + id + suffix``; the id is ``id_length`` bytes, or ends at
    ``suffix``, or (neither) is the rest of the read; heartbeats are the fixed ``heartbeats``
    packets.  ``frame``: ``header + type + len + id + checksum + tail`` for both packets.
    ``id_encoding``: ``ascii`` (the id is text, checked against ``id_pattern``) or ``hex`` (the id
    is raw bytes, the terminal id is their upper-case hex digits -- BCD ids read as their digits).
    """

    name: str
    framing: str = "text"
    description: str = ""
    id_encoding: str = "ascii"
    id_pattern: str = DEFAULT_ID_PATTERN
    id_length: int | None = None  # fixed id length in bytes; None: variable, 1..max_id_length
    max_id_length: int = 40
    # text framing
    prefix: bytes = b""
    suffix: bytes = b""
    heartbeats: tuple[bytes, ...] = ()
    # frame framing
    header: bytes = b"\xaa\x55"
    registration_type: int = 0x01
    heartbeat_type: int = 0x02
    checksum: str = "sum8"
    tail: bytes = b""
    # both
    data_carries_registration: bool = False
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError([f"dtu format {self.name!r}: {p}" for p in problems])
        object.__setattr__(self, "_regex", re.compile(self.id_pattern))
        object.__setattr__(self, "heartbeats", tuple(bytes(h) for h in self.heartbeats))

    def problems(self) -> list[str]:
        p: list[str] = []
        if not self.name:
            p.append("name must not be empty")
        if self.framing not in FRAMINGS:
            p.append(f"framing {self.framing!r} must be one of {', '.join(FRAMINGS)}")
        if self.id_encoding not in ID_ENCODINGS:
            p.append(f"id_encoding {self.id_encoding!r} must be one of {', '.join(ID_ENCODINGS)}")
        if not 1 <= self.max_id_length <= MAX_ID_LENGTH:
            p.append(f"max_id_length {self.max_id_length} must be 1..{MAX_ID_LENGTH}")
        if self.id_length is not None and not 1 <= self.id_length <= MAX_ID_LENGTH:
            p.append(f"id_length {self.id_length} must be 1..{MAX_ID_LENGTH}")
        try:
            re.compile(self.id_pattern)
        except re.error as exc:
            p.append(f"id_pattern {self.id_pattern!r} is not a regular expression: {exc}")
        if self.framing == "text":
            if self.id_encoding == "hex" and not (self.prefix or self.suffix or self.id_length):
                p.append("a hex id needs a prefix, a suffix or a fixed id_length to be told from meter data")
            if any(not h for h in self.heartbeats):
                p.append("an empty heartbeat packet")
        elif self.framing == "frame":
            if not self.header:
                p.append("frame framing needs a header")
            for key in ("registration_type", "heartbeat_type"):
                v = getattr(self, key)
                if not isinstance(v, int) or not 0 <= v <= 0xFF:
                    p.append(f"{key} {v!r} must be a byte value 0..255")
            if self.registration_type == self.heartbeat_type:
                p.append("registration_type and heartbeat_type must differ")
            if self.checksum not in CHECKSUMS:
                p.append(f"checksum {self.checksum!r} must be one of {', '.join(CHECKSUMS)}")
        return p

    # --- building (what a DTU sends; also the test side) ---------------------------------------

    def id_bytes(self, terminal_id: str) -> bytes:
        if self.id_encoding == "hex":
            try:
                return bytes.fromhex(terminal_id)
            except ValueError:
                raise ValueError(f"terminal id {terminal_id!r} is not hex digits") from None
        return terminal_id.encode("ascii")

    def encode_registration(self, terminal_id: str) -> bytes:
        raw = self.id_bytes(terminal_id)
        if self.framing == "frame":
            return self._frame(self.registration_type, raw)
        return self.prefix + raw + self.suffix

    def encode_heartbeat(self, terminal_id: str = "") -> bytes:
        if self.framing == "frame":
            return self._frame(self.heartbeat_type, self.id_bytes(terminal_id))
        if not self.heartbeats:
            raise ValueError(f"dtu format {self.name!r} has no heartbeat packet")
        return self.heartbeats[0]

    def _frame(self, ptype: int, raw: bytes) -> bytes:
        if len(raw) > MAX_ID_LENGTH:
            raise ValueError(f"terminal id of {len(raw)} bytes does not fit a length byte")
        body = bytes([ptype, len(raw)]) + raw
        return self.header + body + self._checksum(body) + self.tail

    def _checksum(self, body: bytes) -> bytes:
        if self.checksum == "sum8":
            return bytes([sum(body) & 0xFF])
        if self.checksum == "xor8":
            x = 0
            for b in body:
                x ^= b
            return bytes([x])
        return b""

    # --- recognising -----------------------------------------------------------------------------

    @property
    def max_registration(self) -> int:
        """The longest valid registration packet, in bytes."""
        n = self.id_length or self.max_id_length
        if self.framing == "frame":
            return len(self.header) + 2 + n + len(self._checksum(b"")) + len(self.tail)
        return len(self.prefix) + n + len(self.suffix)

    def parse_registration(self, buf: bytes) -> Parse:
        """Whether ``buf`` (what a new connection sent so far) starts with a registration."""
        buf = bytes(buf)
        if self.framing == "frame":
            return self._parse_frame(buf)
        return self._parse_text(buf)

    def _decode_id(self, raw: bytes) -> Parse | str:
        if self.id_encoding == "hex":
            text = raw.hex().upper()
        else:
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                return _bad(MALFORMED, f"terminal id is not ASCII: {show_bytes(raw)}")
        assert self._regex is not None
        if not self._regex.fullmatch(text):
            return _bad(MALFORMED, f"terminal id {text!r} does not match {self.id_pattern}")
        return text

    def _parse_text(self, buf: bytes) -> Parse:
        p = self.prefix
        if len(buf) < len(p):
            return _MORE if p.startswith(buf) else _foreign("no registration prefix")
        if not buf.startswith(p):
            return _foreign("no registration prefix")
        if not p and buf in self.heartbeats:
            return _foreign("a heartbeat, not a registration")
        body = buf[len(p):]
        if not p and self.id_encoding == "ascii" and not _is_text(body[: self.max_registration]):
            return _foreign("binary data, not an ASCII registration")
        limit = self.id_length or self.max_id_length
        if self.suffix:
            end = body.find(self.suffix)
            if end < 0:
                if len(body) >= limit + len(self.suffix):
                    return _bad(OVERSIZED, f"no registration suffix within {limit} id bytes")
                return _MORE
            raw, consumed = body[:end], len(p) + end + len(self.suffix)
        elif self.id_length:
            if len(body) < self.id_length:
                return _MORE
            raw, consumed = body[: self.id_length], len(p) + self.id_length
        else:
            if not body:
                return _MORE
            raw, consumed = body, len(buf)
            cut = self._before_heartbeats(raw, limit)
            if cut < len(raw):  # registration and heartbeats arrived in one read (a delayed accept)
                raw, consumed = raw[:cut], len(p) + cut
        if len(raw) > limit:
            return _bad(OVERSIZED, f"terminal id of {len(raw)} bytes, at most {limit} allowed")
        if self.id_length and len(raw) != self.id_length:
            return _bad(MALFORMED, f"terminal id of {len(raw)} bytes, expected {self.id_length}")
        if not raw:
            return _bad(MALFORMED, "empty terminal id")
        decoded = self._decode_id(raw)
        if isinstance(decoded, Parse):
            return decoded
        return Parse(ParseStatus.OK, decoded, consumed)

    def _frame_at(self, buf: bytes, pos: int) -> tuple[Parse, int]:
        """The frame at ``buf[pos:]``: (parse result, packet type or -1)."""
        h = self.header
        view = buf[pos:]
        if len(view) < len(h):
            return (_MORE if h.startswith(view) else _foreign("no frame header")), -1
        if not view.startswith(h):
            return _foreign("no frame header"), -1
        if len(view) < len(h) + 2:
            return _MORE, -1
        ptype, n = view[len(h)], view[len(h) + 1]
        if ptype not in (self.registration_type, self.heartbeat_type):
            return _bad(MALFORMED, f"unknown packet type {ptype:02X}"), ptype
        limit = self.id_length or self.max_id_length
        if n > limit:
            return _bad(OVERSIZED, f"length byte {n}, at most {limit} id bytes allowed"), ptype
        if n == 0 or (self.id_length and n != self.id_length):
            return _bad(MALFORMED, f"length byte {n}"), ptype
        cs_len = len(self._checksum(b""))
        size = len(h) + 2 + n + cs_len + len(self.tail)
        if len(view) < size:
            return _MORE, ptype
        body = view[len(h): len(h) + 2 + n]
        if view[len(h) + 2 + n: len(h) + 2 + n + cs_len] != self._checksum(body):
            return _bad(BAD_CHECKSUM, f"checksum mismatch in {show_bytes(view[:size])}"), ptype
        if view[size - len(self.tail): size] != self.tail:
            return _bad(MALFORMED, "wrong frame tail"), ptype
        decoded = self._decode_id(body[2:])
        if isinstance(decoded, Parse):
            return decoded, ptype
        return Parse(ParseStatus.OK, decoded, size), ptype

    def _before_heartbeats(self, raw: bytes, limit: int) -> int:
        """Where the heartbeats that end ``raw`` begin (``len(raw)`` when none do, or when
        ``raw`` is a valid id as it is: an id may itself end like a heartbeat)."""
        if not self.heartbeats or (len(raw) <= limit and isinstance(self._decode_id(raw), str)):
            return len(raw)
        end = len(raw)
        longest_first = sorted(self.heartbeats, key=len, reverse=True)
        while True:
            hb = next((h for h in longest_first if len(h) < end and raw.endswith(h, 0, end)), None)
            if hb is None:
                return end
            end -= len(hb)

    def _parse_frame(self, buf: bytes) -> Parse:
        result, ptype = self._frame_at(buf, 0)
        if ptype == self.heartbeat_type and result.status is not ParseStatus.BAD:
            return _MORE if result.status is ParseStatus.MORE else _foreign("a heartbeat, not a registration")
        return result

    def strip_heartbeats(self, data: bytes) -> tuple[bytes, int]:
        """``data`` without the heartbeat packets at its start (and, frame framing, its end);
        how many were removed."""
        count = 0
        if self.framing == "frame":
            while data:
                result, ptype = self._frame_at(data, 0)
                if result.status is not ParseStatus.OK or ptype != self.heartbeat_type:
                    break
                data = data[result.consumed:]
                count += 1
            while data:
                found = False
                # a heartbeat ending the read starts within its last max_registration bytes: look
                # only there (every header found costs a slice of the rest of the read)
                window = max(0, len(data) - self.max_registration)
                pos = data.rfind(self.header, window)
                while pos > 0:
                    result, ptype = self._frame_at(data, pos)
                    if result.status is ParseStatus.OK and ptype == self.heartbeat_type \
                            and pos + result.consumed == len(data):
                        data = data[:pos]
                        count += 1
                        found = True
                        break
                    pos = data.rfind(self.header, window, pos)
                if not found:
                    break
            return data, count
        while data:
            for hb in self.heartbeats:
                if data.startswith(hb):
                    data = data[len(hb):]
                    count += 1
                    break
            else:
                break
        return data, count

    def strip_registration(self, data: bytes, terminal_id: str) -> tuple[bytes, int]:
        """``data`` without copies of the terminal's registration at its start ("data with")."""
        reg = self.encode_registration(terminal_id)
        count = 0
        while data.startswith(reg):
            data = data[len(reg):]
            count += 1
        return data, count

    def classify(self, packet: bytes) -> Classified:
        """One whole packet: a registration (with its terminal id), a heartbeat, an invalid
        registration (with the reason), or meter payload."""
        packet = bytes(packet)
        rest, beats = self.strip_heartbeats(packet)
        if beats and not rest:
            return Classified(PacketKind.HEARTBEAT)
        result = self.parse_registration(packet)
        if result.status is ParseStatus.OK and result.consumed == len(packet):
            return Classified(PacketKind.REGISTRATION, result.terminal_id)
        if result.status is ParseStatus.BAD:
            return Classified(PacketKind.INVALID, reason=result.reason, detail=result.detail)
        return Classified(PacketKind.PAYLOAD)

    # --- configuration -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, name: str, doc: Mapping[str, Any]) -> DtuFormat:
        """A format from config keys (every problem listed in one ConfigError).

        ``preset`` (start from a preset), ``framing``, ``description``, ``id_encoding``,
        ``id_pattern``, ``id_length``, ``max_id_length``, ``registration_type``,
        ``heartbeat_type``, ``checksum``, ``data_carries_registration``; byte strings as ASCII
        text or hex digits: ``prefix``/``prefix_hex``, ``suffix``/``suffix_hex``,
        ``header``/``header_hex``, ``tail``/``tail_hex``; heartbeats as ``heartbeat``/
        ``heartbeat_hex`` (one) or ``heartbeats``/``heartbeats_hex`` (a list).
        """
        problems: list[str] = []
        where = f"dtu format {name!r}"
        kw: dict[str, Any] = {}
        base: DtuFormat | None = None
        if "preset" in doc:
            preset = doc["preset"]
            if not isinstance(preset, str) or preset not in PRESETS:
                problems.append(f"{where}: preset {preset!r} is not one of {', '.join(PRESETS)}")
            else:
                base = PRESETS[preset]
        plain = {
            "framing": str, "description": str, "id_encoding": str, "id_pattern": str, "checksum": str,
            "id_length": int, "max_id_length": int, "registration_type": int, "heartbeat_type": int,
            "data_carries_registration": bool,
        }
        byte_keys = ("prefix", "suffix", "header", "tail")
        known = {"preset", *plain, *byte_keys, *(f"{k}_hex" for k in byte_keys),
                 "heartbeat", "heartbeat_hex", "heartbeats", "heartbeats_hex"}
        for key in doc:
            if key not in known:
                problems.append(f"{where}: unknown key {key!r}")
        for key, typ in plain.items():
            if key not in doc:
                continue
            value = doc[key]
            if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{where}: {key} must be an integer, not {value!r}")
            elif typ is not int and not isinstance(value, typ):
                problems.append(f"{where}: {key} must be a {typ.__name__}, not {value!r}")
            else:
                kw[key] = value

        def as_bytes(key: str, value: Any, hexed: bool) -> bytes | None:
            if not isinstance(value, str):
                problems.append(f"{where}: {key} must be a string, not {value!r}")
                return None
            if hexed:
                try:
                    return bytes.fromhex(value)
                except ValueError:
                    problems.append(f"{where}: {key} {value!r} is not hex digits")
                    return None
            try:
                return value.encode("ascii")
            except UnicodeEncodeError:
                problems.append(f"{where}: {key} {value!r} is not ASCII (use {key}_hex)")
                return None

        for key in byte_keys:
            if key in doc and f"{key}_hex" in doc:
                problems.append(f"{where}: give {key} or {key}_hex, not both")
            for k, hexed in ((key, False), (f"{key}_hex", True)):
                if k in doc and (b := as_bytes(k, doc[k], hexed)) is not None:
                    kw[key] = b
        beats: list[bytes] = []
        for k, hexed, many in (("heartbeat", False, False), ("heartbeat_hex", True, False),
                               ("heartbeats", False, True), ("heartbeats_hex", True, True)):
            if k not in doc:
                continue
            values = doc[k] if many else [doc[k]]
            if many and not isinstance(values, list):
                problems.append(f"{where}: {k} must be a list of strings")
                continue
            for v in values:
                if (b := as_bytes(k, v, hexed)) is not None:
                    beats.append(b)
        if beats:
            kw["heartbeats"] = tuple(beats)
        if problems:
            raise ConfigError(problems)
        if base is not None:
            return dataclasses.replace(base, name=name, **kw)
        return cls(name=name, **kw)


USR_ASCII: Final = DtuFormat(
    "usr-ascii",
    framing="text",
    description="USR-IOT custom registration packet: the terminal id as ASCII text, sent on connect; "
    "heartbeat 'www.usr.cn' (USR factory default) or 'HB'",
    id_encoding="ascii",
    max_id_length=40,
    heartbeats=(b"www.usr.cn", b"HB"),
)

HEX_FRAME: Final = DtuFormat(
    "hex-frame",
    framing="frame",
    description="AA 55 | type (01 registration, 02 heartbeat) | len | id (ASCII) | sum8 of type..id",
    id_encoding="ascii",
    max_id_length=32,
    header=b"\xaa\x55",
    registration_type=0x01,
    heartbeat_type=0x02,
    checksum="sum8",
)

PRESETS: Final[dict[str, DtuFormat]] = {f.name: f for f in (USR_ASCII, HEX_FRAME)}


def get_format(fmt: DtuFormat | str) -> DtuFormat:
    """A preset by name, or the format itself."""
    if isinstance(fmt, DtuFormat):
        return fmt
    try:
        return PRESETS[fmt]
    except KeyError:
        raise ConfigError(f"unknown dtu format {fmt!r}; presets: {', '.join(PRESETS)}") from None


__all__ = [
    "BAD_CHECKSUM",
    "CHECKSUMS",
    "DEFAULT_ID_PATTERN",
    "FRAMINGS",
    "HEX_FRAME",
    "ID_ENCODINGS",
    "MALFORMED",
    "MAX_ID_LENGTH",
    "OVERSIZED",
    "PRESETS",
    "USR_ASCII",
    "Classified",
    "DtuFormat",
    "PacketKind",
    "Parse",
    "ParseStatus",
    "get_format",
    "show_bytes",
]  # fmt: skip
