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
Which vendor does what, with the manuals it comes from: ``docs/dtu.md``.

Three more pieces serve the listener:

* :class:`KnownRegistrations`: the registration packets of the *configured* terminals.  A
  connection's first bytes that start with one of them register that terminal whatever follows
  (data, heartbeats, the registration again) and however the TCP reads fell: a proper prefix of
  one waits for more.  This is what makes a prefix-less, variable-length ASCII id (USR's custom
  registration) safe to follow with binary data in the same read, and what registers a DTU whose
  registration is the same text as its heartbeat (the first such packet registers it; the format
  on its own calls that text a heartbeat).
* :class:`DtuStream`: a registered connection's bytes, turned into meter bytes.  It strips the
  terminal's own registration and the heartbeats at the start of each read; with
  ``data_carries_registration`` ("with data" / 数据携带: the registration in front of every packet)
  it also removes copies inside a read (two packets merged by TCP) and holds back the last bytes
  of a read that could be the start of the next copy (a prefix split by TCP) until the next read
  or :meth:`DtuStream.flush`.
* :meth:`DtuFormat.resync`: where, after bytes that are no registration (garbage before the
  registration), one could start, so that garbage and registration in one read still register.

Heartbeats are recognised where a heartbeat packet can start: at the beginning of a read (several
in a row), and for self-delimiting checksummed frame formats also at its end.  A DTU writes a
heartbeat as one packet, so it arrives whole at a read boundary; heartbeat bytes in the middle of
meter data are left alone (they are meter data).

Presets (see :data:`PRESETS`)
-----------------------------
``usr-ascii``
    USR-IOT (有人物联网) DTUs and serial servers with a *custom registration packet* (USR's
    "USER"/自定义 registration, also used for the ICCID, IMEI and SN registrations of the 4G
    DTUs, which send those numbers as ASCII digits): the registration is the terminal id as ASCII
    text, e.g. ``DTU00000001`` (USR allows up to 40 bytes).  Heartbeat: ``www.usr.cn`` (the
    content USR's manuals use for the network heartbeat, sent every 30 s by default) or ``HB``, a
    common site convention; both are accepted.  A read that cannot be an id as it is (too long,
    or not of the id's form) but is an id followed by heartbeats is split there.
``usr-mac``
    USR-IOT serial servers registering with their MAC address: six raw bytes (shown and configured
    as ``aa:bb:cc:dd:ee:ff``), heartbeats as ``usr-ascii``.  Six bytes have no delimiter: every
    connection's first six bytes are taken as the MAC (garbage before it cannot be skipped).
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
keys): text framing ``prefix + id + suffix`` with an ASCII, hex (raw bytes, shown as hex digits)
or MAC (six raw bytes) id of fixed or variable length and fixed heartbeat packets; or frame
framing as ``hex-frame`` with its own header, types, checksum (``sum8``, ``xor8``, ``none``) and
tail.

Not handled: formats that wrap or escape every data packet (Hongdian DDP's 0x09 user-data frames,
Four-Faith's PROT mode escaping FD/FE, MQTT DTUs); registration packets of an *unknown* terminal
split over several reads for a variable-length format with neither suffix nor fixed length (the
read is taken as the whole packet: a refused id may be shown cut).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from meterd.errors import ConfigError

FRAMINGS: Final = ("text", "frame")
ID_ENCODINGS: Final = ("ascii", "hex", "mac")
CHECKSUMS: Final = ("sum8", "xor8", "none")
DEFAULT_ID_PATTERN: Final = r"[0-9A-Za-z_.:\-]+"
MAX_ID_LENGTH: Final = 255
MAC_LENGTH: Final = 6  # a MAC registration: the six bytes of the address, no framing
# "with data": copies of the registration are removed from inside a read only when they are at
# least this long (a 1-3 byte registration inside meter data is too likely to be meter data)
MIN_INLINE_REGISTRATION: Final = 4

# why a registration attempt is invalid (Parse.reason; the listener counts rejections by it)
MALFORMED: Final = "malformed"
OVERSIZED: Final = "oversized"
BAD_CHECKSUM: Final = "bad_checksum"

_MAC_TEXT: Final = re.compile(r"[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}|[0-9A-Fa-f]{10})")
_TEXT_AFTER_BINARY: Final = re.compile(rb"[^\t\n\r\x20-\x7e][\t\n\r\x20-\x7e]")


def parse_mac(text: str) -> bytes | None:
    """The six bytes of a MAC written ``aa:bb:cc:dd:ee:ff``, ``AA-BB-CC-DD-EE-FF`` or
    ``aabbccddeeff``; None if ``text`` is none of these."""
    if not isinstance(text, str) or not _MAC_TEXT.fullmatch(text):
        return None
    return bytes.fromhex(text.replace(":", "").replace("-", ""))


def show_mac(raw: bytes) -> str:
    """Six bytes as ``aa:bb:cc:dd:ee:ff`` (how a MAC terminal id is shown)."""
    return ":".join(f"{b:02x}" for b in raw)


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


_TEXT: Final = re.compile(rb"[\t\n\r\x20-\x7e]*")


def _is_text(data: bytes) -> bool:
    """Printable ASCII, tab, CR and LF only (one regex match, not a test per byte: a listener's
    terminals are checked at start, 100,000 of them in a big district)."""
    return _TEXT.fullmatch(data) is not None


def show_bytes(data: bytes, limit: int = 32) -> str:
    """The first ``limit`` bytes as spaced upper-case hex, and the length if there is more (for logs)."""
    text = data[:limit].hex(" ").upper()
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


def _tail_prefix(data: bytes, packet: bytes) -> int:
    """The length of the longest proper prefix of ``packet`` that ends ``data`` (0: none)."""
    if not packet:
        return 0
    first = packet[0]
    i = data.find(first, max(0, len(data) - len(packet) + 1))
    while i >= 0:  # only where the packet's first byte is: usually nowhere
        if packet.startswith(data[i:]):
            return len(data) - i
        i = data.find(first, i + 1)
    return 0


@dataclass(frozen=True, slots=True)
class DtuFormat:
    """How one DTU model registers and heart-beats.  See the module doc for the two framings.

    ``text``: registration = ``prefix + id + suffix``; the id is ``id_length`` bytes, or ends at
    ``suffix``, or (neither) is the rest of the read; heartbeats are the fixed ``heartbeats``
    packets.  ``frame``: ``header + type + len + id + checksum + tail`` for both packets.
    ``id_encoding``: ``ascii`` (the id is text, checked against ``id_pattern``), ``hex`` (the id
    is raw bytes, the terminal id is their upper-case hex digits -- BCD ids read as their digits)
    or ``mac`` (six raw bytes, the terminal id ``aa:bb:cc:dd:ee:ff``).
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
    # both: the DTU puts its registration in front of every data packet ("with data")
    data_carries_registration: bool = False
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError([f"dtu format {self.name!r}: {key}: {msg}" if key else f"dtu format {self.name!r}: {msg}"
                               for key, msg in problems])
        object.__setattr__(self, "_regex", re.compile(self.id_pattern))
        object.__setattr__(self, "heartbeats", tuple(bytes(h) for h in self.heartbeats))

    def problems(self) -> list[tuple[str, str]]:
        """What is wrong with the fields, as (config key, message); the key is "" where several
        keys together are wrong."""
        p: list[tuple[str, str]] = []
        if not self.name:
            p.append(("name", "must not be empty"))
        if self.framing not in FRAMINGS:
            p.append(("framing", f"{self.framing!r} must be one of {', '.join(FRAMINGS)}"))
        if self.id_encoding not in ID_ENCODINGS:
            p.append(("id_encoding", f"{self.id_encoding!r} must be one of {', '.join(ID_ENCODINGS)}"))
        if not 1 <= self.max_id_length <= MAX_ID_LENGTH:
            p.append(("max_id_length", f"{self.max_id_length} must be 1..{MAX_ID_LENGTH}"))
        if self.id_length is not None and not 1 <= self.id_length <= MAX_ID_LENGTH:
            p.append(("id_length", f"{self.id_length} must be 1..{MAX_ID_LENGTH}"))
        if self.id_encoding == "mac" and self.id_length not in (None, MAC_LENGTH):
            p.append(("id_length", f"{self.id_length}: a MAC id is {MAC_LENGTH} bytes"))
        try:
            re.compile(self.id_pattern)
        except re.error as exc:
            p.append(("id_pattern", f"{self.id_pattern!r} is not a regular expression: {exc}"))
        if self.framing == "text":
            if self.id_encoding == "hex" and not (self.prefix or self.suffix or self.id_length):
                p.append(("", "a hex id needs a prefix, a suffix or a fixed id_length to be told from meter data"))
            if any(not h for h in self.heartbeats):
                p.append(("heartbeats", "an empty heartbeat packet"))
        elif self.framing == "frame":
            if not self.header:
                p.append(("header", "frame framing needs a header"))
            for key in ("registration_type", "heartbeat_type"):
                v = getattr(self, key)
                if not isinstance(v, int) or not 0 <= v <= 0xFF:
                    p.append((key, f"{v!r} must be a byte value 0..255"))
            if self.registration_type == self.heartbeat_type:
                p.append(("", "registration_type and heartbeat_type must differ"))
            if self.checksum not in CHECKSUMS:
                p.append(("checksum", f"{self.checksum!r} must be one of {', '.join(CHECKSUMS)}"))
        return p

    @property
    def fixed_length(self) -> int | None:
        """The id's length in bytes if it is fixed (a MAC: 6), else None."""
        return MAC_LENGTH if self.id_encoding == "mac" else self.id_length

    # --- building (what a DTU sends; also the test side) ---------------------------------------

    def id_bytes(self, terminal_id: str) -> bytes:
        if self.id_encoding == "mac":
            raw = parse_mac(terminal_id)
            if raw is None:
                raise ValueError(f"terminal id {terminal_id!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
            return raw
        if self.id_encoding == "hex":
            try:
                return bytes.fromhex(terminal_id)
            except ValueError:
                raise ValueError(f"terminal id {terminal_id!r} is not hex digits") from None
        try:
            return terminal_id.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"terminal id {terminal_id!r} is not ASCII") from None

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

    def id_problem(self, terminal_id: str) -> str | None:
        """Why a DTU of this format cannot register as ``terminal_id`` (None: it can)."""
        try:
            packet = self.encode_registration(terminal_id)
        except ValueError as exc:
            return str(exc)
        result = self._parse(packet, heartbeats=False)
        if result.status is ParseStatus.OK and result.consumed == len(packet):
            return None
        return result.detail or f"its registration {show_bytes(packet)} does not parse back"

    # --- recognising -----------------------------------------------------------------------------

    @property
    def max_registration(self) -> int:
        """The longest valid registration packet, in bytes."""
        n = self.fixed_length or self.max_id_length
        if self.framing == "frame":
            return len(self.header) + 2 + n + len(self._checksum(b"")) + len(self.tail)
        return len(self.prefix) + n + len(self.suffix)

    def parse_registration(self, buf: bytes) -> Parse:
        """Whether ``buf`` (what a new connection sent so far) starts with a registration."""
        return self._parse(bytes(buf), heartbeats=True)

    def _parse(self, buf: bytes, *, heartbeats: bool) -> Parse:
        if self.framing == "frame":
            return self._parse_frame(buf)
        if heartbeats and not self.prefix:
            beat = self._heartbeat_first(buf)
            if beat is not None:
                return beat
        return self._parse_text(buf)

    def _decode_id(self, raw: bytes) -> Parse | str:
        if self.id_encoding == "mac":
            return show_mac(raw)
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

    def _heartbeat_first(self, buf: bytes) -> Parse | None:
        """A prefix-less text format: ``buf`` is heartbeats, not a registration (FOREIGN), or may
        still become a heartbeat (MORE), or None.  A variable-length id is the whole read, so only
        a read of nothing but heartbeats is one (an id may begin like a heartbeat); a fixed-length
        or suffixed id is told from a heartbeat at the read's start."""
        if not self.heartbeats or not buf:
            return None
        if not (self.suffix or self.fixed_length):
            rest, beats = self.strip_heartbeats(buf)
            return _foreign("heartbeats, not a registration") if beats and not rest else None
        for h in self.heartbeats:
            if buf.startswith(h):
                return _foreign("a heartbeat, not a registration")
        if any(h.startswith(buf) for h in self.heartbeats):
            return _MORE
        return None

    def _parse_text(self, buf: bytes) -> Parse:
        p = self.prefix
        if len(buf) < len(p):
            return _MORE if p.startswith(buf) else _foreign("no registration prefix")
        if not buf.startswith(p):
            return _foreign("no registration prefix")
        body = buf[len(p):]
        if not p and self.id_encoding == "ascii" and not _is_text(body[: self.max_registration]):
            return _foreign("binary data, not an ASCII registration")
        fixed = self.fixed_length
        limit = fixed or self.max_id_length
        if self.suffix:
            end = body.find(self.suffix)
            if end < 0:
                if len(body) >= limit + len(self.suffix):
                    return _bad(OVERSIZED, f"no registration suffix within {limit} id bytes")
                return _MORE
            raw, consumed = body[:end], len(p) + end + len(self.suffix)
        elif fixed:
            if len(body) < fixed:
                return _MORE
            raw, consumed = body[:fixed], len(p) + fixed
        else:
            if not body:
                return _MORE
            raw, consumed = body, len(buf)
            cut = self._before_heartbeats(raw, limit)
            if cut < len(raw):  # registration and heartbeats arrived in one read (a delayed accept)
                raw, consumed = raw[:cut], len(p) + cut
        if len(raw) > limit:
            return _bad(OVERSIZED, f"terminal id of {len(raw)} bytes, at most {limit} allowed")
        if fixed and len(raw) != fixed:
            return _bad(MALFORMED, f"terminal id of {len(raw)} bytes, expected {fixed}")
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
        fixed = self.fixed_length
        limit = fixed or self.max_id_length
        if n > limit:
            return _bad(OVERSIZED, f"length byte {n}, at most {limit} id bytes allowed"), ptype
        if n == 0 or (fixed and n != fixed):
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

    def resync(self, buf: bytes) -> int:
        """Where in ``buf``, after its first byte, a registration of this format could start
        (``len(buf)``: nowhere): the next header or prefix (or a piece of one ending ``buf``), a
        run of text after binary bytes (prefix-less ASCII ids), or past a heartbeat at the start."""
        n = len(buf)
        at = n
        if not self.prefix and self.framing == "text":
            for h in self.heartbeats:
                if len(h) < n and buf.startswith(h):
                    at = min(at, len(h))
        lead = self.header if self.framing == "frame" else self.prefix
        if lead:
            i = buf.find(lead, 1)
            if i < 0:
                k = _tail_prefix(buf[1:], lead)
                i = n - k if k else n
            at = min(at, i)
        elif self.id_encoding == "ascii":
            m = _TEXT_AFTER_BINARY.search(buf)
            if m is not None:
                at = min(at, m.start() + 1)
        return max(at, 1)

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

        ``preset`` (start from a preset), ``framing``, ``description``, ``id_encoding`` (``ascii``,
        ``hex``, ``mac``), ``id_pattern``, ``id_length``, ``max_id_length``, ``registration_type``,
        ``heartbeat_type``, ``checksum``, ``data_carries_registration``; byte strings as ASCII
        text or hex digits: ``prefix``/``prefix_hex``, ``suffix``/``suffix_hex``,
        ``header``/``header_hex``, ``tail``/``tail_hex``; heartbeats as ``heartbeat``/
        ``heartbeat_hex`` (one) or ``heartbeats``/``heartbeats_hex`` (a list).
        """
        fmt, problems = cls.from_config(name, doc)
        if fmt is None:
            where = f"dtu format {name!r}"
            raise ConfigError([f"{where}: {key}: {msg}" if key else f"{where}: {msg}" for key, msg in problems])
        return fmt

    @classmethod
    def from_config(cls, name: str, doc: Mapping[str, Any]) -> tuple[DtuFormat | None, list[tuple[str, str]]]:
        """:meth:`from_dict` for the config loader: the format, or None and every problem as
        (key, message) so that the loader can name the key in the file."""
        problems: list[tuple[str, str]] = []
        kw: dict[str, Any] = {}
        base: DtuFormat | None = None
        if "preset" in doc:
            preset = doc["preset"]
            if not isinstance(preset, str) or preset not in PRESETS:
                problems.append(("preset", f"{preset!r} is not one of {', '.join(PRESETS)}"))
            else:
                base = PRESETS[preset]
        plain = _PLAIN_KEYS
        byte_keys = _BYTE_KEYS
        for key in doc:
            if key not in CONFIG_KEYS:
                problems.append((str(key), "unknown key"))
        for key, typ in plain.items():
            if key not in doc:
                continue
            value = doc[key]
            if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append((key, f"must be an integer, not {value!r}"))
            elif typ is not int and not isinstance(value, typ):
                problems.append((key, f"must be a {typ.__name__}, not {value!r}"))
            else:
                kw[key] = value

        def as_bytes(key: str, value: Any, hexed: bool) -> bytes | None:
            if not isinstance(value, str):
                problems.append((key, f"must be a string, not {value!r}"))
                return None
            if hexed:
                try:
                    return bytes.fromhex(value)
                except ValueError:
                    problems.append((key, f"{value!r} is not hex digits"))
                    return None
            try:
                return value.encode("ascii")
            except UnicodeEncodeError:
                problems.append((key, f"{value!r} is not ASCII (use {key}_hex)"))
                return None

        for key in byte_keys:
            if key in doc and f"{key}_hex" in doc:
                problems.append((key, f"give {key} or {key}_hex, not both"))
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
                problems.append((k, "must be a list of strings"))
                continue
            for v in values:
                if (b := as_bytes(k, v, hexed)) is not None:
                    beats.append(b)
        if beats:
            kw["heartbeats"] = tuple(beats)
        if problems:
            return None, problems
        try:
            if base is not None:
                return dataclasses.replace(base, name=name, **kw), []
            return cls(name=name, **kw), []
        except ConfigError:
            # the fields are each of the right type but do not fit together: say which
            probe = object.__new__(cls)
            for f in dataclasses.fields(cls):
                if f.init:
                    default = getattr(base, f.name) if base is not None else f.default
                    object.__setattr__(probe, f.name, kw.get(f.name, default))
            object.__setattr__(probe, "name", name)
            return None, probe.problems()


_PLAIN_KEYS: Final[dict[str, type]] = {
    "framing": str, "description": str, "id_encoding": str, "id_pattern": str, "checksum": str,
    "id_length": int, "max_id_length": int, "registration_type": int, "heartbeat_type": int,
    "data_carries_registration": bool,
}
_BYTE_KEYS: Final = ("prefix", "suffix", "header", "tail")
CONFIG_KEYS: Final = ("preset", *_PLAIN_KEYS, *_BYTE_KEYS, *(f"{k}_hex" for k in _BYTE_KEYS),
                      "heartbeat", "heartbeat_hex", "heartbeats", "heartbeats_hex")
"""The keys of a format's config table (:meth:`DtuFormat.from_dict`)."""

USR_ASCII: Final = DtuFormat(
    "usr-ascii",
    framing="text",
    description="USR-IOT custom (ICCID/IMEI/SN/user) registration packet: the terminal id as ASCII text, "
    "sent on connect; heartbeat 'www.usr.cn' or 'HB'",
    id_encoding="ascii",
    max_id_length=40,
    heartbeats=(b"www.usr.cn", b"HB"),
)

USR_MAC: Final = DtuFormat(
    "usr-mac",
    framing="text",
    description="USR-IOT MAC registration packet: the six bytes of the MAC address (aa:bb:cc:dd:ee:ff), "
    "sent on connect; heartbeat 'www.usr.cn' or 'HB'",
    id_encoding="mac",
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

PRESETS: Final[dict[str, DtuFormat]] = {f.name: f for f in (USR_ASCII, USR_MAC, HEX_FRAME)}


def get_format(fmt: DtuFormat | str) -> DtuFormat:
    """A preset by name, or the format itself."""
    if isinstance(fmt, DtuFormat):
        return fmt
    try:
        return PRESETS[fmt]
    except KeyError:
        raise ConfigError(f"unknown dtu format {fmt!r}; presets: {', '.join(PRESETS)}") from None


# --- the configured terminals' registrations ---------------------------------------------------------


class KnownRegistrations:
    """The registration packet of every configured terminal in every format, to recognise them at
    the start of a connection's bytes whatever follows.

    Built once per listener (one dictionary per format and packet length, and a sorted list for
    the "a piece of one" question): a lookup costs a few dictionary probes and a bisection however
    many terminals there are.  ``problems``: terminals that no format can register, and two
    terminals whose registrations are the same bytes in one format.
    """

    def __init__(self, formats: Sequence[DtuFormat], known: Iterable[str]) -> None:
        known = list(known)
        self.problems: list[str] = []
        self._tables: list[tuple[DtuFormat, dict[int, dict[bytes, str]], list[bytes]]] = []
        usable: dict[str, list[str]] = {tid: [] for tid in known}
        for fmt in formats:
            by_length: dict[int, dict[bytes, str]] = {}
            for tid in known:
                refused = fmt.id_problem(tid)
                if refused is not None:
                    usable[tid].append(f"{fmt.name}: {refused}")
                    continue
                packet = fmt.encode_registration(tid)
                other = by_length.setdefault(len(packet), {}).setdefault(packet, tid)
                if other != tid:
                    self.problems.append(f"terminals {other!r} and {tid!r} register with the same bytes "
                                         f"({show_bytes(packet)}) in dtu format {fmt.name}")
            packets = sorted(p for table in by_length.values() for p in table)
            self._tables.append((fmt, dict(sorted(by_length.items(), reverse=True)), packets))
        for tid, reasons in usable.items():
            if len(reasons) == len(formats) and formats:
                self.problems.append(f"terminal {tid!r} cannot register in any format: {'; '.join(reasons)}")

    def match(self, buf: bytes) -> tuple[DtuFormat, str, int] | None:
        """(format, terminal id, packet length) of the known registration ``buf`` starts with --
        the longest, in the first format that has one -- or None."""
        for fmt, by_length, _ in self._tables:
            for n, table in by_length.items():
                if len(buf) >= n and (tid := table.get(bytes(buf[:n]))) is not None:
                    return fmt, tid, n
        return None

    def incomplete(self, buf: bytes) -> bool:
        """Whether ``buf`` is a proper prefix of some known registration (wait for more)."""
        buf = bytes(buf)
        if not buf:
            return False
        for _, _, packets in self._tables:
            i = bisect.bisect_left(packets, buf)
            if i < len(packets) and packets[i] != buf and packets[i].startswith(buf):
                return True
        return False


# --- a registered connection -------------------------------------------------------------------------


class DtuStream:
    """The bytes of one registered DTU connection turned into meter bytes.

    :meth:`feed` takes each read and returns (meter bytes, heartbeats seen).  At the start of a
    read it removes the terminal's own registration and the format's heartbeats, in any order and
    number (a DTU re-announcing itself, a DTU whose heartbeat *is* its registration -- counted as
    heartbeats when the read holds nothing else); of a registration shorter than
    :data:`MIN_INLINE_REGISTRATION` bytes only the one copy ``data_carries_registration`` puts
    there (one or two bytes at the start of a reply are too likely to be the reply's).  With ``data_carries_registration`` it also
    removes copies of the registration inside the read (at least
    :data:`MIN_INLINE_REGISTRATION` bytes long) and holds back a tail of the read that is the
    start of the registration; the next read or :meth:`flush` decides what it was.
    ``prefixes`` counts the registrations removed in front of data.
    """

    def __init__(self, fmt: DtuFormat, terminal_id: str) -> None:
        self.format = fmt
        self.terminal_id = terminal_id
        self.registration = fmt.encode_registration(terminal_id)
        # copies of the registration removed at a read's start: any number, or (a short one) the
        # one a "with data" DTU puts there, or none
        long_enough = len(self.registration) >= MIN_INLINE_REGISTRATION
        self._leading = -1 if long_enough else int(fmt.data_carries_registration)
        self.held = b""
        self.prefixes = 0

    def feed(self, data: bytes) -> tuple[bytes, int]:
        data = self.held + bytes(data)
        self.held = b""
        reg, fmt = self.registration, self.format
        beats = regs = 0
        while data:
            if (self._leading < 0 or regs < self._leading) and data.startswith(reg):
                data = data[len(reg):]
                regs += 1
                continue
            data, n = fmt.strip_heartbeats(data)
            if not n:
                break
            beats += n
        if fmt.data_carries_registration and data:
            if len(reg) >= MIN_INLINE_REGISTRATION and reg in data:
                parts = data.split(reg)
                regs += len(parts) - 1
                data = b"".join(parts)
            k = _tail_prefix(data, reg)
            if k:
                data, self.held = data[:-k], data[-k:]
        if data or self.held:
            self.prefixes += regs
        else:
            beats += regs  # nothing but the registration: the DTU's keep-alive
        return data, beats

    def flush(self) -> bytes:
        """What :meth:`feed` held back (it was meter data after all)."""
        held, self.held = self.held, b""
        return held


__all__ = [
    "BAD_CHECKSUM",
    "CHECKSUMS",
    "CONFIG_KEYS",
    "DEFAULT_ID_PATTERN",
    "FRAMINGS",
    "HEX_FRAME",
    "ID_ENCODINGS",
    "MAC_LENGTH",
    "MALFORMED",
    "MAX_ID_LENGTH",
    "MIN_INLINE_REGISTRATION",
    "OVERSIZED",
    "PRESETS",
    "USR_ASCII",
    "USR_MAC",
    "Classified",
    "DtuFormat",
    "DtuStream",
    "KnownRegistrations",
    "PacketKind",
    "Parse",
    "ParseStatus",
    "get_format",
    "parse_mac",
    "show_bytes",
    "show_mac",
]  # fmt: skip
