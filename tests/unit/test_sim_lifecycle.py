"""How the simulated terminals and their fleets start and stop (simulators/lifecycle.py); the DTU,
concentrator and MQTT terminal tests (tests/integration/test_dtu.py, test_concentrator.py,
test_mqtt.py) drive it through the simulators themselves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from meterd.simulators.concentrator import ConcentratorFleet
from meterd.simulators.dtu import DtuFleet
from meterd.simulators.lifecycle import Running, TerminalFleet
from meterd.simulators.mqtt_terminal import MqttFleet


class Sim(Running):
    def __init__(self, name: str, calls: list[str], fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    async def start(self) -> None:
        self.calls.append(f"start {self.name}")

    async def close(self) -> None:
        self.calls.append(f"close {self.name}")
        if self.fail:
            raise ConnectionError(f"{self.name} would not close")


@dataclass(slots=True)
class Fleet(TerminalFleet):
    sims: list[Sim] = field(default_factory=list)

    def _members(self) -> list[Sim]:
        return self.sims


def test_a_terminal_starts_on_entering_and_closes_on_leaving_even_when_the_body_raises() -> None:
    calls: list[str] = []

    async def run() -> None:
        async with Sim("a", calls) as sim:
            assert isinstance(sim, Sim) and calls == ["start a"]
            raise KeyError("boom")

    with pytest.raises(KeyError):
        asyncio.run(run())
    assert calls == ["start a", "close a"]


def test_a_fleet_closes_every_member_whatever_one_raises_and_starts_none() -> None:
    calls: list[str] = []
    fleet = Fleet([Sim("a", calls), Sim("b", calls, fail=True), Sim("c", calls)])

    async def run() -> None:
        async with fleet as same:
            assert same is fleet and calls == []

    asyncio.run(run())
    assert calls == ["close a", "close b", "close c"]
    assert not hasattr(fleet, "__dict__")  # still a slotted dataclass


def test_the_simulators_fleets_are_terminal_fleets_and_stay_slotted() -> None:
    for fleet in (DtuFleet, ConcentratorFleet, MqttFleet):
        assert issubclass(fleet, TerminalFleet) and "__slots__" in vars(fleet)
