"""The daemon end to end (issue 20): an operator trips a meter through the API with a reason, the
simulated meter's relay is stuck, the daemon's executor fails the command and records it as a
``command_failed`` anomaly, and the daemon's background watch puts one ``relay_stuck`` alarm on the
list (no second one for the anomaly) that the operator acknowledges; the overview counts it."""

from __future__ import annotations

import asyncio
import json
import tomllib
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from conftest import free_port
from meterd.api import TokenStore
from meterd.app import build_node
from meterd.config.loader import parse_config
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.storage.sqlite import SqliteStore


def call(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_a_stuck_relay_becomes_an_anomaly_and_one_alarm_in_the_daemon(tmp_path, monkeypatch) -> None:
    import meterd.api.alarms

    monkeypatch.setattr(meterd.api.alarms, "WATCH_EVERY", 0.3)  # the daemon's background sync, sooner
    monkeypatch.setenv("METERD_METER_PASSWORD", "02123456")  # the simulated meters' defaults
    monkeypatch.setenv("METERD_OPERATOR_CODE", "12345678")
    fleet = await run_fleet(FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=2, wire_time=False, seed=5,
                                      faults={"000000000001": "stuck_relay"}))
    try:
        bus = fleet.buses[0]
        stuck = bus.meters[0]
        host, _, bus_port = bus.endpoint.rpartition(":")
        port = free_port()
        text = f"""
[store]
data_dir = "{tmp_path / 'data'}"
flush_interval = "100ms"
[channels.bus1]
tcp = {{ host = "{host}", port = {bus_port} }}
response_timeout = "300ms"
retries = 0
[[meters]]
address = "{bus.meters[0]}"
channel = "bus1"
[[meters]]
address = "{bus.meters[1]}"
channel = "bus1"
[[polls]]
name = "daily"
interval = "24h"
quantities = ["energy.active.import.total"]
[api]
port = {port}
[prepaid]
check_every = "1h"
[[prepaid.tariffs]]
name = "res"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "flat"
price = "0.5"
[[prepaid.accounts]]
account = "A1"
tariff = "res"
meters = ["{stuck}"]
opening_balance = "100"
"""
        config = parse_config(tomllib.loads(text), source="alarms.toml")
        (tmp_path / "data").mkdir()
        with TokenStore(tmp_path / "data") as tokens:
            operator = tokens.create("ops-li", "operator", datetime.now(UTC))[1]
        with SqliteStore(config.store.data_dir) as store:
            daemon = build_node(config, store)
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                for _ in range(200):
                    try:
                        if (await asyncio.to_thread(call, port, "GET", "/api/v1/alarms", operator))[0] == 200:
                            break
                    except OSError:
                        pass
                    await asyncio.sleep(0.05)
                status, command = await asyncio.to_thread(call, port, "POST", "/api/v1/commands", operator,
                                                          {"meter": stuck, "kind": "trip", "reason": "tamper check"})
                assert status == 201 and command["reason"] == "tamper check", command
                alarms: list[dict[str, Any]] = []
                for _ in range(150):
                    status, doc = await asyncio.to_thread(call, port, "GET", "/api/v1/alarms?state=open", operator)
                    alarms = doc["alarms"]
                    if alarms:
                        break
                    await asyncio.sleep(0.1)
                assert [(a["kind"], a["subject"]) for a in alarms] == [("relay_stuck", stuck)], alarms
                assert alarms[0]["detail"]["command_id"] == command["id"]
                status, anomalies = await asyncio.to_thread(call, port, "GET", "/api/v1/anomalies?state=open", operator)
                assert [(a["kind"], a["meter"], a["severity"]) for a in anomalies] == [
                    ("command_failed", stuck, "critical")]
                status, acked = await asyncio.to_thread(call, port, "POST", f"/api/v1/alarms/{alarms[0]['id']}"
                                                        "/acknowledge", operator, {"comment": "crew sent"})
                assert status == 200 and acked["history"][-1]["by"] == "ops-li"
                status, overview = await asyncio.to_thread(call, port, "GET", "/api/v1/overview", operator)
                assert overview["alarms"] == {"open": 0, "acknowledged": 1}
            finally:
                stop.set()
                await task
    finally:
        await fleet.close()
