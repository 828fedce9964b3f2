"""Quality that tells the truth (issue 18), on real sockets against simulated meters.

* What a meter's "no requested data" (无请求数据) becomes: ``no_record`` for a record it makes at set
  times (a freeze, a past settlement) -- from both DL/T 645 editions --, ``abnormal`` for any other
  refusal.
* A healthy system started at noon: the daemon (its clock passed in, the meters' simulated clock at
  the same noon) polls three meters, one of them new -- it has passed no midnight, so it answers "no
  such record yet" for today's freeze.  ``meterd quality`` shows every rate at or above 97 % and
  flags nothing; ``/metrics`` counts the same attempts by the same outcomes; the dashboard's JSON
  (``/api/v1/overview``, ``/api/v1/quality``) shows the same numbers; areas are the topology's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tomllib
import urllib.request
from datetime import UTC, datetime
from typing import Any

from conftest import free_port
from meterd.api import TokenStore
from meterd.app import build_node
from meterd.cli import quality as quality_cli
from meterd.clock import CST
from meterd.collector.channel import Channel, Timing
from meterd.collector.poll import MeterTarget, poll_meter
from meterd.collector.transports import TcpTransport
from meterd.config.loader import parse_config
from meterd.protocols.readspec import ReadSpec
from meterd.simulators.dlt645 import Dlt645Bus, FaultPlan
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_tcp
from meterd.storage.sqlite import SqliteStore

NOON = datetime(2026, 3, 4, 12, 0)  # meter-local (China Standard Time)
OLD1, OLD2, NEW = "000000000001", "000000000002", "000000000003"


def utc(sim: SimClock):
    """The daemon's clock: the meters' simulated local time, as an aware UTC time."""
    return lambda: sim().replace(tzinfo=CST).astimezone(UTC)


async def test_no_requested_data_for_a_record_is_no_record_in_both_editions() -> None:
    m2007, m1997, refusing = "000000000011", "000000000012", "000000000013"
    bus = Dlt645Bus([MeterModel(a, start=NOON) for a in (m2007, m1997, refusing)],
                    protocols={m1997: "dlt645-1997"}, faults={refusing: FaultPlan.of("abnormal")})
    sim = SimClock.starting(NOON)
    running = await serve_tcp(bus, clock=sim)
    host, _, port = running.endpoint.rpartition(":")
    channel = Channel("bus1", TcpTransport("bus1", host, int(port)), timing=Timing(response=0.5, inter_byte=0.2),
                      retries=0)
    try:
        now = utc(sim)()
        cases = [
            # today's daily freeze and the last settlement day: not made yet by a meter started at noon
            (MeterTarget(m2007), ReadSpec((0x00010000, 0x05060101, 0x00010001)), ["ok", "no_record", "no_record"]),
            # 1997: last month's register (9410) not settled yet -- DI_ERROR, the same bit
            (MeterTarget(m1997, protocol="dlt645-1997"), ReadSpec((0x9010, 0x9410)), ["ok", "no_record"]),
            # any other refusal of a record is a refusal
            (MeterTarget(refusing), ReadSpec((0x05060101,)), ["abnormal"]),
        ]
        for target, spec, expected in cases:
            readings, made = await poll_meter(channel, target, spec, now)
            assert [a.outcome for a in made] == expected, [(a.item, a.outcome, a.detail) for a in made]
            assert bool(readings) == ("ok" in expected)  # what was there was read
            assert all(a.detail for a in made if a.outcome != "ok")  # says what the meter answered
    finally:
        await channel.close()
        await running.close()


SITE = """
[store]
data_dir = "{data}"
flush_interval = "100ms"
[channels.bus1]
tcp = {{ host = "{host}", port = {port} }}
response_timeout = "500ms"
retries = 0
[[meters]]
address = "{old1}"
channel = "bus1"
group = "residential"
[[meters]]
address = "{old2}"
channel = "bus1"
group = "residential"
[[meters]]
address = "{new}"
channel = "bus1"
group = "residential"
[[polls]]
name = "realtime"
interval = "1h"
quantities = ["energy.active.import.total", "voltage.a"]
[[polls]]
name = "frozen"
interval = "1h"
items = ["05060101"]  # today's daily freeze (00:00) of active import energy, total and rates
[[topology.units]]
name = "TA-01"
kind = "area"
[[topology.units]]
name = "L-10kV"
kind = "line"
[[topology.points]]
meter = "{old1}"
unit = "TA-01"
role = "supply"
[[topology.points]]
meter = "{old2}"
unit = "TA-01"
role = "sales"
[[topology.points]]
meter = "{new}"
unit = "L-10kV"
role = "supply"
[analytics]
check_every = "1h"
[api]
port = {api}
"""


def get(port: int, path: str, token: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read().decode()
    return body if path == "/metrics" else json.loads(body)


def outcome_counts(text: str) -> dict[str, float]:
    """``meterd_channel_attempts_total`` by outcome, summed over channels."""
    out: dict[str, float] = {}
    for m in re.finditer(r'^meterd_channel_attempts_total\{([^}]*)\} (\S+)$', text, re.MULTILINE):
        outcome = re.search(r'outcome="([^"]*)"', m.group(1))
        assert outcome is not None
        out[outcome.group(1)] = out.get(outcome.group(1), 0) + float(m.group(2))
    return out


async def test_a_healthy_system_started_at_noon_is_at_or_above_the_line_everywhere(tmp_path, capsys) -> None:
    # two meters in service since before midnight (they froze at 00:00), one installed at noon
    bus = Dlt645Bus([MeterModel(OLD1, start=datetime(2026, 3, 3, 23, 58)),
                     MeterModel(OLD2, start=datetime(2026, 3, 3, 23, 58)), MeterModel(NEW, start=NOON)])
    sim = SimClock.starting(NOON)
    running = await serve_tcp(bus, clock=sim)
    host, _, bus_port = running.endpoint.rpartition(":")
    api = free_port()
    data = tmp_path / "data"
    data.mkdir()
    config = parse_config(tomllib.loads(SITE.format(data=data, host=host, port=bus_port, api=api, old1=OLD1,
                                                    old2=OLD2, new=NEW)), source="noon.toml")
    clock = utc(sim)
    with TokenStore(data) as tokens:
        viewer = tokens.create("wall", "viewer", clock())[1]
    rounds: list[Any] = []
    try:
        with SqliteStore(data) as store:
            node = build_node(config, store, clock=clock, on_round=rounds.append)
            stop = asyncio.Event()
            task = asyncio.create_task(node.run(stop))
            try:
                # one round of each poll at start, then nothing for an hour: the figures hold still
                for _ in range(400):
                    if len(rounds) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert len(rounds) == 2
                made = [a for r in rounds for a in r.attempts]
                for _ in range(200):  # the writer flushes every 100 ms
                    if len(store.attempts()) == len(made):
                        break
                    await asyncio.sleep(0.05)
                assert len(store.attempts()) == len(made)
                outcomes = sorted((a.meter, a.item, a.outcome) for a in made)
                # today's freeze from the new meter: "no such record yet"; everything else answered
                assert {(m, o) for m, _, o in outcomes} == {(OLD1, "ok"), (OLD2, "ok"), (NEW, "ok"),
                                                            (NEW, "no_record")}, outcomes

                metrics = await asyncio.to_thread(get, api, "/metrics", viewer)
                overview = await asyncio.to_thread(get, api, "/api/v1/overview", viewer)
                served = await asyncio.to_thread(get, api, "/api/v1/quality", viewer)
                # meterd quality, as the operator runs it beside the daemon
                args = argparse.Namespace(date=None, area=None, config=None, data_dir=str(data), threshold=97.0,
                                          recompute=False, meters="all", json=True)
                assert await asyncio.to_thread(quality_cli.run, args, clock=clock) == 0
            finally:
                stop.set()
                await task
    finally:
        await running.close()

    report = json.loads(capsys.readouterr().out)
    total = report["total"]
    assert report["day"] == "2026-03-04"
    assert total["success_rate"] == 1.0 and total["data_rate"] == 1.0 and total["online_rate"] >= 0.97
    assert total["flags"] == [] and not [r for r in report["meters"] + report["channels"] + report["areas"]
                                         if r["below"]]
    assert (total["attempts"], total["ok"], total["no_record"], total["failed"]) == (
        len(made), sum(o == "ok" for *_, o in outcomes), sum(o == "no_record" for *_, o in outcomes), 0)
    # the area column is the topology's area; the new meter is in no area ("-"), not in its group
    assert {r["key"]: r["area"] for r in report["meters"]} == {OLD1: "TA-01", OLD2: "TA-01", NEW: "-"}
    assert sorted(r["key"] for r in report["areas"]) == ["-", "TA-01"]

    # /metrics counts the same attempts by the same outcomes
    assert outcome_counts(metrics) == {"ok": total["ok"], "no_record": total["no_record"]}
    # the dashboard's numbers: the overview and the quality report it draws
    collection = overview["collection"]
    assert (collection["attempts"], collection["successes"], collection["no_record"], collection["failed"]) == (
        total["attempts"], total["ok"], total["no_record"], 0)
    assert collection["success_rate"] == total["success_rate"] == 1.0
    assert overview["meters_with_data_today"] == total["meters_with_data"] == 3
    assert {k: served["total"][k] for k in ("attempts", "ok", "no_record", "failed", "success_rate", "data_rate")} \
        == {k: total[k] for k in ("attempts", "ok", "no_record", "failed", "success_rate", "data_rate")}
    assert served["total"]["flags"] == [] and served["channels"][0]["online_rate"] >= 0.97
    # the online rate is over the time since the daemon's first round, not since midnight
    (bus1,) = report["channels"]
    assert 0 < bus1["span_seconds"] < 600 and bus1["online_seconds"] <= bus1["span_seconds"]
