"""Back to back over real TCP: a concentrator's own events reach meterd's anomaly store.

The daemon polls a simulated concentrator (meterd.simulators.concentrator) that collects its meters
every simulated minute (the clock runs 60x).  An event the master does not decode (ERC99) is stored
raw; a meter that stops answering the terminal's RS-485 reading raises ERC31, stored as anomaly
``terminal.erc31`` of that meter with the record's fields, and closed when the meter answers again
and the terminal reports so.  ``meterd anomalies`` and GET /api/v1/anomalies (a real server over the
same store) show them.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from test_api import serve

from conftest import free_port
from meterd.api import TokenStore, create_app
from meterd.api.tokens import Role
from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.protocols.gdw1376.events import EventRecord
from meterd.simulators.concentrator import concentrator_layout, run_concentrator_fleet
from meterd.storage.anomalies import AnomalyStore, Event
from meterd.storage.sqlite import SqliteStore

START = datetime(2026, 6, 2, 10, 0, 30)


def config_text(port: int, data_dir, meters: list[tuple[str, int]], key: str) -> str:
    text = f"""
[store]
data_dir = "{data_dir}"
flush_interval = "100ms"

[listeners.gw]
protocol = "gdw1376"
host = "127.0.0.1"
port = {port}

[channels.c1]
gdw1376 = {{ listener = "gw", terminal = "{key}" }}
response_timeout = "2s"
retries = 0

[[polls]]
name = "realtime"
interval = "300ms"
quantities = ["energy.active.import.total"]
"""
    return text + "".join(f'\n[[meters]]\naddress = "{a}"\nchannel = "c1"\npn = {pn}\n' for a, pn in meters)


def api_anomalies(config) -> list[dict]:
    """GET /api/v1/anomalies?state=all from a real server over the site's stores, as a viewer."""
    now = datetime.now(UTC)
    with TokenStore(config.store.data_dir) as tokens:
        _, secret = tokens.create("viewer-user", Role.VIEWER, now)
    with serve(create_app(config.store.data_dir, clock=lambda: now, config=config)) as base:
        req = urllib.request.Request(base + "/api/v1/anomalies?state=all",
                                     headers={"Authorization": f"Bearer {secret}", "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as answer:
            docs: list[dict] = json.loads(answer.read())
    return docs


async def wait_for(store: AnomalyStore, found: Callable[[list[Event]], bool], seconds: float = 10.0) -> list[Event]:
    events: list[Event] = []
    for _ in range(int(seconds / 0.05)):
        events = await asyncio.to_thread(store.events)
        if found(events):
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"not found in time; the store has {[(e.meter, e.kind.value, e.closed) for e in events]}")


async def test_terminal_events_become_anomalies(tmp_path, run_meterd):
    port = free_port()
    layout = concentrator_layout(1, 3)
    (key, meters), = layout.items()
    text = config_text(port, tmp_path / "data", meters, key)
    (tmp_path / "site.toml").write_text(text)
    config = parse_config(tomllib.loads(text), "site.toml")
    silent = meters[1][0]
    with SqliteStore(config.store.data_dir) as store, AnomalyStore(config.store.state) as anomalies:
        daemon = Daemon(config, store, clock=lambda: datetime.now(UTC))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        fleet = await run_concentrator_fleet(1, 3, "127.0.0.1", port, start=START, speed=60.0,
                                             collect_interval=timedelta(minutes=1), tick=0.1, heartbeat=5.0,
                                             reconnect_delay=0.2)
        sim = fleet.concentrator(key)
        try:
            assert await fleet.wait_logged_in(5.0)
            # a record meterd does not decode: stored with its raw bytes, under the terminal
            sim.terminal.record_event(EventRecord(99, b"\x01\xab"))
            events = await wait_for(anomalies, lambda es: any(e.kind.value == "terminal.erc99" for e in es))
            (raw,) = [e for e in events if e.kind.value == "terminal.erc99"]
            assert raw.meter == key and "01 AB" in raw.detail
            assert {"quantity": "erc99.raw", "value": "01 AB"}.items() <= raw.evidence[-1].items()
            # a meter stops answering the terminal: ERC31 began -> an open anomaly of that meter
            sim.terminal.bus.meter(silent).power_down(fleet.clock())
            events = await wait_for(anomalies, lambda es: any(e.kind.value == "terminal.erc31" for e in es))
            (erc31,) = [e for e in events if e.kind.value == "terminal.erc31"]
            assert erc31.meter == silent and erc31.closed is None and erc31.severity.value == "warning"
            assert f"p{meters[1][1]} (meter {silent})" in erc31.detail and "does not answer" in erc31.detail
            fields = {e["quantity"]: e["value"] for e in erc31.evidence}
            assert fields["erc31.state"] == "began" and fields["erc31.energy.active.import.total"] != "-"
            # it answers again: ERC31 ended -> the event closes
            sim.terminal.bus.meter(silent).power_up(fleet.clock())
            await wait_for(anomalies, lambda es: any(e.kind.value == "terminal.erc31" and e.closed for e in es))
            assert daemon.runners[0].channel.name == "c1"  # the channel kept going throughout
        finally:
            stop.set()
            await task
            await fleet.close()
    p = run_meterd("anomalies", "-c", str(tmp_path / "site.toml"), "--state", "all", "--json")
    assert p.returncode == 0, p.stderr
    shown = {(e["meter"], e["kind"]) for e in json.loads(p.stdout)}
    assert {(silent, "terminal.erc31"), (key, "terminal.erc99")} <= shown
    p = run_meterd("anomalies", "-c", str(tmp_path / "site.toml"), "--kind", "terminal.erc31", "--state", "all")
    assert p.returncode == 0, p.stderr
    assert "terminal.erc31" in p.stdout and silent in p.stdout
    # GET /api/v1/anomalies: the same events, through a real server
    docs = await asyncio.to_thread(api_anomalies, config)
    by = {(d["meter"], d["kind"]): d for d in docs}
    assert by[(silent, "terminal.erc31")]["closed"] is not None and by[(key, "terminal.erc99")]["closed"] is None
    assert {"quantity": "erc99.raw", "value": "01 AB"}.items() <= by[(key, "terminal.erc99")]["evidence"][-1].items()


async def test_general_events_are_found_by_their_counter_and_read(tmp_path):
    """A terminal that classes ERC31 as a general event (no ACD): the master reads the counters
    (AFN 0C F7) now and then and the new general records (AFN 0E F2)."""
    port = free_port()
    (key, meters), = concentrator_layout(1, 2).items()
    text = config_text(port, tmp_path / "data", meters, key)
    config = parse_config(tomllib.loads(text), "site.toml")
    silent = meters[0][0]
    with SqliteStore(config.store.data_dir) as store, AnomalyStore(config.store.state) as anomalies:
        daemon = Daemon(config, store, clock=lambda: datetime.now(UTC))
        daemon.runners[0].channel.general_every = 0.3  # type: ignore[attr-defined]
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        fleet = await run_concentrator_fleet(1, 2, "127.0.0.1", port, start=START, speed=60.0,
                                             collect_interval=timedelta(minutes=1), tick=0.1, heartbeat=5.0,
                                             reconnect_delay=0.2)
        sim = fleet.concentrator(key)
        sim.terminal.general_ercs = frozenset({31})
        try:
            assert await fleet.wait_logged_in(5.0)
            sim.terminal.bus.meter(silent).power_down(fleet.clock())
            events = await wait_for(anomalies, lambda es: any(e.kind.value == "terminal.erc31" for e in es))
            assert [e.meter for e in events if e.kind.value == "terminal.erc31"] == [silent]
            assert sim.terminal.events(general=True) and not sim.terminal.events_waiting  # no ACD for it
        finally:
            stop.set()
            await task
            await fleet.close()
