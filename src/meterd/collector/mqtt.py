"""Meters behind MQTT terminals (gateways, concentrators): the master's one broker connection.

The topic tree and the payloads (requests, replies, pushed readings) are the sans-I/O codec in
:mod:`meterd.protocols.terminal.mqtt` (documented there and in ``docs/mqtt.md``); this module is
the I/O around it.

The master side: :class:`MqttHub` is one paho-mqtt client (MQTT 3.1.1, clean session, QoS 1)
driven by the asyncio loop itself (:class:`~meterd.collector.transports.paho_loop.PahoDriver`: no network
thread, every paho callback runs in the loop thread, where all state lives).  It reconnects by
itself with exponential back-off and re-subscribes on every connect.  It tracks each
terminal's status from the retained status topic (a reconnect forgets them: the broker re-sends
what it still retains), routes replies by correlation id to the waiting :class:`MqttTransport`,
and hands pushed readings to ``on_readings(terminal_id, readings)``.

Collector nodes (``shared=True``: several masters on one broker, one hub each, each with a client
id of its own).  Requests and replies stay per node: every node subscribes to every terminal's
``up`` and keeps the replies whose correlation id it issued (its session prefix); a reply to
another node's request is counted in ``other_masters`` and ignored.  Pushed readings go to one
node: the hubs subscribe to ``push`` as the shared subscription
``$share/meterd/<root>/terminals/+/push``, the broker hands each push to exactly one of them (on
its original topic), and that node takes it whichever channels it holds.  A node stopping cleanly
unsubscribes from the group and waits for the broker's UNSUBACK before it disconnects, so the
pushes the broker sent it before that are taken and later ones go to the other nodes; a node that
dies takes with it what the broker had sent it and not yet been read (see ``docs/cluster.md``).

A readings message on ``up`` (where terminals pushed before ``push`` existed) is still taken: on a
single node always (counted in ``pushed_on_up`` too); among nodes every node hears it, so only the
node ``holds(terminal)`` says holds the terminal's channel takes it, and the others count it in
``pushed_not_held``.

What goes wrong, and where it is counted (:class:`HubStats`; each rejection is also logged with
its reason, and nothing else is disturbed):

* ``malformed``: not JSON (or nested too deeply), not an object, missing or ill-typed fields, bad
  hex, a bad reading or a time out of range, a
  status that is neither ``online`` nor ``offline``, an unexpected topic;
* ``statuses_dropped``: the status of a terminal this hub has no channel for, once
  ``max_statuses`` (100,000) are kept: a flood of made-up ids cannot grow memory or the log;
* ``oversized``: a payload over ``max_payload`` bytes (``[mqtt] max_payload_kb``, 1 MiB by
  default): dropped unread, since payloads are parsed in the event loop and one of the 256 MB MQTT
  allows would stall every channel for seconds;
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
import inspect
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Final, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from meterd.clock import Clock, utc_now
from meterd.collector.transports.base import Transport
from meterd.collector.transports.paho_loop import PahoDriver, new_client
from meterd.errors import LinkClosedError, LinkError, LinkTimeoutError
from meterd.logthrottle import LogThrottle
from meterd.protocols.terminal.mqtt import (
    DEFAULT_ROOT,
    OFFLINE,
    ONLINE,
    PROTOCOLS,
    QOS,
    SHARE_GROUP,
    FrameInfo,
    PayloadError,
    ReplyMessage,
    Topics,
    check_terminal_id,
    decode_json,
    describe_frame,
    parse_readings,
    request_fields,
    request_payload,
)
from meterd.readings import Quality, Reading

log = logging.getLogger(__name__)

# The master takes ``up`` (replies) and ``push`` (pushed readings) at QoS 0: its session is clean,
# so the broker drops whatever it has not delivered when the connection breaks, QoS 1 or not; over
# a live TCP connection QoS 0 arrives just as surely, and saves a PUBACK per message on both ends.
# Terminals still publish at QoS 1 (to the broker).
UP_QOS: Final = 0
# Requests (``down``) go out at QoS 0 for the same reasons, and one more: a QoS 1 request that the
# broker had not acknowledged when the connection broke is kept by paho and sent again after the
# reconnect, long after the hub failed it (``outage_lost``) and the channel retried or gave up --
# a stale read, or a relay command, arriving late.  At QoS 0 a request lost with the connection is
# gone, and the channel's own retry is the only one.  The PUBACK it saves is a fifth of the
# master's MQTT cost per read (benchmarks/bench_floor.py --only paho --request-qos 1 / 0).
DOWN_QOS: Final = 0
LEAVE_WAIT: Final = 2.0  # seconds close() waits for the UNSUBACK of the shared push subscription
EXPIRED_IDS_KEPT: Final = 4096  # ids remembered as "ours, but no longer awaited" (late replies)
REJECTS_KEPT: Final = 50
DESCRIBED_KEPT: Final = 256  # request frames a transport remembers the sniffed protocol/meter of
#: Statuses kept of terminals this hub has no channel for (a fleet's other terminals on a shared
#: broker); past it, a new one is dropped and counted: a flood of made-up terminal ids (a broker
#: without ACLs) cannot grow the master's memory, nor its log by a line per id.
MAX_STATUSES: Final = 100_000
MAX_PAYLOAD: Final = 1024 * 1024  # bytes of one incoming payload, at most (a push of a few thousand readings)
TOPICS_KEPT: Final = 16384  # incoming topics the hub remembers the parse of

ReadingsCallback = Callable[[str, list[Reading]], Any]
#: Among collector nodes: whether this node holds terminal ``tid``'s channel.
HoldsCallback = Callable[[str], bool]


# --- the hub -----------------------------------------------------------------------------------

@dataclass(slots=True)
class HubStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0  # requests handed to the broker
    replies_matched: int = 0  # reply messages fed to the waiting transport
    late: int = 0  # replies for an id of ours no longer awaited: dropped
    unknown_ids: int = 0  # replies for ids never issued here (or for another terminal): dropped
    other_masters: int = 0  # replies to another collector node's requests (shared broker): ignored
    malformed: int = 0  # bad JSON / payload / status / topic: dropped
    oversized: int = 0  # payloads over max_payload bytes: dropped unread
    statuses_dropped: int = 0  # statuses of terminals this hub has no channel for, past max_statuses: not kept
    pushed_messages: int = 0  # pushed-readings messages taken (on push, or on up: pushed_on_up)
    pushed_readings: int = 0
    pushed_on_up: int = 0  # of pushed_messages: those that came on up, the topic pushes used before push
    pushed_not_held: int = 0  # pushes on up left to the node holding the terminal's channel (collector nodes)
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
    ``shared``: one of several collector nodes on this broker (pushes through the shared
    subscription of ``share_group``; replies to other nodes counted, not rejected); ``holds``
    then says whether this node holds a terminal's channel (for pushes that still come on ``up``;
    None: it holds every one).
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
        shared: bool = False,
        share_group: str = SHARE_GROUP,
        holds: HoldsCallback | None = None,
        max_payload: int = MAX_PAYLOAD,
        max_statuses: int = MAX_STATUSES,
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
        self._shared_push = self.topics.shared_push(share_group)
        self.on_readings = on_readings
        # terminal -> the meters behind it, the only ones it may push for (None: any meter)
        self.push_meters = push_meters
        self._ttl: timedelta | None = None
        self.request_ttl = request_ttl
        self.stats = HubStats()
        self.max_payload = max_payload
        self.max_statuses = max_statuses
        self.rejects: deque[str] = deque(maxlen=REJECTS_KEPT)  # the latest rejection reasons
        self._log = LogThrottle()  # dropped messages: logged once a minute per counter, with a count
        self.connected = False
        self.subscribed = False  # the broker acknowledged this connection's subscriptions (SUBACK)
        self._status: dict[str, str] = {}
        self._transports: dict[str, list[MqttTransport]] = {}
        self._pending: dict[str, MqttTransport] = {}  # correlation id -> transport awaiting it
        self._topic_cache: dict[str, tuple[str, str] | None] = {}  # topic -> Topics.parse(topic)
        self._expired: OrderedDict[str, str] = OrderedDict()  # our old ids -> terminal
        self._session = secrets.token_hex(4)
        # collector nodes share the broker: each hears every terminal's replies (a reply whose id
        # another node's hub issued is theirs, not an anomaly) and takes pushes through the shared
        # subscription; set before start (the subscriptions are made on connect)
        self.shared = shared
        self.holds = holds
        self._leaving: asyncio.Future[None] | None = None  # close(): the shared push UNSUBACK awaited
        self._seq = 0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._started = False
        self._closing = False

        client = new_client(client_id, username=username, password=password, tls=tls,
                            reconnect=(reconnect_min, reconnect_max))
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_connect_fail = self._paho_connect_fail
        client.on_subscribe = self._paho_subscribe
        client.on_unsubscribe = self._paho_unsubscribe
        self._client = client
        self._driver = PahoDriver(client, host, port, keepalive, reconnect=(reconnect_min, reconnect_max),
                                  on_connect=self._paho_connect)

    @property
    def push_subscription(self) -> str:
        """What the hub subscribes to for pushed readings: the shared subscription among collector
        nodes, every terminal's ``push`` on a single node."""
        return self._shared_push if self.shared else self.topics.all_push

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
        """Disconnect cleanly and stop reconnecting; waiting reads fail with a link error.

        Among collector nodes the hub first leaves the shared push subscription and waits (up to
        :data:`LEAVE_WAIT` s) for the broker's UNSUBACK: every push the broker sent this node
        before it has arrived by then and is taken; the broker sends later ones to other nodes."""
        if self._closing:
            return
        self._closing = True
        for transports in self._transports.values():
            for t in transports:
                t._fail(LinkClosedError("MQTT hub closed", channel=t.name))
        if self._started:
            if self.shared and self.connected:
                await self._leave_share()
            self._client.disconnect()
            await self._driver.stop()
        self.connected = False

    async def _leave_share(self) -> None:
        self._leaving = asyncio.get_running_loop().create_future()
        rc, _ = self._client.unsubscribe(self._shared_push)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._leaving), LEAVE_WAIT)
        except TimeoutError:
            log.warning("MQTT: no UNSUBACK from %s:%d within %g s; pushes sent to this node meanwhile may be lost",
                        self.host, self.port, LEAVE_WAIT)
        finally:
            self._leaving = None

    async def __aenter__(self) -> Self:
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

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged the subscriptions of the current connection:
        from then on every message published reaches this hub (a push: this hub or another of
        its shared group)."""
        return await self._wait(lambda: self.connected and self.subscribed, timeout)

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
        payload = request_payload(f'"{cid}"', fields, sent, expires)
        self._pending[cid] = t
        result = self._client.publish(t._down_topic, payload, qos=DOWN_QOS)
        if result.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
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
        client.subscribe([(self.topics.all_status, QOS), (self.topics.all_up, UP_QOS),
                          (self.push_subscription, UP_QOS)])
        self._on_connected()

    def _paho_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._on_subscribed([getattr(r, "is_failure", False) for r in reasons])

    def _paho_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if self._leaving is not None and not self._leaving.done():
            self._leaving.set_result(None)

    def _paho_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._on_disconnected(str(reason))

    def _paho_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._connect_failed()

    def _paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._on_message(message.topic, bytes(message.payload))  # the same object when it is bytes already

    # --- events ----------------------------------------------------------------------------

    def _connect_refused(self, reason: str) -> None:
        log.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason)

    def _connect_failed(self) -> None:
        log.debug("MQTT broker %s:%d: connection attempt failed", self.host, self.port)

    def _on_subscribed(self, refused: list[bool]) -> None:
        """The SUBACK of the connect's subscriptions (status, up, push): say which were refused."""
        self.subscribed = True
        self._changed()
        topics = (self.topics.all_status, self.topics.all_up, self.push_subscription)
        for topic, no in zip(topics, refused, strict=False):
            if no:
                hint = (" (does the broker support shared subscriptions? Mosquitto >= 1.6 does)"
                        if topic == self._shared_push else "")
                log.error("MQTT broker %s:%d refused the subscription to %s%s", self.host, self.port, topic, hint)

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
        self.subscribed = False
        if self._leaving is not None and not self._leaving.done():
            self._leaving.set_result(None)  # nothing more comes on this connection
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
        except Exception:  # noqa: BLE001 -- never let one message take the hub down
            self._log.log(log, logging.ERROR, "MQTT messages whose handling failed",
                          "MQTT: handling a message on %s failed", topic, exc_info=True)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        try:
            parsed = self._topic_cache[topic]  # a few topics per terminal, each seen again and again
        except KeyError:
            parsed = self.topics.parse(topic)
            if len(self._topic_cache) >= TOPICS_KEPT:
                self._topic_cache.clear()
            self._topic_cache[topic] = parsed
        if parsed is None or parsed[1] == "down":
            self._reject("malformed", None, f"unexpected topic {topic!r}")
            return
        tid, kind = parsed
        if len(payload) > self.max_payload:  # parsed in the event loop: one message must not stall polling
            self._reject("oversized", tid, f"a {kind} message of {len(payload):,} bytes, over the limit of "
                         f"{self.max_payload:,} ([mqtt] max_payload_kb)")
            return
        if kind == "status":
            self._on_status(tid, payload)
            return
        try:
            obj = decode_json(payload)
            if kind == "push":
                if obj.get("type", "readings") != "readings":
                    raise PayloadError(f"'type' {obj.get('type')!r} on a push topic is not 'readings'")
                self._take_pushed(tid, obj, on_up=False)
                return
            if obj.get("type") == "readings":  # a push on up, where pushes went before push existed
                if self.holds is not None and not self.holds(tid):
                    self.stats.pushed_not_held += 1  # every node hears it: the channel's holder takes it
                    return
                self._take_pushed(tid, obj, on_up=True)
                return
            reply = ReplyMessage.from_json(obj)
        except PayloadError as exc:
            self._reject("malformed", tid, str(exc))
            return
        self._on_reply(tid, reply)

    def _take_pushed(self, tid: str, obj: Mapping[str, Any], *, on_up: bool) -> None:
        meter, pushed = parse_readings(obj)  # PayloadError: malformed
        readings = [Reading(p.meter, p.quantity, p.timestamp, p.value, p.unit, Quality(p.quality)) for p in pushed]
        if self._on_pushed(tid, meter, readings) and on_up:
            self.stats.pushed_on_up += 1

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
        if before is None and tid not in self._transports and len(self._status) >= self.max_statuses:
            self._reject("statuses_dropped", tid, f"status of a terminal with no channel here, past the "
                         f"{self.max_statuses:,} kept")
            return
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
        elif self.shared and not reply.id.startswith(f"{self._session}-"):
            self.stats.other_masters += 1
        elif self._expired.get(reply.id) == tid:
            self.stats.late += 1
            log.info("MQTT: terminal %s: late reply %s dropped (no longer awaited)", tid, reply.id)
        else:
            self._reject("unknown_ids", tid, f"reply id {reply.id!r} was never issued by this master")

    def _on_pushed(self, tid: str, meter: str, readings: list[Reading]) -> bool:
        """Hand one pushed-readings message to ``on_readings``; whether it was taken."""
        if self.push_meters is not None and meter not in self.push_meters.get(tid, ()):
            self._reject("pushed_foreign", tid, f"pushed {len(readings)} reading(s) of meter {meter}, which "
                         "is not configured behind it", count=len(readings))
            return False
        self.stats.pushed_messages += 1
        self.stats.pushed_readings += len(readings)
        if self.on_readings is None:
            return True
        try:
            result = self.on_readings(tid, readings)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(self._callback_done)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("MQTT: on_readings failed for %d readings of meter %s (terminal %s)",
                          len(readings), meter, tid)
        return True

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
            entry = self._described[frame] = (info, request_fields(info.meter, info.protocol, info.unit, frame))
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


__all__ = ["DOWN_QOS", "LEAVE_WAIT", "UP_QOS", "HoldsCallback", "HubStats", "MqttHub", "MqttTransport", "ReadingsCallback"]
