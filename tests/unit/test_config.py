"""meterd.config: a good file becomes the typed model; a bad one reports every problem at once."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from meterd.config import (
    ChannelConfig,
    Config,
    MeterConfig,
    Parity,
    PollConfig,
    Protocol,
    SerialLink,
    StoreConfig,
    TcpLink,
    Framing,
    Timeouts,
    load_config,
    parse_config,
)
from meterd.errors import ConfigError
from mixed_site import MY_MAP, STORE_BUS_AND_GATEWAY, write_my_map

GOOD = """
[store]
data_dir = "data"
batch_size = 200
flush_interval = "1s"

[channels.bus1]
serial = { device = "/dev/ttyUSB0", baud = 9600, bytesize = 8, parity = "E", stopbits = 1 }
response_timeout = "2s"
inter_byte_timeout = "500ms"
connect_timeout = 5
retries = 2
preamble = 4
turnaround = "20ms"

[channels.dtu7]
tcp = { host = "127.0.0.1", port = 8899 }

[channels.spare]
serial = { device = "/dev/ttyUSB1" }

[[meters]]
address = "000000000001"
channel = "bus1"
protocol = "dlt645-2007"
ct = 50
pt = 1
name = "Building A"
group = "residential"

[[meters]]
address = "1234"
channel = "bus1"
ct = "0.5"
pt = 100.0

[[meters]]
address = 1
channel = "dtu7"
group = "commercial"

[[polls]]
name = "realtime"
interval = "15m"
groups = ["residential"]
items = ["0001FF00", "02010100"]

[[polls]]
name = "clock"
interval = 3600
items = ["0400010C"]

[[polls]]
name = "daily"
interval = "1h30m"
groups = []
items = ["00010000"]
"""


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


# --- a good file -------------------------------------------------------------------------------


def test_good_config_becomes_the_typed_model(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = load_config(path)

    assert config.source == str(path)
    assert config.store == StoreConfig(tmp_path / "data", batch_size=200, flush_interval=1.0)
    assert config.channels == (
        ChannelConfig(
            name="bus1",
            link=SerialLink("/dev/ttyUSB0", baud=9600, bytesize=8, parity=Parity.EVEN, stopbits=1),
            timeouts=Timeouts(connect=5.0, response=2.0, inter_byte=0.5),
            retries=2,
            preamble=4,
            turnaround=0.02,
        ),
        ChannelConfig(name="dtu7", link=TcpLink(host="127.0.0.1", port=8899), timeouts=Timeouts(),
                      framing=Framing.TCP),
        ChannelConfig(name="spare", link=SerialLink(device="/dev/ttyUSB1"), timeouts=Timeouts()),
    )
    assert config.meters == (
        MeterConfig(
            address="000000000001",
            channel="bus1",
            protocol=Protocol.DLT645_2007,
            ct=Decimal(50),
            pt=Decimal(1),
            name="Building A",
            group="residential",
        ),
        MeterConfig(address="000000001234", channel="bus1", ct=Decimal("0.5"), pt=Decimal("100.0")),
        MeterConfig(address="000000000001", channel="dtu7", group="commercial"),
    )
    assert config.polls == (
        PollConfig("realtime", interval=900.0, groups=("residential",), items=(0x0001FF00, 0x02010100)),
        PollConfig(name="clock", interval=3600.0, groups=(), items=(0x0400010C,)),
        PollConfig(name="daily", interval=5400.0, groups=(), items=(0x00010000,)),
    )


def test_defaults_and_types(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    bus = config.channel("bus1")
    assert isinstance(bus.link, SerialLink) and bus.link.parity is Parity.EVEN
    spare = config.channel("spare")
    assert spare.retries == 1 and spare.preamble == 4 and spare.turnaround == 0.0
    assert isinstance(config.meters[1].ct, Decimal) and str(config.meters[1].ct) == "0.5"
    assert config.meters[1].group == "default" and config.meters[1].name == ""


def test_helpers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert [m.address for m in config.meters_on("bus1")] == ["000000000001", "000000001234"]
    assert config.meters_on("spare") == ()  # a channel with no meters is fine
    realtime, clock, _ = config.polls
    assert config.meters_for(realtime) == (config.meters[0],)
    assert config.meters_for(clock) == config.meters
    with pytest.raises(KeyError):
        config.channel("nope")


def test_nodes_are_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    with pytest.raises(AttributeError):
        config.meters[0].ct = Decimal(2)  # type: ignore[misc]


def test_minimal_config_needs_only_store() -> None:
    config = parse_config({"store": {"data_dir": "/var/lib/meterd"}}, source="mini.toml")
    assert config == Config("mini.toml", StoreConfig(Path("/var/lib/meterd")), (), (), ())


def test_relative_data_dir_without_base_dir_stays_relative() -> None:
    assert parse_config({"store": {"data_dir": "data"}}).store.data_dir == Path("data")


def test_empty_config_misses_only_store() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({}, source="empty.toml")
    assert info.value.problems == [
        "empty.toml: store: missing: the [store] table with data_dir is required"
    ]


# --- a bad file: every problem, each with its key ----------------------------------------------

BAD = """
colour = "blue"

[store]
batch_size = 0
flush_interval = "soon"

[channels.bus1]
serial = { device = "/dev/ttyUSB0", baud = 2401, bytesize = 9, parity = "X", stopbits = 3, flow = "rts" }
response_timeout = "0s"
inter_byte_timeout = -1
retries = 11
preamble = 5
turnaround = "-20ms"
respone_timeout = "2s"

[channels.both]
serial = { device = "/dev/ttyUSB1" }
tcp = { host = "h", port = 1 }

[channels.neither]
retries = 1

[channels.dtu]
tcp = { host = "", port = 70000 }

[channels.dtu2]
tcp = { host = "x" }

[[meters]]
address = "000000000001"
channel = "bus1"
ct = "x"
pt = -1

[[meters]]
address = "1"
channel = "bus1"
protocol = "iec62056"

[[meters]]
address = "12345678901234"
channel = "bus2"

[[meters]]
address = "AAAAAAAAAAAA"
channel = "bus1"
ct = true

[[meters]]
channel = "bus1"
grup = "x"

[[meters]]
address = "999999999999"
channel = "bus1"
ct = 0

[[polls]]
name = "realtime"
interval = "15 minutes"
groups = ["residentail"]
items = ["0001FF00", "FFFFFFFF", "12", "0001FF00"]

[[polls]]
name = "realtime"
items = []

[[polls]]
interval = "1h"
groups = "default"
items = "00010000"
"""

DURATION = 'seconds, or "500ms", "30s", "15m", "1h", "1d", "1h30m"'
BAUDS = "300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200"

EXPECTED = [
    "colour: unknown key (did you mean \"cluster\"?)",
    "store.data_dir: missing: required",
    "store.batch_size: must be at least 1, got 0",
    f'store.flush_interval: must be a positive duration ({DURATION}), got "soon"',
    'channels.bus1.respone_timeout: unknown key (did you mean "response_timeout"?)',
    "channels.bus1.serial.flow: unknown key",
    f"channels.bus1.serial.baud: must be one of {BAUDS}, got 2401",
    "channels.bus1.serial.bytesize: must be one of 7, 8, got 9",
    'channels.bus1.serial.parity: must be one of "N", "E", "O", got "X"',
    "channels.bus1.serial.stopbits: must be one of 1, 2, got 3",
    'channels.bus1.response_timeout: must be a positive duration, got "0s"',
    "channels.bus1.inter_byte_timeout: must be a positive duration, got -1",
    "channels.bus1.retries: must be between 0 and 10, got 11",
    "channels.bus1.preamble: must be between 0 and 4, got 5",
    f'channels.bus1.turnaround: must be a duration of zero or more ({DURATION}), got "-20ms"',
    "channels.both: needs exactly one of serial = {...}, tcp = {...}, dtu = {...}, mqtt = {...} or "
    "gdw1376 = {...}",
    "channels.neither: needs exactly one of serial = {...}, tcp = {...}, dtu = {...}, mqtt = {...} or "
    "gdw1376 = {...}",
    "channels.dtu.tcp.host: must not be empty",
    "channels.dtu.tcp.port: must be between 1 and 65535, got 70000",
    "channels.dtu2.tcp.port: missing: required",
    'meters[0].ct: must be a positive number, got "x"',
    "meters[0].pt: must be a positive number, got -1",
    'meters[1].address: 000000000001 is already meters[0] on channel "bus1"',
    'meters[1].protocol: must be one of "dlt645-2007", "dlt645-1997", "modbus", got "iec62056"',
    'meters[2].address: must be 1 to 12 decimal digits, got "12345678901234"',
    'meters[2].channel: no channel named "bus2" (did you mean "bus1"?)',
    'meters[3].address: must be 1 to 12 decimal digits, got "AAAAAAAAAAAA"',
    "meters[3].ct: must be a positive number, got true",
    'meters[4].grup: unknown key (did you mean "group"?)',
    "meters[4].address: missing: required",
    "meters[5].address: 999999999999 is the broadcast address, not a meter",
    "meters[5].ct: must be a positive number, got 0",
    f'polls[0].interval: must be a positive duration ({DURATION}), got "15 minutes"',
    'polls[0].groups: no meter is in group "residentail"',
    "polls[0].items[1]: data identifier FFFFFFFF is not in the catalogue",
    "polls[0].items[2]: data identifier '12' must be 8 hex digits, e.g. 00010000",
    "polls[0].items[3]: 0001FF00 is listed twice",
    'polls[1].name: "realtime" is already the name of polls[0]',
    "polls[1].interval: missing: required",
    "polls[1].items: must name at least one data identifier",
    "polls[2].name: missing: required",
    "polls[2].groups: must be a list of strings, got \"default\"",
    'polls[2].items: must be a list of data identifiers, got "00010000"',
]


def test_bad_config_lists_every_problem_with_file_and_key(tmp_path: Path) -> None:
    problems = problems_of(BAD, tmp_path)
    prefix = f"{tmp_path / 'site.toml'}: "
    assert all(p.startswith(prefix) for p in problems), problems
    assert sorted(p.removeprefix(prefix) for p in problems) == sorted(EXPECTED)


def test_config_error_message_lists_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BAD))
    text = str(info.value)
    assert text.startswith(f"{len(EXPECTED)} configuration error(s):")
    assert 'meters[0].ct: must be a positive number, got "x"' in text


def test_poll_selecting_no_meters(tmp_path: Path) -> None:
    problems = problems_of(
        """
        [store]
        data_dir = "d"
        [[polls]]
        name = "all"
        interval = "15m"
        items = ["00010000"]
        """,
        tmp_path,
    )
    assert problems == [f"{tmp_path / 'site.toml'}: polls[0]: selects no meters"]


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("meters = 3", "meters: must be an array of tables ([[meters]]), got 3"),
        ('channels = "bus1"', 'channels: must be a table, got "bus1"'),
        ('store = "data"', 'store: must be a table, got "data"'),
        ("meters = [1]", "meters[0]: must be a table, got 1"),
    ],
)
def test_wrong_shapes(tmp_path: Path, fragment: str, expected: str) -> None:
    text = fragment + ('\n[store]\ndata_dir = "d"\n' if not fragment.startswith("store") else "")
    assert problems_of(text, tmp_path) == [f"{tmp_path / 'site.toml'}: {expected}"]


def test_broken_channels_table_does_not_blame_every_meter(tmp_path: Path) -> None:
    problems = problems_of(
        """
        channels = 1
        [store]
        data_dir = "d"
        [[meters]]
        address = "1"
        channel = "bus1"
        """,
        tmp_path,
    )
    assert [p.split(": ", 1)[1] for p in problems] == ["channels: must be a table, got 1"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (0.25, 0.25),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    config = parse_config({"store": {"data_dir": "d", "flush_interval": text}})
    assert config.store.flush_interval == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "expected"), [(50, "50"), ("0.5", "0.5"), (0.1, "0.1"), ("1E+3", "1E+3")]
)
def test_ratios_are_exact_decimals(value: object, expected: str) -> None:
    config = parse_config(
        {
            "store": {"data_dir": "d"},
            "channels": {"b": {"tcp": {"host": "h", "port": 1}}},
            "meters": [{"address": "1", "channel": "b", "ct": value}],
        }
    )
    assert str(config.meters[0].ct) == expected


def test_parity_is_case_insensitive() -> None:
    channels = {"b": {"serial": {"device": "x", "parity": "n"}}}
    config = parse_config({"store": {"data_dir": "d"}, "channels": channels})
    link = config.channels[0].link
    assert isinstance(link, SerialLink) and link.parity is Parity.NONE


# --- the file itself ---------------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\ndata_dir = "d"\nbatch_size = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: line 3, column ")
    assert "invalid TOML: Invalid value" in problem


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: file not found"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[store]\ndata_dir = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}: not UTF-8 text")


# --- 1997 and Modbus meters, polls by quantity -------------------------------------------------

MIXED = STORE_BUS_AND_GATEWAY + """
[channels.dtu]
tcp = { host = "10.0.0.10", port = 9000 }
framing = "rtu"

[[meters]]
address = "1"
channel = "bus"

[[meters]]
address = "2"
channel = "bus"
protocol = "dlt645-1997"

[[meters]]
address = "3"
channel = "gw"
protocol = "modbus"
unit = 1
model = "eastron-sdm630"

[[meters]]
address = "4"
channel = "dtu"
protocol = "modbus"
unit = 2
model = "maps/mine.toml"
ct = 100

[[polls]]
name = "energy"
interval = "15m"
quantities = ["energy.active.import.total", "voltage.a"]
"""


def test_mixed_protocols_and_a_map_file_relative_to_the_config(tmp_path: Path) -> None:
    write_my_map(tmp_path)
    config = load_config(write(tmp_path, MIXED))
    protocols = [m.protocol for m in config.meters]
    assert protocols == [Protocol.DLT645_2007, Protocol.DLT645_1997, Protocol.MODBUS, Protocol.MODBUS]
    sdm, mine = config.meters[2], config.meters[3]
    assert (sdm.unit, sdm.regmap.name, sdm.ct) == (1, "eastron-sdm630", Decimal(1))
    assert (mine.unit, mine.regmap.name, mine.ct) == (2, "mine", Decimal(100))
    assert [c.framing for c in config.channels] == [Framing.RTU, Framing.TCP, Framing.RTU]
    assert config.polls[0].quantities == ("energy.active.import.total", "voltage.a")


@pytest.mark.parametrize("key", ["ct", "pt"])
def test_a_ratio_on_a_meter_whose_map_reports_primary_values_is_an_error_naming_the_meter(tmp_path, key):
    # issue 17: examples/site.toml set ct = 100 on an SDM630 (primary = true) and it was ignored
    write_my_map(tmp_path)
    text = MIXED.replace('model = "eastron-sdm630"\n', f'model = "eastron-sdm630"\n{key} = 100\n')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    [problem] = caught.value.problems
    assert f"meters[2].{key}: meter 000000000003: model eastron-sdm630 reports primary-side values" in problem
    assert "would never be applied" in problem


def test_a_ratio_of_one_on_a_primary_map_is_harmless(tmp_path):
    write_my_map(tmp_path)
    config = load_config(write(tmp_path, MIXED.replace('model = "eastron-sdm630"\n',
                                                       'model = "eastron-sdm630"\nct = 1\npt = "1.0"\n')))
    assert (config.meters[2].ct, config.meters[2].pt) == (1, 1)


def test_the_example_site_config_loads():
    example = Path(__file__).resolve().parents[2] / "examples" / "site.toml"
    assert load_config(example).meters


def test_the_daemon_plan_asks_each_protocol_in_its_own_terms(tmp_path: Path) -> None:
    from meterd.collector.daemon import compile_plan, describe_plan

    write_my_map(tmp_path)
    plans = compile_plan(load_config(write(tmp_path, MIXED)))
    text = "\n".join(describe_plan(plans))
    assert "dlt645-2007 items 00010000 02010100: 000000000001" in text
    assert "dlt645-1997 items 9010 B611: 000000000002" in text
    assert "modbus eastron-sdm630: 000000000003@1" in text
    assert "modbus mine: 000000000004@2" in text
    assert "FC04" in text and "FC03" in text  # the compiled requests are logged


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ('protocol = "modbus"\nmodel = "generic"', "meters[0].unit: missing: a Modbus meter needs its unit id (1..247)"),
        ('protocol = "modbus"\nunit = 1', "meters[0].model: missing: a Modbus meter needs its register map"),
        ('protocol = "modbus"\nunit = 300\nmodel = "generic"', "meters[0].unit: must be"),
        ('protocol = "modbus"\nunit = 1\nmodel = "eastron-sdm603"', "meters[0].model: unknown register map 'eastron-sdm603' (did you mean \"eastron-sdm630\"?)"),
        ('unit = 1', "meters[0].unit: only Modbus meters have a unit; this meter speaks dlt645-2007"),
    ],
)
def test_modbus_meter_problems(tmp_path: Path, fragment: str, expected: str) -> None:
    text = f"""
    [store]
    data_dir = "d"
    [channels.c]
    tcp = {{ host = "h", port = 1 }}
    [[meters]]
    address = "1"
    channel = "c"
    {fragment}
    [[polls]]
    name = "p"
    interval = 60
    quantities = ["voltage.a"]
    """
    text = "\n".join(line.strip() for line in text.splitlines())
    found = problems_of(text, tmp_path)
    assert any(expected in p for p in found), found


def test_an_invalid_map_stops_start_up_naming_file_and_key(tmp_path: Path) -> None:
    bad = MY_MAP.replace('address = 2\ntype = "u16"', 'address = 1\ntype = "u16"')  # overlaps the u32
    write_my_map(tmp_path, bad)
    found = problems_of(MIXED, tmp_path)
    hit = [p for p in found if "mine.toml" in p and "register[1]" in p]
    assert hit and "meters[3].model" in hit[0] and "overlap" in hit[0], found


def test_a_quantity_a_meter_cannot_deliver_is_named_with_meter_and_model(tmp_path: Path) -> None:
    write_my_map(tmp_path)
    found = problems_of(MIXED.replace('"voltage.a"]', '"voltage.a", "frequency"]'), tmp_path)
    assert any("meters[3] (000000000004, modbus model mine) has no register for frequency" in p for p in found), found
    assert any("meters[1] (000000000002, dlt645-1997) has no identifier for frequency" in p for p in found), found
    assert not any("meters[0]" in p for p in found)  # a 2007 meter has 02800002


def test_unknown_quantity_and_1997_items(tmp_path: Path) -> None:
    text = MIXED.replace('quantities = ["energy.active.import.total", "voltage.a"]',
                         'quantities = ["voltage.x"]\nitems_1997 = ["9010", "ZZ"]')
    found = problems_of(text, tmp_path)
    assert any("polls[0].quantities[0]: unknown quantity \"voltage.x\"" in p for p in found), found
    assert any("polls[0].items_1997[1]" in p and "4 hex digits" in p for p in found), found


def test_a_poll_that_reads_nothing_from_a_meter(tmp_path: Path) -> None:
    text = MIXED.replace('quantities = ["energy.active.import.total", "voltage.a"]', 'items = ["00010000"]')
    write_my_map(tmp_path)
    found = problems_of(text, tmp_path)
    assert any("reads nothing from meters[1] (000000000002, dlt645-1997): give items_1997" in p for p in found), found
    assert any("reads nothing from meters[2]" in p and "quantities" in p for p in found), found


def test_the_shipped_example_config_loads_and_plans() -> None:
    from meterd.collector.daemon import compile_plan

    example = Path(__file__).resolve().parents[2] / "examples" / "site.toml"
    config = load_config(example)
    assert {m.protocol for m in config.meters} == set(Protocol)
    assert all(p.polls for p in compile_plan(config))
