"""One absurd reading must not stop prepaid control for the district (issue 14).

The whole daemon from a config file, a real Mosquitto broker, a terminal that pushes readings
(raw MQTT messages, as a misbehaving terminal would send them), and the prepaid engine over the
real state database.  Before the fix a pushed ``1e30`` (or a Modbus float32 ``7F7F FFFF``) made
every charging pass raise ``decimal.InvalidOperation``: no account was charged or decided again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import tomllib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from meterd.app import build_node
from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.control.state import ControlStore
from meterd.protocols.modbus import get_map
from meterd.readings import Quality
from meterd.simulators.modbus import ModbusBus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import serve_tcp
from meterd.storage.anomalies import AnomalyStore, Kind
from meterd.storage.sqlite import SqliteStore
from mosquitto import Mosquitto

M1, M2, STRANGER = "000001000001", "000001000002", "000009999999"
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=timezone.utc)
ENERGY = "energy.active.import.total"


def site(data_dir, broker_port: int) -> str:
    return f"""
[store]
data_dir = "{data_dir}"
flush_interval = "100ms"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "meterd-test-master"

[channels.t1]
mqtt = {{ terminal = "T001" }}

[[meters]]
address = "{M1}"
channel = "t1"

[[meters]]
address = "{M2}"
channel = "t1"

[prepaid]
dry_run = true
check_every = "1h"
thresholds = {{ reminder = "30", alarm = "20", trip = "0", reclose = "10" }}

[[prepaid.tariffs]]
name = "flat"
[[prepaid.tariffs.versions]]
effective = 2020-01-01
kind = "flat"
price = "0.50"

[[prepaid.accounts]]
account = "A1"
tariff = "flat"
meters = ["{M1}"]
opening_balance = "100.00"

[[prepaid.accounts]]
account = "A2"
tariff = "flat"
meters = ["{M2}"]
opening_balance = "100.00"
"""


def message(meter: str, at: datetime, value: str) -> bytes:
    stamp = at.isoformat().replace("+00:00", "Z")
    return json.dumps({"type": "readings", "meter": meter,
                       "readings": [{"quantity": ENERGY, "value": value, "unit": "kWh", "timestamp": stamp}]}).encode()


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path / "broker") as b:
        yield b


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_site(tmp_path, broker) -> AsyncIterator[tuple[Any, Any, list[datetime], mqtt.Client]]:
    """The daemon of :func:`site` running on the broker, its clock ``now[0]`` (T0 to begin with),
    and a raw MQTT client as terminal T001: (data dir, node, now, terminal)."""
    data = tmp_path / "data"
    config = parse_config(tomllib.loads(site(data, broker.port)), "site.toml", tmp_path)
    now = [T0]
    store = SqliteStore(data)
    node = build_node(config, store, clock=lambda: now[0])
    stop = asyncio.Event()
    run = asyncio.create_task(node.collector.run(stop))
    terminal = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="T001")
    terminal.connect("127.0.0.1", broker.port)
    terminal.loop_start()
    try:
        yield data, node, now, terminal
    finally:
        terminal.loop_stop()
        terminal.disconnect()
        stop.set()
        await run


@pytest.mark.parametrize("absurd", ["1e30", "340282346638528859811704183484516925440", "1E16", "1500.00"])
async def test_an_absurd_pushed_reading_is_flagged_and_every_other_account_is_still_charged(tmp_path, broker, absurd):
    async with running_site(tmp_path, broker) as (data, node, now, terminal):
        daemon = node.collector
        assert daemon.hub is not None and node.prepaid is not None
        await until(lambda: daemon.hub.connected)
        up = "meterd/terminals/T001/up"
        t1 = T0 + timedelta(minutes=15)
        for payload in (message(M1, T0, "1000.00"), message(M2, T0, "2000.00")):
            terminal.publish(up, payload, qos=1).wait_for_publish(5)
        await until(lambda: daemon.hub.stats.pushed_messages == 2)
        now[0] = t1  # the master's clock moves on with the terminal's (a reading ahead of it is re-stamped)
        for payload in (message(M1, t1, absurd),  # 1000 -> absurd in 15 minutes
                        message(M2, t1, "2010.00"),  # 10 kWh in 15 minutes: 40 kW, plausible
                        message(STRANGER, t1, "5.00")):  # not behind T001: dropped, counted
            terminal.publish(up, payload, qos=1).wait_for_publish(5)
        await until(lambda: daemon.hub.stats.pushed_messages == 4 and daemon.hub.stats.pushed_foreign == 1)
        await until(lambda: daemon.door.flagged == 1)
        await until(lambda: daemon.writer.pending == 0)

        summary = await asyncio.to_thread(node.prepaid.engine.run_pass, t1 + timedelta(minutes=1))

    # the district's pass went through: A2 charged 10 kWh x 0.50; A1 charged nothing
    with ControlStore(data) as control:
        assert control.balance("A2") == Decimal("95.00")
        assert control.balance("A1") == Decimal("100.00")
        assert control.verify_balances() == []
    assert summary.failed == {}
    # the absurd value is stored, flagged, and named in an anomaly with its meter
    with SqliteStore(data) as readings:
        stored = {(r.meter, r.timestamp): r for r in readings.readings(M1)}
    flagged = stored[(M1, t1)]
    assert flagged.quality is Quality.IMPLAUSIBLE and flagged.value == Decimal(absurd)
    assert stored[(M1, T0)].quality is Quality.GOOD
    with AnomalyStore(data) as anomalies:
        events = anomalies.events(meter=M1, kind=Kind.IMPLAUSIBLE)
    assert len(events) == 1 and M1 in events[0].detail and events[0].closed is None
    assert not any(r for r in readings_of(data, STRANGER))  # the stranger's reading never stored


def readings_of(data, meter: str) -> list:
    with SqliteStore(data) as readings:
        return readings.readings(meter)


class AbsurdMeter(MeterModel):
    """A meter whose energy register holds float32's largest value, 7F7F FFFF (a CRC-valid reply)."""

    def values(self, now, quantities=None):
        out = super().values(now, quantities)
        if ENERGY in out:
            out[ENERGY] = Decimal(struct.unpack(">f", bytes.fromhex("7F7FFFFF"))[0])
        return out


async def test_a_modbus_float32_max_is_stored_flagged_and_never_reaches_prepaid(tmp_path):
    start = datetime(2026, 11, 2, 10, 0)
    bus = ModbusBus({1: AbsurdMeter("000000002001", start=start, seed=1)}, get_map("eastron-sdm630"), framing="tcp")
    running = await serve_tcp(bus, clock=lambda: start)
    host, port = running.endpoint.rsplit(":", 1)
    data = tmp_path / "data"
    config = parse_config(tomllib.loads(f"""
[store]
data_dir = "{data}"
[channels.gw]
tcp = {{ host = "{host}", port = {port} }}
[[meters]]
address = "000000002001"
channel = "gw"
protocol = "modbus"
unit = 1
model = "eastron-sdm630"
[[polls]]
name = "rt"
interval = "1h"
quantities = ["{ENERGY}", "voltage.a"]
"""), "site.toml", tmp_path)
    store = SqliteStore(data)
    seen: list = []
    daemon = Daemon(config, store, clock=lambda: T0)
    daemon.subscribe(seen.extend)
    try:
        runner = daemon.runners[0]
        result = await daemon.run_round(runner, runner.plan.polls[0])
    finally:
        await daemon.runners[0].channel.close()
        await running.close()
    energy = [r for r in result.readings if r.quantity == ENERGY]
    assert len(energy) == 1 and energy[0].quality is Quality.IMPLAUSIBLE
    assert energy[0].value > Decimal("3.4E38")
    assert [r.quality for r in result.readings if r.quantity == "voltage.a"] == [Quality.GOOD]
    assert [r.quality for r in seen if r.quantity == ENERGY] == [Quality.IMPLAUSIBLE]  # observers see the verdict
    assert daemon.door.flagged == 1


async def test_a_pushed_reading_stamped_years_ahead_is_taken_as_received_and_charging_goes_on(tmp_path, broker,
                                                                                                  caplog):
    """A terminal whose clock says 2036 pushed a reading stamped then; it became the newest of M1's
    register, every later reading was older (LATE), and A1 was never charged again until 2036. Now
    it is taken as read when it came, logged with the terminal, and the next readings charge."""
    async with running_site(tmp_path, broker) as (data, node, now, terminal):
        daemon = node.collector
        push = "meterd/terminals/T001/push"
        assert daemon.hub is not None and node.prepaid is not None
        await until(lambda: daemon.hub.connected)
        terminal.publish(push, message(M1, T0, "1000.00"), qos=1).wait_for_publish(5)
        await until(lambda: daemon.hub.stats.pushed_messages == 1)
        now[0] = T0 + timedelta(minutes=5)
        terminal.publish(push, message(M1, datetime(2036, 5, 1, tzinfo=timezone.utc), "1001.00"),
                         qos=1).wait_for_publish(5)
        await until(lambda: daemon.hub.stats.pushed_messages == 2)
        await until(lambda: daemon.writer.pending == 0)
        await asyncio.to_thread(node.prepaid.engine.run_pass, now[0])  # its cursor: 2036 (before), 02:05 now
        now[0] = T0 + timedelta(minutes=15)
        terminal.publish(push, message(M1, now[0], "1004.00"), qos=1).wait_for_publish(5)
        await until(lambda: daemon.hub.stats.pushed_messages == 3)
        await until(lambda: daemon.writer.pending == 0)
        summary = await asyncio.to_thread(node.prepaid.engine.run_pass, now[0] + timedelta(minutes=1))
    assert summary.failed == {}
    with ControlStore(data) as control:
        assert control.balance("A1") == Decimal("98.00")  # 4 kWh x 0.50: 1000 -> 1001 -> 1004
        assert control.verify_balances() == []
    stamps = [(r.timestamp, r.value) for r in readings_of(data, M1)]
    assert (T0 + timedelta(minutes=5), Decimal("1001.00")) in stamps
    assert all(at.year < 2036 for at, _ in stamps)
    assert daemon.door.restamped == 1 and daemon.door.flagged == 0
    assert "terminal T001's clock is ahead: meter 000001000001" in caplog.text
