"""Building the daemon for a big fleet (issue 21): the shortcuts that make start-up fast give
what the plain computations give, and every config check still finds and names its problem.

The shortcuts: meters indexed by channel once (``Config.meters_on``), the plan compiled channel by
channel with what a poll asks resolved once per kind of meter, plausibility bounds shared by alike
meters, a poll's reach checked once per kind of meter, secrets and nesting checked without
walking every scalar.  Each is compared here with the straightforward way on a mixed config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from meterd.collector.daemon import compile_plan, meter_reads, target
from meterd.collector.door import Door, bounds
from meterd.config import load_config, parse_config
from meterd.config.loader import check_depth
from meterd.errors import ConfigError
from mixed_site import STORE_BUS_AND_GATEWAY, write_my_map

# three channels, meters of every protocol interleaved across them in the file, two groups, a
# poll for everyone, one for a group, one for a group plus listed meters, one for listed meters
FLEET = STORE_BUS_AND_GATEWAY + """
[channels.spare]
tcp = { host = "10.0.0.10", port = 9000 }

[[meters]]
address = "1"
channel = "bus"
group = "homes"

[[meters]]
address = "2"
channel = "gw"
protocol = "modbus"
unit = 1
model = "eastron-sdm630"
group = "shops"

[[meters]]
address = "3"
channel = "bus"
protocol = "dlt645-1997"
group = "shops"

[[meters]]
address = "4"
channel = "gw"
protocol = "modbus"
unit = 2
model = "maps/mine.toml"
ct = 100

[[meters]]
address = "5"
channel = "bus"
ct = "1.0"
group = "homes"

[[meters]]
address = "6"
channel = "gw"
protocol = "modbus"
unit = 3
model = "maps/mine.toml"
group = "homes"

[[meters]]
address = "7"
channel = "bus"
group = "homes"
rated_current = 60
phases = 1

[[meters]]
address = "8"
channel = "bus"
group = "homes"
rated_current = "60.0"
phases = 1

[[meters]]
address = "9"
channel = "gw"
group = "flats"

[[polls]]
name = "all"
interval = "15m"
quantities = ["energy.active.import.total", "voltage.a"]

[[polls]]
name = "homes"
interval = "1m"
groups = ["homes"]
quantities = ["voltage.a"]

[[polls]]
name = "shops-and-two"
interval = "5m"
groups = ["shops"]
meters = ["7", "000000000004"]
quantities = ["energy.active.import.total"]

[[polls]]
name = "listed"
interval = "1h"
meters = ["8"]
items = ["00010000"]
"""


def load(tmp_path: Path, text: str = FLEET):
    write_my_map(tmp_path)
    path = tmp_path / "site.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_meters_on_a_channel_are_those_a_search_in_order_finds(tmp_path: Path) -> None:
    config = load(tmp_path)
    for name in ("bus", "gw", "spare", "no-such-channel"):
        assert config.meters_on(name) == tuple(m for m in config.meters if m.channel == name)
    assert [c.name for c in config.channels] == ["bus", "gw", "spare"]
    assert all(config.channel(c.name) is c for c in config.channels)
    with pytest.raises(KeyError):
        config.channel("no-such-channel")
    # a config made from another one indexes its own meters
    fewer = dataclasses.replace(config, meters=config.meters[:2])
    assert [m.address for m in fewer.meters_on("bus")] == ["000000000001"]
    assert config.meters_on("bus") != fewer.meters_on("bus")
    assert fewer == dataclasses.replace(config, meters=config.meters[:2])  # the index is not compared


def test_the_plan_is_what_every_poll_asks_of_every_meter_channel_by_channel(tmp_path: Path) -> None:
    config = load(tmp_path)
    plain = []  # the plan as it was first written: every meter of every poll, per channel
    for ch in config.channels:
        polls = []
        for poll in config.polls:
            meters = tuple((target(m), meter_reads(m, poll)) for m in config.meters
                           if poll.selects(m) and m.channel == ch.name)
            if meters:
                polls.append((poll, meters))
        plain.append((ch, polls))
    plans = compile_plan(config)
    assert [(p.channel, [(pp.poll, pp.meters) for pp in p.polls]) for p in plans] == plain
    by_name = {p.channel.name: {pp.poll.name: pp.meters for pp in p.polls} for p in plans}
    assert set(by_name["bus"]) == {"all", "homes", "shops-and-two", "listed"}
    assert [t.address[-1] for t, _ in by_name["bus"]["shops-and-two"]] == ["3", "7"]
    assert [t.address[-1] for t, _ in by_name["gw"]["shops-and-two"]] == ["2", "4"]
    assert by_name["spare"] == {}
    # alike meters share what they are asked (one object), a meter keeps one target across polls
    everyone = dict(by_name["bus"]["all"])
    reads = {t.address[-1]: r for t, r in by_name["bus"]["all"]}
    assert reads["1"] is reads["5"] is reads["7"] and reads["3"] is not reads["1"]
    gw = {t.address[-1]: r for t, r in by_name["gw"]["all"]}
    assert gw["4"] is gw["6"] and gw["2"] is not gw["4"]
    homes = {t.address[-1]: t for t, _ in by_name["bus"]["homes"]}
    assert homes["1"] is next(t for t in everyone if t.address.endswith("1"))


def test_a_meter_the_plan_cannot_ask_is_named(tmp_path: Path) -> None:
    config = load(tmp_path)
    poll = dataclasses.replace(config.polls[0], quantities=("frequency",))
    broken = dataclasses.replace(config, polls=(poll,))  # past the loader, which would refuse it
    with pytest.raises(ConfigError, match=r"all: meter 000000000003 \(dlt645-1997\) has no identifier for frequency"):
        compile_plan(broken)


def test_alike_meters_share_their_bounds_and_each_meter_has_its_own_values(tmp_path: Path) -> None:
    config = load(tmp_path)
    door = Door(config.meters)
    for m in config.meters:
        assert door.gate.bounds[m.address] == bounds(m), m.address
    by = {m.address[-1]: door.gate.bounds[m.address] for m in config.meters}
    assert by["4"] is not by["6"]  # ct 100 and ct 1 on one map
    assert by["4"].max_kw == 100 * by["6"].max_kw
    assert by["1"] is not by["5"]  # ct 1 and ct "1.0": equal, but written differently
    assert str(by["5"].step) == str(bounds(config.meters[4]).step)
    assert by["7"] is not by["1"] and by["7"].max_kw == by["8"].max_kw  # own ratings, equal
    assert by["1"] is door.gate.bounds["000000000001"]


def test_every_meter_a_poll_cannot_reach_is_named_not_only_the_first_of_its_kind(tmp_path: Path) -> None:
    text = FLEET.replace('quantities = ["energy.active.import.total", "voltage.a"]',
                         'quantities = ["energy.active.import.total", "frequency"]')
    found = problems_of(tmp_path, text)
    named = sorted(p.split("meters[")[1].split("]")[0] for p in found if "has no" in p)
    assert named == ["2", "3", "5"], found  # 2007 meters have 02800002, the SDM630 a register
    assert any("polls[0].quantities: meters[3] (000000000004, modbus model mine) has no register for frequency" in p
               for p in found)
    assert any("polls[0].quantities: meters[5] (000000000006, modbus model mine) has no register for frequency" in p
               for p in found)
    assert any("meters[2] (000000000003, dlt645-1997) has no identifier for frequency" in p for p in found)
    found = problems_of(tmp_path, FLEET.replace('items = ["00010000"]', 'items_1997 = ["9010"]'))
    assert any("polls[3]: reads nothing from meters[7] (000000000008, dlt645-2007)" in p for p in found), found


def test_a_poll_of_a_group_nobody_is_in_or_of_no_meters_is_still_refused(tmp_path: Path) -> None:
    found = problems_of(tmp_path, FLEET.replace('groups = ["shops"]', 'groups = ["shop"]'))
    assert any('polls[2].groups: no meter is in group "shop" (did you mean "shops"?)' in p for p in found), found
    empty = FLEET.split("[[meters]]")[0] + '[[polls]]\nname = "p"\ninterval = 60\nquantities = ["voltage.a"]\n'
    found = problems_of(tmp_path, empty)
    assert any("polls[0]: selects no meters" in p for p in found), found
    # a meter whose group is not a string: its own problem, and the poll check does not trip on it
    found = problems_of(tmp_path, FLEET.replace('address = "1"\nchannel = "bus"\ngroup = "homes"',
                                                'address = "1"\nchannel = "bus"\ngroup = ["homes"]'))
    assert any("meters[0].group: must be a string" in p for p in found), found


@pytest.mark.parametrize("address, expected", [
    ("1", "000000000001"), ("000000001234", "000000001234"), (42, "000000000042"), (" 9 ", "000000000009"),
    ("123456789012", "123456789012"),
])
def test_short_and_full_addresses_normalise_as_before(tmp_path: Path, address, expected) -> None:
    shown = f'"{address}"' if isinstance(address, str) else str(address)
    config = load(tmp_path, FLEET.replace('address = "1"\n', f"address = {shown}\n", 1))
    assert config.meters[0].address == expected


@pytest.mark.parametrize("address", ["1234567890123", "１２", "12a", "AAAAAAAAAAAA", "999999999999", "-1"])
def test_addresses_that_are_not_meters_are_refused_naming_the_key(tmp_path: Path, address) -> None:
    found = problems_of(tmp_path, FLEET.replace('address = "1"\n', f'address = "{address}"\n', 1))
    assert any(p.startswith(f"{tmp_path / 'site.toml'}: meters[0].address: ") for p in found), found


def test_a_secret_deep_in_lists_of_tables_is_still_found(tmp_path: Path) -> None:
    data = {"store": {"data_dir": "d"}, "a": [{"b": [[{"Token": "x"}], 1]}], "secret": 3}
    with pytest.raises(ConfigError) as info:
        parse_config(data, "s.toml")
    problems = info.value.problems
    assert any(p.startswith("s.toml: a[0].b[0][0].Token: a secret must not be written in the config") for p in problems)
    assert any(p.startswith("s.toml: secret: a secret must not be written") for p in problems)


def test_the_depth_check_names_the_first_container_too_deep_and_ignores_scalars() -> None:
    check_depth({"a": [[1, 2, {"b": 3}]], "c": Decimal(1)}, "s.toml", limit=3)
    with pytest.raises(ConfigError, match=r"s\.toml: a\[0\]\[2\]: nested more than 2 levels deep"):
        check_depth({"a": [[1, 2, {"b": 3}]]}, "s.toml", limit=2)
    check_depth([], "s.toml", limit=0)


# --- the TOML parser: tomli where it reads TOML 1.0, tomllib for the rest ----------------------


class _Toml11:
    """A parser that reads what only TOML 1.1 allows (as tomli 2.3+ may)."""

    @staticmethod
    def loads(text: str) -> dict:
        return {}


class _Broken:
    """A fast parser that fails on everything: tomllib must take over."""

    @staticmethod
    def loads(text: str) -> dict:
        raise ValueError("no")


def test_a_parser_that_reads_toml_1_1_is_not_used_and_tomllib_reads_1_0() -> None:
    import tomllib

    from meterd.config import loader

    assert loader._toml_1_0(tomllib)
    assert not loader._toml_1_0(_Toml11)
    if loader.FAST_TOML is not None:
        assert loader._toml_1_0(loader.FAST_TOML)


def test_the_fast_parser_and_tomllib_give_one_config(tmp_path: Path, monkeypatch) -> None:
    import tomllib

    from meterd.config import loader

    examples = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.toml"))
    texts = [p.read_text(encoding="utf-8") for p in examples] + [FLEET]
    if loader.FAST_TOML is not None:  # where tomli is installed it must read what tomllib reads
        for text in texts:
            assert loader.FAST_TOML.loads(text) == tomllib.loads(text)
    fast = load(tmp_path)
    monkeypatch.setattr(loader, "FAST_TOML", None)  # the plain path: tomllib alone
    assert load(tmp_path) == fast
    monkeypatch.setattr(loader, "FAST_TOML", _Broken)  # a fast parser that fails: tomllib reads it
    assert load(tmp_path) == fast


@pytest.mark.parametrize("fast", ["installed", "none", "broken"])
def test_a_broken_file_is_refused_with_tomllibs_message_whichever_parser_is_tried(tmp_path: Path, monkeypatch,
                                                                                fast: str) -> None:
    from meterd.config import loader

    if fast != "installed":
        monkeypatch.setattr(loader, "FAST_TOML", None if fast == "none" else _Broken)
    text = FLEET.replace('name = "listed"', 'name = "listed"\nname = "twice"')
    found = problems_of(tmp_path, text)
    assert len(found) == 1 and "invalid TOML: Cannot overwrite a value" in found[0], found
    assert f"{tmp_path / 'site.toml'}: line " in found[0]
    found = problems_of(tmp_path, FLEET.replace('interval = "1h"', "interval = {a = 1,}"))  # TOML 1.1 only
    assert len(found) == 1 and "invalid TOML: Invalid initial character for a key part" in found[0], found


# --- the task scheduler: each job's meters looked up by channel, not searched for ---------------

TASKS = """
[[tasks]]
name = "rt"
kind = "realtime"
groups = ["homes"]
quantities = ["energy.active.import.total"]
every = "15m"

[[tasks]]
name = "all"
kind = "realtime"
quantities = ["voltage.a"]
every = "1h"

[[tasks]]
name = "df"
kind = "daily_frozen"
groups = ["flats"]

[[tasks]]
name = "rr"
kind = "reread"
"""


def test_the_scheduler_gives_each_job_the_meters_a_search_in_order_gives(tmp_path: Path) -> None:
    from meterd.collector.scheduler import TaskScheduler
    from meterd.collector.tasks import task_reads
    from meterd.storage.sqlite import SqliteStore

    config = load(tmp_path, FLEET + TASKS)
    with SqliteStore(tmp_path / "data") as store:
        sched = TaskScheduler(config.tasks, config.meters, lambda *a: None, store=store)
        routine = [t for t in config.tasks if t.name != "rr"]
        for t in config.tasks:
            if t in routine:  # the plain way: every meter the task covers and can ask something
                plain = [m for m in config.meters if task_reads(t, m) is not None]
            else:  # a re-read: the meters its routine tasks read
                plain = [m for m in config.meters if any(task_reads(r, m) is not None for r in routine)]
            assert sched.meters_of(t.name) == tuple(plain), t.name
            assert sched.channels_of(t.name) == tuple(dict.fromkeys(m.channel for m in plain)), t.name
            for ch in ("bus", "gw", "spare"):
                assert sched.meters_of(t.name, ch) == tuple(m for m in plain if m.channel == ch), (t.name, ch)
            if t in routine:
                for m in plain:
                    assert sched._reads[(t.name, m.address)] == task_reads(t, m)
        assert [m.address[-1] for m in sched.meters_of("rt")] == ["1", "5", "6", "7", "8"]
        assert sched.channels_of("rt") == ("bus", "gw")
        assert sched.channels_of("df") == ("gw",)
        reads = sched.reads_for("all", "gw", datetime(2026, 3, 4, tzinfo=UTC))
        assert list(reads) == ["000000000002", "000000000004", "000000000006", "000000000009"]


async def test_a_task_round_gets_its_channels_meters_in_config_order(tmp_path: Path) -> None:
    from meterd.collector.poll import RoundResult
    from meterd.collector.scheduler import TaskScheduler

    config = load(tmp_path, FLEET + TASKS)
    seen = []

    def run_round(task, meters_by_channel, reads, now):
        seen.append({ch: [m.address[-1] for m in ms] for ch, ms in meters_by_channel.items()})
        return RoundResult(next(iter(meters_by_channel)), now)

    sched = TaskScheduler(config.tasks, config.meters, run_round, store=_NoStore())
    now = datetime(2026, 3, 4, tzinfo=UTC)
    await sched.run_task("rt", "bus", now)
    await sched.run_task("all", "gw", now)
    assert seen == [{"bus": ["1", "5", "7", "8"]}, {"gw": ["2", "4", "6", "9"]}]


class _NoStore:
    def readings(self, *a, **kw):
        return []


# --- the DTU terminal-id check: text told from binary by one regex match -----------------------


def test_dtu_text_check_agrees_with_a_byte_by_byte_test() -> None:
    import random

    from meterd.protocols.terminal.dtu import _is_text

    def plain(data: bytes) -> bool:
        return all(b in (9, 10, 13) or 0x20 <= b < 0x7F for b in data)

    rng = random.Random(21)
    samples = [bytes([b]) for b in range(256)] + [b"", b"DTU00000001", b"DTU0000\x000001", b"\r\n\t ~", "é".encode()]
    samples += [bytes(rng.choice((0, 9, 10, 13, 31, 32, 65, 126, 127, 128, 255)) for _ in range(rng.randrange(1, 30)))
                for _ in range(2000)]
    assert [_is_text(s) for s in samples] == [plain(s) for s in samples]
    assert sum(map(plain, samples)) > 100 and sum(not plain(s) for s in samples) > 100  # both answers were tried


# --- the daemon: channels poll before the meter archive is written ------------------------------


def _held_archive(path: Path, *, fail: bool = False):
    """A real SQLite store whose archive write waits until ``release`` is set (then fails, with
    ``fail``): what a 100,000-row write looks like to the daemon, which must not wait for it."""
    import threading

    from meterd.storage.sqlite import SqliteStore

    class Held(SqliteStore):
        release = threading.Event()
        entered = threading.Event()
        written: tuple = ()

        def upsert_meters(self, meters) -> None:
            self.entered.set()
            assert self.release.wait(20)
            if fail:
                raise OSError("disk full")
            self.written = tuple(meters)
            super().upsert_meters(self.written)

    return Held(path)


async def _bus(requests: list[bytes], closed: asyncio.Event):
    """A TCP bus that records what it is sent and never answers."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(256):
            requests.append(data)
        closed.set()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def _one_bus_config(tmp_path: Path, port: int):
    text = f"""
    [store]
    data_dir = "data"
    [channels.bus]
    tcp = {{ host = "127.0.0.1", port = {port} }}
    response_timeout = "5s"
    [[meters]]
    address = "1"
    channel = "bus"
    [[polls]]
    name = "p"
    interval = "1h"
    quantities = ["energy.active.import.total"]
    """
    path = tmp_path / "site.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path)


@pytest.mark.asyncio
async def test_the_channels_poll_while_the_archive_is_written_and_ready_once_it_is(tmp_path: Path) -> None:
    from meterd.collector.daemon import Daemon

    requests: list[bytes] = []
    closed = asyncio.Event()
    server = await _bus(requests, closed)
    config = _one_bus_config(tmp_path, server.sockets[0].getsockname()[1])
    held = _held_archive(tmp_path / "data")
    daemon = Daemon(config, held)
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run(stop))
    try:
        for _ in range(400):  # the request reaches the bus while the archive write is held
            if requests:
                break
            await asyncio.sleep(0.01)
        assert requests and b"\x68" in requests[0], "no request while the archive was written"
        assert held.entered.is_set() and not held.written
        assert daemon.readiness() is not None  # not ready before the archive is written
        held.release.set()
        for _ in range(400):
            if daemon.readiness() is None:
                break
            await asyncio.sleep(0.01)
        assert daemon.readiness() is None
        assert [m.address for m in held.written] == ["000000000001"]
        assert [m.address for m in held.meters()] == ["000000000001"]
    finally:
        held.release.set()
        stop.set()
        await asyncio.wait_for(run, 20)
        server.close()
        held.close()


@pytest.mark.asyncio
async def test_an_archive_that_cannot_be_written_stops_the_run_and_closes_the_channels(tmp_path: Path) -> None:
    from meterd.collector.daemon import Daemon

    requests: list[bytes] = []
    closed = asyncio.Event()
    server = await _bus(requests, closed)
    config = _one_bus_config(tmp_path, server.sockets[0].getsockname()[1])
    held = _held_archive(tmp_path / "data", fail=True)
    daemon = Daemon(config, held)
    run = asyncio.create_task(daemon.run(asyncio.Event()))
    try:
        for _ in range(400):
            if requests:
                break
            await asyncio.sleep(0.01)
        assert requests
        held.release.set()
        with pytest.raises(OSError, match="disk full"):
            await asyncio.wait_for(run, 20)
        await asyncio.wait_for(closed.wait(), 10)  # the daemon closed its link to the bus
        assert daemon.readiness() is not None
    finally:
        held.release.set()
        server.close()
        held.close()
