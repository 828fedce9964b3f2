"""meterd.ports.free_port: a port to listen on later, chosen where outgoing connections do not land.

The demo chose its listeners' ports by binding port 0, which draws from the ephemeral range; in CI a
client connection elsewhere was given one of them as its local port before the demo's listener
opened, and the demo stopped with "address already in use".
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

from meterd import ports
from meterd.cli import demo_terminals


def test_a_port_is_chosen_outside_the_ephemeral_range_and_can_be_listened_on():
    low, high = ports.ephemeral_range()
    for _ in range(50):
        port = ports.free_port()
        assert not low <= port <= high, (port, low, high)
        assert ports.LOWEST <= port <= 65535
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()


def test_the_demo_chooses_its_listeners_ports_that_way():
    assert demo_terminals.free_port is ports.free_port


def test_a_port_someone_listens_on_is_not_chosen(monkeypatch):
    """With a seeded draw the first candidate is known; taken, the next one is chosen instead."""
    first = ports.free_port(rng=random.Random(7))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        again = ports.free_port(rng=random.Random(7))
    assert again != first


def test_the_range_is_read_from_the_kernel_and_defaults_to_ianas(tmp_path: Path):
    given = tmp_path / "range"
    given.write_text("20000\t40000\n")
    assert ports.ephemeral_range(given) == (20000, 40000)
    assert ports.ephemeral_range(tmp_path / "missing") == (49152, 65535)
    given.write_text("nonsense")
    assert ports.ephemeral_range(given) == (49152, 65535)


def test_with_no_room_outside_the_range_the_kernel_chooses(monkeypatch):
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (ports.LOWEST, 65535))
    port = ports.free_port()
    assert 1 <= port <= 65535
