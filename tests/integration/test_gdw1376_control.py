"""Relay commands through Q/GDW 1376.1 terminals over real TCP, the way prepaid control sends
them (the daemon's route -> MeterRelay): a concentrator relays DL/T 645 1C in AFN 10 and the relay
state is read back through AFN 10; a special-transformer terminal trips its control turn with AFN
05 F1, confirmed by the load read back (AFN 0C F25).  Wrong and missing passwords are clear errors."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import UTC, datetime, timedelta

import pytest

from conftest import free_port
from gdw_fake import FakeTerminal, archive_entry
from meterd.clock import CST
from meterd.collector.control import MeterRelay
from meterd.collector.daemon import Daemon
from meterd.config.loader import parse_config
from meterd.errors import ControlError
from meterd.protocols.dlt645.frame import decode_frame
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.gdw1376.frame import Afn
from meterd.protocols.relay import Credentials
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.storage.sqlite import SqliteStore

TERMINAL = "4401-0001"
PW_HEX = "00112233445566778899AABBCCDDEEFF"
CREDS = Credentials("02123456", "12345678")
START = datetime(2026, 1, 15, 10, 0)
NOW = START.replace(tzinfo=CST)
VALID = timedelta(minutes=10)
METERS = {1: "000000001001", 2: "000000001002"}


def config_text(port: int, data_dir, *, kind: str = "concentrator", secret: bool = True) -> str:
    pw = ', password_secret = "GW_PW"' if secret else ""
    meters = "".join(f'\n[[meters]]\naddress = "{a}"\nchannel = "c1"\npn = {pn}\n' for pn, a in METERS.items())
    return f"""
[store]
data_dir = "{data_dir}"

[listeners.gw]
protocol = "gdw1376"
host = "127.0.0.1"
port = {port}

[channels.c1]
gdw1376 = {{ listener = "gw", terminal = "{TERMINAL}", kind = "{kind}", turn = 2{pw} }}
response_timeout = "1s"
retries = 0
{meters}"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """(run(config kwargs, terminal kwargs) -> async context of (daemon, terminal))."""
    monkeypatch.setenv("GW_PW", PW_HEX)

    class Site:
        def __init__(self, **options):
            self.port = free_port()
            self.config = parse_config(tomllib.loads(config_text(self.port, tmp_path, **options)), "gw.toml")
            self.bus = Dlt645Bus([MeterModel(a, start=START) for a in METERS.values()])
            self.terminal = FakeTerminal(TERMINAL, "127.0.0.1", self.port, METERS, password=bytes.fromhex(PW_HEX),
                                         bus=self.bus, clock=START)
            self.terminal.archive = {pn: archive_entry(pn, a) for pn, a in METERS.items()}

        async def __aenter__(self):
            self.store = SqliteStore(self.config.store.data_dir)
            self.daemon = Daemon(self.config, self.store, clock=lambda: datetime.now(UTC))
            self.stop = asyncio.Event()
            self.task = asyncio.create_task(self.daemon.run(self.stop))
            await asyncio.sleep(0.2)
            await self.terminal.connect()
            await self.terminal.wait_confirmed(1)
            return self

        async def __aexit__(self, *exc):
            self.stop.set()
            await self.task
            await self.terminal.close()
            self.store.close()

        def relay(self, address: str) -> MeterRelay:
            route = self.daemon.route(address)
            assert route is not None
            return MeterRelay(route.channel, route.target, route.link, CREDS)

    return Site


async def test_a_prepaid_trip_through_a_concentrator_is_confirmed_by_read_back(site):
    async with site() as s:
        relay = s.relay(METERS[2])
        out = await relay.send(RelayCommand.TRIP, NOW, valid_for=VALID,
                               settle=0.0)
        assert out.confirmed and out.read_back["relay.open"] is True
        assert s.bus.meter(METERS[2]).relay_open is True and s.bus.meter(METERS[1]).relay_open is False
        back = await relay.send(RelayCommand.RECLOSE, NOW, valid_for=VALID,
                                settle=0.0)
        assert back.confirmed and back.read_back["relay.open"] is False
    forwards = [m for m in s.terminal.requests if m.afn == Afn.FORWARD]
    inner = [decode_frame(m.units[0].values[0].payload) for m in forwards]
    assert [f.control for f in inner if f.control == 0x1C] == [0x1C, 0x1C]  # the 1C commands went inside AFN 10
    assert all(m.pw == bytes.fromhex(PW_HEX) for m in forwards)


async def test_a_wrong_password_is_a_clear_refusal(site):
    s = site()
    s.terminal.password = bytes(16)  # the terminal expects another PW: it denies AFN 10
    async with s:
        with pytest.raises(ControlError) as err:
            await s.relay(METERS[1]).send(RelayCommand.TRIP, NOW, valid_for=VALID, settle=0.0)
    assert f"terminal {TERMINAL} denied AFN 10H" in str(err.value) and "wrong password" in str(err.value)
    assert err.value.outcome.acknowledged is False  # type: ignore[attr-defined]
    assert s.bus.meter(METERS[1]).relay_open is False


async def test_without_a_password_secret_relay_commands_are_refused_naming_the_key(site):
    async with site(secret=False) as s:
        with pytest.raises(ControlError) as err:
            await s.relay(METERS[1]).send(RelayCommand.TRIP, NOW, valid_for=VALID, settle=0.0)
    assert "channels.c1.gdw1376.password_secret" in str(err.value)
    assert not any(m.afn == Afn.FORWARD and m.units[0].values[0].payload for m in s.terminal.requests
                   if m.afn == Afn.FORWARD and decode_frame(m.units[0].values[0].payload).control == 0x1C)


async def test_a_special_terminal_trips_its_turn_confirmed_by_the_load(site):
    async with site(kind="special") as s:
        out = await s.relay(METERS[1]).send(RelayCommand.TRIP, NOW, valid_for=VALID, settle=0.0)
        assert out.confirmed and out.read_back["relay.open"] is True and "turn 2 tripped" in out.detail
        assert "turn output (AFN 0C F6)" in out.detail
        control = s.terminal.controls[-1]
        assert control.pw == bytes.fromhex(PW_HEX) and next(iter(control.items()))[:2] == (2, 1)  # p2 = turn 2, F1
        back = await s.relay(METERS[1]).send(RelayCommand.RECLOSE_ALLOWED, NOW,
                                             valid_for=VALID, settle=0.0)
        assert back.confirmed and s.terminal.tripped is False
        s.terminal.stuck = True
        with pytest.raises(ControlError) as err:
            await s.relay(METERS[1]).send(RelayCommand.TRIP, NOW, valid_for=VALID, settle=0.0)
        assert "control anomaly" in str(err.value) and err.value.outcome.failure == "anomaly"  # type: ignore[attr-defined]


async def test_a_special_terminal_alarm_and_protection_are_confirmed_by_its_control_state(site):
    async with site(kind="special") as s:
        relay = s.relay(METERS[1])
        out = await relay.send(RelayCommand.ALARM, NOW, valid_for=VALID, settle=0.0)
        assert out.confirmed and out.read_back["alarm.pre_trip"] is True and "AFN 0C F5/F6" in out.detail
        assert [fn for _, fn, _ in s.terminal.controls[-1].items()] == [26]  # 催费告警投入, p0
        out = await relay.send(RelayCommand.ALARM_RELEASE, NOW, valid_for=VALID, settle=0.0)
        assert out.confirmed and out.read_back["alarm.pre_trip"] is False
        assert [fn for _, fn, _ in s.terminal.controls[-1].items()] == [34]  # 催费告警解除
        out = await relay.send(RelayCommand.PROTECT, NOW, valid_for=VALID, settle=0.0)
        assert out.confirmed and out.read_back["relay.protected"] is True
        # a terminal that acknowledges but does not change its state: an anomaly, not a confirmation
        original = s.terminal.answer

        def ack_only(msg):
            if msg.afn == Afn.CONTROL:
                from meterd.protocols.gdw1376.messages import confirm
                s.terminal.controls.append(msg)
                return confirm(msg)
            return original(msg)

        s.terminal.answer = ack_only  # type: ignore[method-assign]
        with pytest.raises(ControlError) as err:
            await relay.send(RelayCommand.PROTECT_RELEASE, NOW, valid_for=VALID, settle=0.0)
        assert err.value.outcome.failure == "anomaly" and "relay.protected reads yes" in str(err.value)  # type: ignore[attr-defined]


async def test_a_terminal_without_control_state_confirms_trips_by_the_load_and_refuses_the_rest(site):
    async with site(kind="special") as s:
        s.terminal.control_state = False
        out = await s.relay(METERS[1]).send(RelayCommand.TRIP, NOW, valid_for=VALID, settle=0.0)
        assert out.confirmed and out.read_back == {"relay.open": True} and "F6" not in out.detail
        with pytest.raises(ControlError) as err:
            await s.relay(METERS[1]).send(RelayCommand.ALARM, NOW, valid_for=VALID, settle=0.0)
        assert err.value.outcome.failure == "read-back" and "AFN 0C F5/F6" in str(err.value)  # type: ignore[attr-defined]
        assert s.terminal.reminder is True  # sent and acknowledged; only the confirmation is missing
