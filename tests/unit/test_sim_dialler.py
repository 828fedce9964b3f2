"""The dial-in the DTU and concentrator simulators share (simulators/dialler.py): backoff and its
draws, counted dials, dialling again, the master's hang-ups.  Over real TCP on 127.0.0.1; the DTU and
concentrator tests (tests/integration/test_dtu.py, test_concentrator.py) drive it through its owners."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import pytest

from meterd.errors import LinkError
from meterd.simulators.dialler import Backoff, Dialler

# --- backoff --------------------------------------------------------------------------------------


def test_backoff_doubles_after_failures_up_to_the_most_and_starts_again_after_a_connection() -> None:
    b = Backoff(1.0, 5.0)
    assert [b.after(False) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert b.after(True) == 1.0 and b.after(False) == 1.0 and b.after(False) == 2.0


def test_backoff_jitter_is_one_draw_per_wait_from_the_owners_generator() -> None:
    rng, twin = random.Random(7), random.Random(7)
    b = Backoff(0.5, 2.0, rng)
    waits = [b.after(up) for up in (False, False, False, True, False)]
    assert waits == [d * (1.0 + 0.2 * twin.random()) for d in (0.5, 1.0, 2.0, 0.5, 0.5)]
    assert rng.random() == twin.random()  # no draw more, none fewer


def test_backoff_without_a_generator_draws_nothing() -> None:
    state = random.getstate()
    b = Backoff(0.5, 0.5)
    assert [b.after(False), b.after(True)] == [0.5, 0.5]
    assert random.getstate() == state


# --- the dialler ----------------------------------------------------------------------------------


@dataclass
class Stats:
    connections: int = 0
    connect_failures: int = 0
    closed_by_master: int = 0


@dataclass
class Owner:
    host: str
    port: int
    connect_timeout: float = 1.0
    stats: Stats = field(default_factory=Stats)


async def closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


async def test_a_refused_dial_is_counted_and_named(caplog: pytest.LogCaptureFixture) -> None:
    owner = Owner("127.0.0.1", await closed_port())
    dialler = Dialler(owner, "DTU X1", logging.getLogger("meterd.simulators.dtu"))
    with pytest.raises(LinkError, match=rf"^DTU X1: cannot connect to 127.0.0.1:{owner.port}: "):
        await dialler.open()
    assert owner.stats == Stats(connect_failures=1)

    attempts = 0

    async def dial() -> bool:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            dialler.closing = True
        await dialler.open()
        return True

    caplog.set_level(logging.DEBUG, "meterd.simulators.dtu")
    await asyncio.wait_for(dialler.keep_dialling(dial, Backoff(0.01, 0.02)), 2.0)
    assert attempts == 3 and owner.stats == Stats(connect_failures=4)
    failed = [r for r in caplog.records if r.name == "meterd.simulators.dtu"]
    assert len(failed) == 3 and all(r.getMessage().startswith("DTU X1: cannot connect to ") for r in failed)


async def test_keep_dialling_until_up_stops_at_the_first_connection_and_the_gate_holds_it() -> None:
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    owner = Owner("127.0.0.1", int(server.sockets[0].getsockname()[1]))
    dialler = Dialler(owner, "concentrator 4401-0001", logging.getLogger("test"))
    gate = asyncio.Event()
    opened: list[asyncio.StreamWriter] = []

    async def dial() -> bool:
        _, writer = await dialler.open()
        opened.append(writer)
        return True

    try:
        task = asyncio.create_task(dialler.keep_dialling(dial, Backoff(0.01, 0.01), gate=gate, until_up=True))
        await asyncio.sleep(0.05)
        assert not opened and not task.done()  # the gate is shut
        gate.set()
        await asyncio.wait_for(task, 2.0)
        assert len(opened) == 1 and owner.stats == Stats(connections=1)
    finally:
        for w in opened + accepted:
            w.close()
        server.close()
        await server.wait_closed()


def test_only_an_end_the_master_made_counts_as_closed_by_master(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "meterd.simulators.concentrator")
    owner = Owner("127.0.0.1", 1)
    dialler = Dialler(owner, "concentrator 4401-0001", logging.getLogger("meterd.simulators.concentrator"))
    dialler.master_closed(by_master=False, dropped=False)
    dialler.master_closed(by_master=True, dropped=True)
    dialler.closing = True
    dialler.master_closed(by_master=True, dropped=False)
    assert owner.stats == Stats()
    dialler.closing = False
    dialler.master_closed(by_master=True, dropped=False)
    assert owner.stats == Stats(closed_by_master=1)
    assert [r.getMessage() for r in caplog.records] == ["concentrator 4401-0001: the master closed the connection"]
