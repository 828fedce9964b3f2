"""Meters behind MQTT terminals, end to end over a real Mosquitto broker started on a free port.

The master side is meterd's :class:`~meterd.collector.mqtt.MqttHub` with a
:class:`~meterd.collector.channel.Channel` per terminal; the terminals are
:class:`~meterd.simulators.mqtt_terminal.MqttTerminal` simulators in front of simulated DL/T 645
and Modbus buses; a raw paho client (the spy) watches the wire format and injects bad messages.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterd.collector.channel import Channel, FailureKind, Timing
from meterd.collector.modbus import ModbusLink
from meterd.collector.mqtt import DOWN_QOS, MqttHub
from meterd.protocols.terminal.mqtt import (
    PayloadError,
    PushedReading,
    ReplyMessage,
    RequestMessage,
    Topics,
    decode_json,
    describe_frame,
    parse_readings,
    parse_rfc3339,
    readings_payload,
)
from meterd.clock import CST
from meterd.collector.poll import MeterTarget, poll_meter, poll_round
from meterd.protocols.dlt645.frame import PREAMBLE, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, encode_request
from meterd.protocols.dlt645.v1997 import ReadRequest97, encode_request97
from meterd.protocols.modbus import compile_plan, get_map
from meterd.readings import Quality, Reading
from meterd.simulators.dlt645 import Dlt645Bus, FaultPlan
from meterd.simulators.modbus import ModbusBus
from meterd.simulators.model import MeterModel
from meterd.simulators.mqtt_terminal import MqttTerminal, run_mqtt_fleet
from mosquitto import Mosquitto, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")

START = datetime(2025, 6, 1, 8, 0)
NOW = START.replace(tzinfo=CST)
ENERGY = 0x00010000
ENERGY_97 = 0x9010
A1, A2 = "000000000001", "000000000002"
GENERIC = get_map("generic")


def fixed_clock() -> datetime:
    return START


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path / "broker") as b:
        yield b


class Pushed(list):
    def __call__(self, tid: str, readings: list[Reading]) -> None:
        self.append((tid, readings))


@pytest.fixture
async def hub(broker):
    h = MqttHub(broker.host, broker.port, client_id="meterd-test-master", reconnect_min=0.1, reconnect_max=0.5,
                on_readings=Pushed())
    assert await h.start(5)
    yield h
    await h.close()


async def start_terminal(broker, tid: str, bus, **kw) -> MqttTerminal:
    kw.setdefault("clock", fixed_clock)
    kw.setdefault("reconnect_min", 0.1)
    kw.setdefault("reconnect_max", 0.5)
    term = MqttTerminal(tid, bus, broker.host, broker.port, **kw)
    assert await term.start(5)
    return term


def dlt645_bus() -> Dlt645Bus:
    return Dlt645Bus([MeterModel(A1, start=START, seed=1), MeterModel(A2, start=START, seed=2)],
                     protocols={A2: "dlt645-1997"})


def mqtt_channel(hub: MqttHub, tid: str, *, response: float = 2.0, retries: int = 1, **kw) -> Channel:
    return Channel(f"ch-{tid}", hub.transport(tid, **kw), timing=Timing(response, 0.5), retries=retries)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Spy:
    """A raw MQTT client: records every message under the root, publishes anything."""

    def __init__(self, broker, root: str = "meterd") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy")
        c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/#", 1)
        c.on_subscribe = lambda *a: self._subscribed.set()
        self.qos: dict[str, set[int]] = {}  # topic kind -> the QoS the spy received it at (min of its and ours)
        c.on_message = lambda c, u, m: (self.messages.append((m.topic, bytes(m.payload))),
                                        self.qos.setdefault(m.topic.rsplit("/", 1)[-1], set()).add(m.qos))
        c.connect(broker.host, broker.port)
        c.loop_start()
        self.client = c

    async def ready(self) -> None:
        assert await asyncio.to_thread(self._subscribed.wait, 5)

    async def publish(self, topic: str, payload: bytes | str | dict, retain: bool = False) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 5)

    def json(self, kind: str) -> list[dict]:
        return [json.loads(p) for t, p in list(self.messages) if t.endswith("/" + kind)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def spy(broker):
    s = Spy(broker)
    await s.ready()
    yield s
    s.close()


# --- payloads (no broker) ----------------------------------------------------------------------


def test_payloads_round_trip_exactly():
    stamp = datetime(2025, 6, 1, 0, 5, tzinfo=timezone.utc)
    readings = [
        Reading(A1, "energy.active.import.total", stamp, Decimal("13152.080"), "kWh"),
        Reading(A1, "relay.open", stamp, False, ""),
        Reading(A1, "status.word3", stamp, 17, "", Quality.SUSPECT),
        Reading(A1, "clock", stamp, datetime(2025, 6, 1, 8, 5, tzinfo=CST), ""),
        Reading(A1, "meter.time", stamp, "08:05:00", ""),
    ]
    raw = readings_payload(A1, readings, sent=stamp)
    doc = json.loads(raw)
    assert doc["readings"][0] == {"quantity": "energy.active.import.total", "value": "13152.080", "unit": "kWh",
                                  "timestamp": "2025-06-01T00:05:00.000Z"}
    meter, back = parse_readings(decode_json(raw))
    # Decimal("13152.080") keeps its digits; the time its instant
    assert meter == A1 and back == [PushedReading(r.meter, r.quantity, r.timestamp, r.value, r.unit, r.quality)
                                    for r in readings]
    assert str(back[0].value) == "13152.080"

    req = RequestMessage("s-1", bytes.fromhex("fefe68"), "dlt645-2007", A1, None, stamp, stamp)
    assert RequestMessage.parse(req.payload()) == req
    rep = ReplyMessage("s-1", b"\x01\x02", "modbus", None, stamp, stamp)
    assert ReplyMessage.from_json(decode_json(rep.payload())) == rep
    # the hand-written payloads are the bytes json.dumps gives, odd ids and all
    for cid in ("s-1", 'say "hi"\\', "tab\there", "ünï\x7f"):
        req = RequestMessage(cid, b"\x01", "modbus", None, 7, stamp, None)
        assert req.payload() == json.dumps(
            {"type": "request", "id": cid, "meter": None, "protocol": "modbus", "unit": 7, "frame": "01",
             "sent": "2025-06-01T00:05:00.000Z"}, separators=(",", ":"), ensure_ascii=False).encode()
        rep = ReplyMessage(cid, b"\x01", None, A1, None, stamp)
        assert rep.payload() == json.dumps(
            {"type": "reply", "id": cid, "meter": A1, "protocol": None, "frame": "01",
             "replied": "2025-06-01T00:05:00.000Z"}, separators=(",", ":"), ensure_ascii=False).encode()

    bad = [
        (b"\xff", "not UTF-8"), (b"{", "not JSON"), (b"[]", "not an object"),
        (b'{"meter":"1","readings":[{"quantity":"q","value":1.5,"timestamp":"2025-06-01T00:00:00Z"}]}', "string"),
        (b'{"meter":"1","readings":[{"quantity":"q","value":"NaN","timestamp":"2025-06-01T00:00:00Z"}]}', "finite"),
        (b'{"meter":"1","readings":[{"quantity":"q","value":"1","timestamp":"2025-06-01T00:00:00"}]}', "zone"),
    ]
    for payload, why in bad:
        with pytest.raises(PayloadError, match=why):
            parse_readings(decode_json(payload))
    with pytest.raises(PayloadError, match="hex"):
        ReplyMessage.from_json({"id": "x", "frame": "zz"})
    assert parse_rfc3339("2025-06-01T08:00:00+08:00") == datetime(2025, 6, 1, 0, 0, tzinfo=timezone.utc)


def test_describe_frame_names_protocol_meter_and_unit():
    f2007 = encode_frame(encode_request(ReadRequest(A1, ENERGY)), preamble=PREAMBLE)
    f1997 = encode_frame(encode_request97(ReadRequest97(A2, ENERGY_97)), preamble=PREAMBLE)
    assert describe_frame(f2007).protocol == "dlt645-2007" and describe_frame(f2007).meter == A1
    assert describe_frame(f1997).protocol == "dlt645-1997" and describe_frame(f1997).meter == A2
    rtu = bytes.fromhex("0103000000 0AC5CD".replace(" ", ""))
    assert describe_frame(rtu, units={1: A1}) == describe_frame(rtu, protocol="modbus", units={1: A1})
    assert describe_frame(rtu, units={1: A1}).unit == 1 and describe_frame(rtu, units={1: A1}).meter == A1
    mbap = bytes.fromhex("000100000006 07 0300000002".replace(" ", ""))
    assert describe_frame(mbap).unit == 7 and describe_frame(mbap).protocol == "modbus"


# --- over the broker ---------------------------------------------------------------------------


async def test_dlt645_meters_read_through_a_terminal(broker, hub, spy):
    bus = dlt645_bus()
    term = await start_terminal(broker, "T001", bus)
    try:
        assert await hub.wait_status("T001", "online", 3)
        ch = mqtt_channel(hub, "T001")
        readings, attempts = await poll_meter(ch, MeterTarget(A1), [ENERGY], NOW)
        readings97, attempts97 = await poll_meter(ch, MeterTarget(A2, protocol="dlt645-1997"), [ENERGY_97], NOW)
    finally:
        await term.close()
    assert [a.outcome for a in attempts + attempts97] == ["ok", "ok"]
    (r,) = readings
    assert r.meter == A1 and r.quantity == "energy.active.import.total" and r.unit == "kWh"
    assert r.value == bus.meter(A1).values(START, ["energy.active.import.total"])["energy.active.import.total"]
    assert readings97 and readings97[0].meter == A2
    assert hub.stats.published == hub.stats.replies_matched == 2
    assert hub.stats.late == hub.stats.unknown_ids == hub.stats.malformed == 0

    # the wire format the docs promise
    await until(lambda: len(spy.json("up")) >= 2)
    down, up = spy.json("down"), spy.json("up")
    assert spy.qos["down"] == {DOWN_QOS} == {0} and spy.qos["up"] == {1}  # requests at QoS 0 (docs/mqtt.md)
    assert [d["protocol"] for d in down] == ["dlt645-2007", "dlt645-1997"]
    assert [d["meter"] for d in down] == [A1, A2]
    assert len(up) == len(down) == 2
    for d, u in zip(down, up, strict=True):
        assert d["type"] == "request" and u["type"] == "reply" and u["id"] == d["id"]
        assert d["frame"].startswith("fefefefe68") and bytes.fromhex(u["frame"])
        assert u["meter"] == d["meter"] and u["protocol"] == d["protocol"] and u["sent"] == d["sent"]
        assert parse_rfc3339(u["replied"]) >= parse_rfc3339(d["sent"])
        assert parse_rfc3339(d["expires"]) > parse_rfc3339(d["sent"])
    assert len({d["id"] for d in down}) == 2
    def statuses() -> list[bytes]:
        return [p for t, p in spy.messages if t == "meterd/terminals/T001/status"]

    await until(lambda: statuses() == [b"online", b"offline"])  # close() says goodbye itself
    assert hub.status("T001") == "offline"


async def test_modbus_meters_read_through_a_terminal(broker, hub, spy):
    models = {1: MeterModel(A1, start=START, seed=1), 2: MeterModel(A2, start=START, seed=2)}
    bus = ModbusBus(models, GENERIC, framing="rtu")
    term = await start_terminal(broker, "MB1", bus)
    quantities = ["energy.active.import.total", "voltage.a", "current.a", "relay.open"]
    plan = compile_plan(GENERIC, quantities)
    try:
        assert await hub.wait_status("MB1", "online", 3)
        link = ModbusLink(mqtt_channel(hub, "MB1", units=bus.units), "rtu")
        targets = [MeterTarget(a, protocol="modbus", unit=u, regmap=GENERIC) for u, a in bus.units.items()]
        result = await poll_round(link.channel, [(t, plan) for t in targets], None, NOW, link=link)
    finally:
        await term.close()
    assert result.attempts and {a.outcome for a in result.attempts} == {"ok"}
    got = {(r.meter, r.quantity): r.value for r in result.readings}
    for model in models.values():
        assert got[(model.address, "energy.active.import.total")] == \
            model.values(START, quantities)["energy.active.import.total"]
        assert got[(model.address, "relay.open")] is False
    down = spy.json("down")
    assert {d["protocol"] for d in down} == {"modbus"}
    assert {(d["unit"], d["meter"]) for d in down} == {(1, A1), (2, A2)}


async def test_last_will_marks_the_terminal_offline_and_the_channel_fails_fast(broker, hub):
    term = await start_terminal(broker, "T001", dlt645_bus(), latency=1.0)
    try:
        assert await hub.wait_status("T001", "online", 3)
        ch = mqtt_channel(hub, "T001", response=3.0)
        # a request in flight when the terminal vanishes
        task = asyncio.create_task(poll_meter(ch, MeterTarget(A1), [ENERGY], NOW))
        await until(lambda: term.stats.requests == 1)
        t0 = time.monotonic()
        await term.go_offline()  # no DISCONNECT: the broker publishes the will
        _, attempts = await asyncio.wait_for(task, 2.0)
        assert time.monotonic() - t0 < 1.0
        assert [a.outcome for a in attempts] == [FailureKind.LINK]
        assert "offline" in attempts[0].detail
        assert hub.status("T001") == "offline"
        assert hub.stats.offline_lost == 1 and hub.stats.offline_refused == 1  # the retry was refused

        # while it is offline every transaction fails at once, no timeout is waited out
        t0 = time.monotonic()
        _, attempts = await poll_meter(ch, MeterTarget(A1), [ENERGY], NOW)
        assert [a.outcome for a in attempts] == [FailureKind.LINK] and time.monotonic() - t0 < 0.2
        assert ch.stats.failures[FailureKind.LINK] == 4

        term.latency = 0.0
        assert await term.come_back(5)
        assert await hub.wait_status("T001", "online", 3)
        _, attempts = await poll_meter(ch, MeterTarget(A1), [ENERGY], NOW)
        assert [a.outcome for a in attempts] == ["ok"]
    finally:
        await term.close()
    assert await hub.wait_status("T001", "offline", 3)


async def test_pushed_readings_arrive_through_on_readings(broker, hub):
    bus = dlt645_bus()
    term = await start_terminal(broker, "T001", bus)
    ticking = await start_terminal(broker, "T002", Dlt645Bus([MeterModel("000000000003", start=START)]),
                                   push_every=0.1, push_quantities=["voltage.a"])
    try:
        n = term.push_readings()
        assert n == 2 * len(term.push_quantities)
        await until(lambda: sum(len(rs) for tid, rs in hub.on_readings if tid == "T001") == n)
        await until(lambda: sum(1 for tid, _ in hub.on_readings if tid == "T002") >= 2, 3)
    finally:
        await term.close()
        await ticking.close()
    pushed = [r for tid, rs in hub.on_readings if tid == "T001" for r in rs]
    stamp = NOW.astimezone(timezone.utc)
    for model in bus.meters:
        values = model.values(START, term.push_quantities)
        mine = {r.quantity: r for r in pushed if r.meter == model.address}
        assert set(mine) == set(term.push_quantities)
        for q, r in mine.items():
            assert r.value == values[q] and isinstance(r.value, Decimal)  # exact, never through a float
            assert r.timestamp == stamp and r.quality is Quality.GOOD
        assert mine["energy.active.import.total"].unit == "kWh" and mine["voltage.a"].unit == "V"
    assert hub.stats.pushed_readings >= n + 2 and hub.stats.malformed == 0


def test_the_topic_tree_has_push_beside_up():
    t = Topics("site7")
    assert t.push("T001") == "site7/terminals/T001/push" and t.all_push == "site7/terminals/+/push"
    assert t.shared_push() == "$share/meterd/site7/terminals/+/push"
    assert t.shared_push("g2") == "$share/g2/site7/terminals/+/push"
    for kind in ("down", "up", "push", "status"):
        assert t.parse(f"site7/terminals/T001/{kind}") == ("T001", kind)
    for topic in ("site7/terminals/T001/pushed", "site7/terminals/T001/push/x", "$share/meterd/site7/terminals/T001/push",
                  "meterd/terminals/T001/push"):
        assert t.parse(topic) is None
    for group in ("", "a/b", "+", "#"):
        with pytest.raises(ValueError):
            t.shared_push(group)


async def test_pushes_go_on_push_and_pushes_on_up_are_still_taken(broker, hub, spy):
    """The simulated terminal pushes on ``push``; one pushing on ``up`` (as before ``push`` existed)
    is still taken by a single master, and counted as such."""
    new = await start_terminal(broker, "T001", dlt645_bus(), push_quantities=["voltage.a"])
    old = await start_terminal(broker, "T002", Dlt645Bus([MeterModel("000000000003", start=START)]),
                               push_quantities=["voltage.a"], push_on_up=True)
    try:
        assert new.push_readings() == 2 and old.push_readings() == 1
        await until(lambda: hub.stats.pushed_messages == 3)
        await until(lambda: len(spy.json("push")) == 2 and len(spy.json("up")) == 1)
    finally:
        await new.close()
        await old.close()
    assert {tid for tid, _ in hub.on_readings} == {"T001", "T002"}
    assert hub.stats.pushed_on_up == 1 and hub.stats.pushed_not_held == 0 and hub.stats.malformed == 0
    assert {m["meter"] for m in spy.json("push")} == {A1, A2}


async def test_a_push_topic_carries_readings_only(broker, hub, spy):
    push = "meterd/terminals/T001/push"
    stamp = "2025-06-01T00:00:00Z"
    reading = {"quantity": "voltage.a", "value": "220.1", "timestamp": stamp}
    await spy.publish(push, {"type": "reply", "id": "x-1", "frame": "68"})  # a reply on push
    await spy.publish(push, {"id": "x-1", "frame": "68"})  # no type: taken for readings, and has no meter
    await spy.publish(push, {"meter": A1, "readings": [reading]})  # no type: readings
    await spy.publish(push, {"type": "readings", "meter": A1, "readings": [reading]})
    await until(lambda: hub.stats.pushed_messages == 2 and hub.stats.malformed == 2)
    assert hub.stats.unknown_ids == 0 and hub.stats.pushed_on_up == 0
    assert "on a push topic is not 'readings'" in "\n".join(hub.rejects)


async def test_a_payload_over_the_limit_is_dropped_unread_and_the_next_one_is_taken(broker, spy):
    """Payloads are parsed in the event loop: one of the 256 MB MQTT allows would stall every channel
    (a 19 MB push of 200,000 readings took 0.7 s of CPU to parse).  Over ``max_payload`` it is
    dropped before it is decoded, counted and logged with its size; the terminal's next push goes on."""
    hub = MqttHub(broker.host, broker.port, client_id="meterd-small", reconnect_min=0.1, on_readings=Pushed(),
                  max_payload=4096)
    assert await hub.start(5)
    try:
        reading = {"quantity": "voltage.a", "value": "220.1", "timestamp": "2025-06-01T00:00:00Z"}
        big = json.dumps({"type": "readings", "meter": A1, "readings": [reading] * 60})
        small = json.dumps({"type": "readings", "meter": A1, "readings": [reading]})
        assert len(big) > 4096 > len(small)
        await spy.publish("meterd/terminals/T001/push", big)
        await spy.publish("meterd/terminals/T001/up", big)
        await spy.publish("meterd/terminals/T001/push", small)
        await until(lambda: hub.stats.pushed_messages == 1 and hub.stats.oversized == 2)
        assert hub.stats.pushed_readings == 1 and hub.stats.malformed == 0
        assert [len(rs) for _, rs in hub.on_readings] == [1]
        assert f"oversized: terminal T001: a push message of {len(big):,} bytes, over the limit of 4,096 " \
               "([mqtt] max_payload_kb)" in hub.rejects
    finally:
        await hub.close()


async def test_statuses_of_terminals_without_a_channel_are_kept_up_to_a_bound(broker, spy):
    """A flood of made-up terminal ids on the status topic (a broker without ACLs) cannot grow the
    master's memory, or its log by a line per id: past ``max_statuses`` a terminal it has no channel
    for is not kept, only counted; its own terminals' statuses always are."""
    hub = MqttHub(broker.host, broker.port, client_id="meterd-statuses", reconnect_min=0.1, max_statuses=3)
    mine = hub.transport("T001")
    assert await hub.start(5)
    try:
        for n in range(6):
            await spy.publish(f"meterd/terminals/X{n}/status", "online")
        await spy.publish("meterd/terminals/T001/status", "online")
        await until(lambda: hub.stats.statuses_dropped == 3 and hub.status("T001") == "online")
        assert sorted(hub.terminals) == ["T001", "X0", "X1", "X2"]
        await spy.publish("meterd/terminals/X1/status", "offline")  # one it keeps is still followed
        await until(lambda: hub.status("X1") == "offline")
        assert hub.stats.statuses_dropped == 3 and mine.terminal == "T001"
    finally:
        await hub.close()


async def test_malformed_payloads_and_unknown_ids_are_counted_and_disturb_nothing(broker, hub, spy, caplog):
    term = await start_terminal(broker, "T001", dlt645_bus(), latency=0.6)
    try:
        assert await hub.wait_status("T001", "online", 3)
        ch = mqtt_channel(hub, "T001", response=3.0)
        task = asyncio.create_task(poll_meter(ch, MeterTarget(A1), [ENERGY], NOW))
        await until(lambda: term.stats.requests == 1)
        (request,) = spy.json("down")
        up = "meterd/terminals/T001/up"
        stamp = "2025-06-01T00:00:00Z"
        reply_frame = "fefefefe6801000000000068910833333433896745339f16"
        for payload in [
            b"not json",
            b"[1, 2]",
            {"type": "reply", "id": request["id"]},  # no frame
            {"id": request["id"], "frame": "zz"},  # not hex
            {"type": "readings", "meter": A1, "readings": [{"quantity": "voltage.a", "value": 220.1,
                                                            "timestamp": stamp}]},  # a float value
            {"type": "readings", "meter": A1, "readings": [{"quantity": "voltage.a", "value": "220.1",
                                                            "timestamp": "2025-06-01T00:00:00"}]},  # no zone
        ]:
            await spy.publish(up, payload)
        await spy.publish("meterd/terminals/T001/status", "maybe")
        await spy.publish(up, {"id": "feedface-1", "frame": reply_frame})  # never issued
        # the in-flight id, but from another terminal: not taken for the answer
        await spy.publish("meterd/terminals/T999/up", {"id": request["id"], "frame": reply_frame})
        await until(lambda: hub.stats.malformed == 7 and hub.stats.unknown_ids == 2)
        assert not task.done()
        readings, attempts = await asyncio.wait_for(task, 3)
        assert hub.status("T001") == "online"  # the bad status changed nothing
    finally:
        await term.close()
    assert [a.outcome for a in attempts] == ["ok"] and readings
    assert readings[0].value != Decimal("1234.56")  # the injected frame's value was never used
    assert hub.stats.replies_matched == 1 and hub.stats.pushed_messages == 0 and hub.stats.late == 0
    assert ch.stats.failures == {} and ch.stats.successes == 1
    reasons = "\n".join(hub.rejects)
    for why in ("not JSON", "not an object", "'frame'", "not hex", "must be a string", "no time zone",
                "neither online nor offline", "never issued", "sent to terminal T001"):
        assert why in reasons
    # logged once per counter (malformed, unknown_ids) per minute, not once per message
    assert sum("dropped a message" in r.getMessage() for r in caplog.records) == 2


async def test_late_replies_are_dropped_and_counted(broker, hub):
    term = await start_terminal(broker, "T001", dlt645_bus(), latency=0.4)
    try:
        assert await hub.wait_status("T001", "online", 3)
        ch = mqtt_channel(hub, "T001", response=0.25, retries=1)
        _, attempts = await poll_meter(ch, MeterTarget(A1), [ENERGY], NOW)
        assert [a.outcome for a in attempts] == [FailureKind.TIMEOUT]
        await until(lambda: hub.stats.late == 2, 3)  # both attempts' replies came after the give-up
        assert hub.stats.replies_matched == 0
        term.latency = 0.0
        readings, attempts = await poll_meter(ch, MeterTarget(A1), [ENERGY], NOW)
        assert [a.outcome for a in attempts] == ["ok"] and readings
    finally:
        await term.close()


async def test_a_request_that_expired_on_the_way_is_dropped_by_the_terminal(broker, hub, spy):
    term = await start_terminal(broker, "T001", dlt645_bus())
    try:
        assert await hub.wait_status("T001", "online", 3)
        hub.request_ttl = 0.0  # every request has expired by the time it arrives
        ch = mqtt_channel(hub, "T001", response=0.3, retries=0)
        _, attempts = await poll_meter(ch, MeterTarget(A1), [ENERGY], NOW)
        assert [a.outcome for a in attempts] == [FailureKind.TIMEOUT]
        assert term.stats.expired == 1 and term.stats.replies == 0 and bus_untouched(term)
        hub.request_ttl = 30.0
        _, attempts = await poll_meter(ch, MeterTarget(A1), [ENERGY], NOW)
        assert [a.outcome for a in attempts] == ["ok"]
    finally:
        await term.close()
    (expired, fresh) = spy.json("down")
    assert expired["expires"] == expired["sent"] and parse_rfc3339(fresh["expires"]) > parse_rfc3339(fresh["sent"])


async def test_a_late_meter_holds_the_port_and_the_next_request_waits_its_turn(broker, spy):
    """A terminal answers at once while its port is idle, but a meter's ``late`` reply is waited
    out first: the request behind it is answered after it, never overtaking it (one RS-485 port)."""
    bus = Dlt645Bus([MeterModel(A1, start=START, seed=1), MeterModel(A2, start=START, seed=2)],
                    faults={A1: FaultPlan(late=1.0, late_by=0.3)})
    term = await start_terminal(broker, "T001", bus)
    try:
        for cid, meter in (("late-1", A1), ("next-2", A2)):
            frame = encode_frame(encode_request(ReadRequest(meter, ENERGY)), preamble=PREAMBLE)
            await spy.publish("meterd/terminals/T001/down", RequestMessage(cid, frame).payload())
        await until(lambda: len(spy.json("up")) == 2, 5)
    finally:
        await term.close()
    first, second = spy.json("up")
    assert [first["id"], second["id"]] == ["late-1", "next-2"]
    assert parse_rfc3339(second["replied"]) >= parse_rfc3339(first["replied"])
    assert term.stats.requests == term.stats.replies == 2 and term.stats.errors == 0


def bus_untouched(term: MqttTerminal) -> bool:
    return term.bus.stats.requests == 0


@pytest.mark.parametrize("how", ["crash", "restart"])
async def test_broker_outage_mid_round_fails_the_request_and_collection_resumes(broker, hub, how):
    """``crash``: the broker is killed (no wills, connections just drop); ``restart``: it is stopped
    cleanly -- Mosquitto then publishes its clients' wills as it shuts down, so the hub may hear
    "T001 offline" just before it loses the broker itself and count the request there instead."""
    term = await start_terminal(broker, "T001", dlt645_bus(), latency=1.0)
    try:
        assert await hub.wait_status("T001", "online", 3)
        ch = mqtt_channel(hub, "T001", response=3.0, retries=1)
        task = asyncio.create_task(poll_meter(ch, MeterTarget(A1), [ENERGY], NOW))
        await until(lambda: term.stats.requests == 1)
        t0 = time.monotonic()
        await asyncio.to_thread(broker.kill if how == "crash" else broker.stop)
        _, attempts = await asyncio.wait_for(task, 2.0)  # never hangs
        assert time.monotonic() - t0 < 1.5
        assert [a.outcome for a in attempts] == [FailureKind.LINK]
        s = hub.stats
        if how == "crash":
            assert s.outage_lost == 1  # the request in flight: failed and counted ...
            assert s.outage_refused == 1  # ... and its retry, refused while the broker is down
        else:
            assert s.outage_lost + s.offline_lost == 1 and s.outage_refused + s.offline_refused == 1
        await until(lambda: not hub.connected)

        # the rest of the round: fails at once, counted
        refused = s.outage_refused
        t0 = time.monotonic()
        _, attempts = await poll_meter(ch, MeterTarget(A2, protocol="dlt645-1997"), [ENERGY_97], NOW)
        assert [a.outcome for a in attempts] == [FailureKind.LINK] and time.monotonic() - t0 < 0.2
        assert s.outage_refused == refused + 2

        term.latency = 0.0
        await asyncio.to_thread(broker.start)
        assert await hub.wait_connected(5)  # the hub reconnects by itself
        assert await hub.wait_status("T001", "online", 5)  # so does the terminal, and says so again
        readings, attempts = await poll_meter(ch, MeterTarget(A1), [ENERGY], NOW)
        assert [a.outcome for a in attempts] == ["ok"] and readings
        readings, attempts = await poll_meter(ch, MeterTarget(A2, protocol="dlt645-1997"), [ENERGY_97], NOW)
        assert [a.outcome for a in attempts] == ["ok"] and readings
    finally:
        await term.close()
    assert s.connects == 2 and s.disconnects == 1
    assert s.unknown_ids == s.malformed == 0


async def test_fifty_terminals_at_once(broker, hub):
    t0 = time.monotonic()
    fleet = await run_mqtt_fleet(50, 2, broker.host, broker.port, clock=fixed_clock, reconnect_min=0.1)
    try:
        await until(lambda: len(hub.terminals) == 50 and set(hub.terminals.values()) == {"online"})
        channels = {tid: mqtt_channel(hub, tid) for tid in fleet.terminals}
        rounds = await asyncio.gather(*(
            poll_round(ch, [MeterTarget(a) for a in fleet.addresses(tid)], [ENERGY], NOW)
            for tid, ch in channels.items()
        ))
    finally:
        await fleet.close()
    attempts = [a for r in rounds for a in r.attempts]
    assert len(attempts) == 100 and {a.outcome for a in attempts} == {"ok"}
    assert {r.meter for rr in rounds for r in rr.readings} == {a for t in fleet.terminals for a in fleet.addresses(t)}
    assert hub.stats.published == hub.stats.replies_matched == 100
    assert time.monotonic() - t0 < 10


async def test_keepalive_pings_keep_an_idle_connection_up(broker):
    """The event loop drives paho (no network thread): its keep-alive must still ping, or the
    broker drops an idle client after 1.5 keep-alive periods (Mosquitto notices within ~5 s)."""
    hub = MqttHub(broker.host, broker.port, client_id="meterd-idle", keepalive=1, reconnect_min=0.1)
    term = MqttTerminal("T009", dlt645_bus(), broker.host, broker.port, clock=fixed_clock, keepalive=1)
    assert await hub.start(5) and await term.start(5)
    try:
        await asyncio.sleep(7.0)
        assert hub.connected and term.connected
        assert hub.stats.connects == 1 and hub.stats.disconnects == 0 and term.stats.connects == 1
    finally:
        await term.close()
        await hub.close()
