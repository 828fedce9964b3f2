"""What only the running daemon serves: the technician's on-demand read ("call now") of simulated
meters over a real TCP bus, and live channel diagnostics -- the daemon and its API in one event
loop, the API called over real HTTP from a worker thread."""

from __future__ import annotations

import asyncio
import json
import tomllib
import urllib.error
import urllib.request
from datetime import datetime, timezone
from decimal import Decimal
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


async def test_call_now_reads_the_meter_through_the_daemon_and_stores_it(tmp_path) -> None:
    fleet = await run_fleet(FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=2, wire_time=False, seed=5,
                                      faults={"000000000002": "no_answer"}))
    try:
        bus = fleet.buses[0]
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
"""
        config = parse_config(tomllib.loads(text), source="live.toml")
        (tmp_path / "data").mkdir()
        with TokenStore(tmp_path / "data") as tokens:
            now = datetime.now(timezone.utc)
            tech = tokens.create("tech-wang", "technician", now)[1]
            viewer = tokens.create("wall", "viewer", now)[1]
        with SqliteStore(config.store.data_dir) as store:
            daemon = build_node(config, store)
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                for _ in range(200):
                    try:
                        if (await asyncio.to_thread(call, port, "GET", "/api/v1/diagnostics", tech))[0] == 200:
                            break
                    except OSError:
                        pass
                    await asyncio.sleep(0.05)
                first = bus.meters[0]
                status, doc = await asyncio.to_thread(call, port, "POST", f"/api/v1/meters/{first}/read", tech,
                                                      {"quantities": ["voltage.a", "relay.open"]})
                assert status == 200, doc
                got = {r["quantity"]: r for r in doc["readings"]}
                model = fleet.models[first].values(fleet.clock())
                assert abs(Decimal(got["voltage.a"]["value"]) - Decimal(str(model["voltage.a"]))) < 1
                assert (got["relay.open"]["value"], got["relay.open"]["kind"]) == ("0", "bool")
                assert all(a["outcome"] == "ok" for a in doc["attempts"])
                # the silent meter: an answer with its failed attempt, not an error
                status, doc = await asyncio.to_thread(call, port, "POST", f"/api/v1/meters/{bus.meters[1]}/read",
                                                      tech, {"quantities": ["voltage.a"]})
                assert status == 200 and doc["readings"] == [] and doc["attempts"][0]["outcome"] == "timeout"
                # refused
                assert (await asyncio.to_thread(call, port, "POST", f"/api/v1/meters/{first}/read", viewer,
                                                {"quantities": ["voltage.a"]}))[0] == 403
                status, doc = await asyncio.to_thread(call, port, "POST", f"/api/v1/meters/{first}/read", tech,
                                                      {"quantities": ["no.such.quantity"]})
                assert status == 400 and "no.such.quantity" in doc["error"]
                assert (await asyncio.to_thread(call, port, "POST", "/api/v1/meters/999999999999/read", tech,
                                                {"quantities": ["voltage.a"]}))[0] == 404
                status, diag = await asyncio.to_thread(call, port, "GET", "/api/v1/diagnostics", tech)
                assert status == 200 and diag["channels"][0]["name"] == "bus1"
                assert diag["channels"][0]["stats"]["transactions"] >= 2
                # stored, and audited with who asked
                for _ in range(100):
                    if "voltage.a" in store.latest(first):
                        break
                    await asyncio.sleep(0.05)
                assert "voltage.a" in store.latest(first)
            finally:
                stop.set()
                await task
        from meterd.control.state import ControlStore

        with ControlStore(tmp_path / "data") as control:
            audit = [a for a in control.audit_log(subject=first, limit=10) if a.action == "api-read"]
        assert audit and audit[0].actor == "tech-wang" and audit[0].detail["quantities"] == ["voltage.a", "relay.open"]
    finally:
        await fleet.close()


async def test_a_taken_api_port_does_not_stop_collection_and_is_retried(tmp_path) -> None:
    import socket

    fleet = await run_fleet(FleetSpec(pty_buses=0, tcp_buses=1, meters_per_bus=1, wire_time=False, seed=5))
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    try:
        bus = fleet.buses[0]
        host, _, bus_port = bus.endpoint.rpartition(":")
        text = f"""
[store]
data_dir = "{tmp_path / 'data'}"
flush_interval = "100ms"
[channels.bus1]
tcp = {{ host = "{host}", port = {bus_port} }}
[[meters]]
address = "{bus.meters[0]}"
channel = "bus1"
[[polls]]
name = "rt"
interval = "200ms"
quantities = ["energy.active.import.total"]
[api]
port = {port}
"""
        config = parse_config(tomllib.loads(text), source="taken.toml")
        rounds: list[Any] = []
        with SqliteStore(config.store.data_dir) as store:
            daemon = build_node(config, store, on_round=rounds.append)
            daemon.api.retry_bind = 0.2
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            try:
                for _ in range(100):
                    if len(rounds) >= 3:
                        break
                    await asyncio.sleep(0.05)
                assert len(rounds) >= 3 and not task.done()  # collecting, API or not
                squatter.close()
                for _ in range(100):
                    try:
                        status, _ = await asyncio.to_thread(call, port, "GET", "/healthz", "x")
                        if status == 200:
                            break
                    except OSError:
                        pass
                    await asyncio.sleep(0.1)
                assert status == 200
            finally:
                stop.set()
                await task
    finally:
        squatter.close()
        await fleet.close()
