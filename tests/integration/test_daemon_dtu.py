"""The daemon with a DTU listener from config: simulated GPRS DTUs connect in, register, and the
meters behind them are read through their channels; DTUs that are not there yet fail as link
failures and are read once they arrive."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import datetime, timezone

import pytest

from meterd.collector.daemon import Daemon, compile_plan, describe_plan
from meterd.config.loader import parse_config
from meterd.errors import ConfigError
from meterd.simulators.dtu import run_dtu_fleet
from meterd.storage.sqlite import SqliteStore
from conftest import free_port


def config_text(port: int, data_dir, fmt: str = "hex-frame") -> str:
    channels = []
    for n in (1, 2, 3):
        tid = f"DTU{n:08d}"
        channels.append(f"""
[channels.feeder{n}]
dtu = {{ listener = "gprs", terminal = "{tid}" }}
response_timeout = "1s"
retries = 0
""")
        for i in range(2):
            channels.append(f"""
[[meters]]
address = "{(n - 1) * 2 + i + 1}"
channel = "feeder{n}"
""")
    return f"""
[store]
data_dir = "{data_dir}"
flush_interval = "200ms"

[listeners.gprs]
host = "127.0.0.1"
port = {port}
formats = ["usr-ascii", "{fmt}"]
heartbeat_timeout = "30s"
{"".join(channels)}
[[polls]]
name = "realtime"
interval = "300ms"
quantities = ["energy.active.import.total", "voltage.a"]
"""


async def test_meters_behind_dtus_are_collected_once_the_dtus_register(tmp_path):
    port = free_port()
    config = parse_config(tomllib.loads(config_text(port, tmp_path)), "dtu.toml")
    assert "channel feeder1 (dtu DTU00000001 via listener gprs)" in describe_plan(compile_plan(config))
    seen: dict[str, set[str]] = {}
    outcomes: list[str] = []

    def on_round(result):
        for r in result.readings:
            seen.setdefault(r.meter, set()).add(r.quantity)
        outcomes.extend(a.outcome for a in result.attempts)

    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, on_round=on_round, clock=lambda: datetime.now(timezone.utc))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.5)  # first rounds: no DTU yet -> link failures
        fleet = await run_dtu_fleet(3, 2, "127.0.0.1", port, fmt="hex-frame", heartbeat=5.0)
        try:
            for _ in range(100):
                if len(seen) == 6:
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task
            await fleet.close()
        status = daemon.listener_status()["gprs"]
    assert sorted(seen) == [f"{n:012d}" for n in range(1, 7)]
    assert all(q == {"energy.active.import.total", "voltage.a"} for q in seen.values())
    assert "link" in outcomes and "ok" in outcomes  # before and after the DTUs came
    assert status["terminals"]["DTU00000001"]["registrations"] == 1
    assert status["rejected"].get("unknown_id", 0) == 0


def test_dtu_channel_config_problems(tmp_path):
    text = config_text(9000, tmp_path).replace('listener = "gprs", terminal = "DTU00000002"',
                                               'listener = "gprs", terminal = "DTU00000001"')
    text = text.replace('listener = "gprs", terminal = "DTU00000003"', 'listener = "gsm", terminal = "DTU00000003"')
    text = text.replace('formats = ["usr-ascii", "hex-frame"]', 'formats = ["usr-asci"]')
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), "dtu.toml")
    problems = "\n".join(info.value.problems)
    assert 'channels.feeder2.dtu.terminal: terminal "DTU00000001" is already channel "feeder1"' in problems
    assert 'channels.feeder3.dtu.listener: no listener named "gsm"' in problems
    assert 'listeners.gprs.formats[0]: unknown DTU format "usr-asci"' in problems


# --- DTU formats from the site config (issue #17) ------------------------------------------------------

MAC = "D8-B0-4C-00-04-C9"  # written as the label on the device says; registers as d8:b0:4c:00:04:c9


def field_config_text(port: int, data_dir) -> str:
    return f"""
[store]
data_dir = "{data_dir}"
flush_interval = "200ms"

[listeners.gprs]
host = "127.0.0.1"
port = {port}
heartbeat_timeout = "30s"
formats = [
  # USR 4G DTUs set to "both": the IMEI on connect and in front of every packet
  {{ name = "usr-imei-data", preset = "usr-ascii", id_pattern = "[0-9]{{15}}", data_carries_registration = true }},
  "usr-mac",                                   # USR serial servers registering with their MAC
  {{ name = "site-frame", framing = "frame", header_hex = "7E7E", checksum = "xor8", tail_hex = "0D" }},
]

[channels.imei]
dtu = {{ listener = "gprs", terminal = "861234567890123" }}
response_timeout = "1s"
retries = 0

[channels.mac]
dtu = {{ listener = "gprs", terminal = "{MAC}" }}
response_timeout = "1s"
retries = 0

[channels.framed]
dtu = {{ listener = "gprs", terminal = "SITE-0007" }}
response_timeout = "1s"
retries = 0

[[meters]]
address = "1"
channel = "imei"

[[meters]]
address = "2"
channel = "mac"

[[meters]]
address = "3"
channel = "framed"

[[polls]]
name = "realtime"
interval = "300ms"
quantities = ["energy.active.import.total"]
"""


async def test_dtu_formats_from_config_tables_register_and_are_read(tmp_path):
    from meterd.protocols.terminal.dtu import DtuFormat
    from meterd.simulators.dlt645 import Dlt645Bus
    from meterd.simulators.dtu import DtuSimulator
    from meterd.simulators.model import MeterModel

    port = free_port()
    config = parse_config(tomllib.loads(field_config_text(port, tmp_path)), "dtu.toml")
    (lc,) = config.listeners
    imei_fmt, mac_name, frame_fmt = lc.formats
    assert isinstance(imei_fmt, DtuFormat) and imei_fmt.data_carries_registration and imei_fmt.name == "usr-imei-data"
    assert mac_name == "usr-mac"
    assert isinstance(frame_fmt, DtuFormat) and frame_fmt.header == b"\x7e\x7e" and frame_fmt.tail == b"\r"
    seen: set[str] = set()

    def on_round(result):
        seen.update(r.meter for r in result.readings)

    start = datetime.now(timezone.utc).replace(tzinfo=None)

    def bus(address: str) -> Dlt645Bus:
        return Dlt645Bus([MeterModel(address, start=start, seed=int(address))])

    sims = [
        DtuSimulator("861234567890123", bus("000000000001"), "127.0.0.1", port, "usr-ascii", with_data=True,
                     heartbeat=0.2),
        DtuSimulator("d8:b0:4c:00:04:c9", bus("000000000002"), "127.0.0.1", port, "usr-mac", heartbeat=0.2,
                     heartbeat_with_registration=True),
        DtuSimulator("SITE-0007", bus("000000000003"), "127.0.0.1", port, frame_fmt, heartbeat=0.2),
    ]
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, on_round=on_round, clock=lambda: datetime.now(timezone.utc))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.3)
        try:
            for sim in sims:
                await sim.start()
            for _ in range(100):
                if len(seen) == 3:
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task
            for sim in sims:
                await sim.close()
        status = daemon.listener_status()["gprs"]
    assert seen == {"000000000001", "000000000002", "000000000003"}
    terminals = status["terminals"]
    assert terminals["861234567890123"]["format"] == "usr-imei-data"
    assert terminals["861234567890123"]["registration_prefixes"] >= 1
    assert terminals[MAC]["format"] == "usr-mac" and terminals["SITE-0007"]["format"] == "site-frame"
    assert not any(status["rejected"].values())


@pytest.mark.parametrize("formats, channel_terminal, expected", [
    ('[{ name = "x", prefix_hex = "zz", id_lenght = 6 }]', "DTU1",
     ["listeners.gprs.formats[0].prefix_hex: 'zz' is not hex digits",
      'listeners.gprs.formats[0].id_lenght: unknown key (did you mean "id_length"?)']),
    ('[{ preset = "usr-mac", id_length = 8 }]', "DTU1",
     ["listeners.gprs.formats[0].id_length: 8: a MAC id is 6 bytes"]),
    ('[{ preset = "hex-frame", registration_type = 2 }]', "DTU1",
     ["listeners.gprs.formats[0]: registration_type and heartbeat_type must differ"]),
    ('"usr-ascii"', "DTU1", ['listeners.gprs.formats: must be a list of DTU format names or tables, got "usr-ascii"']),
    ("[1]", "DTU1", ["listeners.gprs.formats[0]: must be a DTU format name or a table of format fields, got 1"]),
    ('["usr-ascii", { name = "usr-ascii", prefix = "R:" }]', "DTU1",
     ['listeners.gprs.formats[1]: format "usr-ascii" is already formats[0]']),
    ('[{ name = "", preset = "usr-ascii" }]', "DTU1", ['listeners.gprs.formats[0].name: must be a non-empty string']),
    ('["usr-mac"]', "DTU1",
     [('channels.c1.dtu.terminal: terminal "DTU1" cannot register in any format of listener "gprs": usr-mac: '
       "terminal id 'DTU1' is not a MAC address (aa:bb:cc:dd:ee:ff)")]),
    ('["usr-ascii"]', "D" * 41,
     ["cannot register in any format of listener \"gprs\": usr-ascii: terminal id of 41 bytes, at most 40 allowed"]),
])
def test_dtu_format_config_problems_name_the_key(tmp_path, formats, channel_terminal, expected):
    text = f"""
[store]
data_dir = "{tmp_path}"

[listeners.gprs]
formats = {formats}

[channels.c1]
dtu = {{ listener = "gprs", terminal = "{channel_terminal}" }}

[[meters]]
address = "1"
channel = "c1"
"""
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), "site.toml")
    problems = "\n".join(info.value.problems)
    for line in expected:
        assert line in problems, problems
    assert all(p.startswith("site.toml: ") for p in info.value.problems)


def test_one_mac_written_two_ways_is_one_terminal(tmp_path):
    text = f"""
[store]
data_dir = "{tmp_path}"

[listeners.gprs]
formats = ["usr-mac"]

[channels.a]
dtu = {{ listener = "gprs", terminal = "d8:b0:4c:00:04:c9" }}

[channels.b]
dtu = {{ listener = "gprs", terminal = "D8-B0-4C-00-04-C9" }}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), "site.toml")
    assert info.value.problems == [
        ('site.toml: channels.b.dtu.terminal: terminal "D8-B0-4C-00-04-C9" registers with the same bytes as '
         "channel \"a\"'s terminal in DTU format usr-mac")]
