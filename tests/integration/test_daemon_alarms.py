"""The daemon end to end (issue 20): an operator trips a meter through the API with a reason, the
simulated meter's relay is stuck, the daemon's executor fails the command and records it as a
``command_failed`` anomaly, and the daemon's background watch puts one ``relay_stuck`` alarm on the
list (no second one for the anomaly) that the operator acknowledges; the overview counts it."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import free_port
from live_daemon import bus_site, call, make_tokens, one_bus_fleet, running, wait_for_api
from meterd.app import build_node
from meterd.storage.sqlite import SqliteStore

PREPAID = """[prepaid]
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
meters = ["{meter}"]
opening_balance = "100"
"""


async def test_a_stuck_relay_becomes_an_anomaly_and_one_alarm_in_the_daemon(tmp_path, monkeypatch) -> None:
    import meterd.api.alarms

    monkeypatch.setattr(meterd.api.alarms, "WATCH_EVERY", 0.3)  # the daemon's background sync, sooner
    monkeypatch.setenv("METERD_METER_PASSWORD", "02123456")  # the simulated meters' defaults
    monkeypatch.setenv("METERD_OPERATOR_CODE", "12345678")
    async with one_bus_fleet(2, faults={"000000000001": "stuck_relay"}) as fleet:
        bus = fleet.buses[0]
        stuck = bus.meters[0]
        port = free_port()
        config = bus_site(tmp_path, bus, port, source="alarms.toml", response_timeout="300ms", retries=0,
                          extra=PREPAID.format(meter=stuck))
        [operator] = make_tokens(tmp_path / "data", ("ops-li", "operator"))
        with SqliteStore(config.store.data_dir) as store:
            daemon = build_node(config, store)
            async with running(daemon):
                await wait_for_api(port, "/api/v1/alarms", operator)
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
