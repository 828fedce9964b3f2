"""The master side of Q/GDW 1376.1 over real TCP: terminals log in to the listener, heart-beat, go
offline when silent, are refused when unknown and replaced when they log in again; the daemon
polls the meters behind them (AFN 0C F129/F25, 0D F161, the rest relayed by AFN 10), downloads
the meter archive, turns ERC14 into power-down reports and sends relay commands through them."""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from conftest import free_port
from gdw_fake import FakeTerminal, archive_entry, link_frame
from meterd.clock import CST
from meterd.collector.daemon import Daemon, compile_plan, describe_plan
from meterd.collector.gdw1376 import GdwListener
from meterd.config.loader import parse_config
from meterd.errors import ConfigError
from meterd.protocols.gdw1376.events import PowerOnOff
from meterd.protocols.gdw1376.frame import Afn, EventCounter
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.storage.sqlite import SqliteStore

T1, T2 = "4401-0001", "4401-0002"


async def wait_for(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


# --- the listener -----------------------------------------------------------------------------------


async def test_login_is_confirmed_heartbeats_too_and_silence_takes_it_offline():
    listener = GdwListener("127.0.0.1", 0, known={T1: "c1"}, heartbeat_timeout=0.6, check_interval=0.05)
    logins: list[str] = []
    listener.on_login = logins.append
    async with listener:
        term = FakeTerminal(T1, "127.0.0.1", listener.bound_port, {})
        await term.connect()
        await term.wait_confirmed(1)
        assert term.confirmed[0].afn == Afn.CONFIRM and term.confirmed[0].units[0].fns == (1,)
        assert term.confirmed[0].control == 0x0B  # the master's answer to a link frame
        assert listener.is_online(T1) and logins == ["c1"]
        await term.send_link(3)
        await term.wait_confirmed(2)
        status = listener.status()["terminals"][T1]
        assert status["heartbeats"] == 1 and status["logins"] == 1 and status["state"] == "online"
        await wait_for(lambda: not listener.is_online(T1))  # silent past 0.6 s
        status = listener.status()["terminals"][T1]
        assert status["heartbeat_timeouts"] == 1 and "no heartbeat" in status["offline_reason"]
        await term.close()


async def test_unknown_terminal_is_refused_and_frames_before_login_are_dropped():
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}, registration_timeout=0.5) as listener:
        stranger = FakeTerminal("4401-00FF", "127.0.0.1", listener.bound_port, {})
        await stranger.connect()
        await wait_for(lambda: listener.rejected["unknown_id"] == 1)
        assert listener.unknown_ids == {"4401-00FF": 1} and not stranger.confirmed
        early = FakeTerminal(T1, "127.0.0.1", listener.bound_port, {})
        await early.connect(login=False)
        await early.send_link(3)  # a heartbeat before any login
        await wait_for(lambda: listener.rejected["unregistered_data"] == 1)
        await wait_for(lambda: listener.rejected["registration_timeout"] == 1)
        assert not listener.is_online(T1)
        await stranger.close()
        await early.close()


async def test_a_second_login_replaces_the_first_connection():
    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        first = FakeTerminal(T1, "127.0.0.1", listener.bound_port, {})
        await first.connect()
        await first.wait_confirmed(1)
        second = FakeTerminal(T1, "127.0.0.1", listener.bound_port, {})
        await second.connect()
        await second.wait_confirmed(1)
        await wait_for(lambda: first.task is not None and first.task.done())  # the old connection was dropped
        status = listener.status()["terminals"][T1]
        assert status["replaced"] == 1 and status["logins"] == 2 and status["state"] == "online"
        assert listener.status()["online"] == 1
        await second.send_link(2)  # logout
        await wait_for(lambda: not listener.is_online(T1))
        assert listener.status()["terminals"][T1]["offline_reason"] == "logged out (AFN 02 F2)"
        await first.close()
        await second.close()


def test_a_login_is_confirmed_under_uvloop():
    # uvloop's transports are no subclasses of asyncio.Transport (connection_made asserted they were)
    uvloop = pytest.importorskip("uvloop")

    async def login():
        async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
            term = FakeTerminal(T1, "127.0.0.1", listener.bound_port, {})
            await term.connect()
            await term.wait_confirmed(1)
            status = listener.status()["terminals"][T1]
            await term.close()
            return term.confirmed[0].units[0].fns, status

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        fns, status = runner.run(login())
    assert fns == (1,) and status["state"] == "online" and status["logins"] == 1
    assert status["peer"].startswith("127.0.0.1:")


def test_the_link_frames_are_the_standards():
    # login of terminal 4401-0001 (A1 0144, A2 0001), C = C9H, AFN 02, SEQ = 71H (FIR FIN CON, seq 1), p0 F1
    assert link_frame(T1, 1, 1).hex(" ").upper() == "68 32 00 32 00 68 C9 01 44 01 00 00 02 71 00 00 01 00 83 16"


# --- the daemon ---------------------------------------------------------------------------------------

PW_HEX = "00112233445566778899AABBCCDDEEFF"


def config_text(port: int, data_dir, *, password_secret: str | None = "GW_PW", polls: str = "") -> str:
    secret = f', password_secret = "{password_secret}"' if password_secret else ""
    parts = [f"""
[store]
data_dir = "{data_dir}"
flush_interval = "100ms"

[listeners.gw]
protocol = "gdw1376"
host = "127.0.0.1"
port = {port}
heartbeat_timeout = "30s"
"""]
    for t, term in enumerate((T1, T2), 1):
        parts.append(f"""
[channels.c{t}]
gdw1376 = {{ listener = "gw", terminal = "{term}"{secret} }}
response_timeout = "1s"
retries = 0
""")
        for pn in range(1, 5):
            parts.append(f"""
[[meters]]
address = "{t}00{pn}"
channel = "c{t}"
pn = {pn}
""")
    parts.append(polls or """
[[polls]]
name = "realtime"
interval = "300ms"
quantities = ["energy.active.import.total", "energy.active.import.rate1", "voltage.a", "power.active.total",
              "frozen.daily.energy.active.import.total", "meter.address"]
""")
    return "".join(parts)


def meters_of(t: int) -> dict[int, str]:
    return {pn: f"{t * 1000 + pn:012d}" for pn in range(1, 5)}


async def test_daemon_polls_two_terminals_of_four_meters(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_PW", PW_HEX)
    port = free_port()
    config = parse_config(tomllib.loads(config_text(port, tmp_path)), "gw.toml")
    assert "channel c1 (gdw1376 concentrator 4401-0001 via listener gw)" in describe_plan(compile_plan(config))
    readings = []
    outcomes = []

    def on_round(result):
        readings.extend(result.readings)
        outcomes.extend((a.meter, a.item, a.outcome) for a in result.attempts)

    terms = []
    for t, key in ((1, T1), (2, T2)):
        bus = Dlt645Bus([MeterModel(a, start=datetime(2026, 1, 15, 10, 0)) for a in meters_of(t).values()])
        term = FakeTerminal(key, "127.0.0.1", port, meters_of(t), password=bytes.fromhex(PW_HEX), bus=bus)
        term.archive = {pn: archive_entry(pn, a) for pn, a in meters_of(t).items()}  # already right
        terms.append(term)
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, on_round=on_round, clock=lambda: datetime.now(UTC))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.2)
        for term in terms:
            await term.connect()
        try:
            await wait_for(lambda: {(r.meter, r.quantity) for r in readings} >= {
                (a, q) for t in (1, 2) for a in meters_of(t).values()
                for q in ("energy.active.import.total", "frozen.daily.energy.active.import.total", "meter.address")})
        finally:
            stop.set()
            await task
            for term in terms:
                await term.close()
        status = daemon.listener_status()["gw"]
        figures = {f.terminal: f for f in daemon.terminal_figures()}
    by = {(r.meter, r.quantity): r for r in readings}
    m = f"{1002:012d}"
    assert by[(m, "energy.active.import.total")].value == 1020
    assert by[(m, "energy.active.import.rate1")].value == 102
    assert by[(m, "energy.active.import.total")].timestamp == datetime(2026, 1, 15, 10, 0, tzinfo=CST)
    assert by[(m, "voltage.a")].value == Decimal("220.1") and by[(m, "voltage.a")].unit == "V"
    assert by[(m, "power.active.total")].value == Decimal("1.5")
    frozen = by[(m, "frozen.daily.energy.active.import.total")]
    assert frozen.value == 1015 and frozen.timestamp == datetime(2026, 1, 15, 0, 0, tzinfo=CST)
    assert by[(m, "meter.address")].value == m  # not terminal-kept: relayed to the meter (AFN 10)
    assert {q for (a, q) in by if a == m} == {"energy.active.import.total", "energy.active.import.rate1", "voltage.a",
                                              "power.active.total", "frozen.daily.energy.active.import.total",
                                              "meter.address"}
    items = {item for _, item, outcome in outcomes if outcome == "ok"}
    assert {"0C F129", "0C F25", "0D F161"} <= items and "04000401" in items
    # the 4 meters' F129 and F25 in one AFN 0C request per round: one data unit per (DA, DT) group
    class1 = [msg for msg in terms[0].requests if msg.afn == Afn.CLASS1_DATA and len(msg.units) == 2]
    assert class1 and [(u.pns, u.fns) for u in class1[0].units] == [((1, 2, 3, 4), (25,)), ((1, 2, 3, 4), (129,))]
    forwards = [msg for msg in terms[0].requests if msg.afn == Afn.FORWARD]
    assert forwards and all(msg.pw == bytes.fromhex(PW_HEX) for msg in forwards)
    assert status["protocol"] == "gdw1376" and status["terminals"][T1]["logins"] == 1
    assert figures[T1].kind == "gdw1376"
    # the archive matched: queried, nothing downloaded
    assert any(msg.afn == Afn.QUERY_PARAMETERS for msg in terms[0].requests)
    assert not any(msg.afn == Afn.SET_PARAMETERS for msg in terms[0].requests)


async def test_archive_differences_are_downloaded_logged_and_audited(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GW_PW", PW_HEX)
    port = free_port()
    config = parse_config(tomllib.loads(config_text(port, tmp_path, polls=" ")), "gw.toml")
    audited = []
    term = FakeTerminal(T1, "127.0.0.1", port, meters_of(1), password=bytes.fromhex(PW_HEX))
    term.archive = {1: archive_entry(1, f"{1001:012d}"), 2: archive_entry(2, f"{9999:012d}"),
                    3: archive_entry(3, f"{1003:012d}", baud=9600)}  # pn 2 wrong meter, 3 wrong baud, 4 missing
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, clock=lambda: datetime.now(UTC))
        daemon.audit = lambda action, subject, detail: audited.append((action, subject, detail))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.2)
        await term.connect()
        try:
            await wait_for(lambda: bool(audited))
        finally:
            stop.set()
            await task
            await term.close()
    assert {pn: e.address for pn, e in term.archive.items()} == meters_of(1)
    assert all(e.baud == 2400 and e.protocol == 30 and e.port == 2 for e in term.archive.values())
    action, subject, detail = audited[0]
    assert action == "archive_download" and subject == f"terminal {T1}"
    assert [d["pn"] for d in detail["differences"]] == [2, 3, 4]
    assert "terminal has none" in caplog.text or "terminal has none" in str(detail)
    assert "archive differs at pn 2" in caplog.text


TOPOLOGY = """
[[topology.units]]
name = "TA-001"
kind = "area"

[[topology.points]]
meter = "2001"
unit = "TA-001"
role = "supply"
""" + "".join(f"""
[[topology.points]]
meter = "{1000 + pn}"
unit = "TA-001"
role = "sales"
""" for pn in range(1, 5))


async def test_erc14_power_off_becomes_power_down_readings_and_an_outage(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_PW", PW_HEX)
    port = free_port()
    config = parse_config(tomllib.loads(config_text(port, tmp_path) + TOPOLOGY), "gw.toml")
    got = []
    term = FakeTerminal(T1, "127.0.0.1", port, meters_of(1), password=bytes.fromhex(PW_HEX))
    term.archive = {pn: archive_entry(pn, a) for pn, a in meters_of(1).items()}
    term.events = [PowerOnOff(datetime(2026, 1, 15, 9, 58), None, 3)]
    term.ec = EventCounter(1, 0)  # one important event waiting: ACD set in every reply
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, clock=lambda: datetime.now(UTC))
        daemon.subscribe(got.extend)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.2)
        await term.connect()
        try:
            await wait_for(lambda: any(r.quantity == "event.power_down.start" for r in got))
            await asyncio.sleep(0.8)  # more rounds: the event is read once
        finally:
            stop.set()
            await task
            await term.close()
    downs = [r for r in got if r.quantity == "event.power_down.start"]
    assert sorted(r.meter for r in downs) == sorted(meters_of(1).values())
    assert all(r.value == datetime(2026, 1, 15, 9, 58, tzinfo=CST) for r in downs)
    reads = [msg for msg in term.requests if msg.afn == Afn.CLASS3_DATA]
    assert len(reads) == 1 and reads[0].units[0].values[0].start == 0 and reads[0].units[0].values[0].end == 1
    # outage detection takes them as power-down reports: the area is out although its meters were read
    # just now (the terminal keeps their last values) -- before, a report counted for nothing here
    from meterd.analytics.runtime import AnalyticsRuntime

    now = datetime.now(UTC)
    runtime = AnalyticsRuntime(config.analytics, meters=[m.address for m in config.meters], where=config.store.state,
                               clock=lambda: now)
    runtime.observe(got)
    # the terminal's clock here is in January: the readings as if taken just now (the meters are not silent)
    runtime.observe([replace(r, quantity="energy.active.import.total", timestamp=now, value=Decimal(1)) for r in downs])
    runtime.check(now)
    (outage,) = runtime.outages.outages(open_only=True)
    assert outage.unit == "TA-001" and outage.meters == tuple(sorted(meters_of(1).values()))
    runtime.observe([replace(r, quantity="event.power_down.end", value=r.value + timedelta(minutes=3)) for r in downs])
    runtime.check(now + timedelta(minutes=1))
    assert runtime.outages.outages(open_only=True) == []  # power back: the outage closes


def test_config_errors_name_the_key(tmp_path):
    text = config_text(9000, tmp_path) + """
[[meters]]
address = "77"
channel = "c1"

[[meters]]
address = "78"
channel = "c1"
pn = 1

[channels.bad]
gdw1376 = { listener = "nowhere", terminal = "44-1" }
"""
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text), "gw.toml")
    problems = "\n".join(err.value.problems)
    assert "meters[8].pn: missing" in problems
    assert "meters[9].pn: pn 1 is already meters[0] on channel \"c1\"" in problems
    assert "channels.bad.gdw1376.terminal:" in problems and "RRRR-TTTT" in problems


def test_a_password_secret_that_is_not_set_stops_start_up(tmp_path, monkeypatch):
    monkeypatch.delenv("GW_PW", raising=False)
    config = parse_config(tomllib.loads(config_text(9000, tmp_path)), "gw.toml")
    with SqliteStore(config.store.data_dir) as store, pytest.raises(ConfigError) as err:
        Daemon(config, store)
    assert "channels.c1.gdw1376.password_secret: environment variable GW_PW" in str(err.value)
    monkeypatch.setenv("GW_PW", "1234")
    with SqliteStore(config.store.data_dir) as store, pytest.raises(ConfigError) as err:
        Daemon(config, store)
    assert "16 bytes as 32 hex digits" in str(err.value)


def test_the_node_audits_terminal_changes_in_the_audit_log(tmp_path, monkeypatch):
    from meterd.app import build_node
    from meterd.control.state import ControlStore

    monkeypatch.setenv("GW_PW", PW_HEX)
    config = parse_config(tomllib.loads(config_text(free_port(), tmp_path)), "gw.toml")
    with SqliteStore(config.store.data_dir) as store:
        node = build_node(config, store)
        assert node.collector.audit is not None
        node.collector.audit("archive_download", f"terminal {T1}", {"channel": "c1", "differences": [{"pn": 2}]})
    with ControlStore(config.store.state) as control:
        (row,) = control.audit_log(subject=f"terminal {T1}")
    assert (row.actor, row.action, row.detail["differences"]) == ("daemon", "archive_download", [{"pn": 2}])


def test_the_api_lists_1376_terminals(tmp_path):
    from meterd.api.app import Api

    config = parse_config(tomllib.loads(config_text(free_port(), tmp_path, password_secret=None)), "gw.toml")
    api = Api(tmp_path, lambda: datetime.now(UTC), config, None, None)
    terminals = {t["id"]: t for t in api._terminals()}
    assert terminals[T1]["kind"] == "gdw1376" and terminals[T1]["channel"] == "c1" and terminals[T1]["meters"] == 4


async def test_a_daily_frozen_task_reads_f161_from_the_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_PW", PW_HEX)
    port = free_port()
    tasks = """
[[tasks]]
name = "frozen"
kind = "daily_frozen"
quantities = ["frozen.daily.energy.active.import.total"]
every = "1s"
"""
    config = parse_config(tomllib.loads(config_text(port, tmp_path, polls=tasks)), "gw.toml")
    got = []
    term = FakeTerminal(T1, "127.0.0.1", port, meters_of(1), password=bytes.fromhex(PW_HEX))
    term.archive = {pn: archive_entry(pn, a) for pn, a in meters_of(1).items()}
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, clock=lambda: datetime.now(UTC))
        daemon.subscribe(got.extend)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.2)
        await term.connect()
        try:
            await wait_for(lambda: {r.meter for r in got} >= set(meters_of(1).values()), timeout=8.0)
        finally:
            stop.set()
            await task
            await term.close()
    assert {r.quantity for r in got} == {"frozen.daily.energy.active.import.total"}
    assert all(r.timestamp == datetime(2026, 1, 15, 0, 0, tzinfo=CST) for r in got)
    asked = [m for m in term.requests if m.afn == Afn.CLASS2_DATA]
    assert asked and asked[0].units[0].values[0] == date(2026, 1, 14)  # Td_d: the day before the terminal's date
    assert not any(m.afn == Afn.FORWARD for m in term.requests)  # nothing relayed: the terminal keeps the freeze


async def test_a_reply_larger_than_4_kib_reaches_the_channel():
    # 32 meters x F129 with 30 rates: one 5.2 KB reply arriving in two reads (the listener once dropped
    # an incomplete frame past 4 KiB)
    from meterd.collector.channel import Timing
    from meterd.collector.gdw1376 import GdwChannel
    from meterd.protocols.gdw1376.frame import parse_terminal_address
    from meterd.protocols.gdw1376.messages import DataUnit

    async with GdwListener("127.0.0.1", 0, known={T1: "c1"}) as listener:
        term = FakeTerminal(T1, "127.0.0.1", listener.bound_port, {}, rates=30, split_at=4500)
        await term.connect()
        await term.wait_confirmed(1)
        channel = GdwChannel("c1", listener.transport(T1), parse_terminal_address(T1), pns={},
                             timing=Timing(2.0, 0.5), retries=0)
        units = [DataUnit(tuple(range(g * 8 + 1, g * 8 + 9)), (129,)) for g in range(4)]
        reply = await channel.request(Afn.CLASS1_DATA, units)
        values = {pn: v for pn, fn, v in reply.items()}
        assert len(values) == 32 and values[32].rates == 30 and values[32].total == 1320
        await term.close()


async def test_events_the_terminal_never_sends_are_skipped_after_a_few_tries(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_PW", PW_HEX)
    port = free_port()
    config = parse_config(tomllib.loads(config_text(port, tmp_path).replace('response_timeout = "1s"',
                                                                          'response_timeout = "200ms"')), "gw.toml")
    got = []
    term = FakeTerminal(T1, "127.0.0.1", port, meters_of(1), password=bytes.fromhex(PW_HEX))
    term.archive = {pn: archive_entry(pn, a) for pn, a in meters_of(1).items()}
    term.ec = EventCounter(1, 0)  # an event waiting that the terminal never answers for
    answer = term.answer
    term.answer = lambda msg: None if msg.afn == Afn.CLASS3_DATA else answer(msg)  # type: ignore[method-assign]
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, clock=lambda: datetime.now(UTC))
        daemon.subscribe(got.extend)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.2)
        await term.connect()
        try:
            await wait_for(lambda: len([m for m in term.requests if m.afn == Afn.CLASS3_DATA]) >= 3, 15.0)
            before = len(got)
            await asyncio.sleep(1.5)  # rounds go on, and the events are not asked for again
        finally:
            stop.set()
            await task
            await term.close()
    assert len([m for m in term.requests if m.afn == Afn.CLASS3_DATA]) == 3
    assert len(got) > before  # the channel kept polling
