"""The protocol registry: every configured protocol has a driver, an unknown one is a config error
naming it, and each driver says what it can do (quantities, plans, relay commands) the same way."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterd import protocols
from meterd.collector import poll
from meterd.collector.channel import Channel, Timing
from meterd.collector.poll import MeterTarget
from meterd.collector.transports.base import Transport
from meterd.config.loader import parse_config
from meterd.config.model import Protocol
from meterd.control.model import CommandKind
from meterd.errors import ConfigError, ProtocolError
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.drivers import (
    BACKENDS,
    LinkKind,
    UnknownProtocolError,
    all_quantities,
    get_driver,
    protocol_names,
)
from meterd.protocols.drivers.base import FrameDriver
from meterd.protocols.modbus import get_map
from meterd.protocols.readspec import ReadSpec
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel

drivers = protocols.drivers


def test_every_configurable_protocol_has_a_driver_and_nothing_else_is_registered() -> None:
    assert set(protocol_names()) == {p.value for p in Protocol}
    for protocol in Protocol:
        driver = get_driver(protocol)
        assert driver.name == protocol.value
        assert get_driver(protocol.value) is driver  # one instance per name, shared by every meter


def test_an_unknown_protocol_is_a_config_error_naming_it_and_the_known_ones() -> None:
    with pytest.raises(UnknownProtocolError) as info:
        get_driver("iec62056")
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert "'iec62056'" in message
    for name in BACKENDS:
        assert name in message


def test_a_config_with_an_unknown_protocol_names_the_meter_key_and_value() -> None:
    data = {
        "store": {"data_dir": "d"},
        "channels": {"bus1": {"type": "tcp", "host": "127.0.0.1", "port": 1}},
        "meters": [{"address": "1", "channel": "bus1", "protocol": "iec62056"}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="site.toml")
    assert any("meters[0].protocol" in p and '"iec62056"' in p for p in info.value.problems), info.value.problems


def test_a_meter_target_resolves_its_driver_once_when_it_is_made() -> None:
    target = MeterTarget("000000000001", protocol="dlt645-1997")
    assert target.driver is get_driver("dlt645-1997")
    with pytest.raises(UnknownProtocolError):
        MeterTarget("000000000001", protocol="dlt645-2013")


def test_drivers_load_lazily() -> None:
    """Importing the registry imports no driver module; asking for one imports only its own."""
    code = (
        "import sys, meterd.protocols.drivers as d\n"
        "assert 'meterd.protocols.drivers.modbus' not in sys.modules\n"
        "assert 'meterd.protocols.drivers.dlt645' not in sys.modules\n"
        "d.get_driver('dlt645-1997')\n"
        "assert 'meterd.protocols.drivers.dlt645' in sys.modules\n"
        "assert 'meterd.protocols.drivers.modbus' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)


# --- capabilities --------------------------------------------------------------------------------


def test_dlt645_2007_takes_every_relay_command() -> None:
    driver = get_driver("dlt645-2007")
    assert driver.relay_commands(None) == frozenset(RelayCommand)
    assert all(driver.relay_refusal(c, None) is None for c in RelayCommand)


def test_dlt645_1997_takes_no_relay_command_and_says_why() -> None:
    driver = get_driver("dlt645-1997")
    assert driver.relay_commands(None) == frozenset()
    why = driver.relay_refusal(RelayCommand.TRIP, None)
    assert why == "DL/T 645-1997 defines no relay-control command; this meter cannot be switched remotely"


def test_modbus_takes_trip_and_reclose_through_the_maps_relay_only() -> None:
    driver = get_driver("modbus")
    with_relay, without = get_map("generic"), get_map("eastron-sdm630")
    assert with_relay.relay is not None and without.relay is None
    assert driver.relay_commands(with_relay) == {RelayCommand.TRIP, RelayCommand.RECLOSE}
    assert driver.relay_commands(without) == frozenset()
    assert driver.relay_refusal(RelayCommand.ALARM, with_relay) == "Modbus meters take TRIP and RECLOSE only, not ALARM"
    assert driver.relay_refusal(RelayCommand.TRIP, without) == (
        "register map eastron-sdm630 has no [relay]: this meter cannot be switched")


def test_command_kinds_follow_the_relay_commands() -> None:
    """What control/runtime.py hands the prepaid engine, per protocol."""

    def kinds(protocol: str, regmap=None) -> set[CommandKind]:
        relay = get_driver(protocol).relay_commands(regmap)
        return {k for k in CommandKind if k.relay_command in relay}

    assert kinds("dlt645-2007") == set(CommandKind)
    assert kinds("dlt645-1997") == set()
    assert kinds("modbus", get_map("generic")) == {CommandKind.TRIP, CommandKind.RECLOSE}


# --- planning ------------------------------------------------------------------------------------


def test_the_same_quantities_plan_for_every_protocol() -> None:
    wanted = ["energy.active.import.total", "voltage.a"]
    two, missing2 = get_driver("dlt645-2007").plan(wanted)
    one, missing1 = get_driver("dlt645-1997").plan(wanted)
    mb, missing_mb = get_driver("modbus").plan(wanted, (), get_map("generic"))
    assert missing2 == missing1 == missing_mb == []
    assert isinstance(two, ReadSpec) and isinstance(one, ReadSpec)
    assert get_driver("dlt645-2007").item_labels(two) == ["00010000", "02010100"]
    assert get_driver("dlt645-1997").item_labels(one) == ["9010", "B611"]
    assert mb is not None and len(mb) >= 1
    assert set(wanted) <= all_quantities()


def test_explicit_items_come_from_the_editions_own_key() -> None:
    class Poll:
        items = (0x00010000,)
        items_1997 = (0x9010,)

    assert get_driver("dlt645-2007").explicit_items(Poll) == (0x00010000,)
    assert get_driver("dlt645-1997").explicit_items(Poll) == (0x9010,)
    assert get_driver("modbus").explicit_items(Poll) == ()


def test_a_quantity_a_meter_cannot_carry_is_named_with_the_drivers_noun() -> None:
    reads, missing = get_driver("modbus").plan(["voltage.a", "status.word3"], (), get_map("eastron-sdm630"))
    assert (reads, missing) == (None, ["status.word3"])
    assert get_driver("modbus").missing_noun == "register"
    assert get_driver("dlt645-1997").missing_noun == "identifier"


def test_identifiers_are_parsed_and_checked_by_the_edition() -> None:
    assert get_driver("dlt645-2007").parse_item("00010000") == 0x00010000
    assert get_driver("dlt645-1997").parse_item("9010") == 0x9010
    with pytest.raises(ProtocolError):
        get_driver("dlt645-1997").parse_item("00010000")  # a 2007 identifier on a 1997 meter
    with pytest.raises(ProtocolError, match="read a Modbus meter by --quantity"):
        get_driver("modbus").parse_item("9010")


def test_link_kinds() -> None:
    for name in ("dlt645-2007", "dlt645-1997"):
        assert get_driver(name).link is LinkKind.FRAMES
        assert isinstance(get_driver(name), FrameDriver)
    assert get_driver("modbus").link is LinkKind.MODBUS
    assert get_driver("modbus").by_unit_and_map and not get_driver("dlt645-2007").by_unit_and_map


# --- resolved once, at plan time ------------------------------------------------------------------


class _BusTransport(Transport):
    """A real channel's byte pipe onto the simulated DL/T 645 bus (both editions on one bus)."""

    def __init__(self, bus: Dlt645Bus, now: datetime) -> None:
        super().__init__("sim")
        self.bus, self.now = bus, now

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None:
        pass

    async def write(self, data: bytes) -> None:
        for reply in self.bus.handle(data, self.now):
            self._received(reply.data)

    async def close(self) -> None:
        pass


def test_a_round_asks_the_registry_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver is looked up when the target is made; the poll itself (2007 and 1997 meters on
    one bus, both through the one frame read loop) never goes back to the registry."""
    now = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    local = datetime(2026, 3, 1, 12, 0)  # the meters' own (CST) clock
    a7, a97 = "000000000001", "000000000002"
    bus = Dlt645Bus([MeterModel(a7, start=local), MeterModel(a97, start=local)], protocols={a97: "dlt645-1997"})
    wanted = ["energy.active.import.total", "voltage.a"]
    targets = [MeterTarget(a7, protocol="dlt645-2007"), MeterTarget(a97, protocol="dlt645-1997")]
    reads = [t.driver.plan(wanted)[0] for t in targets]

    def no_lookups(name: str) -> None:
        raise AssertionError(f"registry asked for {name!r} during a round")

    monkeypatch.setattr(drivers, "get_driver", no_lookups)
    monkeypatch.setattr(drivers, "_load", no_lookups)
    monkeypatch.setattr(poll, "get_driver", no_lookups)

    async def go() -> poll.RoundResult:
        channel = Channel("bus", _BusTransport(bus, local), timing=Timing(0.5, 0.5))
        try:
            return await poll.poll_round(channel, list(zip(targets, reads)), None, now)
        finally:
            await channel.close()

    result = asyncio.run(go())
    assert [a.outcome for a in result.attempts] == ["ok"] * 4
    assert [a.item for a in result.attempts] == ["00010000", "02010100", "9010", "B611"]
    for address in (a7, a97):
        assert sorted(r.quantity for r in result.readings if r.meter == address) == sorted(wanted)
