"""A free TCP port to listen on later, chosen where outgoing connections do not take ports.

A port found by binding port 0 comes from the kernel's ephemeral range, the same range every outgoing
connection's local port is drawn from. Between choosing such a port and listening on it, any client
on the machine (a simulator dialling, a test, a browser) may be given it as its local port, and the
listen then fails with "address already in use". The demo chooses its listeners' ports before the
daemon opens them, so it chooses below the ephemeral range instead, where only another listener can
take the port.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Final

EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST: Final = 10_000  # clear of the well-known and most registered services' ports
TRIES: Final = 200


def ephemeral_range(path: Path = EPHEMERAL_RANGE) -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux), else IANA's 49152-65535."""
    try:
        low, high = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return 49152, 65535
    return low, high


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, rng: random.Random | None = None) -> int:
    """A port on ``host`` nothing listens on now, outside the ephemeral range when there is room.

    Chosen at random, so that processes choosing at once (parallel tests, several demos) rarely pick
    the same one. Falls back to the kernel's choice when no port below the range is free.
    """
    draw = rng or random.SystemRandom()
    low, high = ephemeral_range()
    spans = [(a, b) for a, b in ((LOWEST, low - 1), (high + 1, 65535)) if a <= b]
    if spans:
        weights = [b - a + 1 for a, b in spans]
        for _ in range(TRIES):
            a, b = draw.choices(spans, weights)[0]
            port = draw.randint(a, b)
            if _bindable(host, port):
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen
