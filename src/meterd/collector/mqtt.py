"""Meters behind MQTT terminals (gateways, concentrators): one broker connection for the master.

A terminal bridges MQTT to its RS-485 bus.  The master sends it a meter frame (DL/T 645 or Modbus,
exactly the bytes a serial line would carry), the terminal puts them on its bus and sends back
what the meter answered; terminals may also push readings they collected themselves.

Topic tree (``<root>`` is ``meterd`` unless configured; ``<tid>`` a terminal id, no ``/ + #``)::

    <root>/terminals/<tid>/down     master -> terminal: requests              QoS 1, not retained
    <root>/terminals/<tid>/up       terminal -> master: replies, pushed data  QoS 1, not retained
                                    (the master subscribes at QoS 0: see UP_QOS)
    <root>/terminals/<tid>/status   "online" / "offline" (plain text)         QoS 1, RETAINED

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

Pushed readings (``up``)::

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

The master side: :class:`MqttHub` is one paho-mqtt client (MQTT 3.1.1, clean session, QoS 1)
driven by the asyncio loop itself (:class:`~meterd.collector.paho_loop.PahoDriver`: no network
thread, every paho callback runs in the loop thread, where all state lives).  It reconnects by
itself with exponential back-off and re-subscribes on every connect.  It tracks each
terminal's status from the retained status topic (a reconnect forgets them: the broker re-sends
what it still retains), routes replies by correlation id to the waiting :class:`MqttTransport`,
and hands pushed readings to ``on_readings(terminal_id, readings)``.

What goes wrong, and where it is counted (:class:`HubStats`; each rejection is also logged with
its reason, and nothing else is disturbed):

* ``malformed``: not JSON (or nested too deeply), not an object, missing or ill-typed fields, bad
  hex, a bad reading or a time out of range, a
  status that is neither ``online`` nor ``offline``, an unexpected topic;
* ``unknown_ids``: a reply whose id this hub never issued (or issued for another terminal);
* ``late``: a reply for an id this hub issued earlier but no longer waits for (the channel timed
  out and moved on): dropped;
* ``outage_lost``: a request in flight when the broker connection dropped -- its read fails at
  once with a link error (the channel counts a ``link`` failure and retries) and never hangs;
* ``outage_refused``: an ``open``/``write`` while the broker is not connected (``LinkError``);
* ``offline_lost`` / ``offline_refused``: the same when the terminal's status says ``offline``.

So a broker restart loses no request silently: each one is either answered, or failed as a
``link`` failure and counted in ``outage_lost`` / ``outage_refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import secrets
import socket
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Final, Iterable, Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from meterd.collector import paho_loop
from meterd.collector.paho_loop import PahoDriver
from meterd.collector.transports.base import Transport
from meterd.clock import Clock, utc_now
from meterd.errors import LinkClosedError, LinkError, LinkTimeoutError, ProtocolError
from meterd.logthrottle import LogThrottle
from meterd.protocols.dlt645.frame import decode_frame
from meterd.protocols.readspec import DLT645_1997, DLT645_2007, MODBUS
from meterd.readings import Quality, Reading, Value

log = logging.getLogger(__name__)

DEFAULT_ROOT: Final = "meterd"
ONLINE: Final = "online"
OFFLINE: Final = "offline"
QOS: Final = 1
# The master takes ``up`` (replies, pushed readings) at QoS 0: its session is clean, so the broker
# drops whatever it has not delivered when the connection breaks, QoS 1 or not; over a live TCP
# connection QoS 0 arrives just as surely, and saves a PUBACK per reply on both ends.  Terminals
# still publish at QoS 1 (to the broker) and requests go out at QoS 1.
UP_QOS: Final = 0
PROTOCOLS: Final = (DLT645_2007, DLT645_1997, MODBUS)
VALUE_KINDS: Final = ("decimal", "integer", "boolean", "time", "text")
MAX_ID_LEN: Final = 128
EXPIRED_IDS_KEPT: Final = 4096  # ids remembered as "ours, but no longer awaited" (late replies)
REJECTS_KEPT: Final = 50
DESCRIBED_KEPT: Final = 256  # request frames a transport remembers the sniffed protocol/meter of
TOPICS_KEPT: Final = 16384  # incoming topics the hub remembers the parse of
_UNPARSED: Final = object()
# DL/T 645-1997-only control codes (03 without data is 1997's re-read, with data 2007's security)
_FUNCTIONS_1997_ONLY: Final = frozenset({0x01, 0x02, 0x04, 0x0A, 0x0C, 0x0F, 0x10})
_FORBIDDEN_IN_ID: Final = frozenset("/+#\x00")
# Times in payloads (timestamps, time values, sent / replied / expires) must lie in this window: no
# meter reads before the epoch, and anything past 2100 is a terminal's clock gone wrong.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST: Final = datetime(2100, 1, 1, tzinfo=timezone.utc)
MAX_TIME_LEN: Final = 64

ReadingsCallback = Callable[[str, list[Reading]], Any]


def rfc3339(t: datetime) -> str:
    """Aware (naive = UTC) datetime -> ``2025-06-01T00:05:00.000Z``."""
    if t.tzinfo is timezone.utc:  # the usual case: every request stamps one or two
        return t.isoformat(timespec="milliseconds")[:-6] + "Z"
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        t = t.astimezone(timezone.utc)
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

    def status(self, tid: str) -> str:
        return f"{self.root}/terminals/{tid}/status"

    @property
    def all_up(self) -> str:
        return f"{self.root}/terminals/+/up"

    @property
    def all_status(self) -> str:
        return f"{self.root}/terminals/+/status"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """``<root>/terminals/<tid>/<kind>`` -> (tid, kind); None for anything else."""
        prefix = f"{self.root}/terminals/"
        if not topic.startswith(prefix):
            return None
        rest = topic[len(prefix):].split("/")
        if len(rest) != 2 or not rest[0] or rest[1] not in ("down", "up", "status"):
            return None
        return rest[0], rest[1]


# --- payloads ----------------------------------------------------------------------------------


class PayloadError(ValueError):
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


def _request_fields(meter: str | None, protocol: str | None, unit: int | None, frame: bytes) -> str:
    """The middle of a request payload, from ``"meter"`` to ``"frame"``: the same for every request
    of one frame to one terminal, so a transport keeps it per frame."""
    parts = [',"meter":', _json_text(meter), ',"protocol":', _json_text(protocol)]
    if unit is not None:
        parts += [',"unit":', json.dumps(unit)]
    parts += [',"frame":"', frame.hex(), '"']
    return "".join(parts)


def _request_payload(id_json: str, fields: str, sent: datetime | None, expires: datetime | None) -> bytes:
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
        return _request_payload(_json_text(self.id), _request_fields(self.meter, self.protocol, self.unit, self.frame),
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


def reading_json(r: Reading) -> dict[str, Any]:
    text, kind = _value_json(r.value)
    obj: dict[str, Any] = {"quantity": r.quantity, "value": text, "unit": r.unit, "timestamp": rfc3339(r.timestamp)}
    if kind != "decimal":
        obj["kind"] = kind
    if r.quality is not Quality.GOOD:
        obj["quality"] = str(r.quality)
    return obj


def readings_payload(meter: str, readings: Iterable[Reading], sent: datetime | None = None) -> bytes:
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


def parse_readings(obj: Mapping[str, Any]) -> tuple[str, list[Reading]]:
    """A pushed-readings object -> (meter, readings).  PayloadError names the first bad item."""
    meter = obj.get("meter")
    if not isinstance(meter, str) or not meter or len(meter) > 64:
        raise PayloadError(f"'meter' must be a non-empty string, got {meter!r}"[:200])
    items = obj.get("readings")
    if not isinstance(items, list):
        raise PayloadError("'readings' must be a list")
    out: list[Reading] = []
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
            try:
                quality = Quality(item.get("quality", "good"))
            except ValueError:
                raise PayloadError(f"'quality' {item.get('quality')!r} is not one of "
                                   f"{', '.join(q.value for q in Quality)}") from None
        except PayloadError as exc:
            raise PayloadError(f"readings[{i}]: {exc}") from None
        out.append(Reading(meter, quantity, stamp, value, unit, quality))
    return meter, out


# --- the hub -----------------------------------------------------------------------------------

_paho_logger = logging.getLogger(f"{__name__}.paho")  # paho's chatter, at debug level (see new_client)


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Small request/reply messages: no Nagle delay (with delayed ACKs it costs ~40 ms a hop)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: bool = False,
    reconnect: tuple[float, float] = (1.0, 30.0),
) -> mqtt.Client:
    """A paho-mqtt 2.x client as meterd uses them (the hub and the simulated terminals): callback
    API version 2, MQTT 3.1.1, clean session, reconnect back-off ``reconnect`` (min, max seconds),
    no client-side cap on messages in flight, TCP_NODELAY, paho's log at debug level; its socket is
    a :class:`~meterd.collector.paho_loop.BufferedSocket` (run it with a ``PahoDriver``)."""
    client = paho_loop.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                              protocol=mqtt.MQTTv311)
    client.debug_log = _paho_logger
    client.on_socket_open = _no_delay
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set()
    client.reconnect_delay_set(*reconnect)  # type: ignore[arg-type]
    client.max_inflight_messages_set(0)
    return client


@dataclass(slots=True)
class HubStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0  # requests handed to the broker
    replies_matched: int = 0  # reply messages fed to the waiting transport
    late: int = 0  # replies for an id of ours no longer awaited: dropped
    unknown_ids: int = 0  # replies for ids never issued here (or for another terminal): dropped
    malformed: int = 0  # bad JSON / payload / status / topic: dropped
    pushed_messages: int = 0
    pushed_readings: int = 0
    pushed_foreign: int = 0  # pushed readings of a meter not configured behind the pushing terminal: dropped
    outage_lost: int = 0  # requests in flight when the broker connection dropped: failed as link errors
    outage_refused: int = 0  # open/write while the broker was not connected: link errors
    offline_lost: int = 0  # requests in flight when their terminal went offline
    offline_refused: int = 0  # open while the terminal's status was offline
    callback_errors: int = 0  # on_readings raised

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class MqttHub:
    """The master's one MQTT connection: requests out, replies routed, statuses and pushes in.

    ``clock`` stamps requests (``sent``, ``expires``); it returns an aware datetime.
    ``request_ttl`` (seconds, None: no ``expires``) tells terminals when to drop a stale request.
    ``reconnect_min`` / ``reconnect_max`` bound the exponential reconnect back-off (seconds).
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        clock: Clock = utc_now,
        root: str = DEFAULT_ROOT,
        on_readings: ReadingsCallback | None = None,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        request_ttl: float | None = 30.0,
        tls: bool = False,
        push_meters: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        if not client_id:
            raise ValueError("an MQTT client id is required")
        if reconnect_min <= 0 or reconnect_max < reconnect_min:
            raise ValueError(f"reconnect back-off {reconnect_min}..{reconnect_max} s is not a range > 0")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.keepalive = keepalive
        self.clock = clock
        self.topics = Topics(root)
        self.on_readings = on_readings
        # terminal -> the meters behind it, the only ones it may push for (None: any meter)
        self.push_meters = push_meters
        self._ttl: timedelta | None = None
        self.request_ttl = request_ttl
        self.stats = HubStats()
        self.rejects: deque[str] = deque(maxlen=REJECTS_KEPT)  # the latest rejection reasons
        self._log = LogThrottle()  # dropped messages: logged once a minute per counter, with a count
        self.connected = False
        self._status: dict[str, str] = {}
        self._transports: dict[str, list[MqttTransport]] = {}
        self._pending: dict[str, MqttTransport] = {}  # correlation id -> transport awaiting it
        self._topic_cache: dict[str, tuple[str, str] | None] = {}  # topic -> Topics.parse(topic)
        self._expired: OrderedDict[str, str] = OrderedDict()  # our old ids -> terminal
        self._session = secrets.token_hex(4)
        self._seq = 0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._started = False
        self._closing = False

        client = new_client(client_id, username=username, password=password, tls=tls,
                            reconnect=(reconnect_min, reconnect_max))
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_connect_fail = self._paho_connect_fail
        self._client = client
        self._driver = PahoDriver(client, host, port, keepalive, reconnect=(reconnect_min, reconnect_max),
                                  on_connect=self._paho_connect)

    @property
    def request_ttl(self) -> float | None:
        return None if self._ttl is None else self._ttl.total_seconds()

    @request_ttl.setter
    def request_ttl(self, seconds: float | None) -> None:
        self._ttl = None if seconds is None else timedelta(seconds=seconds)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, timeout: float | None = 10.0) -> bool:
        """Start connecting (and keep reconnecting).  Waits up to ``timeout`` s for the first
        connection; returns whether the hub is connected (it keeps trying either way)."""
        if self._started:
            raise RuntimeError("MqttHub.start called twice")
        self._started = True
        self._driver.start()
        if timeout is None:
            return self.connected
        return await self.wait_connected(timeout)

    async def close(self) -> None:
        """Disconnect cleanly and stop reconnecting; waiting reads fail with a link error."""
        if self._closing:
            return
        self._closing = True
        for transports in self._transports.values():
            for t in transports:
                t._fail(LinkClosedError("MQTT hub closed", channel=t.name))
        if self._started:
            self._client.disconnect()
            await self._driver.stop()
        self.connected = False

    async def __aenter__(self) -> MqttHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- what callers use -----------------------------------------------------------------------

    def transport(self, tid: str, *, name: str | None = None, protocol: str | None = None,
                  units: Mapping[int, str] | None = None) -> MqttTransport:
        """A transport to terminal ``tid`` (one per channel).  ``protocol`` fixes the request's
        protocol field (default: sniffed from each frame); ``units`` names Modbus unit ids."""
        check_terminal_id(tid)
        t = MqttTransport(self, tid, name=name, protocol=protocol, units=units)
        self._transports.setdefault(tid, []).append(t)
        return t

    def status(self, tid: str) -> str | None:
        """``"online"``, ``"offline"`` or None (no retained status seen since the last connect)."""
        return self._status.get(tid)

    @property
    def terminals(self) -> dict[str, str]:
        return dict(self._status)

    async def wait_connected(self, timeout: float) -> bool:
        return await self._wait(lambda: self.connected, timeout)

    async def wait_status(self, tid: str, status: str | None, timeout: float) -> bool:
        return await self._wait(lambda: self._status.get(tid) == status, timeout)

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        if predicate():
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return predicate()
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _changed(self) -> None:
        for predicate, fut in list(self._waiters):
            if not fut.done() and predicate():
                fut.set_result(None)

    # --- requests (called by MqttTransport, in the loop thread) ---------------------------------

    def _check_link(self, t: MqttTransport) -> None:
        if self._closing or not self._started:
            raise LinkClosedError("MQTT hub is not running", channel=t.name)
        if not self.connected:
            self.stats.outage_refused += 1
            raise LinkError(f"MQTT broker {self.host}:{self.port} not connected", channel=t.name)
        if self._status.get(t.terminal) == OFFLINE:
            self.stats.offline_refused += 1
            raise LinkError(f"terminal {t.terminal} offline", channel=t.name)

    def _send(self, t: MqttTransport, frame: bytes) -> str:
        """Publish one request for ``t``; the new correlation id.  LinkError if it cannot go."""
        self._check_link(t)
        self._seq += 1
        cid = f"{self._session}-{self._seq:x}"
        fields = t._request_fields(frame)
        sent = self.clock()
        expires = sent + self._ttl if self._ttl is not None else None
        # what RequestMessage(cid, frame, protocol, meter, unit, sent, expires).payload() gives;
        # the id is hex digits and a dash: a JSON string as it stands
        payload = _request_payload(f'"{cid}"', fields, sent, expires)
        self._pending[cid] = t
        result = self._client.publish(t._down_topic, payload, qos=QOS)
        if result.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # paho keeps a QoS 1 message and sends it after a reconnect: its reply will be late
            self._retire(cid)
            self.stats.outage_refused += 1
            raise LinkError(f"publish to terminal {t.terminal} failed: {mqtt.error_string(result.rc)}",
                            channel=t.name)
        self.stats.published += 1
        return cid

    def _retire(self, cid: str) -> None:
        t = self._pending.pop(cid, None)
        if t is not None:
            self._expired[cid] = t.terminal
            while len(self._expired) > EXPIRED_IDS_KEPT:
                self._expired.popitem(last=False)

    # --- paho callbacks (run in the loop thread by the PahoDriver) -------------------------------

    def _paho_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._connect_refused(str(reason))
            return
        # subscribe before anything is published on this connection: replies cannot outrun it
        client.subscribe([(self.topics.all_status, QOS), (self.topics.all_up, UP_QOS)])
        self._on_connected()

    def _paho_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._on_disconnected(str(reason))

    def _paho_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._connect_failed()

    def _paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._on_message(message.topic, message.payload)

    # --- events ----------------------------------------------------------------------------

    def _connect_refused(self, reason: str) -> None:
        log.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason)

    def _connect_failed(self) -> None:
        log.debug("MQTT broker %s:%d: connection attempt failed", self.host, self.port)

    def _on_connected(self) -> None:
        if self._closing:
            return
        self.stats.connects += 1
        self.connected = True
        self._status.clear()  # the broker re-sends every retained status now
        if self.stats.connects == 1:
            log.info("MQTT: connected to %s:%d as %s", self.host, self.port, self.client_id)
        else:
            log.warning("MQTT: reconnected to %s:%d", self.host, self.port)
        self._changed()

    def _on_disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        if was:
            self.stats.disconnects += 1
            if not self._closing:
                log.warning("MQTT: lost the broker %s:%d (%s); reconnecting", self.host, self.port, reason)
        for transports in self._transports.values():
            for t in transports:
                if t._fail(LinkClosedError(f"MQTT broker connection lost ({reason})", channel=t.name)):
                    self.stats.outage_lost += 1
        self._changed()

    def _reject(self, counter: str, tid: str | None, reason: str, count: int = 1) -> None:
        setattr(self.stats, counter, getattr(self.stats, counter) + count)
        text = f"terminal {tid}: {reason}" if tid else reason
        self.rejects.append(f"{counter}: {text}")
        self._log.log(log, logging.WARNING, f"MQTT messages dropped ({counter})", "MQTT: dropped a message (%s): %s",
                      counter, text)

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            self._dispatch(topic, payload)
        except Exception:  # never let one message take the hub down
            self._log.log(log, logging.ERROR, "MQTT messages whose handling failed",
                          "MQTT: handling a message on %s failed", topic, exc_info=True)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        parsed = self._topic_cache.get(topic, _UNPARSED)
        if parsed is _UNPARSED:  # a few topics per terminal, each seen again and again
            parsed = self.topics.parse(topic)
            if len(self._topic_cache) >= TOPICS_KEPT:
                self._topic_cache.clear()
            self._topic_cache[topic] = parsed
        if parsed is None or parsed[1] == "down":
            self._reject("malformed", None, f"unexpected topic {topic!r}")
            return
        tid, kind = parsed
        if kind == "status":
            self._on_status(tid, payload)
            return
        try:
            obj = decode_json(payload)
            if obj.get("type") == "readings":
                meter, readings = parse_readings(obj)
                self._on_pushed(tid, meter, readings)
                return
            reply = ReplyMessage.from_json(obj)
        except PayloadError as exc:
            self._reject("malformed", tid, str(exc))
            return
        self._on_reply(tid, reply)

    def _on_status(self, tid: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace").strip().lower()
        if not text:  # a retained status was cleared
            self._status.pop(tid, None)
            self._changed()
            return
        if text not in (ONLINE, OFFLINE):
            self._reject("malformed", tid, f"status {text[:40]!r} is neither online nor offline")
            return
        before = self._status.get(tid)
        self._status[tid] = text
        if text != before:
            if text == OFFLINE:
                log.warning("MQTT: terminal %s is offline", tid)
            else:
                log.info("MQTT: terminal %s is online", tid)
        if text == OFFLINE:
            for t in self._transports.get(tid, ()):
                if t._fail(LinkClosedError(f"terminal {tid} went offline", channel=t.name)):
                    self.stats.offline_lost += 1
        self._changed()

    def _on_reply(self, tid: str, reply: ReplyMessage) -> None:
        t = self._pending.get(reply.id)
        if t is not None and t.terminal == tid:
            self.stats.replies_matched += 1
            t._reply(reply)
            return
        if t is not None:
            self._reject("unknown_ids", tid, f"reply id {reply.id} was sent to terminal {t.terminal}")
        elif self._expired.get(reply.id) == tid:
            self.stats.late += 1
            log.info("MQTT: terminal %s: late reply %s dropped (no longer awaited)", tid, reply.id)
        else:
            self._reject("unknown_ids", tid, f"reply id {reply.id!r} was never issued by this master")

    def _on_pushed(self, tid: str, meter: str, readings: list[Reading]) -> None:
        if self.push_meters is not None and meter not in self.push_meters.get(tid, ()):
            self._reject("pushed_foreign", tid, f"pushed {len(readings)} reading(s) of meter {meter}, which "
                         "is not configured behind it", count=len(readings))
            return
        self.stats.pushed_messages += 1
        self.stats.pushed_readings += len(readings)
        if self.on_readings is None:
            return
        try:
            result = self.on_readings(tid, readings)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(self._callback_done)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("MQTT: on_readings failed for %d readings of meter %s (terminal %s)",
                          len(readings), meter, tid)

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.stats.callback_errors += 1
            log.error("MQTT: on_readings failed", exc_info=task.exception())


class MqttTransport(Transport):
    """The byte pipe to one terminal (made by :meth:`MqttHub.transport`).

    ``write`` publishes one request with a fresh correlation id and forgets the previous id (its
    reply, if it still comes, is late); the matching reply's frame bytes land in the receive
    buffer, so the channel's matchers decode them as if they came from a wire.
    """

    def __init__(self, hub: MqttHub, terminal: str, *, name: str | None = None, protocol: str | None = None,
                 units: Mapping[int, str] | None = None) -> None:
        super().__init__(name or f"mqtt:{terminal}")
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
        self.hub = hub
        self.terminal = terminal
        self.protocol = protocol
        self.units = dict(units) if units is not None else None
        # a round sends the same frames again and again: what each one is, and its payload fields
        self._described: dict[bytes, tuple[FrameInfo, str]] = {}
        self._down_topic = hub.topics.down(terminal)
        self._open = False
        self._current: str | None = None
        self._in_flight = False
        self.last_reply: ReplyMessage | None = None

    @property
    def is_open(self) -> bool:
        return self._open and self._closed_exc is None

    async def open(self) -> None:
        self.hub._check_link(self)
        self._buffer.clear()
        self._closed_exc = None
        self._open = True

    async def write(self, data: bytes) -> None:
        if not self._open:
            raise LinkClosedError(f"terminal {self.terminal}: transport not open", channel=self.name)
        self._forget()
        self._current = self.hub._send(self, bytes(data))
        self._in_flight = True

    async def read(self, timeout: float) -> bytes:
        try:
            return await super().read(timeout)
        except LinkTimeoutError:
            self._forget()  # the channel gives up on this attempt: its reply, if any, is late
            raise

    async def close(self) -> None:
        self._forget()
        self._open = False

    def _forget(self) -> None:
        if self._current is not None:
            self.hub._retire(self._current)
            self._current = None
        self._in_flight = False

    def _describe(self, frame: bytes) -> FrameInfo:
        return self._frame_entry(frame)[0]

    def _request_fields(self, frame: bytes) -> str:
        """The payload fields from ``"meter"`` to ``"frame"`` for a request carrying ``frame``."""
        return self._frame_entry(frame)[1]

    def _frame_entry(self, frame: bytes) -> tuple[FrameInfo, str]:
        entry = self._described.get(frame)
        if entry is None:
            if len(self._described) >= DESCRIBED_KEPT:
                self._described.clear()
            info = describe_frame(frame, protocol=self.protocol, units=self.units)
            entry = self._described[frame] = (info, _request_fields(info.meter, info.protocol, info.unit, frame))
        return entry

    # called by the hub, in the loop thread
    def _reply(self, reply: ReplyMessage) -> None:
        self._in_flight = False
        self.last_reply = reply
        self._received(reply.frame)

    def _fail(self, exc: BaseException) -> bool:
        """The broker or the terminal went away: close; wake a waiting read.  Whether a request
        was in flight (and is now lost)."""
        lost = self._in_flight
        self._forget()
        if self._open:
            self._open = False
            self._lost(exc)
        return lost


__all__ = [
    "DEFAULT_ROOT",
    "OFFLINE",
    "ONLINE",
    "PROTOCOLS",
    "VALUE_KINDS",
    "FrameInfo",
    "HubStats",
    "MqttHub",
    "MqttTransport",
    "PayloadError",
    "ReplyMessage",
    "RequestMessage",
    "Topics",
    "check_terminal_id",
    "decode_json",
    "describe_frame",
    "new_client",
    "parse_readings",
    "parse_rfc3339",
    "reading_json",
    "readings_payload",
    "rfc3339",
]  # fmt: skip
