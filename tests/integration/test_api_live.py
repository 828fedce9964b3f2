"""What only the running daemon serves: the technician's on-demand read ("call now") of simulated
meters over a real TCP bus, and live channel diagnostics -- the daemon and its API in one event
loop, the API called over real HTTP from a worker thread."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from conftest import free_port
from live_daemon import bus_site, call, make_tokens, one_bus_fleet, running, wait_for_api
from meterd.app import build_node
from meterd.storage.sqlite import SqliteStore


async def test_call_now_reads_the_meter_through_the_daemon_and_stores_it(tmp_path) -> None:
    async with one_bus_fleet(2, faults={"000000000002": "no_answer"}) as fleet:
        bus = fleet.buses[0]
        port = free_port()
        config = bus_site(tmp_path, bus, port, source="live.toml", response_timeout="300ms", retries=0)
        tech, viewer = make_tokens(tmp_path / "data", ("tech-wang", "technician"), ("wall", "viewer"))
        with SqliteStore(config.store.data_dir) as store:
            daemon = build_node(config, store)
            async with running(daemon):
                await wait_for_api(port, "/api/v1/diagnostics", tech)
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
        from meterd.control.state import ControlStore

        with ControlStore(tmp_path / "data") as control:
            audit = [a for a in control.audit_log(subject=first, limit=10) if a.action == "api-read"]
        assert audit and audit[0].actor == "tech-wang" and audit[0].detail["quantities"] == ["voltage.a", "relay.open"]


async def test_a_taken_api_port_does_not_stop_collection_and_is_retried(tmp_path) -> None:
    import socket

    async with one_bus_fleet(1) as fleet:
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        try:
            config = bus_site(tmp_path, fleet.buses[0], port, source="taken.toml", poll=("rt", "200ms"))
            rounds: list[Any] = []
            with SqliteStore(config.store.data_dir) as store:
                daemon = build_node(config, store, on_round=rounds.append)
                daemon.api.retry_bind = 0.2
                async with running(daemon) as task:
                    for _ in range(100):
                        if len(rounds) >= 3:
                            break
                        await asyncio.sleep(0.05)
                    assert len(rounds) >= 3 and not task.done()  # collecting, API or not
                    squatter.close()
                    assert await wait_for_api(port, "/healthz", "x", tries=100, every=0.1)
        finally:
            squatter.close()
