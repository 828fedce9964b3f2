"""The MQTT terminal protocol, sans-I/O: the topic tree and the JSON payloads master and terminals exchange.

A terminal (4G gateway, concentrator) bridges MQTT to its RS-485 bus.  The master sends it a meter
frame (DL/T 645 or Modbus, exactly the bytes a serial line would carry), the terminal puts them on
its bus and sends back what the meter answered; terminals may also push readings they collected
themselves.  This module is the schema of those messages, used by both sides (the collector's
:mod:`meterd.collector.mqtt` hub and :mod:`meterd.simulators.mqtt_terminal`); no broker, socket or
clock in it: times are passed in.

Topic tree (``<root>`` is ``meterd`` unless configured; ``<tid>`` a terminal id, no ``/ + #``)::

    <root>/terminals/<tid>/down     master -> terminal: requests              QoS 1, not retained
    <root>/terminals/<tid>/up       terminal -> master: replies               QoS 1, not retained
    <root>/terminals/<tid>/push     terminal -> master: pushed readings       QoS 1, not retained
                                    (the master subscribes to up and push at
                                    QoS 0: see meterd.collector.mqtt.UP_QOS)
    <root>/terminals/<tid>/status   "online" / "offline" (plain text)         QoS 1, RETAINED

Replies and pushed readings have topics of their own because they go to different masters when
several collector nodes share the broker: a reply belongs to the node that sent the request (every
node subscribes to every ``up`` and keeps the replies whose correlation id it issued), a push to
any one node (the nodes subscribe to ``push`` as one shared subscription,
``$share/<group>/<root>/terminals/+/push``, so the broker hands each push to exactly one of them).
A readings message on ``up`` -- where pushes went before they had a topic of their own -- is still
understood (see :mod:`meterd.collector.mqtt`).

A terminal connects with its *last will* ``offline`` (retained) on its status topic and then
publishes a retained ``online``; when it vanishes without a clean DISCONNECT (power cut, dead
cellular link, keepalive expiry) the broker publishes the will, so the master always knows the
last state.  A terminal that shuts down cleanly publishes ``offline`` itself first.

Payloads are UTF-8 JSON objects.  Times are RFC 3339 (``2025-06-01T00:05:00.000Z``).

Request (``down``)::

    {"type": "request", "id": "5f0c9a1e-2a", "meter": "000000000001",
     "protocol": "dlt645-2007", "frame": "fefefefe68010000000000681104333334333316",
     "sent": "2025-06-01T00:05:00.000Z", "expires": "2025-06-01T00:05:30.000Z"}

* ``id``: the correlation id, a string unique per request (master session + sequence number);
* ``frame``: the request bytes in hex, as they would go on the wire (DL/T 645 with its ``FE``
  preamble; Modbus as an RTU ADU with CRC, or MBAP);
* ``protocol``: ``dlt645-2007``, ``dlt645-1997`` or ``modbus`` (a terminal may pick its port or
  line settings by it); ``meter``: the DL/T 645 address from the frame, or for Modbus the meter the
  transport was told owns that unit (``null`` if unknown); ``unit``: the Modbus unit id (Modbus
  only);
* ``expires`` (optional): a terminal should drop a request it receives after this time -- the
  master gave up on it long ago (e.g. a request the client library re-sent after a broker restart).

Reply (``up``): the request's ``id``, the meter's answer in ``frame`` (hex), ``sent`` echoed from
the request and ``replied`` (when the terminal got the answer)::

    {"type": "reply", "id": "5f0c9a1e-2a", "meter": "000000000001", "protocol": "dlt645-2007",
     "frame": "fefefefe68010000000000689108333334338967453316...",
     "sent": "2025-06-01T00:05:00.000Z", "replied": "2025-06-01T00:05:00.180Z"}

Only ``id`` and ``frame`` are required; ``type`` (if present) must be ``reply``.  A meter that does
not answer gets no reply message (the master times out, as on a wire).  A bus answering in several
pieces may send several replies with the same ``id``; their frames are fed to the channel in order.

Pushed readings (``push``)::

    {"type": "readings", "meter": "000001000001", "sent": "2025-06-01T00:05:00.000Z",
     "readings": [
        {"quantity": "energy.active.import.total", "value": "13152.08", "unit": "kWh",
         "timestamp": "2025-06-01T00:05:00.000Z"},
        {"quantity": "relay.open", "value": "false", "kind": "boolean",
         "timestamp": "2025-06-01T00:05:00.000Z", "quality": "good"}]}

``value`` is always a *string*, so a decimal stays exact (``"13152.08"``, never a float);
``kind`` says how to read it: ``decimal`` (the default), ``integer``, ``boolean`` (``true`` /
``false``), ``time`` (RFC 3339) or ``text``.  ``unit`` defaults to ``""``, ``quality`` to ``good``;
``timestamp`` must carry a zone; every time in a payload must lie from 1970-01-01 to before
2100-01-01 UTC.  One bad item rejects the whole message (nothing half-stored).

Every payload parser raises :class:`PayloadError` (its message is the reason) and nothing else;
:func:`describe_frame` sniffs what a request frame is (protocol, meter, Modbus unit).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Protocol

from meterd.errors import ProtocolError
from meterd.protocols.dlt645.frame import decode_frame
from meterd.protocols.readspec import DLT645_1997, DLT645_2007, MODBUS

DEFAULT_ROOT: Final = "meterd"
#: The shared-subscription group collector nodes take pushed readings in (``$share/<group>/...``).
SHARE_GROUP: Final = "meterd"
ONLINE: Final = "online"
OFFLINE: Final = "offline"
QOS: Final = 1
#: The last level of a terminal's topics.
KINDS: Final = ("down", "up", "push", "status")
PROTOCOLS: Final = (DLT645_2007, DLT645_1997, MODBUS)
VALUE_KINDS: Final = ("decimal", "integer", "boolean", "time", "text")
MAX_ID_LEN: Final = 128
# DL/T 645-1997-only control codes (03 without data is 1997's re-read, with data 2007's security)
_FUNCTIONS_1997_ONLY: Final = frozenset({0x01, 0x02, 0x04, 0x0A, 0x0C, 0x0F, 0x10})
_FORBIDDEN_IN_ID: Final = frozenset("/+#\x00")
# Times in payloads (timestamps, time values, sent / replied / expires) must lie in this window: no
# meter reads before the epoch, and anything past 2100 is a terminal's clock gone wrong.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2100, 1, 1, tzinfo=UTC)
MAX_TIME_LEN: Final = 64
#: A reading's quality as a payload says it: the values of :class:`meterd.readings.Quality`.
QUALITIES: Final = ("good", "suspect", "estimated", "implausible")

#: What a reading's value may be (as :data:`meterd.readings.Value`).
Value = Decimal | datetime | int | str | bool


def rfc3339(t: datetime) -> str:
    """Aware (naive = UTC) datetime -> ``2025-06-01T00:05:00.000Z``."""
    if t.tzinfo is UTC:  # the usual case: every request stamps one or two
        return t.isoformat(timespec="milliseconds")[:-6] + "Z"
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: object, what: str = "time") -> datetime:
    """RFC 3339 text with a zone -> aware UTC datetime within [:data:`EARLIEST`, :data:`LATEST`).

    PayloadError otherwise: not text, not a time, no zone, or out of range (``0001-01-01T00:00+08:00``
    is not even a datetime in UTC; 1969 or 2200 is no meter's time).
    """
    if not isinstance(text, str):
        raise PayloadError(f"{what} must be an RFC 3339 string, not {type(text).__name__}")
    if len(text) > MAX_TIME_LEN:
        raise PayloadError(f"{what} {text[:40]!r}... is not an RFC 3339 time")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise PayloadError(f"{what} {text!r} is not an RFC 3339 time") from None
    if t.tzinfo is None:
        raise PayloadError(f"{what} {text!r} has no time zone")
    try:
        t = t.astimezone(UTC)
    except OverflowError:
        t = EARLIEST - timedelta(1) if t.year == 1 else LATEST
    if not EARLIEST <= t < LATEST:
        raise PayloadError(f"{what} {text!r} is out of range (from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} UTC)")
    return t


def check_terminal_id(tid: str) -> str:
    if not isinstance(tid, str) or not tid or any(c in _FORBIDDEN_IN_ID for c in tid):
        raise ValueError(f"terminal id {tid!r} must be a non-empty string without / + # or NUL")
    return tid


# --- topics ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic tree under one root (``meterd`` by default)."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        r = self.root
        if not r or any(c in r for c in "+#\x00") or r.startswith("/") or r.endswith("/"):
            raise ValueError(f"MQTT topic root {self.root!r} must be non-empty, without + # and outer /")

    def down(self, tid: str) -> str:
        return f"{self.root}/terminals/{tid}/down"

    def up(self, tid: str) -> str:
        return f"{self.root}/terminals/{tid}/up"

    def push(self, tid: str) -> str:
        return f"{self.root}/terminals/{tid}/push"

    def status(self, tid: str) -> str:
        return f"{self.root}/terminals/{tid}/status"

    @property
    def all_up(self) -> str:
        return f"{self.root}/terminals/+/up"

    @property
    def all_push(self) -> str:
        return f"{self.root}/terminals/+/push"

    @property
    def all_status(self) -> str:
        return f"{self.root}/terminals/+/status"

    def shared_push(self, group: str = SHARE_GROUP) -> str:
        """Every terminal's ``push`` as one shared subscription of ``group``: the broker delivers
        each message to one subscriber of the group, on its original topic."""
        if not group or any(c in group for c in "/+#\x00"):
            raise ValueError(f"shared-subscription group {group!r} must be non-empty, without / + #")
        return f"$share/{group}/{self.all_push}"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """``<root>/terminals/<tid>/<kind>`` -> (tid, kind); None for anything else."""
        prefix = f"{self.root}/terminals/"
        if not topic.startswith(prefix):
            return None
        rest = topic[len(prefix):].split("/")
        if len(rest) != 2 or not rest[0] or rest[1] not in KINDS:
            return None
        return rest[0], rest[1]


# --- payloads ----------------------------------------------------------------------------------


class PayloadError(ProtocolError, ValueError):
    """A message that does not follow the payload format (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What the master knows of a request frame: protocol, meter address, Modbus unit id."""

    protocol: str | None
    meter: str | None = None
    unit: int | None = None


def describe_frame(
    data: bytes, *, protocol: str | None = None, units: Mapping[int, str] | None = None
) -> FrameInfo:
    """Sniff a request frame: a valid DL/T 645 frame gives its address and edition (by control
    code: 01 02 04 0A 0C 0F 10 and a bare 03 are 1997), anything else is taken for Modbus (RTU, or
    MBAP when its header fits) and gives its unit id, named through ``units`` if given.
    ``protocol``, when given, overrides the sniffed protocol."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
    if protocol != MODBUS:
        try:
            frame = decode_frame(data)
        except ProtocolError:
            frame = None
        if frame is not None:
            if protocol is None:
                fn = frame.function
                v1997 = fn in _FUNCTIONS_1997_ONLY or (fn == 0x03 and not frame.data)
                protocol = DLT645_1997 if v1997 else DLT645_2007
            return FrameInfo(protocol, frame.address)
        if protocol is not None:
            return FrameInfo(protocol)
    unit: int | None = None
    n = len(data)
    if n >= 8 and data[2] == 0 and data[3] == 0 and int.from_bytes(data[4:6], "big") == n - 6:
        unit = data[6]  # MBAP
    elif n >= 4:
        unit = data[0]  # RTU
    meter = units.get(unit) if units is not None and unit is not None else None
    return FrameInfo(MODBUS, meter, unit)


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_PLAIN_TEXT = re.compile(r'[^\x00-\x1f"\\]*\Z')  # nothing json.dumps(ensure_ascii=False) would escape


def _json_text(text: str | None) -> str:
    """A JSON string (or null), exactly as :func:`_dumps` writes it."""
    if text is None:
        return "null"
    if _PLAIN_TEXT.match(text):
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)


def decode_json(payload: bytes) -> dict[str, Any]:
    """MQTT payload -> JSON object.  PayloadError for anything else, including JSON nested so deeply
    that the parser gives up (``[[[[...`` 100,000 deep raises RecursionError, cleanly)."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise PayloadError("payload is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"payload is a JSON {type(obj).__name__}, not an object")
    return obj


def _hex(obj: Mapping[str, Any], key: str = "frame") -> bytes:
    text = obj.get(key)
    if not isinstance(text, str):
        raise PayloadError(f"{key!r} must be a hex string" + ("" if key in obj else ", and is missing"))
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise PayloadError(f"{key!r} is not hex: {text[:40]!r}") from None
    if not data:
        raise PayloadError(f"{key!r} is empty")
    return data


def _id(obj: Mapping[str, Any]) -> str:
    cid = obj.get("id")
    if not isinstance(cid, str) or not cid or len(cid) > MAX_ID_LEN:
        raise PayloadError(f"'id' must be a non-empty string of at most {MAX_ID_LEN} characters, got {cid!r}"[:200])
    return cid


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is not None and not isinstance(v, str):
        raise PayloadError(f"{key!r} must be a string or null, not {type(v).__name__}")
    return v


def _opt_time(obj: Mapping[str, Any], key: str) -> datetime | None:
    v = obj.get(key)
    return None if v is None else parse_rfc3339(v, repr(key))


def _opt_protocol(obj: Mapping[str, Any]) -> str | None:
    p = _opt_str(obj, "protocol")
    if p is not None and p not in PROTOCOLS:
        raise PayloadError(f"'protocol' {p!r} is not one of {', '.join(PROTOCOLS)}")
    return p


def request_fields(meter: str | None, protocol: str | None, unit: int | None, frame: bytes) -> str:
    """The middle of a request payload, from ``"meter"`` to ``"frame"``: the same for every request
    of one frame to one terminal, so a transport keeps it per frame."""
    parts = [',"meter":', _json_text(meter), ',"protocol":', _json_text(protocol)]
    if unit is not None:
        parts += [',"unit":', json.dumps(unit)]
    parts += [',"frame":"', frame.hex(), '"']
    return "".join(parts)


def request_payload(id_json: str, fields: str, sent: datetime | None, expires: datetime | None) -> bytes:
    """A request payload from its parts (``id_json``: the id as a JSON string)."""
    parts = ['{"type":"request","id":', id_json, fields]
    if sent is not None:
        parts += [',"sent":"', rfc3339(sent), '"']
    if expires is not None:
        parts += [',"expires":"', rfc3339(expires), '"']
    parts.append("}")
    return "".join(parts).encode()


@dataclass(frozen=True, slots=True)
class RequestMessage:
    id: str
    frame: bytes
    protocol: str | None = None
    meter: str | None = None
    unit: int | None = None
    sent: datetime | None = None
    expires: datetime | None = None

    def payload(self) -> bytes:
        # written out by hand (the same bytes json.dumps gives): one per request, on the hot path
        return request_payload(_json_text(self.id), request_fields(self.meter, self.protocol, self.unit, self.frame),
                                self.sent, self.expires)

    @classmethod
    def parse(cls, payload: bytes) -> RequestMessage:
        obj = decode_json(payload)
        if obj.get("type", "request") != "request":
            raise PayloadError(f"'type' {obj.get('type')!r} is not 'request'")
        unit = obj.get("unit")
        if unit is not None and (isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit <= 255):
            raise PayloadError(f"'unit' {unit!r} is not a Modbus unit id")
        return cls(_id(obj), _hex(obj), _opt_protocol(obj), _opt_str(obj, "meter"), unit,
                   _opt_time(obj, "sent"), _opt_time(obj, "expires"))


@dataclass(frozen=True, slots=True)
class ReplyMessage:
    id: str
    frame: bytes
    protocol: str | None = None
    meter: str | None = None
    sent: datetime | None = None
    replied: datetime | None = None

    def payload(self) -> bytes:
        parts = ['{"type":"reply","id":', _json_text(self.id), ',"meter":', _json_text(self.meter),
                 ',"protocol":', _json_text(self.protocol), ',"frame":"', self.frame.hex(), '"']
        if self.sent is not None:
            parts += [',"sent":"', rfc3339(self.sent), '"']
        if self.replied is not None:
            parts += [',"replied":"', rfc3339(self.replied), '"']
        parts.append("}")
        return "".join(parts).encode()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ReplyMessage:
        if obj.get("type", "reply") != "reply":
            raise PayloadError(f"'type' {obj.get('type')!r} is not 'reply'")
        return cls(_id(obj), _hex(obj), _opt_protocol(obj), _opt_str(obj, "meter"),
                   _opt_time(obj, "sent"), _opt_time(obj, "replied"))


def _value_json(value: Value) -> tuple[str, str]:
    """A reading's value -> (text, kind)."""
    if isinstance(value, bool):
        return ("true" if value else "false"), "boolean"
    if isinstance(value, int):
        return str(value), "integer"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"value {value} is not finite")
        return str(value), "decimal"
    if isinstance(value, datetime):
        return rfc3339(value), "time"
    if isinstance(value, str):
        return value, "text"
    raise TypeError(f"a reading value cannot be a {type(value).__name__}")


def _value_from_json(text: object, kind: object) -> Value:
    if not isinstance(text, str):
        raise PayloadError(f"'value' must be a string (decimal text keeps it exact), not {type(text).__name__}")
    if kind == "decimal":
        try:
            d = Decimal(text.strip())
        except InvalidOperation:
            raise PayloadError(f"'value' {text[:40]!r} is not a decimal number") from None
        if not d.is_finite():
            raise PayloadError(f"'value' {text!r} is not a finite number")
        return d
    if kind == "integer":
        try:
            return int(text.strip())
        except ValueError:
            raise PayloadError(f"'value' {text[:40]!r} is not an integer") from None
    if kind == "boolean":
        if text not in ("true", "false"):
            raise PayloadError(f"'value' {text[:40]!r} is not true/false")
        return text == "true"
    if kind == "time":
        return parse_rfc3339(text, "'value'")
    if kind == "text":
        return text
    raise PayloadError(f"'kind' {kind!r} is not one of {', '.join(VALUE_KINDS)}")


class ReadingLike(Protocol):
    """What :func:`readings_payload` needs of a reading (a :class:`meterd.readings.Reading` is one)."""

    @property
    def meter(self) -> str: ...
    @property
    def quantity(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def value(self) -> Value: ...
    @property
    def unit(self) -> str: ...
    @property
    def quality(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PushedReading:
    """One reading of a pushed-readings message, as :func:`parse_readings` reads it: the fields of a
    :class:`meterd.readings.Reading`, ``quality`` one of :data:`QUALITIES` (the collector makes the
    Reading)."""

    meter: str
    quantity: str
    timestamp: datetime
    value: Value
    unit: str = ""
    quality: str = "good"


def reading_json(r: ReadingLike) -> dict[str, Any]:
    text, kind = _value_json(r.value)
    obj: dict[str, Any] = {"quantity": r.quantity, "value": text, "unit": r.unit, "timestamp": rfc3339(r.timestamp)}
    if kind != "decimal":
        obj["kind"] = kind
    if r.quality != "good":
        obj["quality"] = str(r.quality)
    return obj


def readings_payload(meter: str, readings: Iterable[ReadingLike], sent: datetime | None = None) -> bytes:
    """A pushed-readings message for one meter (every reading's ``meter`` must be ``meter``)."""
    items = []
    for r in readings:
        if r.meter != meter:
            raise ValueError(f"reading of meter {r.meter} in a message for meter {meter}")
        items.append(reading_json(r))
    obj: dict[str, Any] = {"type": "readings", "meter": meter}
    if sent is not None:
        obj["sent"] = rfc3339(sent)
    obj["readings"] = items
    return _dumps(obj)


def parse_readings(obj: Mapping[str, Any]) -> tuple[str, list[PushedReading]]:
    """A pushed-readings object -> (meter, readings).  PayloadError names the first bad item."""
    meter = obj.get("meter")
    if not isinstance(meter, str) or not meter or len(meter) > 64:
        raise PayloadError(f"'meter' must be a non-empty string, got {meter!r}"[:200])
    items = obj.get("readings")
    if not isinstance(items, list):
        raise PayloadError("'readings' must be a list")
    out: list[PushedReading] = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise PayloadError(f"is a {type(item).__name__}, not an object")
            quantity = item.get("quantity")
            if not isinstance(quantity, str) or not quantity:
                raise PayloadError("'quantity' must be a non-empty string")
            unit = item.get("unit", "")
            if not isinstance(unit, str):
                raise PayloadError("'unit' must be a string")
            value = _value_from_json(item.get("value"), item.get("kind", "decimal"))
            stamp = parse_rfc3339(item.get("timestamp"), "'timestamp'")
            quality = item.get("quality", "good")
            if not isinstance(quality, str) or quality not in QUALITIES:
                raise PayloadError(f"'quality' {quality!r} is not one of {', '.join(QUALITIES)}")
        except PayloadError as exc:
            raise PayloadError(f"readings[{i}]: {exc}") from None
        out.append(PushedReading(meter, quantity, stamp, value, unit, quality))
    return meter, out


__all__ = [
    "DEFAULT_ROOT",
    "EARLIEST",
    "KINDS",
    "LATEST",
    "OFFLINE",
    "ONLINE",
    "PROTOCOLS",
    "QOS",
    "QUALITIES",
    "SHARE_GROUP",
    "VALUE_KINDS",
    "FrameInfo",
    "PayloadError",
    "PushedReading",
    "ReadingLike",
    "ReplyMessage",
    "RequestMessage",
    "Topics",
    "Value",
    "check_terminal_id",
    "decode_json",
    "describe_frame",
    "parse_readings",
    "parse_rfc3339",
    "reading_json",
    "readings_payload",
    "request_fields",
    "request_payload",
    "rfc3339",
]  # fmt: skip
